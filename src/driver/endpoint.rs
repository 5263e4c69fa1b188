//! Broker endpoints: `amqp://` URLs parsed into what a connection needs.

use crate::config::{redacted, ConnectionConfig, TlsOptions};
use crate::error::{Error, Result};
use percent_encoding::percent_decode_str;
use std::time::Duration;
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
    /// `Some` for `amqps://`.
    pub tls: Option<TlsOptions>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address())
            .field("username", &self.username)
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `host:port`, safe to print.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

// Here rather than in config.rs: checking a URL is the driver's job, and the settings need nothing
// of the driver.
// The connection settings are checked here, where URLs are parsed, so that the settings'
// module never reaches into the driver.
impl ConnectionConfig {
    /// Checks these settings together, as every connection does first: at least one URL, each
    /// one fib-rpc can use (with its query), a heartbeat of at least 1 s, a size limit of at
    /// least 1. Fails with an error of kind [`ErrorKind::Config`](crate::ErrorKind::Config).
    pub fn validate(&self) -> Result<()> {
        if self.max_message_size == 0 {
            return Err(Error::Config("max_message_size must be at least 1".into()));
        }
        parse_all(self).map(drop)
    }
}

impl std::str::FromStr for ConnectionConfig {
    type Err = Error;

    /// Defaults, with this URL (or several, separated by commas), which must be one fib-rpc
    /// can use.
    fn from_str(url: &str) -> Result<Self> {
        let config = ConnectionConfig::new(url);
        config.validate()?;
        Ok(config)
    }
}

/// Every endpoint of `config`, in the order given; at least one.
pub(crate) fn parse_all(config: &ConnectionConfig) -> Result<Vec<Endpoint>> {
    if config.urls.is_empty() {
        return Err(Error::Config("no broker URL given".into()));
    }
    config.urls.iter().map(|url| parse(url, config)).collect()
}

/// The TLS settings a query parameter changes; only `amqps://` URLs have them.
fn tls_only<'a>(
    tls: &'a mut Option<TlsOptions>,
    key: &str,
    url: &str,
) -> Result<&'a mut TlsOptions> {
    tls.as_mut().ok_or_else(|| {
        Error::Config(format!(
            "invalid AMQP URL {}: {key} applies to amqps:// URLs only",
            redacted(url)
        ))
    })
}

/// One `amqp://` URL, with `config`'s settings where the URL's query does not set them.
pub(crate) fn parse(text: &str, config: &ConnectionConfig) -> Result<Endpoint> {
    let invalid =
        |why: String| Error::Config(format!("invalid AMQP URL {}: {why}", redacted(text)));
    let url = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    let mut tls = match url.scheme() {
        "amqp" => None,
        "amqps" => Some(config.tls.clone()),
        other => return Err(invalid(format!("scheme {other:?}, expected amqp or amqps"))),
    };
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
        port: url
            .port()
            .unwrap_or(if tls.is_some() { 5671 } else { 5672 }),
        username,
        password,
        vhost,
        heartbeat: config.heartbeat,
        connect_timeout: config.connect_timeout,
        tls: None,
    };
    for (key, value) in url.query_pairs() {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| invalid(format!("{key}={value} is not a whole number")))
        };
        match key.as_ref() {
            "heartbeat" => endpoint.heartbeat = Duration::from_secs(number()?),
            "connection_timeout" => endpoint.connect_timeout = Duration::from_millis(number()?),
            "cacertfile" => tls_only(&mut tls, &key, text)?.ca_file = Some(value.as_ref().into()),
            "certfile" => tls_only(&mut tls, &key, text)?.cert_file = Some(value.as_ref().into()),
            "keyfile" => tls_only(&mut tls, &key, text)?.key_file = Some(value.as_ref().into()),
            "server_name_indication" => {
                tls_only(&mut tls, &key, text)?.server_name = Some(value.clone().into_owned())
            }
            "verify" => {
                tls_only(&mut tls, &key, text)?.verify_peer = match value.as_ref() {
                    "verify_peer" => true,
                    "verify_none" => false,
                    other => {
                        return Err(invalid(format!(
                            "verify={other}: expected verify_peer or verify_none"
                        )))
                    }
                }
            }
            other => return Err(invalid(format!("unsupported query parameter {other:?}"))),
        }
    }
    endpoint.tls = tls;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(url: &str) -> Result<Endpoint> {
        parse(url, &ConnectionConfig::default())
    }

    #[test]
    fn parses_the_default_url() {
        let endpoint = parse_one(crate::DEFAULT_URL).unwrap();
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
        let bare = parse_one("amqp://").unwrap();
        assert_eq!(bare.address(), "localhost:5672");
        assert_eq!(bare.vhost, "/");
        let full = parse_one("amqp://us%40er:p%3Ass@broker.example:5673/my%2fvhost?heartbeat=3&connection_timeout=250").unwrap();
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
            "amqp://localhost/a/b",
            "amqp://localhost/?frame_max=1",
            "amqp://localhost/?heartbeat=soon",
            "amqp://localhost/?heartbeat=0",
            "not a url",
        ] {
            let error = parse_one(url).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{url}: {error}");
        }
    }

    #[test]
    fn several_urls_are_endpoints_in_the_order_given() {
        let config = ConnectionConfig::new(
            "amqp://a:1@n1:5681/%2f, amqp://a:1@n2:5682/%2f,amqp://a:1@n3:5683/%2f?heartbeat=2",
        );
        let endpoints = parse_all(&config).unwrap();
        let addresses: Vec<_> = endpoints.iter().map(Endpoint::address).collect();
        assert_eq!(addresses, ["n1:5681", "n2:5682", "n3:5683"]);
        assert_eq!(endpoints[0].heartbeat, Duration::from_secs(10));
        assert_eq!(endpoints[2].heartbeat, Duration::from_secs(2));
        let error = parse_all(&ConnectionConfig::new("amqp://n1,http://n2")).unwrap_err();
        assert!(error.to_string().contains("http://n2"), "{error}");
    }

    #[test]
    fn amqps_urls_carry_their_tls_settings() {
        let plain = parse_one("amqp://h/").unwrap();
        assert!(plain.tls.is_none());
        let secure = parse_one(
            "amqps://h/?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&server_name_indication=broker.example",
        )
        .unwrap();
        assert_eq!(secure.port, 5671);
        let tls = secure.tls.unwrap();
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(
            tls.cert_file.as_deref(),
            Some(std::path::Path::new("/c.pem"))
        );
        assert_eq!(
            tls.key_file.as_deref(),
            Some(std::path::Path::new("/k.pem"))
        );
        assert_eq!(tls.server_name.as_deref(), Some("broker.example"));
        assert!(tls.verify_peer);
        assert!(
            !parse_one("amqps://h/?verify=verify_none")
                .unwrap()
                .tls
                .unwrap()
                .verify_peer
        );
        for refused in [
            "amqp://h/?cacertfile=/ca.pem",
            "amqps://h/?verify=sometimes",
        ] {
            assert!(parse_one(refused).unwrap_err().is_config(), "{refused}");
        }
    }
}
