//! Opening AMQP connections: the first endpoint that answers, on a socket of our own handed
//! to amiquip.
//!
//! We open the socket ourselves because amiquip never sets `TCP_NODELAY` (with Nagle's
//! algorithm on, every small publish waits for the peer's delayed ACK, ~40 ms), because every
//! byte amiquip parses must first pass our [`guard`](crate::driver::guard), and because a clone of the
//! socket lets the [`watchdog`](crate::driver::watchdog) end a connection whose broker stopped answering.

use crate::config::ConnectionConfig;
use crate::deadline;
use crate::driver::endpoint::{self, Endpoint};
use crate::driver::guard::{GuardedStream, Transport};
use crate::driver::handshake::Witness;
use crate::driver::tls;
use crate::driver::watchdog::{Bounded, Cutter};
use crate::error::{Error, Result, ACCESS_REFUSED};
use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An open connection, and the means to cut it from any thread.
pub(crate) struct Link {
    pub connection: Connection,
    pub cutter: Arc<Cutter>,
    pub heartbeat: Duration,
    /// Which of the configured endpoints this is, and its `host:port`.
    pub endpoint: usize,
    pub address: String,
}

/// Opens a connection to the first endpoint that answers, trying them in the order given,
/// starting at endpoint `first` (the one after a node that was lost, say) and going round once.
/// It is labelled `config.connection_name`, else `default_name`, in the broker's list of
/// connections. Each endpoint gets at most the connect timeout, and nothing goes past
/// `deadline`.
pub(crate) fn open(
    config: &ConnectionConfig,
    default_name: &str,
    deadline: Option<Instant>,
    first: usize,
) -> Result<Link> {
    let name = config.name_or(default_name);
    let endpoints = endpoint::parse_all(config)?;
    let count = endpoints.len();
    let mut failures = Vec::new();
    for index in (0..count).map(|offset| (first + offset) % count) {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        match open_one(&endpoints[index], name, deadline) {
            Ok((connection, cutter)) => {
                let address = endpoints[index].address();
                if count > 1 {
                    log::info!(
                        "{name}: connected to {address} (endpoint {} of {count})",
                        index + 1
                    );
                }
                return Ok(Link {
                    connection,
                    cutter,
                    heartbeat: endpoints[index].heartbeat,
                    endpoint: index,
                    address,
                });
            }
            Err(error) if count == 1 => return Err(error),
            Err(error) => {
                log::warn!("{name}: {error}; trying the next endpoint");
                failures.push(error);
            }
        }
    }
    let addresses: Vec<_> = endpoints.iter().map(Endpoint::address).collect();
    let reasons: Vec<_> = failures.iter().map(ToString::to_string).collect();
    let reason = match reasons.is_empty() {
        true => "no time was left to try them".to_owned(),
        false => format!("every endpoint failed: {}", reasons.join("; ")),
    };
    Err(Error::connect(
        addresses.join(", "),
        reason,
        failures.pop().map(|e| Box::new(e) as _),
    ))
}

