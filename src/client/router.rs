//! Hands each reply, and each request the broker returned, to the call waiting for it.

use super::pending::Pending;
use crate::driver::{AmqpProperties, ConsumerMessage, Delivery, Return};
use crate::error::Error;
use crate::message::{Progress, Response};
use crate::protocol::{self, NO_ROUTE};

/// The reply in a message of the reply consumer, or why the consumer, and with it the
/// connection, is gone.
pub(super) fn delivery(message: ConsumerMessage) -> Result<Delivery, String> {
    match message {
        ConsumerMessage::Delivery(delivery) => Ok(delivery),
        ConsumerMessage::ServerClosedConnection(error)
        | ConsumerMessage::ServerClosedChannel(error) => Err(error.to_string()),
        ConsumerMessage::ServerCancelled => {
            Err("the broker cancelled the reply consumer (callback queue deleted?)".to_owned())
        }
        _ => Err("the client closed the connection".to_owned()),
    }
}

/// Hands a reply to the call with its `correlation_id`; a reply nobody waits for is dropped.
pub(super) fn reply(pending: &Pending, properties: &AmqpProperties, body: Vec<u8>) {
    let Some(id) = properties.correlation_id() else {
        log::debug!("discarding a reply without correlation_id");
        return;
    };
    if protocol::is_progress(properties) {
        let fraction = protocol::progress_fraction(properties);
        let progress = Progress::new(fraction, String::from_utf8_lossy(&body).into_owned());
        if !pending.progress(id, progress) {
            log::debug!("discarding progress nobody waits for: {id}");
        }
        return;
    }
    let outcome = decode(properties, body);
    if !pending.resolve(id, outcome) {
        log::debug!("discarding a reply nobody waits for (late, duplicate or foreign): {id}");
    }
}

/// Turns a reply into the caller's result: the response, or the server's error message.
pub(super) fn decode(properties: &AmqpProperties, body: Vec<u8>) -> Result<Response, Error> {
    if protocol::is_error_reply(properties) {
        Err(Error::Remote(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Ok(Response::received(properties, body))
    }
}

/// Fails the call whose request the broker returned as unroutable.
pub(super) fn returned(pending: &Pending, returned: &Return) {
    let Some(id) = returned.properties.correlation_id() else {
        return;
    };
    let error = if returned.reply_code == NO_ROUTE {
        let reason = match returned.exchange.as_str() {
            "" => format!("no queue named {:?} exists", returned.routing_key),
            exchange => format!(
                "exchange {exchange:?} routes {:?} to no queue",
                returned.routing_key
            ),
        };
        Error::NoServer {
            queue: returned.routing_key.clone(),
            reason,
        }
    } else {
        Error::refused(
            format!("routing a request to {:?}", returned.routing_key),
            returned.reply_code,
            &returned.reply_text,
        )
    };
    pending.resolve(id, Err(error));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ERROR_TYPE;
    use std::time::{Duration, Instant};

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn answering(id: &str) -> AmqpProperties {
        AmqpProperties::default().with_correlation_id(id.to_owned())
    }

    #[test]
    fn decodes_success_and_error_replies() {
        let plain = AmqpProperties::default();
        assert_eq!(decode(&plain, b"55".to_vec()).unwrap().body(), b"55");
        let error = AmqpProperties::default().with_type_(ERROR_TYPE.to_string());
        let remote = decode(&error, b"bad n".to_vec()).unwrap_err();
        assert_eq!(remote.remote_message(), Some("bad n"));
    }

    fn returned_to(queue: &str, reply_code: u16, id: Option<&str>) -> Return {
        let properties = match id {
            Some(id) => answering(id),
            None => AmqpProperties::default(),
        };
        Return {
            reply_code,
            reply_text: "NO_ROUTE".to_owned(),
            exchange: String::new(),
            routing_key: queue.to_owned(),
            content: b"7".to_vec(),
            properties,
        }
    }

    #[test]
    fn a_reply_reaches_the_call_it_answers() {
        let pending = Pending::default();
        let other = pending.register("other".into(), later());
        let waiter = pending.register("id-1".into(), later());
        reply(&pending, &answering("id-1"), b"13".to_vec());
        assert_eq!(waiter.try_recv().unwrap().unwrap().body(), b"13");
        assert!(other.try_recv().is_err());
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn an_error_reply_is_the_servers_message() {
        let pending = Pending::default();
        let waiter = pending.register("id-1".into(), later());
        let properties = answering("id-1").with_type_(ERROR_TYPE.to_owned());
        reply(&pending, &properties, b"bad input".to_vec());
        match waiter.try_recv().unwrap() {
            Err(Error::Remote(message)) => assert_eq!(message, "bad input"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reply_without_correlation_id_resolves_nothing() {
        let pending = Pending::default();
        let waiter = pending.register("id-1".into(), later());
        reply(&pending, &AmqpProperties::default(), b"13".to_vec());
        assert!(waiter.try_recv().is_err());
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn an_unroutable_request_is_no_server() {
        let pending = Pending::default();
        let waiter = pending.register("id-1".into(), later());
        returned(&pending, &returned_to("nobody", NO_ROUTE, Some("id-1")));
        match waiter.try_recv().unwrap() {
            Err(Error::NoServer { queue, .. }) => assert_eq!(queue, "nobody"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_return_is_the_brokers_refusal() {
        let pending = Pending::default();
        let waiter = pending.register("id-1".into(), later());
        returned(&pending, &returned_to("q", 313, Some("id-1")));
        match waiter.try_recv().unwrap() {
            Err(Error::Broker { code, .. }) => assert_eq!(code, Some(313)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_return_without_correlation_id_resolves_nothing() {
        let pending = Pending::default();
        let waiter = pending.register("id-1".into(), later());
        returned(&pending, &returned_to("q", NO_ROUTE, None));
        assert!(waiter.try_recv().is_err());
    }

    #[test]
    fn the_end_of_the_consumer_is_a_lost_connection() {
        let reason = delivery(ConsumerMessage::ServerCancelled).unwrap_err();
        assert!(reason.contains("cancelled the reply consumer"), "{reason}");
        let reason = delivery(ConsumerMessage::ClientClosedConnection).unwrap_err();
        assert_eq!(reason, "the client closed the connection");
    }
}
