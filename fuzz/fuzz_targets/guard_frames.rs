//! Bytes as a broker (or anyone at the other end of the socket) might send them, through the
//! frame guard, and on to the parser amiquip reads frames with.
#![no_main]

use fib_rpc::fuzzing::guard_inbound;
use libfuzzer_sys::fuzz_target;

/// What the guard may hold back beyond the bytes it was given: a header frame's buffer is
/// reserved up to 64 KiB ahead of its bytes, never on the peer's word alone.
const RESERVED_AHEAD: usize = 64 * 1024;

/// `bytes` with the random part of every raw-id token zeroed: a connection's tokens are its own,
/// so two guards give the same frames but for those.
fn masked(bytes: &[u8]) -> Vec<u8> {
    const TOKEN: &[u8] = b"fib-rpc-raw-id:";
    let mut masked = bytes.to_vec();
    let mut at = 0;
    while let Some(found) = masked[at..].windows(TOKEN.len()).position(|w| w == TOKEN) {
        let start = at + found + TOKEN.len();
        let end = (start + 32).min(masked.len());
        masked[start..end].fill(b'0');
        at = end;
    }
    masked
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the socket splits the stream.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let size = usize::from(cut % 32) + 1;
    let whole = guard_inbound([stream]);
    let chunked = guard_inbound(stream.chunks(size));
    let (handed, held) = match (whole, chunked) {
        (Ok((whole, _)), Ok((chunked, held))) => {
            assert_eq!(
                masked(&whole),
                masked(&chunked),
                "the same frames whatever the chunking"
            );
            (chunked, held)
        }
        (Err(_), Err(_)) => return,
        (whole, chunked) => panic!("the chunking changed the verdict: {whole:?} {chunked:?}"),
    };
    assert!(
        held <= 2 * stream.len() + RESERVED_AHEAD,
        "held {held} bytes for a stream of {}",
        stream.len()
    );
    assert!(
        handed.len() <= 2 * stream.len() + 1024,
        "handed {} bytes for a stream of {}",
        handed.len(),
        stream.len()
    );
    // What the guard let through passes it again unchanged: a rejected frame stays rejected.
    let (again, _) = guard_inbound([handed.as_slice()]).expect("its own output is taken");
    assert_eq!(again, handed, "a second pass changes nothing");
    // amiquip's parser reads it without crashing (an error just ends the connection).
    let mut rest = handed.as_slice();
    while let Ok((remaining, _frame)) = amq_protocol::frame::parse_frame(rest) {
        if remaining.len() >= rest.len() {
            break;
        }
        rest = remaining;
    }
});