fn open_one(
    endpoint: &Endpoint,
    name: &str,
    deadline: Option<Instant>,
) -> Result<(Connection, Arc<Cutter>)> {
    let address = endpoint.address();
    let io_error = |error: std::io::Error| {
        Error::connect(address.clone(), error.to_string(), Some(Box::new(error)))
    };
    let started = Instant::now();
    let give_up = deadline.map_or(
        deadline::after(started, endpoint.connect_timeout),
        |deadline| deadline.min(deadline::after(started, endpoint.connect_timeout)),
    );
    let socket = tcp_connect(endpoint, give_up).map_err(io_error)?;
    let cutter = Arc::new(Cutter::new(socket.try_clone().map_err(io_error)?));
    let transport = match &endpoint.tls {
        None => Transport::Plain(mio::net::TcpStream::from_stream(socket).map_err(io_error)?),
        Some(options) => {
            let tls = tls::handshake(socket, &endpoint.host, options, give_up)
                .map_err(|reason| Error::connect(address.clone(), reason, None))?;
            Transport::Tls(Box::new(tls))
        }
    };
    let witness = Arc::new(Witness::default());
    let heartbeat = u16::try_from(endpoint.heartbeat.as_secs()).unwrap_or(u16::MAX);
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: endpoint.username.clone(),
            password: endpoint.password.clone(),
        })
        .virtual_host(endpoint.vhost.clone())
        .heartbeat(heartbeat)
        .connection_timeout(Some(give_up.saturating_duration_since(Instant::now())))
        .information(Some(name.to_owned()));
    let Bounded { outcome, cut } = cutter.bounded(give_up, || {
        Connection::insecure_open_stream(
            GuardedStream::new(transport, Arc::clone(&witness)),
            options,
            ConnectionTuning::default(),
        )
    });
    let connection = match outcome {
        Ok(connection) => connection,
        Err(_) if cut => {
            let reason = format!(
                "no answer to the AMQP handshake within {:?}",
                give_up - started
            );
            return Err(Error::connect(address, reason, None));
        }
        Err(error) => {
            // A TLS record (alert or handshake) where the AMQP handshake should be.
            let answered_tls = matches!(witness.first_byte(), 0x15 | 0x16);
            let refusal = witness.refusal();
            let reason = match (&error, &refusal) {
                (_, Some((ACCESS_REFUSED, text))) => format!(
                    "the broker refused the credentials of user {:?} ({text})",
                    endpoint.username
                ),
                (_, Some((code, text))) => {
                    format!("the broker closed the connection: {code} {text}")
                }
                (amiquip::Error::InvalidCredentials, None) => format!(
                    "the broker refused the credentials of user {:?} (ACCESS_REFUSED)",
                    endpoint.username
                ),
                _ if endpoint.tls.is_none() && answered_tls => {
                    format!("the broker answered in TLS: use an amqps:// URL for {address}")
                }
                // With TLS 1.3 a broker checks the client's certificate after the handshake,
                // and hangs up on the first bytes of AMQP.
                (
                    amiquip::Error::UnexpectedSocketClose
                    | amiquip::Error::IoErrorReadingSocket { .. }
                    | amiquip::Error::IoErrorWritingSocket { .. },
                    None,
                ) if endpoint.tls.is_some() => {
                    "the broker closed the TLS connection right after the handshake: it requires \
                     a client certificate (certfile, keyfile), or refused the one given"
                        .to_owned()
                }
                (other, None) => other.to_string(),
            };
            let code = match (&error, refusal) {
                (_, Some((code, _))) => Some(code),
                (amiquip::Error::InvalidCredentials, None) => Some(ACCESS_REFUSED),
                _ => None,
            };
            return Err(Error::Connect {
                address,
                reason,
                code,
                source: Some(Box::new(error)),
            });
        }
    };
    log::debug!("{name}: connected to {address} vhost {:?}", endpoint.vhost);
    Ok((connection, cutter))
}

/// What ended a connection, in words that say what happened.
pub(crate) fn loss_reason(error: &amiquip::Error, heartbeat: Duration) -> String {
    match error {
        amiquip::Error::MissedServerHeartbeats => format!(
            "missed heartbeats from the broker (interval {heartbeat:?}): the network or the \
             broker stopped answering"
        ),
        other => other.to_string(),
    }
}

fn tcp_connect(endpoint: &Endpoint, give_up: Instant) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for addr in (endpoint.host.as_str(), endpoint.port).to_socket_addrs()? {
        let remaining = give_up.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, remaining) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host name resolved to no address, or no time was left to connect",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_the_address_but_not_the_password() {
        // Port 1 on loopback: nothing listens there, so the connect is refused at once.
        let config = ConnectionConfig::new("amqp://user:secret@127.0.0.1:1/%2f");
        let error = open(&config, "test", None, 0).err().unwrap();
        assert!(error.is_connection(), "{error}");
        let text = error.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn when_every_endpoint_fails_the_error_names_them_all() {
        // Ports 1 and 2 on loopback: nothing listens, so each connect is refused at once.
        let none_up = ConnectionConfig::new(
            "amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f",
        );
        let error = open(&none_up, "test", None, 1).err().unwrap();
        let text = error.to_string();
        assert!(
            text.contains("127.0.0.1:2") && text.contains("127.0.0.1:1"),
            "{text}"
        );
    }
}
