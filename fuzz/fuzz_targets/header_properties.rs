//! A content header's properties (the header tables above all), as the guard rewrites them
//! for amiquip.
#![no_main]

use fib_rpc::fuzzing::sanitize_properties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let handed = match sanitize_properties(payload) {
        Some(rewritten) => {
            assert_eq!(
                sanitize_properties(&rewritten),
                None,
                "a rewritten header passes as it is"
            );
            rewritten
        }
        None => payload.to_vec(),
    };
    // As a frame on channel 1, through the parser amiquip reads frames with.
    let mut frame = vec![2, 0, 1];
    frame.extend_from_slice(&(handed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&handed);
    frame.push(0xce);
    let _ = amq_protocol::frame::parse_frame(&frame);
});
