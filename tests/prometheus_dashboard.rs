//! The monitoring stack against real software: an Apache Kafka broker, the
//! `orderflow` binary serving its metrics, and Debian's Prometheus scraping
//! it every second with the repo's alert rules loaded. Every query of the
//! Grafana dashboard and every alert expression is evaluated through
//! Prometheus' HTTP API while a sale runs; every dashboard query must
//! return data, and the oversold and processor-down alerts must stay quiet.
//! `orderflow run` answers its own capture commands (the simulated
//! adapter, its default), so the payment panels have captures.
//! `promtool` lints the rules and a real scrape.
//!
//! Needs `prometheus` and `promtool` (Debian package `prometheus`) on PATH,
//! or in `$PROMETHEUS_BIN` / `$PROMTOOL_BIN`.

mod common;

use common::{free_port, http_get as get, wait_for, Broker};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const PARTITIONS: i32 = 4;
/// Scrape and rule evaluation interval of the test's Prometheus.
const SCRAPE_INTERVAL: &str = "1s";
/// What Grafana's `$__rate_interval` becomes in the test: ten scrapes.
const RATE_INTERVAL: &str = "10s";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Orders are produced in this many batches, `BATCH_PACE` apart, so the
/// sale lasts long enough for rate() windows to see traffic.
const BATCHES: usize = 30;
const BATCH_PACE: Duration = Duration::from_millis(500);
const VALID_ORDERS: usize = 2_400;
const HOT_ORDERS: usize = 600;
const HOT_STOCK: i64 = 250;
const SKUS: usize = 20;

