//! Dependable blocking RPC over RabbitMQ.
//!
//! `fib-rpc` speaks the request/reply protocol of RabbitMQ tutorial 6, so any tutorial client or
//! server, in any language, interoperates with it; and it answers the questions the tutorial
//! leaves open: what if no server runs (a fast [`Error::NoServer`]), how long to wait (every call
//! has a timeout, and the request expires with it), what if the server fails or the input is bad
//! (an error reply, [`Error::Remote`]), what if the connection is lost (calls fail promptly with
//! [`Error::ConnectionLost`]; clients and servers reconnect).
//!
//! ```no_run
//! use fib_rpc::FibonacciRpcClient;
//!
//! # fn main() -> fib_rpc::Result<()> {
//! let client = FibonacciRpcClient::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! println!("fib(30) = {}", client.call(30)?);
//! client.close()
//! # }
//! ```
//!
//! A server for your own service is a handler and a queue name:
//!
//! ```no_run
//! use fib_rpc::{HandlerError, RpcServer, ServerConfig};
//!
//! # fn main() -> fib_rpc::Result<()> {
//! let config = ServerConfig::new(fib_rpc::DEFAULT_URL, "shout_queue");
//! let server = RpcServer::new(config, |body: &[u8]| {
//!     let text = std::str::from_utf8(body).map_err(|_| HandlerError::new("expected UTF-8"))?;
//!     Ok(text.to_uppercase().into_bytes())
//! })
//! .start()?;
//! server.wait()?;
//! # Ok(())
//! # }
//! ```
//!
//! A handler that needs more than the body (the correlation id, headers, the caller's deadline,
//! whether the request was delivered before) takes the whole [`Request`] through
//! [`handler::with_request`].
//!
//! # Design
//!
//! * Wire protocol ([`protocol`]): request to the default exchange with routing key = request
//!   queue, `reply_to` and `correlation_id` set, body = n in ASCII decimal; the reply goes to
//!   `reply_to` with the same `correlation_id`, body = the result in ASCII decimal. An error reply
//!   also sets the AMQP `type` property to `error`, with a readable message as body.
//! * Client: one connection, and exclusive server-named callback queues consumed without acks:
//!   one while one thread calls, one per calling thread up to eight when several do (so that a
//!   thread reads its own replies).
//!   Requests are published `mandatory` (an unroutable request comes back at once as
//!   [`Error::NoServer`]) with `expiration` = the call's timeout (a request nobody took in time is
//!   dropped by the broker rather than computed for a caller who has gone). A [`Call`] may add
//!   an exchange, a priority, headers and a W3C trace context; nothing is sent that a call did
//!   not ask for. Inside a handler, a call inherits the served request's deadline and trace.
//! * Server: the request queue is declared durable, `x-queue-type: quorum` by default, as the
//!   official tutorials do; a queue that already exists with other arguments is used as it is.
//!   A pool of worker threads, each with its own channel and prefetch; a request is acked only
//!   after its reply is published. A worker whose channel the broker closes (its consumer
//!   timeout, a reply over its `max_message_size`) gets a new channel on the same connection;
//!   the requeued copy of a request the server computes or just answered is acked, not computed
//!   again. A connection the broker blocks (a resource alarm) is reported in
//!   [`ServerStats::blocked`].
//! * Long calls: a handler may report progress to a caller that asked for it, and sees when
//!   its caller gave up ([`Request::is_cancelled`]): a caller's timeout, cancel or drop
//!   publishes a cancel that every server of the queue hears (README, "Long calls").
//! * Result pipelines ([`RpcClient::submit`], [`ResultConsumer`]): the same protocol with
//!   `reply_to` naming a durable result queue; persistent, publisher-confirmed requests whose
//!   results outlive the sender.
//! * Endpoints: one broker URL or several (a cluster's nodes), `amqp://` or `amqps://` (TLS by
//!   rustls, see [`TlsOptions`]), tried in the order given; after a lost node the next
//!   connection tries the node after it first.
//! * Every connection sets `TCP_NODELAY` and a 10 s heartbeat. The socket is ours: amiquip
//!   reads only what a guard of ours lets through (content headers it could not parse safely
//!   are rewritten first, see [`protocol::REJECTED_HEADER`]; the handshake announces
//!   `authentication_failure_close`, which amiquip leaves out, so refused credentials are told
//!   at once), and a watchdog shuts it down
//!   when a driver call outlives its deadline, so every call keeps its timeout during a silent
//!   network cut.
//! * Tracing (feature `tracing`, off by default): each call is a
//!   [`tracing`](https://docs.rs/tracing) span `rpc call`, each delivery a span `rpc serve`,
//!   with OpenTelemetry's messaging attributes (`messaging.system`,
//!   `messaging.destination.name`, `messaging.message.conversation_id` = the correlation id,
//!   `otel.kind`), the ids of the call's [`TraceContext`] and, on failure, `error.type`.
//!   Without it the library depends on `log` alone.
//!
//! Source layout, each layer importing only from those listed before it:
//!
//! * `error`, `config/` (the `connection`, `client` and `server` settings; the driver checks
//!   the URLs), `deadline` (timeout arithmetic), `retry` ([`RetryPolicy`]), `context` (the
//!   deadline and [`TraceContext`] a worker thread's calls inherit), `util`, `spans` (feature
//!   `tracing`).
//! * `driver/`: everything that opens and guards a connection. `amqp` opens one on a socket of
//!   our own; `endpoint` parses broker URLs; `tls`; `guard` is the stream amiquip reads, with
//!   `frames` (content headers made safe), `closed` (what the broker still sends on a channel
//!   it closed) and `handshake`; `watchdog` bounds driver calls
//!   (`Cutter::bounded`, `Cutter::close_within`); `keeper` owns a consuming channel; `queue`
//!   opens channels and declares queues; `failure` reads the driver's errors. The layers above
//!   name amiquip's types through `driver`.
//! * [`protocol`]: the one wire module (properties, header names, reply codes, the deadline
//!   header's reader); `message` (application headers and [`Response`]).
//! * [`handler`]; `client/`: [`RpcClient`] (`mod.rs`), `call` ([`Call`], a call's options and
//!   retries), `pending_reply` ([`PendingReply`]: waiting, progress, cancels), `session` (one
//!   connection's state),
//!   `pending` (who waits for which reply), `router` (replies and returns to their calls),
//!   `presence` (whether a request queue exists and is served), `submit` (publisher
//!   confirms), `results` ([`ResultConsumer`]); `server/`: the handles (`mod.rs`),
//!   `supervisor` (connects, watches, reconnects), `worker` (a request admitted, computed,
//!   answered), `admission` (which requests are computed at all), `lane` (a worker's channel
//!   and consumer), `progress` (paced progress reports), `reply`, `outbox` (replies kept
//!   across a lost connection), `shared` (what the workers share), `expiry` (whose clock a
//!   deadline is on), `recent` (redelivered copies), `cancels` (callers who gave up), `stats`.
//!   Neither imports the other (`tests/library/layers.rs` checks that and the other layers).
//! * `admin` ([`QueueAdmin`]), `json`, `services`.
//!
//! # Threading
//!
//! [`RpcClient`] and [`FibonacciRpcClient`] are `Send + Sync`: share one behind an `Arc` and
//! call from any number of threads; each call blocks only its own thread. A client has no
//! thread in the request path: whichever caller is waiting reads the replies and hands each to
//! its caller, so a lone caller gets its reply with no thread hop; each of up to eight live
//! calling threads gets a callback queue and a request channel of its own, so that it too reads
//! its own replies rather than waking another thread for each, and never waits for another's
//! publish (a ninth shares; a thread that ends gives its queue to the next). A caller with a
//! queue to itself waits on that queue alone, which wakes it with one futex call instead of
//! several, and looks every 20 ms for what may come another way (a request the broker returned,
//! a closed request channel). With direct reply-to, requests go out through the thread that
//! owns the consuming channel (amiquip's channels are not `Sync` and its consumers borrow
//! them), one hop per call. Each connection has amiquip's I/O thread and one thread of ours
//! that owns the reply consumer and, while no caller waits, reads and drops stray replies every
//! 50 ms. One process-wide watchdog thread enforces deadlines. A server runs a supervisor
//! thread and `workers` worker threads; a worker waits on its consumer alone and notices a stop
//! within 50 ms.
//!
//! # Limitations
//!
//! * A driver call that outlives its deadline costs the whole connection: the watchdog cannot
//!   cancel one call, only shut the socket down. Calls in flight on it fail with
//!   [`Error::ConnectionLost`] and the next call reconnects.
//! * Heartbeats cannot be turned off (at least 1 s): they are what ends an idle connection whose
//!   network went silent.
//! * At-least-once delivery: a server that dies after replying but before acking will have the
//!   request computed again by another server; the client discards the second reply, but the
//!   handler should be idempotent.
//! * The server's deadline check trusts the caller's wall clock only as far as the broker's
//!   relative `expiration` confirms it: a skew it detects is logged once and never makes it skip
//!   a request whose caller waits; a skew under a second is not told apart from travel time,
//!   and may cost a request its last second.
//! * After the broker's consumer timeout requeued a request whose handler still runs, the
//!   copy is acked unanswered and the reply goes out on a new channel (or, if the connection
//!   is lost first, on the next connection); a server process that dies before answering then
//!   loses that request. A redelivery after a connection loss is computed again, unless its
//!   reply was kept for the new connection.
//! * With [`ReplyMode::DirectReplyTo`] requests must go out on the consuming channel, which the
//!   consumer thread owns: each request takes one hop to that thread.
//! * A request whose headers nest more than 64 tables or arrays deep is refused with an error
//!   reply (the driver's parser would overflow its thread's stack on thousands of levels).
//! * With TLS 1.3 a broker checks a client certificate after the handshake and hangs up; the
//!   error then says that a client certificate may be missing or refused, as it cannot tell.
//! * The library logs through `log` and installs no logger.

mod admin;
mod client;
mod config;
mod context;
mod deadline;
mod driver;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
#[cfg(feature = "json")]
pub mod json;
mod message;
pub mod protocol;
mod retry;
mod server;
#[cfg(feature = "fibonacci")]
pub mod services;
#[cfg(feature = "tracing")]
mod spans;
mod util;

pub use admin::{QueueAdmin, QueueStatus};
pub use client::results::{ResultConsumer, ResultMessage};
pub use client::{Call, PendingReply, RpcClient};
pub use config::{
    ClientConfig, ConnectionConfig, QueueType, ReplyMode, ServerConfig, TlsOptions,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_QUEUE, DEFAULT_URL,
};
pub use context::TraceContext;
pub use error::{Error, ErrorKind, HandlerError, Result, Stage};
pub use handler::{Handler, Request};
pub use message::{HeaderValue, Progress, Response};
pub use retry::RetryPolicy;
pub use server::stats::{Durations, ServerStats};
pub use server::{RpcServer, ServerHandle, ServerMonitor, ShutdownTrigger};
#[cfg(feature = "fibonacci")]
pub use services::FibonacciRpcClient;

/// The README's Rust example is compiled as a doc test, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
