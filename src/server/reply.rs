//! A server's reply to one request: the handler's answer, or an error reply, kept until the
//! broker has certainly taken it.

use super::recent::Key;
use super::stats::{count, Counters};
use crate::driver::{AmqpProperties, Channel, Delivery, DriverError, Publish};
use crate::error::HandlerError;
use crate::message::Response;
use crate::protocol::{self, CONTENT_TYPE, ERROR_TYPE};
use std::time::SystemTime;

/// A reply, kept until the broker has certainly taken it.
pub(super) struct Reply {
    pub to: String,
    properties: AmqpProperties,
    pub body: Vec<u8>,
    pub key: Option<Key>,
    /// An error reply, counted as one once sent.
    pub error: bool,
    /// Counted already: it was handed to the broker once.
    pub counted: bool,
    /// When its caller stops waiting, if it said.
    pub deadline: Option<SystemTime>,
    /// Kept once already from a lost connection for the next.
    pub carried: bool,
}

impl Reply {
    /// The reply to `delivery`, to `to`: the handler's answer (of `content_type`), or an error
    /// reply; one over the broker's `limit` is an error reply saying so.
    pub fn new(
        delivery: &Delivery,
        to: String,
        key: Option<Key>,
        outcome: Result<Response, HandlerError>,
        limit: usize,
        content_type: &str,
        deadline: Option<SystemTime>,
    ) -> Reply {
        let request = &delivery.properties;
        let mut properties = AmqpProperties::default();
        if let Some(id) = request.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        if let Some(mode) = request.delivery_mode() {
            properties = properties.with_delivery_mode(*mode);
        }
        let outcome = outcome.and_then(|response| {
            let parts = response.into_parts(content_type);
            match parts.body.len() > limit {
                true => Err(HandlerError::new(too_large(parts.body.len(), limit))),
                false => Ok(parts),
            }
        });
        let error = outcome.is_err();
        let body = match outcome {
            Ok(parts) => {
                log::debug!(
                    "{} -> {} bytes",
                    protocol::quote(&delivery.body),
                    parts.body.len()
                );
                if let Some(name) = parts.refused {
                    log::warn!(
                        "the handler's reply header {name:?} is reserved (x-…, traceparent, \
                         tracestate) or has no value: the reply goes without it"
                    );
                }
                if !parts.headers.is_empty() {
                    properties = properties.with_headers(parts.headers);
                }
                properties = properties.with_content_type(parts.content_type);
                parts.body
            }
            Err(error) => {
                log::debug!("{} -> error: {error}", protocol::quote(&delivery.body));
                properties = properties
                    .with_content_type(CONTENT_TYPE.to_owned())
                    .with_type_(ERROR_TYPE.to_owned());
                error.message().as_bytes().to_vec()
            }
        };
        Reply {
            to,
            properties,
            body,
            key,
            error,
            counted: false,
            deadline,
            carried: false,
        }
    }

    /// The request's correlation id, quoted for a log line.
    pub fn request_id(&self) -> String {
        let id = self.properties.correlation_id().as_deref().unwrap_or("");
        protocol::quote(id.as_bytes())
    }

    /// Counts a reply the broker has been handed, by its kind, once.
    pub fn count_sent(&mut self, counters: &Counters) {
        if std::mem::replace(&mut self.counted, true) {
            return;
        }
        match self.error {
            true => count(&counters.error_replies),
            false => count(&counters.answered),
        }
    }

    /// Turns the reply into an error reply, as the broker refused it (`reason`) for being over
    /// its `limit`.
    pub fn refused_for_size(&mut self, limit: usize, reason: &str) {
        let message = format!(
            "{}: the broker said {reason}",
            too_large(self.body.len(), limit)
        );
        self.body = message.into_bytes();
        self.properties = std::mem::take(&mut self.properties)
            .with_content_type(CONTENT_TYPE.to_owned())
            .with_type_(ERROR_TYPE.to_owned());
        self.error = true;
    }

    pub fn publish(&self, channel: &Channel) -> Result<(), DriverError> {
        channel.basic_publish(
            "",
            Publish::with_properties(&self.body, self.to.as_str(), self.properties.clone()),
        )
    }
}

/// A reply with correlation id `id`, as tests of the server's bookkeeping need one.
#[cfg(test)]
pub(super) fn sample(id: &str) -> Reply {
    Reply {
        to: "amq.gen-1".into(),
        properties: AmqpProperties::default().with_correlation_id(id.into()),
        body: b"1".to_vec(),
        key: Some(Key::new("amq.gen-1", id)),
        error: false,
        counted: false,
        deadline: None,
        carried: false,
    }
}

fn too_large(size: usize, limit: usize) -> String {
    format!(
        "the reply is {size} bytes, over the broker's limit of {limit} bytes (max_message_size)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_refused_for_its_size_becomes_an_error_reply() {
        let mut reply = Reply {
            to: "amq.gen-1".into(),
            properties: AmqpProperties::default()
                .with_correlation_id("id-1".into())
                .with_content_type("application/json".into()),
            body: vec![b'7'; 2048],
            key: None,
            error: false,
            counted: false,
            deadline: None,
            carried: false,
        };
        reply.refused_for_size(1024, "PRECONDITION_FAILED - message size 2048 is larger");
        assert!(reply.error);
        assert!(protocol::is_error_reply(&reply.properties));
        assert_eq!(
            reply.properties.content_type().as_deref(),
            Some(CONTENT_TYPE)
        );
        assert_eq!(reply.properties.correlation_id().as_deref(), Some("id-1"));
        let message = String::from_utf8(reply.body).unwrap();
        assert!(message.starts_with("the reply is 2048 bytes, over the broker's limit of 1024"));
        assert!(
            message.ends_with("the broker said PRECONDITION_FAILED - message size 2048 is larger")
        );
    }
}
