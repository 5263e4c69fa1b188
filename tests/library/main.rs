//! The library against the shared broker at 127.0.0.1:5672: calls, concurrency, interop with
//! the tutorial's peers, JSON, memory, tracing spans, what the library pulls in, and its layers.
//! One binary, so that it is linked once.

mod chaos_memory;
mod concurrency;
mod context;
mod defaults;
mod guarantees;
mod interop;
#[cfg(feature = "json")]
mod json;
mod layers;
mod lean;
mod long_calls;
mod rpc;
#[cfg(feature = "tracing")]
mod tracing_spans;
