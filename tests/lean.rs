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
