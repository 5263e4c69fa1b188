//! fib-bench's shapes, each measured on both sides with every reply checked: a short run is
//! enough to show that a shape works and reports what it should.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_fib-bench"))
        .args(["--json", "--warmup", "5"])
        .args(args)
        .env("AMQP_URL", support::amqp_url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stderr}"))
}

#[test]
fn clients_in_processes_of_their_own_report_their_cpu_apart_from_the_servers() {
    let result = bench(&["--calls", "40", "--processes", "2", "--in-flight", "2"]);
    assert!(
        result["shape"]
            .as_str()
            .unwrap()
            .contains("2 client processes x 1 threads x 2 in flight"),
        "{result}"
    );
    for side in ["raw", "rpc"] {
        let report = &result[side];
        // --calls is per process.
        assert_eq!(report["calls"], 80, "{result}");
        // Measured, if not necessarily above zero: /proc counts CPU in 10 ms ticks, and 80
        // calls may take less.
        assert!(
            report["client_cpu_us_per_call"].as_f64().is_some(),
            "{result}"
        );
        assert!(
            report["server_cpu_us_per_call"].as_f64().is_some(),
            "{result}"
        );
    }
}

#[test]
fn the_raw_limit_with_fib_rpcs_properties_is_measured_as_a_third_side() {
    let result = bench(&[
        "--calls",
        "30",
        "--wire-baseline",
        "--processes",
        "1",
        "--reply-mode",
        "direct",
    ]);
    for side in ["raw", "raw_wire", "rpc"] {
        assert_eq!(result[side]["calls"], 30, "{result}");
    }
    let fraction = result["fraction_of_raw_wire"].as_f64().unwrap();
    let expected = result["rpc"]["calls_per_second"].as_f64().unwrap()
        / result["raw_wire"]["calls_per_second"].as_f64().unwrap();
    assert!((fraction - expected).abs() < 0.001, "{result}");
}

#[test]
fn echo_bodies_and_direct_reply_to_are_measured_on_both_sides() {
    let result = bench(&[
        "--calls",
        "30",
        "--body-bytes",
        "70000",
        "--reply-mode",
        "direct",
        "--threads",
        "2",
    ]);
    let shape = result["shape"].as_str().unwrap();
    assert!(shape.contains("70000-byte echo"), "{shape}");
    assert!(shape.contains("replies via direct"), "{shape}");
    assert_eq!(result["raw"]["calls"], 30, "{result}");
    assert_eq!(result["rpc"]["calls"], 30, "{result}");
}

#[test]
fn echo_bodies_need_the_servers_this_tool_starts() {
    let output = Command::new(env!("CARGO_BIN_EXE_fib-bench"))
        .args(["--queue", "anything", "--body-bytes", "10", "--calls", "1"])
        .env("AMQP_URL", support::amqp_url())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--body-bytes"));
}
