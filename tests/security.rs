//! orderflow on a secured listener: a Kafka broker with a SASL_SSL
//! listener (SCRAM-SHA-512 users created when the broker is formatted,
//! TLS from a CA this test makes with openssl; nothing committed) and the
//! `StandardAuthorizer`. The broker's own PLAINTEXT listener (loopback,
//! for the harness) and the `admin` user are super users; `orderflow` has
//! exactly the least-privilege ACL set of docs/security.md, read from
//! that page. orderflow decides a small sale there; a wrong password and
//! a missing write ACL each make it stop within a deadline, with an error
//! naming the setting or the ACL, not hang or retry.

mod common;

use common::{wait_for, Broker, KafkaOptions};
use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const ORDERS: usize = 200;
/// Every third order wants one unit of HOT: 67 units of demand.
const HOT_STOCK: i64 = 30;
const ADMIN_PASSWORD: &str = "admin-secret";
const PASSWORD: &str = "orderflow-secret";
/// The keystore's password (the test's own, throwaway).
const KEYSTORE_PASSWORD: &str = "changeit";
/// How long a misconfigured orderflow may take to stop: its start (a few
/// seconds here) plus one commit interval, with room for a loaded machine.
/// A retry loop or a hang would run into it.
const FAIL_FAST: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(120);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[&str], dir: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a broker certificate it signed for 127.0.0.1 and localhost
/// in a PKCS12 keystore: `ca.pem` and `broker.p12` in a fresh directory.
fn make_tls() -> TempDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orderflow-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=orderflow test CA",
        ],
    ]
    .concat();
    run("openssl", &ca, &dir);
    let csr = [
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat();
    run("openssl", &csr, &dir);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "broker.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
        &dir,
    );
    let password = format!("pass:{KEYSTORE_PASSWORD}");
    run(
        "openssl",
        &[
            "pkcs12",
            "-export",
            "-in",
            "broker.pem",
            "-inkey",
            "broker.key",
            "-certfile",
            "ca.pem",
            "-name",
            "broker",
            "-out",
            "broker.p12",
            "-passout",
            &password,
        ],
        &dir,
    );
    TempDir(dir)
}

/// A broker with a SASL_SSL listener on `extra_port`, SCRAM users `admin`
/// and `orderflow`, and ACLs enforced.
fn secured_broker(tls: &Path) -> Broker {
    let keystore = tls.join("broker.p12");
    let properties = vec![
        "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},SASL_SSL://127.0.0.1:{extra_port}".to_string(),
        "advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},SASL_SSL://127.0.0.1:{extra_port}".to_string(),
        "sasl.enabled.mechanisms=SCRAM-SHA-512".to_string(),
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;".to_string(),
        format!("listener.name.sasl_ssl.ssl.keystore.location={}", keystore.display()),
        "listener.name.sasl_ssl.ssl.keystore.type=PKCS12".to_string(),
        format!("listener.name.sasl_ssl.ssl.keystore.password={KEYSTORE_PASSWORD}"),
        format!("listener.name.sasl_ssl.ssl.key.password={KEYSTORE_PASSWORD}"),
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer".to_string(),
        // PLAINTEXT is the broker's own (inter-broker, the controller's
        // clients) and the harness's: loopback only, principal ANONYMOUS.
        "super.users=User:ANONYMOUS;User:admin".to_string(),
        "allow.everyone.if.no.acl.found=false".to_string(),
    ];
    let format_args = [("admin", ADMIN_PASSWORD), ("orderflow", PASSWORD)]
        .iter()
        .flat_map(|(name, password)| {
            [
                "--add-scram".to_string(),
                format!("SCRAM-SHA-512=[name={name},password={password}]"),
            ]
        })
        .collect();
    Broker::start_kafka(&KafkaOptions {
        properties,
        format_args,
    })
}

/// librdkafka settings of a client on the SASL_SSL listener.
fn secured_client(broker: &Broker, tls: &Path, user: &str, password: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set(
            "bootstrap.servers",
            format!("127.0.0.1:{}", broker.extra_port),
        )
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set(
            "ssl.ca.location",
            tls.join("ca.pem").to_string_lossy().as_ref(),
        );
    config
}

