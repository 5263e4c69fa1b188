//! Broker URLs as an operator or an environment variable gives them: nothing panics, a URL that
//! parses reads back the same from its own URL list, and the password of a URL built from the
//! input never shows in the configuration's Debug.
#![no_main]

use fib_rpc::ConnectionConfig;
use libfuzzer_sys::fuzz_target;

/// Starts every password built below; the rest of such a URL is drawn from characters that
/// cannot spell it.
const MARKER: &str = "PW~";

fn percent_encoded(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn plain(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789.-"[usize::from(*b) % 38]))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = text.parse::<ConnectionConfig>() {
            let urls: Vec<&str> = config.get_urls().collect();
            let again: ConnectionConfig = urls.join(",").parse().expect("its own URLs parse");
            assert_eq!(again, config);
        }
    }
    // The input split into a user, a password, a host and a query, made into a URL.
    let quarter = data.len() / 4;
    let (user, rest) = data.split_at(quarter);
    let (password, rest) = rest.split_at(quarter);
    let (host, query) = rest.split_at(quarter);
    let secret = format!("{MARKER}{}", String::from_utf8_lossy(password));
    let encoded = format!(
        "{}{}",
        percent_encoded(MARKER.as_bytes()),
        percent_encoded(password)
    );
    // Any query, but one that cannot spell the marker (a 'W', plain or encoded).
    let query = String::from_utf8_lossy(query)
        .replace('W', "w")
        .replace("%57", "%77");
    let url = format!(
        "amqp://{}:{encoded}@{}/%2f?{query}",
        plain(user),
        plain(host)
    );
    let shown = match url.parse::<ConnectionConfig>() {
        Ok(config) => format!("{config:?}"),
        Err(error) => error.to_string(),
    };
    for told in [MARKER, "PW%7E", "%50%57%7E", &secret] {
        assert!(!shown.contains(told), "the password shows in {shown}");
    }
});
