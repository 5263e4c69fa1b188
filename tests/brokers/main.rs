//! The library against private RabbitMQ nodes (scripts/nodes.sh): a broker that restarts, a
//! 3-node cluster that loses nodes, TLS listeners. A test that stops or restarts a node holds
//! `support::nodes::disrupting()`; every other test here holds `support::nodes::undisturbed()`.

mod broker_restart;
mod cluster;
mod tls;
