//! Exact Fibonacci numbers by fast doubling.

use num_bigint::BigUint;
use num_traits::{One, Zero};

/// fib(n), exact, with fib(0) = 0 and fib(1) = 1.
///
/// Fast doubling takes O(log n) big-integer multiplications, so fib(100000) (20899 digits) costs
/// well under a millisecond, where the tutorials' recursion would never finish.
pub fn fibonacci(n: u64) -> BigUint {
    // Invariant: (a, b) = (fib(k), fib(k + 1)) for k = the bits of n read so far.
    let mut a = BigUint::zero();
    let mut b = BigUint::one();
    for bit in (0..u64::BITS - n.leading_zeros()).rev() {
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
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
