//! Request bodies for the bundled services (Fibonacci, Addition, a JSON handler) and reply
//! bodies for their clients: nothing panics, and what is accepted reads back as it was.
#![no_main]

use fib_rpc::fuzzing::handle;
use fib_rpc::json::json_handler;
use fib_rpc::services::{
    addition_handler, fibonacci, fibonacci_handler, parse_bigint, parse_biguint, parse_bounded_u64,
    BigInt,
};
use fib_rpc::HandlerError;
use libfuzzer_sys::fuzz_target;

const MAX_N: u64 = 2000;
const MAX_DIGITS: usize = 50;

#[derive(serde::Deserialize, serde::Serialize)]
struct Pair {
    x: i64,
    y: i64,
}

/// `digits` without leading zeros ("0" for none).
fn canonical(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    match &digits[start..] {
        [] => b"0",
        rest => rest,
    }
}

fuzz_target!(|body: &[u8]| {
    match parse_bounded_u64(body, MAX_N) {
        Ok(n) => {
            assert!(n <= MAX_N);
            assert!(body.iter().all(u8::is_ascii_digit));
            assert_eq!(canonical(body), n.to_string().as_bytes());
            let reply = handle(&fibonacci_handler(MAX_N), body).expect("an accepted n is answered");
            assert_eq!(parse_biguint(reply.body()).unwrap(), fibonacci(n));
        }
        Err(error) => {
            assert!(handle(&fibonacci_handler(MAX_N), body).is_err());
            // A body is quoted by its first 40 bytes, each at most 10 characters escaped.
            assert!(
                error.message().len() < 600,
                "quoted short: {}",
                error.message()
            );
        }
    }
    if let Ok(sum) = addition_handler(MAX_DIGITS)(body) {
        let mut operands = body
            .split(|&b| b == b',')
            .map(|operand| parse_bigint(operand).unwrap());
        let (x, y) = (operands.next().unwrap(), operands.next().unwrap());
        assert_eq!(parse_bigint(&sum).unwrap(), x + y);
    }
    if let Ok(value) = parse_bigint(body) {
        let digits = body.strip_prefix(b"-").unwrap_or(body);
        let negative = body.starts_with(b"-") && value != BigInt::from(0);
        let sign: &[u8] = if negative { b"-" } else { b"" };
        assert_eq!(
            value.to_string().as_bytes(),
            [sign, canonical(digits)].concat()
        );
    }
    let add = json_handler(|pair: Pair| Ok::<_, HandlerError>(pair.x.wrapping_add(pair.y)));
    match (handle(&add, body), serde_json::from_slice::<Pair>(body)) {
        (Ok(reply), Ok(pair)) => {
            let sum: i64 = serde_json::from_slice(reply.body()).unwrap();
            assert_eq!(sum, pair.x.wrapping_add(pair.y));
        }
        (Err(error), Err(_)) => assert!(!error.message().is_empty()),
        (reply, pair) => panic!(
            "the handler and serde disagree: {reply:?} {:?}",
            pair.is_ok()
        ),
    }
});
