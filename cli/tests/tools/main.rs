//! The tools as a script runs them, against the shared broker: fib-client's arguments, output
//! and exit codes, fib-server's operations, pipelines, and the bundled services.

mod bench;
mod cli;
mod long_calls;
mod operations;
mod options;
mod pipeline;
mod services;