/// One row of docs/security.md's ACL table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acl {
    resource: String,
    name: String,
    pattern: String,
    operation: String,
}

/// The ACL table of docs/security.md, row by row.
fn documented_acls() -> Vec<Acl> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    let table = page
        .split("## The least-privilege ACL set")
        .nth(1)
        .expect("a section \"The least-privilege ACL set\"");
    let acls: Vec<Acl> = table
        .lines()
        .skip_while(|line| !line.starts_with("| resource |"))
        .skip(2) // header and separator
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            Acl {
                resource: cells[0].into(),
                name: cells[1].into(),
                pattern: cells[2].into(),
                operation: cells[3].into(),
            }
        })
        .collect();
    assert!(
        acls.len() >= 5,
        "an ACL table in docs/security.md: {acls:?}"
    );
    acls
}

/// Grants `acls` to `principal` through the Admin API (CreateAcls, which
/// rust-rdkafka does not wrap: librdkafka's C API directly).
fn grant(admin: &AdminClient<DefaultClientContext>, principal: &str, acls: &[Acl]) {
    use rd::rd_kafka_AclOperation_t as Op;
    use rd::rd_kafka_ResourcePatternType_t as Pattern;
    use rd::rd_kafka_ResourceType_t as Resource;
    let principal = CString::new(principal).unwrap();
    let host = CString::new("*").unwrap();
    let mut errstr = [0 as std::ffi::c_char; 512];
    let mut bindings: Vec<*mut rd::rd_kafka_AclBinding_t> = acls
        .iter()
        .map(|acl| {
            let resource = match acl.resource.as_str() {
                "topic" => Resource::RD_KAFKA_RESOURCE_TOPIC,
                "group" => Resource::RD_KAFKA_RESOURCE_GROUP,
                "transactional-id" => Resource::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
                other => panic!("resource type {other}"),
            };
            let pattern = match acl.pattern.as_str() {
                "literal" => Pattern::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                "prefixed" => Pattern::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
                other => panic!("pattern type {other}"),
            };
            let operation = match acl.operation.as_str() {
                "Read" => Op::RD_KAFKA_ACL_OPERATION_READ,
                "Write" => Op::RD_KAFKA_ACL_OPERATION_WRITE,
                "Describe" => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE,
                "DescribeConfigs" => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
                "IdempotentWrite" => Op::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
                other => panic!("operation {other}"),
            };
            let name = CString::new(acl.name.as_str()).unwrap();
            // SAFETY: every pointer is valid for the call; librdkafka copies
            // the strings.
            let binding = unsafe {
                rd::rd_kafka_AclBinding_new(
                    resource,
                    name.as_ptr(),
                    pattern,
                    principal.as_ptr(),
                    host.as_ptr(),
                    operation,
                    rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                    errstr.as_mut_ptr(),
                    errstr.len(),
                )
            };
            assert!(!binding.is_null(), "{acl:?}: {}", unsafe {
                CStr::from_ptr(errstr.as_ptr()).to_string_lossy()
            });
            binding
        })
        .collect();
    let rk = admin.inner().native_ptr();
    // SAFETY: `rk` outlives the call; the queue, options, event and
    // bindings are created here and destroyed once, below.
    let errors = unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
        );
        rd::rd_kafka_CreateAcls(rk, bindings.as_mut_ptr(), bindings.len(), options, queue);
        let event = rd::rd_kafka_queue_poll(queue, TIMEOUT.as_millis() as i32);
        assert!(!event.is_null(), "no CreateAcls result within {TIMEOUT:?}");
        let mut errors = Vec::new();
        if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            errors.push(
                CStr::from_ptr(rd::rd_kafka_event_error_string(event))
                    .to_string_lossy()
                    .into_owned(),
            );
        } else {
            let result = rd::rd_kafka_event_CreateAcls_result(event);
            let mut count = 0;
            let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
            for (i, acl) in acls.iter().enumerate().take(count) {
                let error = rd::rd_kafka_acl_result_error(*results.add(i));
                if !error.is_null() {
                    errors.push(format!(
                        "{acl:?}: {}",
                        CStr::from_ptr(rd::rd_kafka_error_string(error)).to_string_lossy()
                    ));
                }
            }
        }
        rd::rd_kafka_event_destroy(event);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AclBinding_destroy_array(bindings.as_mut_ptr(), bindings.len());
        errors
    };
    assert!(errors.is_empty(), "CreateAcls failed: {errors:?}");
}

