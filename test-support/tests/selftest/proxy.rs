//! The fault-injecting proxy itself, against a local echo server (no broker needed), so the
//! partition tests that rely on it can trust what it does.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::proxy::Proxy;

/// How long "nothing arrives" is watched for: long enough to catch a leak, short for the suite.
const SILENCE: Duration = Duration::from_millis(300);
/// Upper bound for anything that should arrive, so a failure is an assertion, not a hang.
const PATIENCE: Duration = Duration::from_secs(5);

/// Starts an echo server on 127.0.0.1 that also reports every chunk it receives, so a test can
/// tell "the upstream got it" apart from "the client got the echo".
fn echo_server() -> (String, Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (sender, receiver) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sender = sender.clone();
            thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    let read = match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(read) => read,
                    };
                    let _ = sender.send(buffer[..read].to_vec());
                    if stream.write_all(&buffer[..read]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, receiver)
}

fn connect(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port())).unwrap()
}

/// Reads exactly `len` bytes, failing (not hanging) if they take longer than PATIENCE.
fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).unwrap();
    bytes
}

/// Collects `len` bytes as the upstream reports them.
fn upstream_received(received: &Receiver<Vec<u8>>, len: usize) -> Vec<u8> {
    let deadline = Instant::now() + PATIENCE;
    let mut bytes = Vec::new();
    while bytes.len() < len {
        bytes.extend(received.recv_deadline(deadline).unwrap());
    }
    bytes
}

fn assert_client_hears_nothing(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(SILENCE)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence from the frozen proxy, got {other:?}"),
    }
}

fn assert_upstream_hears_nothing(received: &Receiver<Vec<u8>>) {
    assert_eq!(
        received.recv_timeout(SILENCE),
        Err(RecvTimeoutError::Timeout)
    );
}

fn round_trip(stream: &mut TcpStream, received: &Receiver<Vec<u8>>, message: &[u8]) {
    stream.write_all(message).unwrap();
    assert_eq!(upstream_received(received, message.len()), message);
    assert_eq!(read_exactly(stream, message.len()), message);
}

fn assert_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error) if !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected the proxied socket to be closed, got {other:?}"),
    }
}

#[test]
fn bytes_echo_through() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    let mut client = connect(&proxy);
    round_trip(&mut client, &received, b"hello");
    round_trip(&mut client, &received, b"again");
}

#[test]
fn freeze_holds_bytes_and_resume_delivers_them_in_order() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    let mut client = connect(&proxy);
    round_trip(&mut client, &received, b"before");

    proxy.freeze();
    client.write_all(b"held-1 ").unwrap();
    client.write_all(b"held-2").unwrap();
    // A connection opened during the cut is accepted but carries nothing either.
    let mut late = connect(&proxy);
    late.write_all(b"late").unwrap();
    assert_client_hears_nothing(&mut client);
    assert_client_hears_nothing(&mut late);
    assert_upstream_hears_nothing(&received);

    proxy.resume();
    assert_eq!(read_exactly(&mut client, 13), b"held-1 held-2");
    assert_eq!(read_exactly(&mut late, 4), b"late");
    // Both connections' bytes reached the upstream (in some interleaving): drain them.
    assert_eq!(upstream_received(&received, 13 + 4).len(), 13 + 4);
    round_trip(&mut client, &received, b"after");
}

#[test]
fn freeze_to_client_lets_requests_through_but_holds_replies() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    let mut client = connect(&proxy);
    round_trip(&mut client, &received, b"warm-up");

    proxy.freeze_to_client();
    client.write_all(b"request").unwrap();
    assert_eq!(upstream_received(&received, 7), b"request");
    assert_client_hears_nothing(&mut client);

    proxy.resume();
    assert_eq!(read_exactly(&mut client, 7), b"request");
}

#[test]
fn freeze_to_upstream_holds_requests() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    let mut client = connect(&proxy);
    round_trip(&mut client, &received, b"warm-up");

    proxy.freeze_to_upstream();
    client.write_all(b"request").unwrap();
    assert_upstream_hears_nothing(&received);
    assert_client_hears_nothing(&mut client);

    proxy.resume();
    assert_eq!(upstream_received(&received, 7), b"request");
    assert_eq!(read_exactly(&mut client, 7), b"request");
}

#[test]
fn a_frozen_direction_pushes_back_on_the_sender() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    let mut client = connect(&proxy);
    round_trip(&mut client, &received, b"warm-up");

    proxy.freeze();
    client.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0usize;
    loop {
        match client.write(&chunk) {
            Ok(written) => sent += written,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => panic!("write failed: {error}"),
        }
        assert!(sent < 256 * 1024 * 1024, "the proxy reads without bound");
    }
    assert_upstream_hears_nothing(&received);

    client.set_nonblocking(false).unwrap();
    proxy.resume();
    // Read the echoes concurrently, or the echo path fills up and stalls the upstream.
    let mut reader = client.try_clone().unwrap();
    let echoed = thread::spawn(move || read_exactly(&mut reader, sent).len());
    assert_eq!(upstream_received(&received, sent).len(), sent);
    assert_eq!(echoed.join().unwrap(), sent);
}

#[test]
fn counts_accepted_connections() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    assert_eq!(proxy.connections(), 0);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&proxy)).collect();
    for client in &mut clients {
        round_trip(client, &received, b"x");
    }
    assert_eq!(proxy.connections(), 3);

    drop(clients);
    let mut another = connect(&proxy);
    round_trip(&mut another, &received, b"y");
    assert_eq!(proxy.connections(), 4);
}

#[test]
fn dropping_the_proxy_closes_client_sockets() {
    let (upstream, received) = echo_server();
    let proxy = Proxy::start(&upstream);
    let mut flowing = connect(&proxy);
    round_trip(&mut flowing, &received, b"hi");
    proxy.freeze();
    let mut frozen = connect(&proxy);

    drop(proxy);
    assert_closed(&mut flowing);
    assert_closed(&mut frozen);
}

#[test]
fn url_replaces_only_host_and_port() {
    let proxy = Proxy::start("127.0.0.1:1");
    let port = proxy.port();
    assert_eq!(
        proxy.url("amqp://guest:guest@127.0.0.1:5672/%2f"),
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    );
    assert_eq!(
        proxy.url("amqp://user:p%40ss@broker.example:5672/vhost?heartbeat=5&channel_max=9"),
        format!("amqp://user:p%40ss@127.0.0.1:{port}/vhost?heartbeat=5&channel_max=9")
    );
    assert_eq!(
        proxy.url("amqp://localhost?heartbeat=2"),
        format!("amqp://127.0.0.1:{port}?heartbeat=2")
    );
}
