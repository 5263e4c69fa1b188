//! The Fibonacci service of RabbitMQ tutorial 6: the server's handler, exact fib(n) by fast
//! doubling, and the client whose `call(n)` is the tutorial's.

use crate::handler::{self, Handler, Request};
use crate::protocol::quote;
use crate::{Error, HandlerError, Result, RpcClient, DEFAULT_QUEUE};
use num_bigint::BigUint;
use num_traits::{One, Zero};
use std::ops::ControlFlow;
use std::time::Duration;

/// The largest n the Fibonacci service computes by default; fib(100000) has 20899 digits.
pub const DEFAULT_MAX_N: u64 = 100_000;

/// The Fibonacci service: body = n as ASCII decimal, reply = fib(n) as ASCII decimal, n at most
/// `max_n`.
///
/// A large n takes seconds (fib(20000000) about 6 s in a release build, two thirds of them
/// writing its 4 million digits): the handler reports progress to a caller that asked for it,
/// at each tenth of the work it can measure, and stops, unanswered, at the next doubling or
/// before writing the digits once its caller has given up.
pub fn fibonacci_handler(max_n: u64) -> impl Handler {
    handler::with_request(move |request: &Request<'_>| {
        let n = parse_bounded_u64(request.body(), max_n)?;
        // Most callers ask for no progress: their reports are not even written.
        let reporting = request.wants_progress();
        let cancelled = || HandlerError::new("cancelled: the caller gave up");
        let mut tenths = 0;
        let value = fibonacci_stepwise(n, |done| {
            if request.is_cancelled() {
                return ControlFlow::Break(());
            }
            // The end of computing is reported as the start of writing the digits, below.
            let computed = done >= 1.0;
            let done = done * COMPUTING_SHARE;
            // Truncation is the point: a report per tenth.
            let reached = (done * 10.0) as u32;
            if reporting && reached > tenths && !computed {
                tenths = reached;
                request.progress(Some(done), &format!("fib({n}): computing"));
            }
            ControlFlow::Continue(())
        })
        .ok_or_else(cancelled)?;
        if request.is_cancelled() {
            return Err(cancelled());
        }
        if reporting {
            request.progress(
                Some(COMPUTING_SHARE),
                &format!("fib({n}): writing the digits"),
            );
        }
        Ok::<_, HandlerError>(value.to_string().into_bytes())
    })
}

/// The part of the work of a large fib(n) that is computing it; writing its decimal digits
/// takes the rest (measured: 2.2 s and 4.1 s for n = 20000000).
const COMPUTING_SHARE: f64 = 0.35;

/// fib(n), exact, with fib(0) = 0 and fib(1) = 1.
///
/// Fast doubling takes O(log n) big-integer multiplications, so fib(100000) (20899 digits) costs
/// well under a millisecond, where the tutorials' recursion would never finish.
pub fn fibonacci(n: u64) -> BigUint {
    fibonacci_stepwise(n, |_| ControlFlow::Continue(())).expect("never stopped")
}

/// [`fibonacci`], telling `step` after each doubling how much of the work is done (from 0 to
/// 1); `None` if `step` stopped it.
///
/// Each doubling multiplies numbers twice as long as the last one's, at about three times its
/// cost (Karatsuba), so the work done is weighted that way, not counted in steps.
fn fibonacci_stepwise(n: u64, mut step: impl FnMut(f64) -> ControlFlow<()>) -> Option<BigUint> {
    let steps = u64::BITS - n.leading_zeros();
    let total = 3f64.powi(steps as i32) - 1.0;
    // Invariant: (a, b) = (fib(k), fib(k + 1)) for k = the bits of n read so far.
    let mut a = BigUint::zero();
    let mut b = BigUint::one();
    for (done, bit) in (0..steps).rev().enumerate() {
        // fib(2k) = fib(k) * (2 fib(k+1) - fib(k)); fib(2k+1) = fib(k)^2 + fib(k+1)^2
        let doubled = &a * ((&b << 1u32) - &a);
        let doubled_next = &a * &a + &b * &b;
        if (n >> bit) & 1 == 1 {
            b = &doubled + &doubled_next;
            a = doubled_next;
        } else {
            a = doubled;
            b = doubled_next;
        }
        let done = (3f64.powi(done as i32 + 1) - 1.0) / total;
        if step(done).is_break() {
            return None;
        }
    }
    Some(a)
}

