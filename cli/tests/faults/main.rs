//! Faults injected for real into the tools' processes: killed servers, hostile messages, network
//! cuts through a loopback proxy, and the limits of a production broker (a private node).

mod chaos;
mod chaos_messages;
mod chaos_network;
mod production;
