//! `orderflow demo` end to end, as a user runs it: the built binary, an
//! embedded broker, a 5-second sale, one JSON summary on standard output.

use std::process::Command;

#[test]
fn demo_runs_a_clean_sale_and_prints_one_json_summary() {
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["demo", "--duration", "5", "--json"])
        .output()
        .expect("running orderflow demo");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one line on stdout"
    );
    assert_eq!(summary["oversold_units"], 0, "{summary}");
    assert_eq!(summary["missing_status"], 0, "{summary}");
    assert_eq!(summary["passed"], true, "{summary}");
    assert!(summary["orders_sent"].as_u64().unwrap() > 500, "{summary}");
    for field in [
        "orders_per_second",
        "accepted",
        "rejected",
        "duplicates",
        "dlq",
        "latency_ms",
    ] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {summary}"
        );
    }
    for percentile in ["p50", "p99", "p999", "max"] {
        assert!(
            summary["latency_ms"][percentile].as_f64().is_some(),
            "{summary}"
        );
    }
    assert!(
        stderr.contains("/metrics"),
        "tells where the metrics are: {stderr}"
    );
    assert!(
        stderr.contains("orderflow loadtest --brokers"),
        "tells how to run for real: {stderr}"
    );
}