/// Parses a request body as a non-negative decimal integer no larger than `max`.
///
/// Only ASCII digits are accepted (leading zeros included): no sign, no whitespace, no exponent,
/// no hex, so that every client gets the same answer for the same bytes.
pub fn parse_bounded_u64(body: &[u8], max: u64) -> Result<u64, HandlerError> {
    if body.is_empty() {
        return Err(HandlerError::new(
            "empty request: expected a non-negative decimal integer",
        ));
    }
    if !body.iter().all(u8::is_ascii_digit) {
        return Err(HandlerError::new(format!(
            "invalid request {}: expected a non-negative decimal integer (ASCII digits only)",
            quote(body)
        )));
    }
    let too_large = || {
        HandlerError::new(format!(
            "n = {} is too large: the maximum is {max}",
            quote(body)
        ))
    };
    // The body is all ASCII digits, so it is valid UTF-8; only overflow can fail the parse.
    let n: u64 = std::str::from_utf8(body)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(too_large)?;
    if n > max {
        return Err(too_large());
    }
    Ok(n)
}

/// Parses a success reply body as a non-negative decimal integer of any size.
pub fn parse_biguint(body: &[u8]) -> Result<BigUint> {
    if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
        return Err(Error::Protocol(format!(
            "expected a decimal integer, got {}",
            quote(body)
        )));
    }
    BigUint::parse_bytes(body, 10)
        .ok_or_else(|| Error::Protocol(format!("unparsable integer {}", quote(body))))
}

/// A client for the Fibonacci service: `call(n)` returns fib(n), exact.
#[derive(Debug)]
pub struct FibonacciRpcClient {
    rpc: RpcClient,
    queue: String,
    timeout: Duration,
}

impl FibonacciRpcClient {
    /// Connects with these settings (a URL, a [`ConnectionConfig`](crate::ConnectionConfig)
    /// or a [`ClientConfig`](crate::ClientConfig)); calls go to [`DEFAULT_QUEUE`] with the
    /// settings' `call_timeout` (default 5 s).
    pub fn connect(config: impl Into<crate::ClientConfig>) -> Result<FibonacciRpcClient> {
        Ok(FibonacciRpcClient::new(RpcClient::connect(config)?))
    }

    /// Wraps a connected client; its `call_timeout` becomes the timeout of every call.
    pub fn new(rpc: RpcClient) -> FibonacciRpcClient {
        let timeout = rpc.config().get_call_timeout();
        FibonacciRpcClient {
            rpc,
            queue: DEFAULT_QUEUE.to_owned(),
            timeout,
        }
    }

    /// Sends requests to `queue` instead of [`DEFAULT_QUEUE`].
    pub fn with_queue(mut self, queue: impl Into<String>) -> FibonacciRpcClient {
        self.queue = queue.into();
        self
    }

    /// Waits at most `timeout` for each reply.
    pub fn with_timeout(mut self, timeout: Duration) -> FibonacciRpcClient {
        self.timeout = timeout;
        self
    }

    /// fib(n), computed by a remote server.
    pub fn call(&self, n: u64) -> Result<BigUint> {
        let body =
            self.rpc
                .call_with_timeout(&self.queue, n.to_string().as_bytes(), self.timeout)?;
        parse_biguint(&body)
    }

    /// fib(n) for every n, all requests sent before any reply is awaited; results in order.
    pub fn call_many(&self, numbers: &[u64]) -> Vec<Result<BigUint>> {
        let bodies: Vec<String> = numbers.iter().map(u64::to_string).collect();
        self.rpc
            .call_many_with_timeout(&self.queue, &bodies, self.timeout)
            .into_iter()
            .map(|reply| reply.and_then(|body| parse_biguint(&body)))
            .collect()
    }

    /// The generic client underneath.
    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// Closes the connection.
    pub fn close(self) -> Result<()> {
        self.rpc.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caller gives up as the first progress report arrives: the handler stops at its next
    /// doubling, before another report and before writing the digits. One that ignored the
    /// cancel would go on reporting, and answer.
    #[test]
    fn the_handler_stops_at_its_next_doubling_once_its_caller_gave_up() {
        let token = crate::handler::CancelToken::default();
        let reports = std::cell::RefCell::new(Vec::new());
        let report = |fraction: Option<f64>, message: &str| {
            reports.borrow_mut().push((fraction, message.to_owned()));
            token.cancel();
        };
        let properties = crate::driver::AmqpProperties::default();
        let live = crate::handler::Live {
            cancel: Some(token.clone()),
            progress: Some(&report),
        };
        let request = Request::due(b"2000000", &properties, false, None, live);
        let Err(error) = fibonacci_handler(2_000_000).handle(&request) else {
            panic!("answered although its caller gave up");
        };
        assert!(error.message().contains("cancelled"), "{error}");
        let reports = reports.into_inner();
        assert_eq!(
            reports.len(),
            1,
            "nothing reported after the cancel: {reports:?}"
        );
        let (Some(fraction), message) = &reports[0] else {
            panic!("a fraction: {reports:?}");
        };
        assert!(
            *fraction < COMPUTING_SHARE,
            "stopped while computing: {message}"
        );
    }

    #[test]
    fn the_client_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<FibonacciRpcClient>();
    }

