//! In-process servers: a Fibonacci one, and an echo server whose handler a test holds.

use crate::broker::amqp_url;
use fib_rpc::services::fibonacci_handler;
use fib_rpc::{HandlerError, RpcServer, ServerConfig, ServerHandle};
use std::sync::Mutex;

pub fn server_config(queue: &str, workers: usize) -> ServerConfig {
    server_config_at(&amqp_url(), queue, workers)
}

/// Server settings for the broker at `url` (a private node's, say).
pub fn server_config_at(url: &str, queue: &str, workers: usize) -> ServerConfig {
    let mut config = ServerConfig::new(url, queue);
    config = config.workers(workers);
    config
}

/// An in-process Fibonacci server on `queue`, consuming when this returns.
pub fn start_fib_server(queue: &str, workers: usize) -> ServerHandle {
    RpcServer::new(
        server_config(queue, workers),
        fibonacci_handler(fib_rpc::services::DEFAULT_MAX_N),
    )
    .start()
    .expect("start the server")
}

/// Holds an echo server's `slow` requests in its handler until the test lets them go.
pub struct Gate {
    /// Receives one message each time a `slow` request reaches the handler.
    pub started: crossbeam_channel::Receiver<()>,
    release: Mutex<Option<crossbeam_channel::Sender<()>>>,
}

impl Gate {
    /// Lets every held request, and every later one, through.
    pub fn release(&self) {
        self.release.lock().unwrap().take();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
    }
}

/// An in-process echo server on `queue` whose handler holds a request whose body is `slow`
/// until the gate is released (answering others at once), so a test decides when it finishes.
pub fn start_gated_echo_server(queue: &str, workers: usize) -> (ServerHandle, Gate) {
    start_gated_echo_server_at(&amqp_url(), queue, workers)
}

/// [`start_gated_echo_server`] on the broker at `url`.
pub fn start_gated_echo_server_at(url: &str, queue: &str, workers: usize) -> (ServerHandle, Gate) {
    let (started_sender, started) = crossbeam_channel::unbounded();
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let server = RpcServer::new(
        server_config_at(url, queue, workers),
        move |body: &[u8]| {
            if body == b"slow" {
                let _ = started_sender.send(());
                // Returns when the gate's sender is dropped.
                let _ = released.recv();
            }
            Ok::<_, HandlerError>(body.to_vec())
        },
    )
    .start()
    .expect("start the echo server");
    let gate = Gate {
        started,
        release: Mutex::new(Some(release)),
    };
    (server, gate)
}
