//! The test tools themselves, so that the tests relying on them can trust what they do: the
//! fault-injecting proxy (against a local echo server) and the raw AMQP peer (against the
//! shared broker).

mod proxy;
mod wire;
