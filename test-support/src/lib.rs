//! Shared test support: the real broker, unique queue names that clean up after themselves,
//! in-process and out-of-process servers, and a raw AMQP peer for sending arbitrary requests.
//! A crate of its own (never published) that the library's and the tools' test binaries share;
//! the everyday helpers are at its top.
mod broker;
mod clients;
pub mod logs;
pub mod nodes;
mod peer;
pub mod processes;
pub mod proxy;
mod queues;
mod rng;
mod servers;
mod waiting;
pub mod wire;

pub use broker::*;
pub use clients::*;
pub use peer::*;
pub use queues::*;
pub use rng::*;
pub use servers::*;
pub use waiting::*;
