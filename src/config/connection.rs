//! How to reach the broker: URLs, timeouts, TLS, the broker's size limit.

use super::{DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_URL};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the broker; shared by clients and servers.
///
/// Start from [`ConnectionConfig::new`], [`str::parse`] (which checks the URL at once) or
/// [`Default`], then set what differs; every setter documents its default, and the settings
/// are checked together when they are used (a connection, [`ConnectionConfig::validate`]):
///
/// ```
/// use std::time::Duration;
///
/// let config: fib_rpc::ConnectionConfig = "amqp://app:secret@broker:5672/%2f".parse()?;
/// let config = config.connect_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_connect_timeout(), Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), fib_rpc::Error>(())
/// ```
///
/// Where the URL's query sets `heartbeat` (seconds) or `connection_timeout` (milliseconds), the
/// URL wins over the settings of the same meaning.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) tls: TlsOptions,
    pub(crate) max_message_size: usize,
    pub(crate) connection_name: Option<String>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            urls: vec![DEFAULT_URL.to_owned()],
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            tls: TlsOptions::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connection_name: None,
        }
    }
}

impl ConnectionConfig {
    /// Defaults, with the broker at this `amqp://user:password@host:port/vhost` URL, or these
    /// URLs separated by commas (checked when connecting; [`str::parse`] checks them at once).
    pub fn new(urls: impl AsRef<str>) -> Self {
        ConnectionConfig::with_urls(urls.as_ref().split(','))
    }

    /// Defaults, with these broker URLs (the nodes of a cluster). A connection goes to the
    /// first that answers, in the order given; after losing one, the next connection tries the
    /// one after it first. Give clients the nodes in different orders to spread them.
    pub fn with_urls<I>(urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        ConnectionConfig {
            urls: urls
                .into_iter()
                .map(|url| url.as_ref().trim().to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
            ..ConnectionConfig::default()
        }
    }

    /// AMQP heartbeat interval; default 10 s, so a silent network cut ends an idle connection
    /// within about 20 s (the AMQP driver's own default of 60 s would take two minutes). At
    /// least 1 s: zero, which would turn heartbeats off, is refused. Calls never rely on it: each keeps its
    /// own timeout whatever the network does.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Bound on the TCP connect and the AMQP handshake together; default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on closing a connection (the broker's close handshake, a consumer's cancel); past
    /// it the socket is shut down, as during a network cut, where the broker never answers.
    /// Default 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How `amqps://` endpoints are secured; default [`TlsOptions::default`]. The URL's query
    /// parameters win over it.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// The largest message body the broker takes, in bytes; default 16 MiB, RabbitMQ 4's
    /// `max_message_size` (3.x defaulted to 128 MiB). A request (or, in a server, a reply)
    /// larger than this fails at once with [`Error::TooLarge`](crate::Error::TooLarge) (an error reply for a server's
    /// reply) instead of making the broker close the channel. A broker whose limit is lower
    /// still refuses with its own reason, and the lower limit is used from then on. At least 1.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Shown by the broker as the connection's `information` client property (`rabbitmqctl
    /// list_connections client_properties`, the management UI); default: none, and the
    /// connection is labelled `fib-rpc client` or `fib-rpc server on <queue>`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// The broker URLs, in the order they are tried. Printed by `Debug` with passwords
    /// replaced by `***`.
    pub fn get_urls(&self) -> impl ExactSizeIterator<Item = &str> {
        self.urls.iter().map(String::as_str)
    }

    /// See [`ConnectionConfig::heartbeat`].
    pub fn get_heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// See [`ConnectionConfig::connect_timeout`].
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// See [`ConnectionConfig::close_timeout`].
    pub fn get_close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// See [`ConnectionConfig::tls`].
    pub fn get_tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// See [`ConnectionConfig::max_message_size`].
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// See [`ConnectionConfig::connection_name`].
    pub fn get_connection_name(&self) -> Option<&str> {
        self.connection_name.as_deref()
    }

    /// The name the connection goes by, in the broker's list and in the log: the configured
    /// one, else `default` (the kind of program, "fib-rpc client" say).
    pub(crate) fn name_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.connection_name.as_deref().unwrap_or(default)
    }
}

impl From<&str> for ConnectionConfig {
    /// [`ConnectionConfig::new`].
    fn from(urls: &str) -> Self {
        ConnectionConfig::new(urls)
    }
}

impl From<String> for ConnectionConfig {
    /// [`ConnectionConfig::new`].
    fn from(urls: String) -> Self {
        ConnectionConfig::new(urls)
    }
}

impl From<&String> for ConnectionConfig {
    /// [`ConnectionConfig::new`].
    fn from(urls: &String) -> Self {
        ConnectionConfig::new(urls)
    }
}

impl From<&ConnectionConfig> for ConnectionConfig {
    fn from(config: &ConnectionConfig) -> Self {
        config.clone()
    }
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|url| redacted(url))
                    .collect::<Vec<_>>(),
            )
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

/// TLS settings of `amqps://` endpoints, as RabbitMQ's URI spec names them in a URL's query:
/// `cacertfile`, `certfile`, `keyfile`, `server_name_indication`, `verify=verify_none`.
///
/// By default ([`TlsOptions::default`]) the broker's certificate is verified against the
/// system's CAs and the host name of the URL, and no client certificate is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) server_name: Option<String>,
    pub(crate) verify_peer: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            verify_peer: true,
        }
    }
}

impl TlsOptions {
    /// A PEM file of CAs trusted besides the system's (`cacertfile`); default none.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// A PEM client certificate chain and its private key, for brokers that require one
    /// (`certfile`, `keyfile`); default none. Only the key's path is ever shown.
    pub fn client_certificate(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// The name the broker's certificate must hold, and is asked for by SNI, if not the URL's
    /// host (`server_name_indication`); default: the URL's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Whether to verify the broker's certificate; default true. False
    /// (`verify=verify_none`) accepts any, and says so in the log: only for tests.
    pub fn verify_peer(mut self, verify: bool) -> Self {
        self.verify_peer = verify;
        self
    }

    /// See [`TlsOptions::ca_file`].
    pub fn get_ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate chain's path; see [`TlsOptions::client_certificate`].
    pub fn get_cert_file(&self) -> Option<&std::path::Path> {
        self.cert_file.as_deref()
    }

    /// The client key's path; see [`TlsOptions::client_certificate`].
    pub fn get_key_file(&self) -> Option<&std::path::Path> {
        self.key_file.as_deref()
    }

    /// See [`TlsOptions::server_name`].
    pub fn get_server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// See [`TlsOptions::verify_peer`].
    pub fn get_verify_peer(&self) -> bool {
        self.verify_peer
    }
}

/// `url` with the password, if any, replaced by `***`.
pub(crate) fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| scheme_end + at);
    let authority = &url[scheme_end..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        _ => url.to_owned(),
    }
}
