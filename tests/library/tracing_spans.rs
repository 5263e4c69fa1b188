//! The feature `tracing`: a call and the delivery that serves it are spans with OpenTelemetry's
//! messaging attributes, which share the correlation id and the caller's trace.
//!
//! The spans are caught by a subscriber of our own, installed per thread: a global one would
//! see every other test of this binary. The server's worker thread installs it from inside
//! the handler, so a delivery's span is seen from the worker's second delivery on.

use fib_rpc::{handler, HandlerError, Request, RpcServer, TraceContext};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::TestQueue;
use tracing::dispatcher::{self, DefaultGuard, Dispatch};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Span {
    name: &'static str,
    fields: HashMap<&'static str, String>,
}

impl Span {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl Visit for Span {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.insert(field.name(), format!("{value:?}"));
    }
}

/// Every span made, in order; a span's id is its place in the list, plus one.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Span>>>);

impl Recorder {
    fn named(&self, name: &str) -> Vec<Span> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let mut span = Span {
            name: attributes.metadata().name(),
            fields: HashMap::new(),
        };
        attributes.record(&mut span);
        let mut spans = self.0.lock().unwrap();
        spans.push(span);
        Id::from_u64(spans.len() as u64)
    }

    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        values.record(&mut spans[id.into_u64() as usize - 1]);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

thread_local! {
    static WORKER_RECORDING: OnceCell<DefaultGuard> = const { OnceCell::new() };
}

#[test]
fn a_call_and_its_delivery_are_spans_that_share_the_conversation_and_trace() {
    let recorder = Recorder::default();
    let queue = TestQueue::new("tracing-spans");
    let worker_dispatch = Dispatch::new(recorder.clone());
    let server = RpcServer::new(
        support::server_config(&queue.name, 1),
        handler::with_request(move |request: &Request<'_>| {
            WORKER_RECORDING.with(|guard| {
                guard.get_or_init(|| dispatcher::set_default(&worker_dispatch));
            });
            match request.body() {
                b"fail" => Err(HandlerError::new("refused")),
                body => Ok(body.to_vec()),
            }
        }),
    )
    .start()
    .unwrap();
    let client = support::client();
    let call = |body: &[u8], trace: Option<&TraceContext>| {
        let mut call = client.request(&queue.name, body).timeout(TIMEOUT);
        if let Some(trace) = trace {
            call = call.trace(trace.clone());
        }
        call.call()
    };
    call(b"first", None).expect("the worker starts recording");
    let trace = TraceContext::new_root();
    let unroutable = format!("test-nobody-{}", uuid::Uuid::new_v4());
    tracing::subscriber::with_default(recorder.clone(), || {
        assert_eq!(call(b"echo", Some(&trace)).unwrap().body(), b"echo");
        assert!(call(b"fail", None).unwrap_err().is_remote());
        let error = client
            .request(&unroutable, b"1")
            .exchange("amq.direct")
            .timeout(TIMEOUT)
            .call()
            .unwrap_err();
        assert!(error.is_no_server(), "{error}");
    });
    client.close().unwrap();
    server.shutdown().unwrap();

    let calls = recorder.named("rpc call");
    assert_eq!(calls.len(), 3, "{calls:?}");
    for span in &calls {
        assert_eq!(span.field("messaging.system"), Some("rabbitmq"));
        assert_eq!(span.field("messaging.operation.name"), Some("send"));
        assert_eq!(span.field("otel.kind"), Some("client"));
        let conversation = span.field("messaging.message.conversation_id").unwrap();
        assert!(!conversation.is_empty(), "{span:?}");
    }
    let conversations: std::collections::HashSet<_> = calls
        .iter()
        .map(|span| span.field("messaging.message.conversation_id"))
        .collect();
    assert_eq!(conversations.len(), 3, "{calls:?}");
    let (echo, fail, unrouted) = (&calls[0], &calls[1], &calls[2]);
    for span in [echo, fail] {
        assert_eq!(span.field("messaging.destination.name"), Some(&*queue.name));
        assert_eq!(
            span.field("messaging.rabbitmq.destination.routing_key"),
            Some(&*queue.name)
        );
    }
    assert_eq!(echo.field("trace_id"), Some(&*trace.trace_id()));
    assert_eq!(echo.field("span_id"), Some(&*trace.span_id()));
    assert_eq!(echo.field("error.type"), None);
    assert_eq!(fail.field("trace_id"), None);
    assert_eq!(fail.field("error.type"), Some("Remote"));
    assert_eq!(
        unrouted.field("messaging.destination.name"),
        Some("amq.direct")
    );
    assert_eq!(
        unrouted.field("messaging.rabbitmq.destination.routing_key"),
        Some(&*unroutable)
    );
    assert_eq!(unrouted.field("error.type"), Some("NoServer"));

    let serves = recorder.named("rpc serve");
    assert_eq!(serves.len(), 2, "{serves:?}");
    for (served, called) in serves.iter().zip([echo, fail]) {
        assert_eq!(served.field("messaging.system"), Some("rabbitmq"));
        assert_eq!(served.field("messaging.operation.name"), Some("process"));
        assert_eq!(
            served.field("messaging.destination.name"),
            Some(&*queue.name)
        );
        assert_eq!(served.field("otel.kind"), Some("server"));
        assert_eq!(
            served.field("messaging.message.conversation_id"),
            called.field("messaging.message.conversation_id")
        );
    }
    let (echoed, failed) = (&serves[0], &serves[1]);
    assert_eq!(echoed.field("trace_id"), Some(&*trace.trace_id()));
    assert_eq!(echoed.field("parent_span_id"), Some(&*trace.span_id()));
    assert_eq!(echoed.field("error.type"), None);
    assert_eq!(failed.field("error.type"), Some("handler_error"));
}
