//! The Addition service of the callback-queue case study: `x,y` in, the exact sum out.

use crate::protocol::quote;
use crate::{Error, HandlerError, Result};
use num_bigint::BigInt;

/// The most digits an Addition operand may have by default.
pub const DEFAULT_MAX_DIGITS: usize = 100_000;

/// The Addition service: body = `x,y`, two decimal integers (an optional `-`, then ASCII
/// digits, no spaces), reply = x + y, exact; each operand at most `max_digits` digits.
pub fn addition_handler(
    max_digits: usize,
) -> impl Fn(&[u8]) -> std::result::Result<Vec<u8>, HandlerError> {
    move |body| {
        let malformed = || {
            HandlerError::new(format!(
                "invalid request {}: expected two decimal integers as x,y",
                quote(body)
            ))
        };
        let mut operands = body.split(|byte| *byte == b',');
        let (Some(x), Some(y), None) = (operands.next(), operands.next(), operands.next()) else {
            return Err(malformed());
        };
        let parse = |operand: &[u8]| -> std::result::Result<BigInt, HandlerError> {
            let digits = operand.strip_prefix(b"-").unwrap_or(operand);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(malformed());
            }
            if digits.len() > max_digits {
                return Err(HandlerError::new(format!(
                    "an operand has {} digits: the maximum is {max_digits}",
                    digits.len()
                )));
            }
            BigInt::parse_bytes(operand, 10).ok_or_else(malformed)
        };
        let sum = parse(x)? + parse(y)?;
        Ok(sum.to_string().into_bytes())
    }
}

/// Parses an Addition reply body: a decimal integer, with an optional `-`. An empty or
/// non-decimal body (a foreign server's) is [`Error::Protocol`].
pub fn parse_bigint(body: &[u8]) -> Result<BigInt> {
    let digits = body.strip_prefix(b"-").unwrap_or(body);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Error::Protocol(format!(
            "expected a decimal integer, got {}",
            quote(body)
        )));
    }
    BigInt::parse_bytes(body, 10)
        .ok_or_else(|| Error::Protocol(format!("unparsable integer {}", quote(body))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_signed_decimal_integers_and_nothing_else() {
        assert_eq!(parse_bigint(b"-12").unwrap(), BigInt::from(-12));
        assert_eq!(parse_bigint(b"8").unwrap(), BigInt::from(8));
        for malformed in [&b""[..], b"-", b"abc", b"1.5", b" 3", b"--1"] {
            assert!(parse_bigint(malformed).unwrap_err().is_protocol());
        }
    }

    #[test]
    fn addition_is_exact_for_big_and_negative_operands() {
        let add = addition_handler(DEFAULT_MAX_DIGITS);
        assert_eq!(add(b"3,5").unwrap(), b"8");
        assert_eq!(add(b"-3,5").unwrap(), b"2");
        assert_eq!(add(b"-3,-5").unwrap(), b"-8");
        assert_eq!(add(b"0,0").unwrap(), b"0");
        assert_eq!(
            add(b"99999999999999999999999999,1").unwrap(),
            b"100000000000000000000000000"
        );
    }

    #[test]
    fn addition_refuses_every_malformed_form() {
        let add = addition_handler(10);
        for body in [
            &b""[..],
            b"3",
            b"3,",
            b",5",
            b"3,5,7",
            b"3 ,5",
            b" 3,5",
            b"+3,5",
            b"--3,5",
            b"-,5",
            b"3;5",
            b"1e3,5",
            b"\xff,5",
        ] {
            let error = add(body).expect_err(&format!("{body:?} accepted"));
            assert!(error.message().contains("x,y"), "{error}");
        }
        let too_long = add(b"12345678901,1").unwrap_err();
        assert!(too_long.message().contains("maximum is 10"), "{too_long}");
    }
}
