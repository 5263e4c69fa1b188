//! A program that depends on the library compiles none of the tools' dependencies.

use std::process::Command;

/// What `cargo tree -e normal` lists for the library, as a path dependency with default
/// features sees it: one crate per line.
fn library_dependencies(features: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "-e", "normal", "--prefix", "none", "-p", "fib-rpc"])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_library_pulls_none_of_the_tools_dependencies() {
    for features in [&[][..], &["--all-features"]] {
        let tree = library_dependencies(features);
        assert!(tree.starts_with("fib-rpc "), "{tree}");
        for tool_only in [
            "clap",
            "indicatif",
            "hdrhistogram",
            "env_logger",
            "signal-hook",
            "anyhow",
        ] {
            let listed = tree
                .lines()
                .any(|line| line.split_whitespace().next() == Some(tool_only));
            assert!(
                !listed,
                "{tool_only} is a dependency of the library ({features:?})"
            );
        }
    }
}

#[test]
fn without_default_features_there_are_no_big_integers() {
    let tree = library_dependencies(&["--no-default-features"]);
    assert!(!tree.contains("num-bigint"), "{tree}");
}

/// A program that does not ask for the feature `tracing` gets `log` alone.
#[test]
fn tracing_is_a_dependency_only_when_asked_for() {
    let lists_tracing = |tree: &str| {
        tree.lines()
            .any(|line| line.split_whitespace().next() == Some("tracing"))
    };
    let tree = library_dependencies(&[]);
    assert!(!lists_tracing(&tree), "{tree}");
    assert!(lists_tracing(&library_dependencies(&[
        "--features",
        "tracing"
    ])));
}

/// Every Rust source file of the library and the tools, with its path.
fn product_sources() -> Vec<(std::path::PathBuf, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pending = vec![root.join("src"), root.join("cli/src")];
    let mut sources = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                sources.push((path, text));
            }
        }
    }
    assert!(sources.len() > 20, "found the sources");
    sources
}

/// RUSTSEC-2024-0421 (idna 0.1.5, under url 1.7 under amq-protocol 1.4 under amiquip) is
/// recorded in deny.toml as unreachable: fib-rpc parses URLs with url 2 and hands amiquip an
/// open socket. This fails if the library or a tool ever lets amiquip or amq-protocol parse a
/// URL.
#[test]
fn amiquip_never_parses_a_url() {
    let url_parsers = [
        "Connection::insecure_open(",
        "Connection::open(",
        "Connection::open_tuned(",
        "Connection::insecure_open_tuned(",
        "AMQPUri",
        "amq_protocol",
    ];
    let mut stream_opens = 0;
    for (path, text) in product_sources() {
        for parser in url_parsers {
            assert!(
                !text.contains(parser),
                "{} calls {parser}: amiquip would parse a URL with url 1.7 (idna 0.1.5, \
                 RUSTSEC-2024-0421); parse it with url 2 and open the socket ourselves",
                path.display()
            );
        }
        stream_opens +=
            text.matches("_open_stream(").count() + text.matches("open_tls_stream(").count();
    }
    assert!(
        stream_opens >= 2,
        "the library and fib-bench open their own sockets"
    );
}

/// The driver is the one layer that knows amiquip; the layers above name its types through
/// `crate::driver`, so replacing the driver touches `src/driver/` alone. Comments may still
/// name it (the crate docs explain the design).
#[test]
fn amiquip_is_named_in_code_only_under_src_driver() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (library, driver) = (root.join("src"), root.join("src/driver"));
    let mut checked = 0;
    for (path, text) in product_sources() {
        if !path.starts_with(&library) || path.starts_with(&driver) {
            continue;
        }
        checked += 1;
        for (number, line) in text.lines().enumerate() {
            assert!(
                line.trim_start().starts_with("//") || !line.contains("amiquip"),
                "{}:{} names amiquip outside src/driver/; name its types through \
                 crate::driver: {line}",
                path.display(),
                number + 1
            );
        }
    }
    assert!(checked > 10, "found the library's sources above the driver");
}
