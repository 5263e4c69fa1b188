//! amqps:// against the private nodes' TLS listeners (scripts/nodes.sh): node 1 on 5691 takes
//! an optional client certificate, node 2 on 5692 requires one, node 3 on 5693 shows an
//! expired certificate. The certificates are made by the script, under target/.

use fib_rpc::services::{fibonacci, fibonacci_handler, DEFAULT_MAX_N};
use fib_rpc::{Error, RpcClient, RpcServer, ServerConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::nodes::{private_nodes, PrivateNode};

fn tls_file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/rabbit-nodes/tls");
    dir.join(name)
}

/// The TLS URL of private node `index` (1-based), with these query parameters.
fn amqps(index: u16, query: &str) -> String {
    format!("amqps://guest:guest@127.0.0.1:{}/%2f?{query}", 5690 + index)
}

fn with_ca() -> String {
    format!("cacertfile={}", tls_file("ca.pem").display())
}

fn with_client_certificate() -> String {
    format!(
        "{}&certfile={}&keyfile={}",
        with_ca(),
        tls_file("client.pem").display(),
        tls_file("client.key").display()
    )
}

fn nodes() -> Vec<PrivateNode> {
    private_nodes(3)
}

fn connect_error(url: &str) -> (Error, Duration) {
    let started = Instant::now();
    let error = RpcClient::connect(url).expect_err("the connection must fail");
    (error, started.elapsed())
}

