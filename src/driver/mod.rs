//! Everything that opens, guards and bounds a connection to the broker; nothing above it is
//! known here.

pub(crate) mod amqp;
pub(crate) mod endpoint;
pub(crate) mod frames;
pub(crate) mod guard;
pub(crate) mod handshake;
pub(crate) mod keeper;
pub(crate) mod queue;
pub(crate) mod tls;
pub(crate) mod watchdog;
