//! A careless or hostile outside client, against the built binary:
//!
//! - `check-config` with bad settings from every source: a clear error line
//!   naming the key and where the value came from, exit status 2, never a
//!   panic (`check_config_*`, no broker);
//! - inventory events with extreme values and orders with huge fields, sent
//!   to a real Kafka broker while `orderflow run` decides: nothing is
//!   oversold, the gauges read true, every detail is bounded (`kafka_*`).
//!
//! The binary is the one cargo builds for these tests; `ORDERFLOW_BIN`
//! runs another (a release build, to see what production does).

mod common;

use std::process::{Command, Output};

fn orderflow_bin() -> String {
    std::env::var("ORDERFLOW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_orderflow").into())
}

/// `orderflow check-config` with `args` and the environment variables
/// `env` (no other `ORDERFLOW__` variable of this process leaks in).
fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(orderflow_bin());
    command.arg("check-config").args(args);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("ORDERFLOW__")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("running orderflow check-config")
}

/// Runs check-config, expects it to refuse the config (exit 2, no panic)
/// with an `error:` line for each of `lines`; returns stderr.
fn refused(args: &[&str], env: &[(&str, &str)], lines: &[&str]) -> String {
    let output = check_config(args, env);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "{args:?} {env:?} panicked:\n{stderr}"
    );
    assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}:\n{stderr}");
    assert!(!stderr.contains("config ok"), "{stderr}");
    for line in lines {
        assert!(
            stderr.lines().any(|l| l == format!("error: {line}")),
            "{args:?} {env:?}: no line `error: {line}` in\n{stderr}"
        );
    }
    stderr
}

#[test]
fn check_config_refuses_a_section_given_a_value_without_panicking() {
    refused(
        &["--set", "engine=5"],
        &[],
        &["engine: is a section, not a value; set its keys (engine.KEY=value) (from flag --set)"],
    );
    refused(
        &[],
        &[("ORDERFLOW__KAFKA", "x")],
        &[
            "kafka: is a section, not a value; set its keys (kafka.KEY=value) \
           (from environment variable ORDERFLOW__KAFKA)",
        ],
    );
    refused(
        &["--set", "kafka.properties=5"],
        &[],
        &["kafka.properties: is a section, not a value; set its keys \
           (kafka.properties.KEY=value) (from flag --set)"],
    );
    refused(
        &["--set", "engine.shards.x=1"],
        &[],
        &["engine.shards.x: engine.shards is a value, not a section (from flag --set)"],
    );
}

#[test]
fn check_config_refuses_keys_with_empty_parts() {
    refused(
        &["--set", "=5", "--set", "engine.=1", "--set", ".shards=1"],
        &[],
        &[
            ": names no key (from flag --set)",
            "engine.: a key has no empty parts (from flag --set)",
            ".shards: a key has no empty parts (from flag --set)",
        ],
    );
    refused(
        &[],
        &[
            ("ORDERFLOW__", "x"),
            ("ORDERFLOW__ENGINE____SHARDS", "1"),
            ("ORDERFLOW__KAFKA__PROPERTIES__", "x"),
        ],
        &[
            ": names no key (from environment variable ORDERFLOW__)",
            "engine..shards: a key has no empty parts \
             (from environment variable ORDERFLOW__ENGINE____SHARDS)",
            "kafka.properties.: a librdkafka property needs a name \
             (from environment variable ORDERFLOW__KAFKA__PROPERTIES__)",
        ],
    );
}

#[test]
fn check_config_enforces_every_range_also_beside_type_errors() {
    refused(
        &["--set", "limits.max_quantity=99999999999"],
        &[],
        &["limits.max_quantity: must be 1 to 1000000, found 99999999999 (from flag --set)"],
    );
    // A type error does not hide the range errors of other keys.
    refused(
        &[
            "--set",
            "engine.shards=many",
            "--set",
            "engine.dedup_window_orders=0",
            "--set",
            "engine.shard_queue_records=-1",
        ],
        &[("ORDERFLOW__KAFKA__MAX_DLQ_PAYLOAD_BYTES", "2000000000")],
        &[
            "engine.shards: expected integer, found string (from flag --set)",
            "engine.dedup_window_orders: must be 1 to 100000000, found 0 (from flag --set)",
            "engine.shard_queue_records: must be 1 to 1048576, found -1 (from flag --set)",
            "kafka.max_dlq_payload_bytes: must be 0 to 1000000000, found 2000000000 \
             (from environment variable ORDERFLOW__KAFKA__MAX_DLQ_PAYLOAD_BYTES)",
        ],
    );
    refused(
        &["--set", "metrics.watched_skus=[1, \"A\"]"],
        &[],
        &[
            "metrics.watched_skus: expected a list of strings, found integer at [0] \
           (from flag --set)",
        ],
    );
}

