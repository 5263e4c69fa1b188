//! JSON payloads (feature `json`): typed calls with [`RpcClient::call_json`] and typed handlers
//! with [`json_handler`]. Requests and replies carry `content_type: application/json`; a
//! request that does not decode gets an error reply that says why.

use crate::client::RpcClient;
use crate::error::{Error, HandlerError, Result};
use crate::handler::{Handler, Request};
use crate::message::Response;
use crate::protocol::JSON_CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Duration;

impl RpcClient {
    /// Sends `request` to `queue` as JSON and decodes the JSON reply, within the client's
    /// [`call_timeout`](crate::ClientConfig::call_timeout).
    ///
    /// Fails as [`call`](Self::call) does, and with [`Error::Protocol`] if the reply is not the
    /// JSON of a `Resp`.
    pub fn call_json<Req, Resp>(&self, queue: &str, request: &Req) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_json_with_timeout(queue, request, self.config().get_call_timeout())
    }

    /// [`call_json`](Self::call_json) with this timeout instead of the client's.
    pub fn call_json_with_timeout<Req, Resp>(
        &self,
        queue: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::Internal(format!("the request cannot be written as JSON: {e}")))?;
        let reply = self
            .request(queue, &body)
            .timeout(timeout)
            .content_type(JSON_CONTENT_TYPE)
            .call()?;
        serde_json::from_slice(reply.body())
            .map_err(|e| Error::Protocol(format!("the reply is not the JSON expected: {e}")))
    }
}

/// A handler that decodes a JSON request, calls a function, and encodes its JSON reply; made by
/// [`json_handler`].
pub struct JsonHandler<F, Req, Resp> {
    handle: F,
    types: PhantomData<fn(Req) -> Resp>,
}

impl<F, Req, Resp> std::fmt::Debug for JsonHandler<F, Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonHandler").finish_non_exhaustive()
    }
}

/// A handler for JSON services: `handle` gets the decoded request; its reply is sent as JSON.
///
/// ```
/// use fib_rpc::json::json_handler;
/// use fib_rpc::HandlerError;
///
/// #[derive(serde::Deserialize)]
/// struct Order { items: Vec<u32> }
///
/// let total = json_handler(|order: Order| Ok::<_, HandlerError>(order.items.iter().sum::<u32>()));
/// # let _ = fib_rpc::RpcServer::new(fib_rpc::ServerConfig::default(), total);
/// ```
pub fn json_handler<Req, Resp, F>(handle: F) -> JsonHandler<F, Req, Resp>
where
    F: Fn(Req) -> Result<Resp, HandlerError> + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
{
    JsonHandler {
        handle,
        types: PhantomData,
    }
}

impl<F, Req, Resp> Handler for JsonHandler<F, Req, Resp>
where
    F: Fn(Req) -> Result<Resp, HandlerError> + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
{
    fn handle(&self, request: &Request<'_>) -> Result<Response, HandlerError> {
        let decoded = serde_json::from_slice(request.body())
            .map_err(|e| HandlerError::new(format!("invalid JSON request: {e}")))?;
        let reply = (self.handle)(decoded)?;
        let body = serde_json::to_vec(&reply).map_err(|e| {
            HandlerError::new(format!(
                "internal error: the reply cannot be written as JSON: {e}"
            ))
        })?;
        Ok(Response::new(body))
    }

    fn content_type(&self) -> &str {
        JSON_CONTENT_TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::AmqpProperties;

    #[derive(serde::Deserialize)]
    struct Pair {
        x: i64,
        y: i64,
    }

    #[test]
    fn decodes_calls_and_encodes_and_says_what_did_not_decode() {
        let add = json_handler(|pair: Pair| Ok::<_, HandlerError>(pair.x + pair.y));
        let properties = AmqpProperties::default();
        let answer = add.handle(&Request::new(br#"{"x":2,"y":40}"#, &properties, false));
        assert_eq!(answer.unwrap().body(), b"42");
        let refused = add
            .handle(&Request::new(br#"{"x":"two"}"#, &properties, false))
            .unwrap_err();
        assert!(
            refused.message().starts_with("invalid JSON request"),
            "{refused}"
        );
        assert_eq!(add.content_type(), "application/json");
    }
}