/// A child process killed (and reaped) when the test ends, however it ends.
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tool from the Debian `prometheus` package: `$VAR`, else on PATH.
fn tool(name: &str, var: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH: install the Debian package `prometheus` \
                 (apt-get install -y --no-install-recommends prometheus), or set ${var}"
            )
        })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    addr: String,
    _process: Guard,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` as job `orderflow` (the job name
    /// the alert rules select) with the repo's alert rules.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let rules = repo().join("prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: orderflow\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus", "PROMETHEUS_BIN"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus {
            addr,
            _process: Guard { child },
        };
        wait_for("prometheus to be ready", START_TIMEOUT, || {
            get(&prometheus.addr, "/-/ready").filter(|(status, _)| *status == 200)
        });
        prometheus
    }

    /// Evaluates `expr` now; panics unless Prometheus answers `success`.
    fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = get(&self.addr, &path).expect("prometheus answers");
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{expr}: HTTP {status}, not JSON ({e}): {body}"));
        assert_eq!(answer["status"], "success", "{expr}: {body}");
        assert_eq!(answer["data"]["resultType"], "vector", "{expr}: {body}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// The single value of a query that yields one series, if it does.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = get(&self.addr, path).expect("prometheus answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Values of a query result that are real numbers (not NaN or ±Inf).
fn finite_values(result: &[Value]) -> usize {
    result
        .iter()
        .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .count()
}

/// Grafana's variables, as the dashboard would substitute them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", SCRAPE_INTERVAL)
        .replace("$__range", "5m")
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

fn price(sku: usize) -> i64 {
    100 + sku as i64 * 7
}

fn order(id: &str, customer: &str, lines: &[(String, i64, i64)]) -> Value {
    let total: i64 = lines.iter().map(|(_, q, p)| q * p).sum();
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unit_price_minor": p, "ship_to": "home"}))
        .collect();
    json!({"type": "order_placed", "order_id": id, "customer_id": customer, "placed_at": now(),
           "currency": "EUR", "lines": lines,
           "addresses": {"home": {"name": "Zoë Ørsted 🏠", "line1": "Hauptstraße 1", "city": "Berlin",
                                  "postal_code": "10115", "country": "DE"}},
           "payments": [{"method": "card", "amount_minor": total, "authorization_id": "auth-1"}]})
}

type Record = (Option<Vec<u8>>, Vec<u8>);

fn record(key: &str, value: Vec<u8>) -> Record {
    (Some(key.as_bytes().to_vec()), value)
}

/// What the sale should end with, per the contract.
struct Expected {
    records: usize,
    out_of_stock: usize,
    dlq: usize,
}

/// Builds one batch of the sale. `placed_at` is the time the batch is built,
/// so decision latency is real. Every batch has accepted orders, hot-SKU
/// orders (accepted until the stock is gone, then out_of_stock), a few
/// rejections of other reasons, cancellations, duplicates and unreadable
/// records, so every panel has something to show while the sale runs.
fn batch(n: usize, expected: &mut Expected) -> Vec<Record> {
    let mut records = Vec::new();
    let per_batch = VALID_ORDERS / BATCHES;
    for i in n * per_batch..(n + 1) * per_batch {
        let id = format!("o-{i}");
        let sku = i % SKUS;
        let value = order(
            &id,
            &format!("c-{i}"),
            &[(format!("SKU-{sku}"), 1 + (i % 3) as i64, price(sku))],
        );
        records.push(record(&id, serde_json::to_vec(&value).unwrap()));
        if i % 20 == 0 {
            // Cancelled after acceptance: same key, so same partition, in order.
            let cancel = json!({"type": "order_cancelled", "order_id": id, "cancelled_at": now(), "reason": "customer_request"});
            records.push(record(&id, serde_json::to_vec(&cancel).unwrap()));
        }
        if i % 25 == 0 {
            // Redelivered placement: counted as a duplicate, not answered again.
            records.push(record(&id, serde_json::to_vec(&value).unwrap()));
        }
    }
    let hot_per_batch = HOT_ORDERS / BATCHES;
    for i in n * hot_per_batch..(n + 1) * hot_per_batch {
        let id = format!("o-hot-{i}");
        let value = order(&id, &format!("c-hot-{i}"), &[("HOT".to_string(), 1, 999)]);
        records.push(record(&id, serde_json::to_vec(&value).unwrap()));
    }
    // One rejection of another kind and one unreadable record per batch.
    let id = format!("o-bad-price-{n}");
    let value = order(&id, "c-bad", &[("SKU-1".to_string(), 1, 1)]);
    records.push(record(&id, serde_json::to_vec(&value).unwrap()));
    records.push(record(&format!("o-garbage-{n}"), b"{not json".to_vec()));
    expected.dlq += 1;
    expected.records += records.len();
    expected.out_of_stock = HOT_ORDERS.saturating_sub(HOT_STOCK as usize);
    records
}

fn inventory() -> Vec<Record> {
    let mut records: Vec<Record> = (0..SKUS)
        .map(|sku| {
            let sku_name = format!("SKU-{sku}");
            let event = json!({"type": "stock_set", "sku": sku_name, "available": 1_000_000, "prices": {"EUR": price(sku)}});
            record(&sku_name, serde_json::to_vec(&event).unwrap())
        })
        .collect();
    let hot =
        json!({"type": "stock_set", "sku": "HOT", "available": HOT_STOCK, "prices": {"EUR": 999}});
    records.push(record("HOT", serde_json::to_vec(&hot).unwrap()));
    records
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool("promtool", "PROMTOOL_BIN"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn dashboard_queries_and_alerts_work_on_real_prometheus() {
    // Fail at once, naming the package, if Prometheus is not installed.
    tool("prometheus", "PROMETHEUS_BIN");
    tool("promtool", "PROMTOOL_BIN");

    let (ok, out) = promtool(
        &[
            "check",
            "rules",
            repo().join("prometheus/alerts.yml").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check rules:\n{out}"
    );

    let dir = std::env::temp_dir().join(format!(
        "orderflow-prometheus-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();

    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    broker.produce("inventory", &inventory());

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let log_path = dir.join("orderflow.log");
    let mut processor = Guard {
        child: Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["run", "--brokers", &broker.addr()])
            .args(["--set", &format!("metrics.listen={metrics_addr}")])
            .args(["--set", "metrics.watched_skus=[\"HOT\", \"SKU-1\"]"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("starting orderflow"),
    };
    let health = wait_for("orderflow /health", START_TIMEOUT, || {
        get(&metrics_addr, "/health")
    });
    assert_eq!(health.0, 200, "/health: {health:?}");
    wait_for(
        &format!("orderflow /ready (log: {})", log_path.display()),
        START_TIMEOUT,
        || get(&metrics_addr, "/ready").filter(|(status, _)| *status == 200),
    );
    let (status, _) = get(&metrics_addr, "/nowhere").unwrap();
    assert_eq!(status, 404);

    let prometheus = Prometheus::start(&dir, &metrics_addr);
    wait_for("five scrapes of orderflow", START_TIMEOUT, || {
        prometheus
            .scalar("count_over_time(up{job=\"orderflow\"}[1m])")
            .filter(|n| *n >= 5.0)
    });
    assert_eq!(prometheus.scalar("up{job=\"orderflow\"}"), Some(1.0));

    // Batches are deterministic but for placed_at; count them once here,
    // and build each again right before it is sent, so latency is real.
    let mut expected = Expected {
        records: 0,
        out_of_stock: 0,
        dlq: 0,
    };
    for n in 0..BATCHES {
        batch(n, &mut expected);
    }
    std::thread::scope(|scope| {
        let sale = scope.spawn(|| {
            let start = Instant::now();
            let mut sent = Expected {
                records: 0,
                out_of_stock: 0,
                dlq: 0,
            };
            for n in 0..BATCHES {
                // Pace the batches: a steady sale, not one burst.
                let due = start + BATCH_PACE * n as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                broker.produce("orders", &batch(n, &mut sent));
            }
            assert_eq!(sent.records, expected.records);
        });

        // While the sale runs: enough decided orders and scrapes for every
        // rate() window, then every dashboard query must return data.
        wait_for(
            "a third of the sale decided, seen by prometheus",
            QUERY_TIMEOUT,
            || {
                prometheus
                    .scalar("sum(orderflow_orders_total)")
                    .filter(|n| *n >= (expected.records / 3) as f64)
            },
        );
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("grafana/dashboards/flash-sale.json")).unwrap(),
        )
        .unwrap();
        let mut queries = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().unwrap());
                assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
                wait_for(
                    &format!("data for panel {:?}: {expr}", panel["title"]),
                    QUERY_TIMEOUT,
                    || (finite_values(&prometheus.query(&expr)) > 0).then_some(()),
                );
                queries += 1;
            }
        }
        assert!(queries >= 15, "only {queries} dashboard queries");
        sale.join().expect("producing the sale");
    });
    assert!(
        prometheus
            .scalar("sum(orderflow_payment_captures_total{outcome=\"succeeded\"})")
            .unwrap()
            > 0.0,
        "the answered captures are counted"
    );

    // Every order of the sale is counted exactly once, by outcome.
    wait_for(
        "every record counted in orderflow_orders_total",
        DRAIN_TIMEOUT,
        || {
            prometheus
                .scalar("sum(orderflow_orders_total)")
                .filter(|n| *n == expected.records as f64)
        },
    );
    wait_for(
        "the hot SKU sold out, as the watched-SKU gauge shows",
        QUERY_TIMEOUT,
        || {
            prometheus
                .scalar("orderflow_inventory_available_units{sku=\"HOT\"}")
                .filter(|n| *n == 0.0)
        },
    );
    // Beside the watched SKUs, the automatic set of the hottest SKUs: the
    // top HOT_SKUS (10) by units sold, bounded over the process's life.
    let stock = prometheus.query("orderflow_inventory_available_units");
    let automatic = stock
        .iter()
        .filter(|s| !["HOT", "SKU-1"].contains(&s["metric"]["sku"].as_str().unwrap_or_default()))
        .count();
    assert!(
        (orderflow::telemetry::HOT_SKUS - 2..=orderflow::telemetry::HOT_SKU_SERIES_MAX)
            .contains(&automatic),
        "{automatic} automatic stock series: {stock:?}"
    );
    assert_eq!(
        prometheus.scalar("sum(orderflow_orders_rejected_total{reason=\"out_of_stock\"})"),
        Some(expected.out_of_stock as f64)
    );
    assert_eq!(
        prometheus.scalar("sum(orderflow_orders_total{outcome=\"dlq\"})"),
        Some(expected.dlq as f64)
    );
    assert_eq!(
        prometheus.scalar("sum(orderflow_dlq_records_total{error=\"not_json\"})"),
        Some(expected.dlq as f64)
    );
    assert!(
        prometheus
            .scalar("sum(orderflow_orders_total{outcome=\"duplicate\"})")
            .unwrap()
            > 0.0
    );
    assert!(
        prometheus
            .scalar("sum(orderflow_orders_total{outcome=\"cancelled\"})")
            .unwrap()
            > 0.0
    );
    assert!(
        prometheus
            .scalar("orderflow_processing_seconds_count")
            .unwrap()
            >= expected.records as f64
    );
    // Once everything is decided and committed, the lag gauges go back to 0.
    wait_for(
        "consumer lag back to 0 after the sale",
        DRAIN_TIMEOUT,
        || {
            prometheus
                .scalar("sum(max by (partition) (orderflow_consumer_lag_messages))")
                .filter(|lag| *lag == 0.0)
        },
    );
    assert_eq!(
        prometheus.query("orderflow_consumer_lag_messages").len(),
        PARTITIONS as usize,
        "one lag series per partition"
    );

    // Alert rules: all loaded and evaluated without error; every expression
    // is valid PromQL; the oversold and processor-down alerts stay quiet.
    let alerts = alert_rules();
    wait_for(
        "every alert rule evaluated with health ok",
        QUERY_TIMEOUT,
        || {
            let rules = prometheus.api("/api/v1/rules");
            let loaded: Vec<&Value> = rules["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap())
                .collect();
            (loaded.len() == alerts.len() && loaded.iter().all(|r| r["health"] == "ok"))
                .then_some(())
        },
    );
    for (name, expr) in &alerts {
        let result = prometheus.query(expr);
        if name.contains("Oversold") || name.contains("ProcessorDown") {
            assert!(result.is_empty(), "{name} would fire: {result:?}");
        }
    }
    let firing = prometheus.api("/api/v1/alerts");
    for alert in firing["data"]["alerts"].as_array().unwrap() {
        let name = alert["labels"]["alertname"].as_str().unwrap();
        assert!(
            !name.contains("Oversold") && !name.contains("ProcessorDown"),
            "{name} is {}",
            alert["state"]
        );
    }

    // promtool lints a real scrape: names, help texts, counter suffixes.
    let (status, scrape) = get(&metrics_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        scrape.contains("orderflow_order_latency_seconds_bucket{le=\"0.01\"}"),
        "a real histogram"
    );
    let (ok, out) = promtool(&["check", "metrics"], Some(&scrape));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );

    // Graceful stop: /ready turns 503 as soon as shutdown starts, while the
    // process still flushes; then it exits 0. The 503 is observed whatever
    // the shutdown's length: a request the listener accepted before the
    // stop is answered before it closes. So one is held open, its head
    // unfinished: accepted once a later probe was answered (the listener
    // accepts in order).
    let mut pending = std::net::TcpStream::connect(&metrics_addr).unwrap();
    write!(pending, "GET /ready HTTP/1.1\r\nHost: {metrics_addr}\r\n").unwrap();
    assert_eq!(get(&metrics_addr, "/health").map(|(s, _)| s), Some(200));
    let pid = processor.child.id() as libc::pid_t;
    // SAFETY: signals our own child, which is not yet reaped (so the pid is
    // still its own).
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "SIGTERM to orderflow"
    );
    let seen = wait_for(
        "orderflow to stop being ready",
        START_TIMEOUT,
        || match get(&metrics_addr, "/ready") {
            Some((200, _)) => None,
            other => Some(other.map(|(status, _)| status)),
        },
    );
    let seen = match seen {
        Some(status) => {
            println!("/ready answered {status} to a new probe during shutdown");
            status
        }
        // The listener closed before a new probe got in: the request it
        // accepted before the stop still gets its answer.
        None => {
            pending.write_all(b"\r\n").unwrap();
            let mut answer = String::new();
            pending
                .set_read_timeout(Some(START_TIMEOUT))
                .and_then(|()| std::io::Read::read_to_string(&mut pending, &mut answer))
                .unwrap_or_else(|e| panic!("the accepted /ready got no answer: {e}"));
            println!("the listener closed; the request it accepted before got: {answer:?}");
            answer
                .split_whitespace()
                .nth(1)
                .and_then(|status| status.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
        }
    };
    assert_eq!(seen, 503, "/ready during shutdown");
    let exit = wait_for("orderflow to exit", DRAIN_TIMEOUT, || {
        processor.child.try_wait().unwrap()
    });
    assert!(
        exit.success(),
        "orderflow exited with {exit} (log: {})",
        log_path.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Alert names and expressions from prometheus/alerts.yml.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("prometheus/alerts.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let mut alerts = Vec::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            alerts.push((
                rule["alert"].as_str().unwrap().to_string(),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    alerts
}