fn hot(i: usize) -> bool {
    i.is_multiple_of(3)
}

fn order(i: usize) -> Value {
    let mut lines =
        vec![json!({"sku": "SKU-1", "quantity": 1, "unit_price_minor": 100, "ship_to": "home"})];
    let mut total = 100;
    if hot(i) {
        lines
            .push(json!({"sku": "HOT", "quantity": 1, "unit_price_minor": 999, "ship_to": "home"}));
        total += 999;
    }
    json!({"type": "order_placed", "order_id": format!("o-{i}"), "customer_id": format!("c-{i}"),
           "placed_at": "2026-11-23T12:00:00Z", "currency": "USD", "lines": lines,
           "addresses": {"home": {"name": "Ada", "line1": "1 Main St", "city": "Springfield",
                                  "postal_code": "12345", "country": "US"}},
           "payments": [{"method": "card", "amount_minor": total, "authorization_id": "a"}]})
}

/// orderflow with a config file for the SASL_SSL listener.
fn orderflow(
    broker: &Broker,
    tls: &Path,
    password: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let config = tls.join(format!("orderflow-{password}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:{port}"

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "orderflow"
"sasl.password" = "{password}"
"ssl.ca.location" = "{ca}"

[metrics]
enabled = false

[log]
level = "warn"
"#,
            port = broker.extra_port,
            ca = tls.join("ca.pem").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting orderflow");
    let mut stderr = child.stderr.take().unwrap();
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    (child, collector)
}

/// Runs orderflow with `password` and expects it to stop on its own
/// within [`FAIL_FAST`], with an error; returns the error line and how
/// long it took.
fn fails_fast(broker: &Broker, tls: &Path, password: &str) -> (String, Duration) {
    let started = Instant::now();
    let (mut child, stderr) = orderflow(broker, tls, password);
    let status = wait_for("orderflow to stop on its own", FAIL_FAST, || {
        child.try_wait().unwrap()
    });
    let took = started.elapsed();
    let stderr = stderr.join().unwrap();
    assert!(!status.success(), "orderflow exited 0:\n{stderr}");
    let error = stderr
        .lines()
        .rfind(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"))
        .to_string();
    (error, took)
}

#[test]
fn least_privilege_sale_on_sasl_ssl_and_fast_failures() {
    let tls = make_tls();
    let broker = secured_broker(&tls.0);
    broker.create_contract_topics(PARTITIONS);
    let inventory = [
        json!({"type": "stock_set", "sku": "SKU-1", "available": 100_000, "prices": {"USD": 100}}),
        json!({"type": "stock_set", "sku": "HOT", "available": HOT_STOCK, "prices": {"USD": 999}}),
    ];
    broker.produce("inventory", &common::inventory_records(&inventory));
    let orders: Vec<_> = (0..ORDERS)
        .map(|i| {
            (
                Some(format!("o-{i}").into_bytes()),
                serde_json::to_vec(&order(i)).unwrap(),
            )
        })
        .collect();
    broker.produce("orders", &orders);

    // A wrong password: the brokers refuse the SCRAM handshake.
    let (error, took) = fails_fast(&broker, &tls.0, "not-the-password");
    println!("wrong password: stopped after {took:?}: {error}");
    assert!(
        error.contains("sasl.password") && error.contains("sasl.username"),
        "the error names the settings to check: {error}"
    );

    // The documented set but two rows, granted one at a time: a missing
    // Write ACL on a topic, then a missing one on the transactional IDs.
    let admin: AdminClient<DefaultClientContext> =
        secured_client(&broker, &tls.0, "admin", ADMIN_PASSWORD)
            .create()
            .unwrap();
    let acls = documented_acls();
    let row = |resource: &str, name: &str, operation: &str| {
        let found: Vec<Acl> = acls
            .iter()
            .filter(|a| a.resource == resource && a.name == name && a.operation == operation)
            .cloned()
            .collect();
        assert_eq!(
            found.len(),
            1,
            "docs/security.md: one row {resource} {name} {operation}"
        );
        found[0].clone()
    };
    let status_write = row("topic", "order-status", "Write");
    let transactional_write = row("transactional-id", "orderflow-", "Write");
    let granted: Vec<Acl> = acls
        .iter()
        .filter(|a| **a != status_write && **a != transactional_write)
        .cloned()
        .collect();
    grant(&admin, "User:orderflow", &granted);
    let (error, took) = fails_fast(&broker, &tls.0, PASSWORD);
    println!("no Write ACL on order-status: stopped after {took:?}: {error}");
    assert!(
        error.contains("Write on topic order-status") && error.contains("ACL"),
        "the error names the topic and the ACL: {error}"
    );

    grant(&admin, "User:orderflow", &[status_write]);
    let (error, took) = fails_fast(&broker, &tls.0, PASSWORD);
    println!("no Write ACL on the transactional IDs: stopped after {took:?}: {error}");
    assert!(
        error.contains("Write on transactional-id") && error.contains("ACL"),
        "the error names the transactional ID and the ACL: {error}"
    );

    // With the whole documented set the sale is decided.
    grant(&admin, "User:orderflow", &[transactional_write]);
    let started = Instant::now();
    let (mut child, stderr) = orderflow(&broker, &tls.0, PASSWORD);
    let consumer = broker.committed_reader("order-status");
    let mut statuses: HashMap<String, Vec<String>> = HashMap::new();
    wait_for("a committed status for every order", TIMEOUT, || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("orderflow exited with {status}");
        }
        while let Some(message) = consumer.poll(Duration::from_millis(50)) {
            let message = message.expect("consuming").detach();
            let v = common::json(&message);
            statuses
                .entry(v["order_id"].as_str().unwrap().to_string())
                .or_default()
                .push(format!(
                    "{}/{}",
                    v["status"].as_str().unwrap(),
                    v["reason"].as_str().unwrap_or("-")
                ));
        }
        (statuses.len() >= ORDERS).then_some(())
    });
    println!("the sale was decided {:?} after start", started.elapsed());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_for("orderflow to exit after SIGTERM", TIMEOUT, || {
        child.try_wait().unwrap()
    });
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "orderflow exited with {status}:\n{stderr}"
    );
    // The documented set is complete: nothing was refused on the way.
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|line| line.to_lowercase().contains("authorization failed"))
        .collect();
    assert!(
        refused.is_empty(),
        "refused with the documented ACLs: {refused:#?}"
    );
    let mut hot_accepted = 0;
    for i in 0..ORDERS {
        let id = format!("o-{i}");
        let got = &statuses[&id];
        assert_eq!(got.len(), 1, "{id}: {got:?}");
        match (hot(i), got[0].as_str()) {
            (true, "accepted/-") => hot_accepted += 1,
            (true, "rejected/out_of_stock") | (false, "accepted/-") => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(
        hot_accepted, HOT_STOCK,
        "the hot SKU sells exactly its stock"
    );
    // Every order is committed: per partition, past its last order (the
    // payment adapter's results follow the orders on the same partitions,
    // and the last of them may come after the processor's last commit).
    let committed = broker.committed_offsets("orderflow", "orders");
    let mut last_order: HashMap<i32, i64> = HashMap::new();
    for message in broker.read_to_end("orders") {
        if common::json(&message)["type"] == "order_placed" {
            let last = last_order.entry(message.partition()).or_default();
            *last = (*last).max(message.offset());
        }
    }
    assert_eq!(
        last_order.len(),
        PARTITIONS as usize,
        "orders on every partition"
    );
    for (partition, last) in &last_order {
        let at = committed.get(partition).copied().flatten();
        assert!(
            at.is_some_and(|at| at > *last),
            "the group committed partition {partition} to {at:?}, not past its last order at {last}"
        );
    }
}