    fn naive(n: u64) -> BigUint {
        let (mut a, mut b) = (BigUint::zero(), BigUint::one());
        for _ in 0..n {
            let next = &a + &b;
            a = std::mem::replace(&mut b, next);
        }
        a
    }

    #[test]
    fn known_values() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (1, "1"),
            (2, "1"),
            (10, "55"),
            (93, "12200160415121876738"),
            (94, "19740274219868223167"),
            (100, "354224848179261915075"),
        ];
        for (n, expected) in cases {
            assert_eq!(fibonacci(*n).to_string(), *expected, "fib({n})");
        }
    }

    #[test]
    fn fib_1000_matches_published_value() {
        let value = fibonacci(1000).to_string();
        assert_eq!(value.len(), 209);
        assert!(value.starts_with("43466557686937456435688527675040625802564660517371780402481729"));
        assert!(value.ends_with("849228875"));
    }

    #[test]
    fn agrees_with_iteration_for_the_first_thousand() {
        let (mut a, mut b) = (BigUint::zero(), BigUint::one());
        for n in 0..1000 {
            assert_eq!(fibonacci(n), a, "fib({n})");
            let next = &a + &b;
            a = std::mem::replace(&mut b, next);
        }
        assert_eq!(fibonacci(5000), naive(5000));
    }

    #[test]
    fn u64_boundary() {
        // fib(93) is the largest Fibonacci number that fits in a u64.
        assert!(fibonacci(93) <= BigUint::from(u64::MAX));
        assert!(fibonacci(94) > BigUint::from(u64::MAX));
    }

    #[test]
    fn the_fibonacci_handler_answers_and_refuses() {
        let handler = fibonacci_handler(1000);
        let properties = crate::driver::AmqpProperties::default();
        let call = |body: &[u8]| handler.handle(&Request::new(body, &properties, false));
        assert_eq!(call(b"10").unwrap().body(), b"55");
        assert!(call(b"1001").unwrap_err().message().contains("1000"));
        assert!(call(b"-1").is_err());
    }

    #[test]
    fn the_work_done_grows_to_all_of_it_and_a_stop_stops_it() {
        let mut seen = Vec::new();
        let value = fibonacci_stepwise(1_000_000, |done| {
            seen.push(done);
            ControlFlow::Continue(())
        });
        assert_eq!(value, Some(fibonacci(1_000_000)));
        assert_eq!(seen.len(), 20, "one report per bit of n");
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
        assert!((seen[19] - 1.0).abs() < 1e-12);
        assert!(seen[9] < 0.001, "the early doublings are cheap: {seen:?}");
        let mut steps = 0;
        let stopped = fibonacci_stepwise(1_000_000, |_| {
            steps += 1;
            match steps {
                3 => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        });
        assert_eq!((stopped, steps), (None, 3));
    }

    const MAX: u64 = 100_000;

    #[test]
    fn accepts_plain_decimals() {
        assert_eq!(parse_bounded_u64(b"0", MAX), Ok(0));
        assert_eq!(parse_bounded_u64(b"30", MAX), Ok(30));
        assert_eq!(parse_bounded_u64(b"007", MAX), Ok(7));
        assert_eq!(parse_bounded_u64(b"100000", MAX), Ok(100_000));
    }

    #[test]
    fn rejects_every_malformed_form() {
        let malformed: &[&[u8]] = &[
            b"",
            b" ",
            b" 5",
            b"5 ",
            b"5\n",
            b"+5",
            b"-1",
            b"1e3",
            b"0x10",
            b"1.5",
            b"1_000",
            b"abc",
            b"\xff\xfe",
            b"\xd9\xa3", // ARABIC-INDIC DIGIT THREE: a digit, but not ASCII
        ];
        for body in malformed {
            let error = parse_bounded_u64(body, MAX).expect_err(&format!("{body:?} accepted"));
            assert!(!error.message().is_empty());
        }
    }

    #[test]
    fn rejects_values_above_the_maximum_with_the_maximum_in_the_message() {
        let error = parse_bounded_u64(b"100001", MAX).unwrap_err();
        assert!(error.message().contains("100000"), "{error}");
        let huge = parse_bounded_u64(b"1000000000000000000000000000000", MAX).unwrap_err();
        assert!(huge.message().contains("too large"), "{huge}");
        let over_u64 = parse_bounded_u64(b"18446744073709551616", u64::MAX).unwrap_err();
        assert!(over_u64.message().contains("too large"), "{over_u64}");
    }

    #[test]
    fn parses_big_reply_bodies_strictly() {
        assert_eq!(
            parse_biguint(b"354224848179261915075").unwrap().to_string(),
            "354224848179261915075"
        );
        assert!(parse_biguint(b"").is_err());
        assert!(parse_biguint(b"12 ").is_err());
        assert!(parse_biguint(b"oops").is_err());
    }
}
