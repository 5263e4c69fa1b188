//! The server: a pool of worker threads serving one request queue with a handler.

mod admission;
mod cancels;
mod expiry;
mod lane;
mod outbox;
mod progress;
mod recent;
mod reply;
mod shared;
pub(crate) mod stats;
mod supervisor;
mod worker;

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::util::lock;
use cancels::Cancels;
use crossbeam_channel::Sender;
use expiry::Clocks;
use outbox::Outbox;
use recent::Recent;
use shared::Shared;
use stats::{Counters, ServerStats};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use supervisor::Supervisor;

/// Serves one request queue with a handler on a pool of worker threads.
///
/// Each worker has its own channel with `prefetch` unacknowledged requests, and acks a request
/// only after its reply is published, so a server that dies mid-request leaves the request to
/// be redelivered to another. A handler that returns an error or panics produces an error reply;
/// no input stops a worker. If the connection is lost, the server reconnects with capped
/// exponential backoff and resumes consuming.
pub struct RpcServer {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// A server for `config.queue` that answers with `handler`: a closure over the request
    /// body, or any [`Handler`].
    pub fn new(config: ServerConfig, handler: impl Handler) -> RpcServer {
        RpcServer {
            config,
            handler: Arc::new(handler),
        }
    }

    /// Connects, declares the request queue and starts the workers; returns once every worker
    /// is consuming. Fails if the first connection cannot be made.
    pub fn start(self) -> Result<ServerHandle> {
        self.config.validate()?;
        let (stop_sender, stop) = crossbeam_channel::bounded::<()>(0);
        let (ready_sender, ready) = crossbeam_channel::bounded(1);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            recent: Recent::default(),
            limit: self.config.connection.max_message_size.into(),
            clocks: Clocks::default(),
            cancels: Cancels::default(),
            outbox: Outbox::default(),
        });
        let supervisor = Supervisor {
            config: self.config,
            handler: self.handler,
            stop,
            counters: Arc::clone(&counters),
            next_endpoint: Cell::new(0),
            shared,
            generation: Cell::new(0),
        };
        let running = Arc::new(AtomicBool::new(true));
        let still_running = Arc::clone(&running);
        let thread = std::thread::Builder::new()
            .name("fib-rpc-server".into())
            .spawn(move || {
                let ended = supervisor.run(ready_sender);
                still_running.store(false, Ordering::Relaxed);
                ended
            })
            .map_err(|e| Error::Internal(format!("cannot start the server thread: {e}")))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(ServerHandle {
                running,
                stopper: ShutdownTrigger(Arc::new(Mutex::new(Some(stop_sender)))),
                thread: Some(thread),
                counters,
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(thread
                .join()
                .map_err(|_| Error::Internal("the server thread panicked".into()))
                .and_then(|result| result)
                .err()
                .unwrap_or_else(|| Error::Internal("the server stopped while starting".into()))),
        }
    }
}

/// A running server. Dropping the handle stops the server as [`shutdown`](Self::shutdown)
/// does, ignoring errors.
pub struct ServerHandle {
    stopper: ShutdownTrigger,
    thread: Option<JoinHandle<Result<()>>>,
    counters: Arc<Counters>,
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// A view of this server's figures and liveness for another thread (a metrics or health
    /// endpoint, say), usable after the handle itself is waited on.
    pub fn monitor(&self) -> ServerMonitor {
        ServerMonitor {
            counters: Arc::clone(&self.counters),
            running: Arc::clone(&self.running),
        }
    }

    /// A trigger that can stop this server from another thread (a signal handler, say).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.stopper.clone()
    }

    /// What the server did with the requests it received so far.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// Stops taking requests, finishes and acks those in hand, closes the connection; returns
    /// the final counts.
    pub fn shutdown(self) -> Result<ServerStats> {
        self.stopper.trigger();
        self.wait()
    }

    /// Blocks until the server has been stopped through a [`ShutdownTrigger`]; returns the
    /// final counts.
    pub fn wait(mut self) -> Result<ServerStats> {
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| Error::Internal("the server thread panicked".into()))??;
        }
        Ok(self.counters.snapshot())
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stopper.trigger();
            let _ = thread.join();
        }
    }
}

/// What a running server did and is doing, readable from any thread; see
/// [`ServerHandle::monitor`].
#[derive(Clone)]
pub struct ServerMonitor {
    counters: Arc<Counters>,
    running: Arc<AtomicBool>,
}

impl ServerMonitor {
    /// The server's figures now.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// True while the server's supervisor runs its loop (false once it stopped, or died).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ServerMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMonitor")
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// Stops a server; cheap to clone, harmless to trigger twice.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(Arc<Mutex<Option<Sender<()>>>>);

impl ShutdownTrigger {
    /// Asks the server to stop: every worker sees the stop channel disconnect.
    pub fn trigger(&self) {
        lock(&self.0).take();
    }
}
