//! `orderflow demo` end to end, as a user runs it: the built binary, an
//! embedded broker, a 5-second sale, one JSON summary on standard output;
//! its metrics where the user's environment says, with its hot SKUs' stock.

mod common;

use common::{free_port, http_get, wait_for};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One demo at a time: each is a broker, a processor and a generator on a
/// machine of two cores.
static ONE_DEMO: Mutex<()> = Mutex::new(());

#[test]
fn demo_runs_a_clean_sale_and_prints_one_json_summary() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
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
    // The simulated gateway answers on the embedded broker: captures and
    // the other fates of the mix come back, and the summary counts them.
    let payments = &summary["payments"];
    for field in ["captured", "declined", "attention", "retries", "commands"] {
        assert!(payments[field].as_u64().is_some(), "{summary}");
    }
    assert!(
        payments["captured"].as_u64().unwrap() > 0 && payments["declined"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        payments["retries"].as_u64().unwrap() > 0,
        "flaky authorizations are retried: {summary}"
    );
    assert!(
        stderr.contains("retries run on a short backoff"),
        "says the demo's backoff is short: {stderr}"
    );
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

/// The demo's stock panel has data: each of its hot SKUs (`loadtest/demo.toml`
/// has 3) gets `orderflow_inventory_available_units`, and the metrics are
/// served where `ORDERFLOW__METRICS__LISTEN` says, and the processor logs
/// at the level `ORDERFLOW__LOG__LEVEL` says (defaults never outrank the
/// environment; the processor's own lines also explain a failed run).
#[test]
fn demo_serves_its_hot_skus_stock_where_the_environment_says() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let listen = format!("127.0.0.1:{}", free_port());
    let demo = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["demo", "--duration", "8", "--json"])
        .env("ORDERFLOW__METRICS__LISTEN", &listen)
        .env("ORDERFLOW__LOG__LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running orderflow demo");
    let hot_lines = wait_for(
        &format!("the hot SKUs' stock gauges at http://{listen}/metrics"),
        Duration::from_secs(90),
        || {
            let (status, scrape) = http_get(&listen, "/metrics")?;
            assert_eq!(status, 200);
            let lines: Vec<String> = (0..3)
                .map(|i| {
                    scrape
                        .lines()
                        .find(|l| {
                            l.starts_with("orderflow_inventory_available_units{sku=\"")
                                && l.contains(&format!("-HOT-{i}\"}}"))
                        })
                        .map(str::to_string)
                })
                .collect::<Option<_>>()?;
            Some(lines)
        },
    );
    let output = demo.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}\nsummary: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(&format!("http://{listen}/metrics")),
        "says where: {stderr}"
    );
    assert!(
        stderr.contains("partitions assigned"),
        "logs at the environment's level, not the demo's `error`: {stderr}"
    );
    for line in &hot_lines {
        let units: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(units >= 0.0, "{line}");
    }
}
