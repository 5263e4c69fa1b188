//! Opening AMQP connections: URL parsing, and a socket of our own handed to amiquip.
//!
//! We open the socket ourselves because amiquip never sets `TCP_NODELAY` (with Nagle's
//! algorithm on, every small publish waits for the peer's delayed ACK, ~40 ms), because every
//! byte amiquip parses must first pass our [`guard`](crate::guard), and because a clone of the
//! socket lets the [`watchdog`](crate::watchdog) end a connection whose broker stopped answering.

use crate::config::ConnectionConfig;
use crate::deadline;
use crate::error::{Error, Result};
use crate::guard::GuardedStream;
use crate::watchdog::{Alarm, Cutter};
use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};
use percent_encoding::percent_decode_str;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

/// Where and how to connect, parsed from an `amqp://` URL. Holds the password, which its
/// `Debug` leaves out.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub vhost: String,
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address())
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `host:port`, safe to print.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub(crate) fn parse_url(config: &ConnectionConfig) -> Result<Endpoint> {
    let invalid = |why: String| Error::Config(format!("invalid AMQP URL: {why}"));
    let url = Url::parse(&config.url).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "amqp" => {}
        "amqps" => return Err(invalid("amqps (TLS) is not supported by this build".into())),
        other => return Err(invalid(format!("scheme {other:?}, expected amqp"))),
    }
    let decode = |text: &str| -> Result<String> {
        percent_decode_str(text)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| invalid("percent-encoding is not valid UTF-8".into()))
    };
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let username = match url.username() {
        "" => "guest".to_owned(),
        name => decode(name)?,
    };
    let password = match url.password() {
        Some(password) => decode(password)?,
        None => "guest".to_owned(),
    };
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    if path.contains('/') {
        return Err(invalid(
            "the vhost must be a single path segment (write / as %2f)".into(),
        ));
    }
    let vhost = match path {
        "" => "/".to_owned(),
        segment => decode(segment)?,
    };
    let mut endpoint = Endpoint {
        host,
        port: url.port().unwrap_or(5672),
        username,
        password,
        vhost,
        heartbeat: config.heartbeat,
        connect_timeout: config.connect_timeout,
    };
    for (key, value) in url.query_pairs() {
        let number = value
            .parse::<u64>()
            .map_err(|_| invalid(format!("{key}={value} is not a whole number")))?;
        match key.as_ref() {
            "heartbeat" => endpoint.heartbeat = Duration::from_secs(number),
            "connection_timeout" => endpoint.connect_timeout = Duration::from_millis(number),
            other => return Err(invalid(format!("unsupported query parameter {other:?}"))),
        }
    }
    if endpoint.heartbeat.is_zero() {
        // Without heartbeats a silent network cut would never end an idle connection: a server
        // would wait for requests forever on a socket that leads nowhere.
        return Err(Error::Config(
            "heartbeat 0 (off) is not supported: a silent network cut would go unnoticed; \
             use at least 1 second"
                .into(),
        ));
    }
    Ok(endpoint)
}

/// An open connection, and the means to cut it from any thread.
pub(crate) struct Link {
    pub connection: Connection,
    pub cutter: Arc<Cutter>,
    pub heartbeat: Duration,
}

/// Opens a connection, labelled `config.connection_name`, else `default_name`, in the broker's
/// list of connections. It takes at most the connect timeout, and never past `deadline`.
pub(crate) fn open(
    config: &ConnectionConfig,
    default_name: &str,
    deadline: Option<Instant>,
) -> Result<Link> {
    let name = config.connection_name.as_deref().unwrap_or(default_name);
    let endpoint = parse_url(config)?;
    let address = endpoint.address();
    let io_error = |error: std::io::Error| {
        Error::connect(address.clone(), error.to_string(), Some(Box::new(error)))
    };
    let started = Instant::now();
    let give_up = deadline.map_or(
        deadline::after(started, endpoint.connect_timeout),
        |deadline| deadline.min(deadline::after(started, endpoint.connect_timeout)),
    );
    let socket = tcp_connect(&endpoint, give_up).map_err(io_error)?;
    let cutter = Arc::new(Cutter::new(socket.try_clone().map_err(io_error)?));
    let stream = mio::net::TcpStream::from_stream(socket).map_err(io_error)?;
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
    let alarm = Alarm::arm(give_up, &cutter);
    let opened = Connection::insecure_open_stream(
        GuardedStream::new(stream),
        options,
        ConnectionTuning::default(),
    );
    let connection = match opened {
        Ok(connection) => connection,
        Err(_) if alarm.fired() => {
            let reason = format!(
                "no answer to the AMQP handshake within {:?}",
                give_up - started
            );
            return Err(Error::connect(address, reason, None));
        }
        Err(error) => {
            let reason = match &error {
                amiquip::Error::InvalidCredentials => format!(
                    "the broker refused the credentials of user {:?} (ACCESS_REFUSED)",
                    endpoint.username
                ),
                other => other.to_string(),
            };
            return Err(Error::connect(address, reason, Some(Box::new(error))));
        }
    };
    log::debug!("{name}: connected to {address} vhost {:?}", endpoint.vhost);
    Ok(Link {
        connection,
        cutter,
        heartbeat: endpoint.heartbeat,
    })
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

    fn parse(url: &str) -> Result<Endpoint> {
        parse_url(&ConnectionConfig::new(url))
    }

    #[test]
    fn parses_the_default_url() {
        let endpoint = parse(crate::DEFAULT_URL).unwrap();
        assert_eq!(endpoint.address(), "127.0.0.1:5672");
        assert_eq!(
            (endpoint.username.as_str(), endpoint.password.as_str()),
            ("guest", "guest")
        );
        assert_eq!(endpoint.vhost, "/");
        assert_eq!(endpoint.heartbeat, Duration::from_secs(10));
    }

    #[test]
    fn fills_in_defaults_and_decodes_percent_escapes() {
        let bare = parse("amqp://").unwrap();
        assert_eq!(bare.address(), "localhost:5672");
        assert_eq!(bare.vhost, "/");
        let full = parse("amqp://us%40er:p%3Ass@broker.example:5673/my%2fvhost?heartbeat=3&connection_timeout=250").unwrap();
        assert_eq!(full.username, "us@er");
        assert_eq!(full.password, "p:ss");
        assert_eq!(full.address(), "broker.example:5673");
        assert_eq!(full.vhost, "my/vhost");
        assert_eq!(full.heartbeat, Duration::from_secs(3));
        assert_eq!(full.connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        for url in [
            "http://localhost",
            "amqps://localhost",
            "amqp://localhost/a/b",
            "amqp://localhost/?frame_max=1",
            "amqp://localhost/?heartbeat=soon",
            "amqp://localhost/?heartbeat=0",
            "not a url",
        ] {
            let error = parse(url).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{url}: {error}");
        }
    }

    #[test]
    fn connect_errors_name_the_address_but_not_the_password() {
        // Port 1 on loopback: nothing listens there, so the connect is refused at once.
        let config = ConnectionConfig::new("amqp://user:secret@127.0.0.1:1/%2f");
        let error = open(&config, "test", None).err().unwrap();
        assert!(error.is_connection(), "{error}");
        let text = error.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
