//! W3C `traceparent` and `tracestate` headers as a caller sends them: a header that is read
//! writes back canonical, and reads back the same.
#![no_main]

use fib_rpc::TraceContext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parent, state) = match text.split_once('\n') {
        Some((parent, state)) => (parent, Some(state)),
        None => (text, None),
    };
    let Some(context) = TraceContext::parse(parent, state) else {
        return;
    };
    let header = context.traceparent();
    assert_eq!(header.len(), 55, "{header}");
    assert!(header.starts_with("00-"), "{header}");
    assert!(
        header
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{header}"
    );
    let again = TraceContext::parse(&header, context.tracestate()).expect("its own header reads");
    assert_eq!(again.traceparent(), header);
    assert_eq!(again.tracestate(), context.tracestate());
    assert_eq!(again.sampled(), context.sampled());
});
