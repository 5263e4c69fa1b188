//! Entry points for the fuzz targets under `fuzz/`, compiled only by `cargo fuzz` (which builds
//! with `--cfg fuzzing`): the driver's readers of what comes from the network are private
//! otherwise. Not part of the API.

use crate::driver::frames::{self, RawIds};
use crate::driver::{guard, AmqpProperties};
use crate::error::HandlerError;
use crate::handler::{Handler, Live, Request};
use crate::message::Response;

/// What the frame guard hands amiquip for `chunks` read from the socket, and the most it held
/// back at any time; an error for a frame no broker sends (the connection ends).
pub fn guard_inbound<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> std::io::Result<(Vec<u8>, usize)> {
    guard::inbound_of(chunks)
}

/// A content header's payload as the guard rewrites it for amiquip, or `None` if it passes as
/// it is.
pub fn sanitize_properties(payload: &[u8]) -> Option<Vec<u8>> {
    frames::sanitize(payload, &mut RawIds::new())
}

/// What `handler` answers to `body` sent with no properties, as a tutorial client sends it.
pub fn handle(handler: &dyn Handler, body: &[u8]) -> Result<Response, HandlerError> {
    let properties = AmqpProperties::default();
    let request = Request::due(body, &properties, false, None, Live::default());
    handler.handle(&request)
}