#[test]
fn check_config_names_the_choices_of_a_mistyped_setting() {
    refused(
        &[
            "--set",
            "kafka.transactions=maybe",
            "--set",
            "engine.stock_split=partitions",
        ],
        &[
            ("ORDERFLOW__KAFKA__AUTO_OFFSET_RESET", "newest"),
            ("ORDERFLOW__LOG__FORMAT", "yaml"),
        ],
        &[
            "kafka.transactions: must be one of \"auto\", \"on\", \"off\", found \"maybe\" \
             (from flag --set)",
            "engine.stock_split: must be one of \"whole\", \"partition\", found \"partitions\" \
             (from flag --set)",
            "kafka.auto_offset_reset: must be one of \"earliest\", \"latest\", found \"newest\" \
             (from environment variable ORDERFLOW__KAFKA__AUTO_OFFSET_RESET)",
            "log.format: must be one of \"text\", \"json\", found \"yaml\" \
             (from environment variable ORDERFLOW__LOG__FORMAT)",
        ],
    );
}

#[test]
fn check_config_names_the_file_of_a_bad_value() {
    let dir = std::env::temp_dir().join(format!("orderflow-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "engine = 5\n[kafka.brokers]\nx = 1\n[limits]\nmax_lines = 0\n",
    )
    .unwrap();
    let from = format!("(from file {})", file.display());
    refused(
        &["--config", file.to_str().unwrap()],
        &[],
        &[
            &format!("engine: is a section, not a value; set its keys (engine.KEY=value) {from}"),
            &format!("kafka.brokers.x: kafka.brokers is a value, not a section {from}"),
            &format!("limits.max_lines: must be 1 to 1000, found 0 {from}"),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_reads_dotted_librdkafka_property_names_in_a_file() {
    // TOML reads a bare dotted key as nested tables; this panicked
    // ("every source names a leaf").
    let dir = std::env::temp_dir().join(format!("orderflow-props-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("props.toml");
    std::fs::write(&file, "[kafka.properties]\nsecurity.protocol = \"SSL\"\n").unwrap();
    let output = check_config(&["--config", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("\"security.protocol\" = \"SSL\""),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_accepts_the_edges_of_every_range() {
    let output = check_config(
        &[
            "--set",
            "limits.max_quantity=1000000",
            "--set",
            "limits.max_lines=1000",
            "--set",
            "kafka.transactions=off",
        ],
        &[("ORDERFLOW__ENGINE__STOCK_SPLIT", "partition")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("config ok"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("max_quantity = 1000000"), "{stdout}");
    assert!(stdout.contains("stock_split = \"partition\""), "{stdout}");
}

// ---- against a real broker ------------------------------------------------

use common::{free_port, header, http_get, inventory_records, json, wait_for, Broker};
use orderflow::order::{CUT_MARK, MAX_DETAIL_BYTES};
use rdkafka::message::{Message, OwnedMessage};
use serde_json::json;
use std::process::{Child, Stdio};
use std::time::Duration;

/// How long the processor may take to start, and outputs to appear.
const TIMEOUT: Duration = Duration::from_secs(60);

/// `orderflow run` against `broker`, metrics on a free port, SKU `S` watched.
struct Running {
    child: Child,
    metrics: String,
}

impl Running {
    fn start(broker: &Broker) -> Running {
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(orderflow_bin())
            .args(["run", "--brokers", &broker.addr()])
            .args(["--set", &format!("metrics.listen={metrics}")])
            .args(["--set", "metrics.watched_skus=[\"S\"]"])
            .args(["--set", "log.level=warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting orderflow run");
        let running = Running { child, metrics };
        wait_for("orderflow to be ready", TIMEOUT, || {
            (http_get(&running.metrics, "/ready")?.0 == 200).then_some(())
        });
        running
    }

    /// The value of the series `series` (name and labels) in /metrics.
    fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(&self.metrics, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Waits until `series` reads `value` (gauges refresh every second).
    fn wait_metric(&self, series: &str, value: f64) {
        wait_for(&format!("{series} to read {value}"), TIMEOUT, || {
            (self.metric(series)? == value).then_some(())
        });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An order for one unit of each SKU in `skus` at 100 EUR, shipped to `home`.
fn order(id: &str, skus: &[&str]) -> serde_json::Value {
    let lines: Vec<_> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "quantity": 1, "unit_price_minor": 100, "ship_to": "home"}))
        .collect();
    json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{id}"),
        "placed_at": orderflow::order::events::format_time(time::OffsetDateTime::now_utc()),
        "currency": "EUR", "lines": lines,
        "addresses": {"home": {"name": "Zoë 🏠", "line1": "L 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}},
        "payments": [{"method": "card", "amount_minor": 100 * skus.len() as i64, "authorization_id": "a"}]})
}

/// Records keyed by their `order_id`.
fn keyed(orders: &[serde_json::Value]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    orders
        .iter()
        .map(|o| {
            let id = o["order_id"].as_str().unwrap().as_bytes().to_vec();
            (Some(id), serde_json::to_vec(o).unwrap())
        })
        .collect()
}

/// The statuses on `order-status` once there are `n`, by order ID.
fn statuses(broker: &Broker, n: usize) -> std::collections::BTreeMap<String, serde_json::Value> {
    broker
        .read_until("order-status", TIMEOUT, |m| m.len() >= n)
        .iter()
        .map(|m| {
            let status = json(m);
            (status["order_id"].as_str().unwrap().to_string(), status)
        })
        .collect()
}

fn dead_letters(broker: &Broker, n: usize) -> Vec<OwnedMessage> {
    broker.read_until("orders-dlq", TIMEOUT, |m| m.len() >= n)
}

#[test]
fn kafka_extreme_stock_adjustments_never_oversell() {
    let broker = Broker::start();
    broker.create_contract_topics(1);
    let stock = |sku: &str, available: i64| json!({"type": "stock_set", "sku": sku, "available": available, "prices": {"EUR": 100}});
    broker.produce("inventory", &inventory_records(&[stock("S", 10)]));
    let running = Running::start(&broker);
    let sold: Vec<_> = (0..5)
        .map(|i| order(&format!("sold-{i}"), &["S"]))
        .collect();
    broker.produce("orders", &keyed(&sold));
    let first = statuses(&broker, 5);
    assert!(
        first.values().all(|s| s["status"] == "accepted"),
        "{first:?}"
    );
    running.wait_metric("orderflow_inventory_available_units{sku=\"S\"}", 5.0);

    // A delta of i64::MIN, twice; then a SKU T, whose sale proves the feed
    // has applied everything before it (one partition, read in order).
    let adjust = json!({"type": "stock_adjusted", "sku": "S", "delta": i64::MIN});
    broker.produce(
        "inventory",
        &inventory_records(&[adjust.clone(), adjust, stock("T", 1)]),
    );
    broker.produce("orders", &keyed(&[order("barrier", &["T"])]));
    let barrier = statuses(&broker, 6);
    assert_eq!(barrier["barrier"]["status"], "accepted", "{barrier:?}");

    let more: Vec<_> = (0..20)
        .map(|i| order(&format!("more-{i}"), &["S"]))
        .collect();
    broker.produce("orders", &keyed(&more));
    let all = statuses(&broker, 26);
    let accepted: Vec<&String> = all
        .iter()
        .filter(|(id, s)| id.starts_with("more-") && s["status"] == "accepted")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(accepted.len(), 5, "10 units, 5 sold before: {accepted:?}");
    for (id, status) in all.iter().filter(|(id, _)| id.starts_with("more-")) {
        if status["status"] == "rejected" {
            assert_eq!(status["reason"], "out_of_stock", "{id}: {status}");
        }
    }
    running.wait_metric("orderflow_inventory_available_units{sku=\"S\"}", 0.0);
    running.wait_metric("orderflow_oversold_units", 0.0);

    let dead = dead_letters(&broker, 2);
    assert_eq!(
        dead.len(),
        2,
        "both adjustments dead-lettered, nothing else"
    );
    for letter in &dead {
        assert_eq!(
            header(letter, "error").as_deref(),
            Some("invalid_inventory_event")
        );
        assert_eq!(header(letter, "source_topic").as_deref(), Some("inventory"));
        let detail = header(letter, "error_detail").unwrap();
        assert!(
            detail.starts_with("delta is -9223372036854775808, must be"),
            "{detail}"
        );
        assert_eq!(letter.key(), Some(&b"S"[..]), "the original key");
    }
}

/// The producer sends fields of 60,000 characters; every detail it gets
/// back is at most MAX_DETAIL_BYTES and says it was cut. Also from outside:
/// address names with '/' are refused, and an order placed in 1970 is
/// counted apart from the latency histogram.
#[test]
fn kafka_huge_fields_get_bounded_details() {
    let broker = Broker::start();
    broker.create_contract_topics(1);
    let huge = "9".repeat(60_000);
    let stock = json!({"type": "stock_set", "sku": "S", "available": 100, "prices": {"EUR": 100}});
    let bad_stock = json!({"type": "stock_set", "sku": "S", "available": huge});
    broker.produce("inventory", &inventory_records(&[stock, bad_stock]));
    let running = Running::start(&broker);

    let mut huge_quantity = order("huge", &["S"]);
    huge_quantity["lines"][0]["quantity"] = huge.clone().into();
    let huge_cancel = json!({"type": "order_cancelled", "order_id": "huge-cancel", "lines": huge});
    let mut slash = order("slash", &["S"]);
    slash["addresses"] = json!({"b/c": slash["addresses"]["home"].clone()});
    slash["lines"][0]["ship_to"] = "b/c".into();
    let mut old = order("old", &["S"]);
    old["placed_at"] = "1970-01-01T00:00:00Z".into();
    let fine = order("fine", &["S"]);
    broker.produce(
        "orders",
        &keyed(&[huge_quantity, huge_cancel, slash, old, fine]),
    );

    let statuses = statuses(&broker, 4);
    let rejected = &statuses["huge"];
    assert_eq!(rejected["reason"], "invalid_order", "{rejected}");
    let detail = rejected["detail"].as_str().unwrap();
    assert!(
        detail.len() <= MAX_DETAIL_BYTES,
        "detail of {} bytes",
        detail.len()
    );
    assert!(
        detail.starts_with("invalid type: string \"9999"),
        "{detail}"
    );
    let (_, length) = detail.split_once(CUT_MARK).expect("says it was cut");
    let length: usize = length.trim_end_matches(']').parse().unwrap();
    assert!(length > 60_000, "{detail}");
    assert_eq!(statuses["slash"]["reason"], "invalid_order");
    assert!(
        statuses["slash"]["detail"]
            .as_str()
            .unwrap()
            .contains("contains '/'"),
        "{}",
        statuses["slash"]
    );
    assert_eq!(statuses["old"]["status"], "accepted");
    assert_eq!(statuses["fine"]["status"], "accepted");

    let dead = dead_letters(&broker, 2);
    for letter in &dead {
        let detail = header(letter, "error_detail").unwrap();
        assert!(
            detail.len() <= MAX_DETAIL_BYTES,
            "error_detail of {} bytes",
            detail.len()
        );
        assert!(detail.contains(CUT_MARK), "{detail}");
    }
    let sources: Vec<_> = dead
        .iter()
        .map(|m| header(m, "source_topic").unwrap())
        .collect();
    assert!(sources.contains(&"inventory".to_string()) && sources.contains(&"orders".to_string()));

    // Of the decisions with a readable placed_at, "old" is counted apart
    // and only "fine" is in the histogram.
    running.wait_metric("orderflow_order_latency_out_of_range_total", 1.0);
    running.wait_metric("orderflow_order_latency_seconds_count", 1.0);
}
