//! What a call inherits from the request its thread is serving: the caller's deadline and
//! trace context.
//!
//! While a handler runs, its worker thread remembers the request's deadline (on this host's
//! monotonic clock) and its [`TraceContext`]. A call made on that thread, through
//! [`RpcClient::request`](crate::RpcClient::request), is bounded by that deadline and carries a
//! child of that trace, as gRPC propagates deadlines: a service that calls another passes its
//! remaining time on without arithmetic. [`Call::detached`](crate::Call::detached) opts out.

use std::cell::RefCell;
use std::fmt;
use std::time::Instant;

/// A W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` of a call
/// and, if any, its `tracestate`.
///
/// ```
/// use fib_rpc::TraceContext;
///
/// let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let incoming = TraceContext::parse(traceparent, None).unwrap();
/// let outgoing = incoming.child();
/// assert_eq!(outgoing.trace_id(), incoming.trace_id());
/// assert_eq!(outgoing.parent_id(), Some(incoming.span_id()));
/// assert_ne!(outgoing.span_id(), incoming.span_id());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The span this one is a child of, when made by [`child`](Self::child).
    parent_id: Option<[u8; 8]>,
    flags: u8,
    state: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.state)
            .finish()
    }
}

impl TraceContext {
    /// A new trace, sampled, with a random trace id and span id.
    pub fn new_root() -> TraceContext {
        let trace_id = nonzero(|| *uuid::Uuid::new_v4().as_bytes());
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            parent_id: None,
            flags: 0x01,
            state: None,
        }
    }

    /// Reads a `traceparent` (and `tracestate`) header; `None` if it is not one of version
    /// `00` or any later version's first four fields, or its ids are all zeros.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let mut fields = traceparent.trim().split('-');
        let version = hex::<1>(fields.next()?)?;
        let trace_id = hex::<16>(fields.next()?)?;
        let span_id = hex::<8>(fields.next()?)?;
        let flags = hex::<1>(fields.next()?)?;
        // Version 00 has exactly four fields; later versions may add some (the spec).
        let valid = version[0] != 0xff
            && (version[0] != 0 || fields.next().is_none())
            && trace_id != [0; 16]
            && span_id != [0; 8];
        valid.then(|| TraceContext {
            trace_id,
            span_id,
            parent_id: None,
            flags: flags[0],
            state: tracestate
                .map(str::trim)
                .filter(|state| !state.is_empty())
                .map(str::to_owned),
        })
    }

    /// A child of this context: the same trace and state, a new span whose parent is this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            parent_id: Some(self.span_id),
            state: self.state.clone(),
            ..*self
        }
    }

    /// Sets the `tracestate` sent along.
    pub fn with_state(mut self, tracestate: impl Into<String>) -> TraceContext {
        self.state = Some(tracestate.into());
        self
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// This span's id, 16 lowercase hex digits: the `parent-id` field of its `traceparent`.
    pub fn span_id(&self) -> String {
        to_hex(&self.span_id)
    }

    /// The id of the span this one was made a child of, if it was.
    pub fn parent_id(&self) -> Option<String> {
        self.parent_id.as_ref().map(|id| to_hex(id))
    }

    /// True if the caller recorded this trace (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The `traceparent` header of this context (version `00`).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            self.flags
        )
    }

    /// The `tracestate` header, if there is one.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

fn new_span_id() -> [u8; 8] {
    nonzero(|| {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut id = [0; 8];
        id.copy_from_slice(&bytes[..8]);
        id
    })
}

/// An id from `make` that is not all zeros, which W3C Trace Context calls invalid.
fn nonzero<const N: usize>(make: impl Fn() -> [u8; N]) -> [u8; N] {
    loop {
        let id = make();
        if id != [0; N] {
            return id;
        }
    }
}

fn hex<const N: usize>(field: &str) -> Option<[u8; N]> {
    let digits = field.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        // Upper-case hex is invalid in traceparent.
        if text.bytes().any(|digit| digit.is_ascii_uppercase()) {
            return None;
        }
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(bytes)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The request a worker thread is serving, as far as calls made on that thread inherit it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Serving {
    pub deadline: Option<Instant>,
    pub trace: Option<TraceContext>,
}

thread_local! {
    static SERVING: RefCell<Option<Serving>> = const { RefCell::new(None) };
}

/// Marks this thread as serving a request until the guard is dropped.
pub(crate) fn serve(serving: Serving) -> ServingGuard {
    let previous = SERVING.with(|slot| slot.replace(Some(serving)));
    ServingGuard { previous }
}

/// The request this thread serves, if any.
pub(crate) fn serving() -> Option<Serving> {
    SERVING.with(|slot| slot.borrow().clone())
}

/// Restores what the thread served before (nothing, on a worker) when dropped, also when the
/// handler panics.
#[must_use]
pub(crate) struct ServingGuard {
    previous: Option<Serving>,
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SERVING.with(|slot| *slot.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_back_as_it_was_written() {
        let context = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.traceparent(), EXAMPLE);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert_eq!(context.tracestate(), Some("congo=t61rcWkgMzE"));
        assert!(context.sampled());
        let root = TraceContext::new_root();
        assert_eq!(
            TraceContext::parse(&root.traceparent(), None),
            Some(root.clone())
        );
        assert_eq!(root.traceparent().len(), 55);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert!(TraceContext::parse(later, None).is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_points_at_its_parent() {
        let parent = TraceContext::parse(EXAMPLE, Some("a=1")).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.parent_id(), Some(parent.span_id()));
        assert_ne!(child.span_id(), parent.span_id());
        assert_eq!(child.tracestate(), Some("a=1"));
        assert!(child.traceparent().ends_with("-01"));
    }

    #[test]
    fn a_thread_serves_one_request_at_a_time_and_forgets_it_after() {
        assert!(serving().is_none());
        let deadline = Instant::now() + Duration::from_secs(3);
        {
            let _guard = serve(Serving {
                deadline: Some(deadline),
                trace: None,
            });
            assert_eq!(serving().unwrap().deadline, Some(deadline));
            let inner = serve(Serving::default());
            assert_eq!(serving().unwrap().deadline, None);
            drop(inner);
            assert_eq!(serving().unwrap().deadline, Some(deadline));
        }
        assert!(serving().is_none());
        let panicked = std::panic::catch_unwind(|| {
            let _guard = serve(Serving::default());
            panic!("handler failed");
        });
        assert!(panicked.is_err());
        assert!(serving().is_none(), "a panic forgets the request too");
    }
}
