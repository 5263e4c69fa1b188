//! TLS (`amqps://`): rustls over our own socket, beneath the guard, so that amiquip still
//! parses only bytes the guard has seen, and the socket keeps `TCP_NODELAY`, the connect timeout,
//! the heartbeat and the watchdog exactly as a plain connection does.

use crate::config::TlsOptions;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Runs the TLS handshake on `socket` (blocking, until `give_up`), then hands the connection
/// over non-blocking, ready for amiquip. The error says what failed, in one line.
pub(crate) fn handshake(
    socket: TcpStream,
    host: &str,
    options: &TlsOptions,
    give_up: Instant,
) -> Result<TlsTransport, String> {
    let config = client_config(options)?;
    let name_checked = options.server_name.as_deref().unwrap_or(host).to_owned();
    let server_name = ServerName::try_from(name_checked.clone())
        .map_err(|_| format!("{name_checked:?} is not a host name TLS can check"))?;
    let mut conn = ClientConnection::new(Arc::new(config), server_name)
        .map_err(|error| format!("cannot start TLS: {error}"))?;
    let mut socket = socket;
    while conn.is_handshaking() {
        let remaining = give_up.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err("no TLS handshake within the connect timeout".into());
        }
        let set = socket
            .set_read_timeout(Some(remaining))
            .and_then(|()| socket.set_write_timeout(Some(remaining)));
        set.map_err(|error| error.to_string())?;
        if let Err(error) = conn.complete_io(&mut socket) {
            return Err(describe(&error, &name_checked));
        }
    }
    let reset = socket
        .set_read_timeout(None)
        .and_then(|()| socket.set_write_timeout(None));
    reset.map_err(|error| error.to_string())?;
    let socket = mio::net::TcpStream::from_stream(socket).map_err(|error| error.to_string())?;
    Ok(TlsTransport {
        socket,
        conn,
        owed: 0,
    })
}

/// A handshake failure in words an operator can act on.
fn describe(error: &io::Error, name_checked: &str) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(certificate)) => match certificate {
            CertificateError::UnknownIssuer => {
                "the broker's certificate is signed by an unknown CA \
                 (give the CA with cacertfile)"
                    .into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the broker's certificate is not valid for {name_checked:?} (name mismatch; \
                     server_name_indication sets the name checked)"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the broker's certificate has expired".into()
            }
            other => format!("the broker's certificate was refused: {other:?}"),
        },
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the broker refused the TLS handshake ({alert:?}); a broker that requires a client \
             certificate refuses a client without one (certfile, keyfile)"
        ),
        Some(rustls::Error::InvalidMessage(_)) => {
            "the broker did not answer in TLS: is this a plain amqp:// port?".into()
        }
        Some(other) => format!("TLS failed: {other}"),
        None if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) =>
        {
            "no TLS handshake within the connect timeout".into()
        }
        None if matches!(
            error.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ) =>
        {
            "the broker closed the connection during the TLS handshake (a plain amqp:// port?)"
                .into()
        }
        None => format!("TLS failed: {error}"),
    }
}

fn client_config(options: &TlsOptions) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?;
    let builder = if options.verify_peer {
        let mut roots = system_roots().clone();
        if let Some(ca_file) = &options.ca_file {
            let certificates = CertificateDer::pem_file_iter(ca_file)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|error| {
                    format!("cannot read cacertfile {}: {error}", ca_file.display())
                })?;
            for certificate in certificates {
                roots.add(certificate).map_err(|error| {
                    format!(
                        "cacertfile {} holds an unusable CA: {error}",
                        ca_file.display()
                    )
                })?;
            }
        }
        builder.with_root_certificates(roots)
    } else {
        log::warn!("TLS without verifying the broker's certificate (verify=verify_none)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    match (&options.cert_file, &options.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|error| {
                    format!("cannot read certfile {}: {error}", cert_file.display())
                })?;
            // The key's contents are a secret: only its path is ever shown.
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|error| format!("cannot read keyfile {}: {error}", key_file.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("the client certificate cannot be used: {error}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("a client certificate needs both certfile and keyfile".into()),
    }
}

/// The operating system's trusted CAs, read once per process.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            log::debug!("skipping a system CA certificate: {error}");
        }
        roots.add_parsable_certificates(found.certs);
        roots
    })
}

/// Accepts any broker certificate: `verify=verify_none`, an explicit and logged opt-out.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection on a non-blocking socket, read and written the way amiquip reads and
/// writes a socket.
///
/// amiquip writes again only while it has bytes left, so plaintext that rustls has taken but
/// could not yet send must not be reported as written: the last byte taken is then owed, and
/// reported once the records are out, when amiquip comes back with it.
pub(crate) struct TlsTransport {
    socket: mio::net::TcpStream,
    conn: ClientConnection,
    owed: usize,
}

impl TlsTransport {
    /// Sends the TLS records rustls holds; `WouldBlock` if the socket takes not all of them.
    fn flush_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.socket)?;
        }
        Ok(())
    }
}

impl Read for TlsTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                outcome => return outcome,
            }
            if self.conn.read_tls(&mut self.socket)? == 0 {
                return Ok(0);
            }
            self.conn
                .process_new_packets()
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            // Alerts and key updates rustls wants to answer go out with the next flush.
            match self.flush_records() {
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => return Err(error),
                _ => {}
            }
        }
    }
}

impl Write for TlsTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        if self.owed > 0 {
            let paid = self.owed.min(buf.len());
            self.owed -= paid;
            return Ok(paid);
        }
        let taken = self.conn.writer().write(buf)?;
        match self.flush_records() {
            Ok(()) => Ok(taken),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && taken > 0 => {
                self.owed = 1;
                if taken > 1 {
                    Ok(taken - 1)
                } else {
                    Err(error)
                }
            }
            Err(error) => Err(error),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

impl TlsTransport {
    /// The socket underneath, which is what becomes readable or writable.
    pub fn socket(&self) -> &mio::net::TcpStream {
        &self.socket
    }
}