#[test]
fn a_server_and_a_client_both_on_tls_talk() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let queue = format!("test-tls-{}", uuid::Uuid::new_v4());
    let url = amqps(1, &with_ca());
    let server = RpcServer::new(
        ServerConfig::new(url.as_str(), queue.as_str()),
        fibonacci_handler(DEFAULT_MAX_N),
    )
    .start()
    .unwrap();
    let client = RpcClient::connect(&url).unwrap();
    for n in [0u64, 10, 1000] {
        let reply = client
            .call_with_timeout(&queue, n.to_string().as_bytes(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(reply, fibonacci(n).to_string().into_bytes());
    }
    // Large replies cross many TLS records.
    let big = client
        .call_with_timeout(&queue, b"100000", Duration::from_secs(30))
        .unwrap();
    assert_eq!(big.len(), 20899);
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_broker_that_requires_a_client_certificate_gets_one_or_refuses() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let client = RpcClient::connect(amqps(2, &with_client_certificate()));
    assert!(client.is_ok(), "{:?}", client.err());
    let (error, took) = connect_error(&amqps(2, &with_ca()));
    assert!(error.is_connection(), "{error}");
    assert!(error.to_string().contains("client certificate"), "{error}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn an_unknown_ca_a_name_mismatch_and_an_expired_certificate_say_so() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let (unknown, _) = connect_error(&amqps(1, ""));
    assert!(unknown.to_string().contains("unknown CA"), "{unknown}");
    let mismatch = format!("{}&server_name_indication=wrong.example", with_ca());
    let (mismatch, _) = connect_error(&amqps(1, &mismatch));
    assert!(
        mismatch
            .to_string()
            .contains("not valid for \"wrong.example\""),
        "{mismatch}"
    );
    let (expired, _) = connect_error(&amqps(3, &with_ca()));
    assert!(expired.to_string().contains("expired"), "{expired}");
    for error in [&unknown, &mismatch, &expired] {
        assert!(error.is_connection(), "{error}");
        assert!(!error.to_string().contains("guest:guest"), "{error}");
    }
}

#[test]
fn plain_amqp_on_a_tls_port_and_tls_on_a_plain_port_fail_fast() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let (plain_on_tls, took) = connect_error("amqp://guest:guest@127.0.0.1:5691/%2f");
    assert!(plain_on_tls.is_connection(), "{plain_on_tls}");
    assert!(took < Duration::from_secs(4), "{took:?}: {plain_on_tls}");
    eprintln!("plain AMQP on the TLS port: {plain_on_tls} ({took:?})");
    let tls_on_plain = format!("amqps://guest:guest@127.0.0.1:5681/%2f?{}", with_ca());
    let (tls_on_plain, took) = connect_error(&tls_on_plain);
    assert!(
        tls_on_plain.to_string().contains("plain amqp:// port"),
        "{tls_on_plain}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn verify_none_is_an_explicit_opt_out() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let client = RpcClient::connect(amqps(3, "verify=verify_none"));
    assert!(
        client.is_ok(),
        "an expired certificate is accepted: {:?}",
        client.err()
    );
    let refused = "amqp://guest:guest@127.0.0.1:5681/%2f?verify=verify_none"
        .parse::<fib_rpc::ConnectionConfig>()
        .unwrap_err();
    assert!(
        refused.is_config(),
        "TLS options belong to amqps:// URLs: {refused}"
    );
}

#[test]
fn amqp_and_amqps_endpoints_mix_in_one_list() {
    let _undisturbed = support::nodes::undisturbed();
    let nodes = nodes();
    // The first endpoint is a TLS node with an expired certificate: the next, plain, serves.
    let urls = format!("{},{}", amqps(3, &with_ca()), nodes[0].url());
    let queue = format!("test-tls-mixed-{}", uuid::Uuid::new_v4());
    let server = RpcServer::new(
        ServerConfig::new(nodes[0].url(), queue.as_str()),
        fibonacci_handler(DEFAULT_MAX_N),
    )
    .start()
    .unwrap();
    let client = RpcClient::connect(&urls).unwrap();
    assert_eq!(
        client
            .call_with_timeout(&queue, b"7", Duration::from_secs(10))
            .unwrap(),
        b"13"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_connection_closed_by_the_broker_over_tls_fails_the_call_and_the_next_reconnects() {
    let _undisturbed = support::nodes::undisturbed();
    let nodes = nodes();
    let queue = format!("test-tls-close-{}", uuid::Uuid::new_v4());
    let url = amqps(1, &with_ca());
    let (server, gate) = support::start_gated_echo_server_at(&url, &queue, 1);
    let name = format!("tls client {}", uuid::Uuid::new_v4());
    let client = support::named_client(&url, &name);
    let in_flight = client
        .send_with_timeout(&queue, b"slow", Duration::from_secs(30))
        .unwrap();
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(nodes[0].close_connections(&name), 1);
    let error = in_flight.wait().unwrap_err();
    gate.release();
    assert!(error.is_connection(), "{error}");
    assert_eq!(
        client
            .call_with_timeout(&queue, b"again", Duration::from_secs(10))
            .unwrap(),
        b"again"
    );
    server.shutdown().unwrap();
}

/// A proxy in front of private node 1's TLS port, to cut the network silently under TLS.
fn tls_proxy() -> support::proxy::Proxy {
    support::proxy::Proxy::start("127.0.0.1:5691")
}

/// How far past its timeout a call may return on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(500);

#[test]
fn in_a_silent_cut_under_tls_a_call_keeps_its_timeout() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let url = amqps(1, &with_ca());
    let checked = format!("test-tls-cut-checked-{}", uuid::Uuid::new_v4());
    let unchecked = format!("test-tls-cut-unchecked-{}", uuid::Uuid::new_v4());
    let start = |queue: &str| {
        RpcServer::new(
            ServerConfig::new(url.as_str(), queue),
            fibonacci_handler(DEFAULT_MAX_N),
        )
        .start()
        .unwrap()
    };
    let (first, second) = (start(&checked), start(&unchecked));
    let proxy = tls_proxy();
    let mut config = fib_rpc::ClientConfig::new(proxy.url(&url));
    let connection = config
        .get_connection()
        .clone()
        .close_timeout(Duration::from_secs(1));
    config = config.connection(connection);
    let client = RpcClient::connect(config).unwrap();
    let timeout = Duration::from_secs(1);
    assert_eq!(
        client.call_with_timeout(&checked, b"10", timeout).unwrap(),
        b"55"
    );
    proxy.freeze();
    // The no-server check of a queue not seen yet asks the broker, which never answers; then
    // the connection is dropped, and a reconnect through the cut cannot finish its handshake.
    for (what, queue) in [
        ("the no-server check", &unchecked),
        ("a reconnect", &checked),
    ] {
        let started = Instant::now();
        let error = client.call_with_timeout(queue, b"10", timeout).unwrap_err();
        let took = started.elapsed();
        eprintln!("TLS call needing {what} in a cut: {took:?} ({error})");
        assert!(error.is_timeout(), "{what}: {error}");
        assert!(took < timeout + SLACK, "{what} took {took:?}");
    }
    proxy.resume();
    assert_eq!(
        client
            .call_with_timeout(&checked, b"11", Duration::from_secs(10))
            .unwrap(),
        b"89",
        "served again once the network is back"
    );
    first.shutdown().unwrap();
    second.shutdown().unwrap();
}

#[test]
fn a_silent_cut_under_tls_is_reported_as_missed_heartbeats() {
    let _undisturbed = support::nodes::undisturbed();
    let _nodes = nodes();
    let queue = format!("test-tls-heartbeat-{}", uuid::Uuid::new_v4());
    let url = amqps(1, &with_ca());
    let (server, gate) = support::start_gated_echo_server_at(&url, &queue, 1);
    let proxy = tls_proxy();
    let client = RpcClient::connect(format!("{}&heartbeat=1", proxy.url(&url))).unwrap();
    let pending = client
        .send_with_timeout(&queue, b"slow", Duration::from_secs(60))
        .unwrap();
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    let cut_at = Instant::now();
    proxy.freeze();
    let error = pending.wait().unwrap_err();
    let noticed_after = cut_at.elapsed();
    gate.release();
    eprintln!("TLS cut noticed after {noticed_after:?}: {error}");
    assert!(matches!(error, Error::ConnectionLost(_)), "{error}");
    let text = error.to_string();
    assert!(text.contains("missed heartbeats"), "{text}");
    assert!(text.contains("1s"), "the interval is named: {text}");
    // Two missed beats of 1 s, then the driver's check.
    assert!(
        noticed_after < Duration::from_secs(4),
        "noticed only after {noticed_after:?}"
    );
    proxy.resume();
    server.shutdown().unwrap();
}
