//! The bundled services, examples of the generic layer: Fibonacci (RabbitMQ tutorial 6) and
//! Addition (the callback-queue case study). Each is a handler for [`RpcServer`](crate::RpcServer)
//! and, for Fibonacci, a typed client; a service of your own is written the same way
//! (`examples/custom_service.rs`, `examples/json_service.rs`).
//!
//! Needs the `fibonacci` feature (on by default), which brings in `num-bigint`.

mod addition;
mod fibonacci;

pub use addition::{addition_handler, parse_bigint, DEFAULT_MAX_DIGITS};
pub use fibonacci::{
    fibonacci, fibonacci_handler, parse_biguint, parse_bounded_u64, FibonacciRpcClient,
    DEFAULT_MAX_N,
};
/// The big integers of these services' signatures, so that using them needs no `num-bigint`
/// of your own.
pub use num_bigint::{BigInt, BigUint};
