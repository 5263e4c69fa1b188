//! Everything that opens, guards and bounds a connection to the broker; nothing above it is
//! known here.

pub(crate) mod amqp;
mod closed;
pub(crate) mod endpoint;
mod failure;
pub(crate) mod frames;
pub(crate) mod guard;
pub(crate) mod handshake;
pub(crate) mod keeper;
pub(crate) mod queue;
pub(crate) mod tls;
pub(crate) mod watchdog;

// The driver's own types that the layers above handle, named once here: nothing above the
// driver names amiquip.
pub(crate) use amiquip::Error as DriverError;
pub(crate) use amiquip::{
    AmqpProperties, AmqpValue, Channel, Confirm, Connection, ConnectionBlockedNotification,
    Consumer, ConsumerMessage, ConsumerOptions, Delivery, FieldTable, Publish, Return,
};
