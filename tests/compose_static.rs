//! docker-compose.yml, the Dockerfile, Prometheus' and Grafana's files,
//! checked without Docker: everything a `docker compose up` would trip over
//! that can be seen from the files alone.

use orderflow::config::{Config, Layers};
use orderflow::telemetry;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let full = repo().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

fn yaml(path: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one YAML document");
    docs.remove(0)
}

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn services(compose: &Yaml) -> Vec<(String, Yaml)> {
    let services = compose["services"]
        .as_hash()
        .expect("docker-compose.yml has services");
    services
        .iter()
        .map(|(name, service)| {
            (
                name.as_str().expect("service name").to_string(),
                service.clone(),
            )
        })
        .collect()
}

fn service(compose: &Yaml, name: &str) -> Yaml {
    services(compose)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no service {name:?}"))
        .1
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `environment` as a map or a list of `KEY=value`.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    let env = &service["environment"];
    if let Some(map) = env.as_hash() {
        map.iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("environment value {other:?}: quote it"),
                };
                (k.as_str().unwrap().to_string(), value)
            })
            .collect()
    } else {
        strings(env)
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("KEY=value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

#[test]
fn every_service_has_a_pinned_image_or_a_build() {
    let compose = compose();
    let services = services(&compose);
    assert!(
        services.len() >= 6,
        "kafka, kafka-init, orderflow, loadtest, prometheus, grafana"
    );
    for (name, service) in &services {
        if !service["build"].is_badvalue() {
            let context = service["build"]["context"].as_str().unwrap_or(".");
            let dockerfile = service["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile");
            let path = repo().join(context).join(dockerfile);
            assert!(path.is_file(), "{name}: {} is missing", path.display());
            continue;
        }
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: neither image nor build"));
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
        assert!(
            image.contains("@sha256:")
                || (tag != "latest" && tag.chars().any(|c| c.is_ascii_digit())),
            "{name}: image {image} is not pinned to a version"
        );
    }
}

#[test]
fn dockerfile_builds_in_stages_on_pinned_images() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].contains("rust:1.95"),
        "builder on rust:1.95: {froms:?}"
    );
    assert!(froms.last().unwrap().contains("debian:") && froms.last().unwrap().contains("slim"));
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(image.contains(':') && !image.ends_with(":latest"), "{from}");
    }
    assert!(
        dockerfile.contains("cmake"),
        "librdkafka's bundled build needs cmake"
    );
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
}

#[test]
fn long_running_services_have_health_checks_and_dependencies_wait_for_them() {
    let compose = compose();
    let services = services(&compose);
    let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for (name, service) in &services {
        let one_shot = service["restart"].as_str() == Some("no");
        if !one_shot {
            let test = &service["healthcheck"]["test"];
            assert!(!test.is_badvalue(), "{name}: no healthcheck");
        }
        if let Some(deps) = service["depends_on"].as_hash() {
            for (dep, spec) in deps {
                let dep = dep.as_str().unwrap();
                assert!(names.contains(dep), "{name} depends on unknown {dep}");
                let condition = spec["condition"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} → {dep}: give a condition"));
                let target = service_named(&services, dep);
                match condition {
                    "service_healthy" => assert!(
                        !target["healthcheck"].is_badvalue(),
                        "{name} waits for {dep} to be healthy, but it has no healthcheck"
                    ),
                    "service_completed_successfully" => assert_eq!(
                        target["restart"].as_str(),
                        Some("no"),
                        "{name} waits for {dep} to complete: make it one-shot"
                    ),
                    other => panic!("{name} → {dep}: condition {other} waits for nothing"),
                }
            }
        } else {
            assert!(
                service["depends_on"].is_badvalue(),
                "{name}: depends_on as a map with conditions"
            );
        }
    }
    let orderflow = service(&compose, "orderflow");
    let probe = strings(&orderflow["healthcheck"]["test"]).join(" ");
    assert!(
        probe.contains("/ready"),
        "orderflow is healthy when ready: {probe}"
    );
}

fn service_named(services: &[(String, Yaml)], name: &str) -> Yaml {
    services.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

#[test]
fn every_mounted_host_path_exists_in_the_repo() {
    let compose = compose();
    let mut mounts = 0;
    for (name, service) in services(&compose) {
        for volume in strings(&service["volumes"]) {
            let host = volume.split(':').next().unwrap();
            if host.starts_with('.') || host.starts_with('/') {
                assert!(
                    host.starts_with("./"),
                    "{name}: mount {host} relative to the repo"
                );
                assert!(repo().join(host).exists(), "{name}: {host} does not exist");
                mounts += 1;
            } else {
                let declared = &compose["volumes"][host];
                assert!(
                    !declared.is_badvalue(),
                    "{name}: named volume {host} is not declared"
                );
            }
        }
    }
    assert!(
        mounts >= 4,
        "prometheus config, rules, grafana provisioning, dashboards"
    );
}

/// `KAFKA_VERSION=` in scripts/kafka.sh: the Kafka the tests run.
fn tested_kafka_version() -> String {
    read("scripts/kafka.sh")
        .lines()
        .find_map(|line| line.strip_prefix("KAFKA_VERSION="))
        .expect("scripts/kafka.sh pins KAFKA_VERSION")
        .trim()
        .to_string()
}

#[test]
fn compose_runs_the_kafka_version_the_tests_run() {
    let version = tested_kafka_version();
    let compose = compose();
    for name in ["kafka", "kafka-init"] {
        let image = service(&compose, name)["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: an image"))
            .to_string();
        assert_eq!(
            image,
            format!("apache/kafka:{version}"),
            "{name} runs the Kafka of scripts/kafka.sh"
        );
    }
    // The single-node settings the harness gives Kafka 4 (scripts/kafka.sh).
    let env = environment(&service(&compose, "kafka"));
    for key in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ] {
        assert!(
            env.iter().any(|(k, v)| k == key && v == "1"),
            "kafka: {key}=1 on one node"
        );
    }
}

#[test]
fn kafka_init_creates_every_contract_topic_with_explicit_partitions() {
    let compose = compose();
    let init = service(&compose, "kafka-init");
    let image = init["image"].as_str().unwrap();
    assert!(image.starts_with("apache/kafka:"), "{image}");
    let script = strings(&init["command"]).join("\n");
    assert!(script.contains("kafka-topics.sh"));
    let topics = Config::defaults().topics;
    let created = |topic: &str| {
        let line = script
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["create", topic]))
            .unwrap_or_else(|| panic!("kafka-init does not create {topic}"));
        let partitions: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(partitions >= 1, "{line}");
        (partitions, line.to_string())
    };
    for topic in [&topics.inventory, &topics.dlq] {
        created(topic);
    }
    // The processor refuses to start unless each topic an orders
    // partition writes by number has as many partitions as `orders`.
    let (orders, _) = created(&topics.orders);
    for topic in [
        &topics.status,
        &topics.fulfillments,
        &topics.events,
        &topics.payment_requests,
        &topics.state,
    ] {
        let (partitions, line) = created(topic);
        assert!(partitions >= orders, "{line}: fewer partitions than orders");
    }
    let (_, state) = created(&topics.state);
    assert!(
        state.contains("cleanup.policy=compact"),
        "the changelog is compacted: {state}"
    );
    let kafka = service(&compose, "kafka");
    let env = environment(&kafka);
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert!(
        get("KAFKA_PROCESS_ROLES").is_some_and(|r| r.contains("controller")),
        "KRaft"
    );
    assert_eq!(get("KAFKA_AUTO_CREATE_TOPICS_ENABLE"), Some("false"));
}

#[test]
fn orderflow_config_from_the_environment_is_valid() {
    let compose = compose();
    let orderflow = service(&compose, "orderflow");
    let env = environment(&orderflow);
    let mut layers = Layers::defaults();
    layers.env(env.clone());
    let config = layers
        .build()
        .unwrap_or_else(|e| panic!("orderflow's environment in docker-compose.yml:\n{e}"));
    assert_eq!(config.kafka.brokers, "kafka:9092");
    assert!(
        config.metrics.listen.starts_with("0.0.0.0:"),
        "reachable from Prometheus"
    );
    assert!(
        !config.metrics.watched_skus.is_empty(),
        "the dashboard shows watched SKUs"
    );
    let command = strings(&service(&compose, "loadtest")["command"]);
    assert_eq!(command[0], "loadtest");
    let brokers = command
        .iter()
        .position(|a| a == "--brokers")
        .expect("--brokers");
    assert_eq!(command[brokers + 1], "kafka:9092");
}

#[test]
fn prometheus_scrapes_compose_services_and_loads_the_mounted_rules() {
    let compose = compose();
    let names: BTreeSet<String> = services(&compose).into_iter().map(|(n, _)| n).collect();
    let prometheus = yaml("prometheus/prometheus.yml");
    let mut targets = 0;
    for job in prometheus["scrape_configs"]
        .as_vec()
        .expect("scrape_configs")
    {
        for config in job["static_configs"].as_vec().expect("static_configs") {
            for target in strings(&config["targets"]) {
                let (host, port) = target.rsplit_once(':').expect("host:port");
                assert!(
                    names.contains(host),
                    "scrape target {target}: {host} is no compose service"
                );
                if host == "orderflow" {
                    let env = environment(&service(&compose, "orderflow"));
                    let listen = &env
                        .iter()
                        .find(|(k, _)| k == "ORDERFLOW__METRICS__LISTEN")
                        .unwrap()
                        .1;
                    assert!(
                        listen.ends_with(&format!(":{port}")),
                        "{target} vs listen {listen}"
                    );
                    assert_eq!(
                        job["job_name"].as_str(),
                        Some("orderflow"),
                        "alerts select job=\"orderflow\""
                    );
                }
                targets += 1;
            }
        }
    }
    assert!(targets >= 1);
    let mounts = strings(&service(&compose, "prometheus")["volumes"]);
    for rules in strings(&prometheus["rule_files"]) {
        assert!(
            mounts
                .iter()
                .any(|m| m.split(':').nth(1) == Some(rules.as_str())),
            "rule file {rules} is not mounted"
        );
    }
}

/// Every PromQL expression of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().expect("targets") {
            queries.push((
                title.clone(),
                target["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    queries
}

/// Every alert rule's expression.
fn alert_expressions() -> Vec<(String, String)> {
    let rules = yaml("prometheus/alerts.yml");
    let mut exprs = Vec::new();
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .expect("alert rules only")
                .to_string();
            exprs.push((name, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    exprs
}

/// `orderflow_…` names a PromQL expression refers to.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("orderflow_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_provisions_the_datasource_and_the_dashboard_uses_it() {
    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let sources = datasources["datasources"].as_vec().expect("datasources");
    assert_eq!(sources.len(), 1);
    let uid = sources[0]["uid"].as_str().expect("a fixed uid");
    assert_eq!(sources[0]["type"].as_str(), Some("prometheus"));
    let url = sources[0]["url"].as_str().unwrap();
    assert!(
        url.contains("//prometheus:9090"),
        "{url}: the compose service"
    );

    let providers = yaml("grafana/provisioning/dashboards/orderflow.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let grafana = service(&compose(), "grafana");
    let mounts = strings(&grafana["volumes"]);
    let mount = mounts
        .iter()
        .find(|m| m.split(':').nth(1) == Some(path))
        .unwrap_or_else(|| panic!("dashboards path {path} is not mounted"));
    let host_dir = repo().join(mount.split(':').next().unwrap());
    assert!(mounts
        .iter()
        .any(|m| m.split(':').nth(1) == Some("/etc/grafana/provisioning")));

    let dashboards: Vec<PathBuf> = std::fs::read_dir(&host_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!dashboards.is_empty());
    for file in dashboards {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        assert!(dashboard["uid"].is_string(), "a fixed dashboard uid");
        let panels = dashboard["panels"].as_array().unwrap();
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some(uid),
                "panel {title}"
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    target["datasource"]["uid"].as_str(),
                    Some(uid),
                    "panel {title}"
                );
            }
        }
    }
}

#[test]
fn dashboard_has_the_panels_a_sale_needs() {
    let dashboard: Value =
        serde_json::from_str(&read("grafana/dashboards/flash-sale.json")).unwrap();
    assert_eq!(dashboard["title"], "Flash sale");
    let queries = dashboard_queries(&dashboard);
    let uses = |metric: &str| queries.iter().any(|(_, q)| q.contains(metric));
    for metric in [
        "orderflow_orders_total",
        "orderflow_orders_rejected_total",
        "orderflow_order_latency_seconds_bucket",
        "orderflow_consumer_lag_messages",
        "orderflow_shard_queue_depth",
        "orderflow_inventory_available_units",
        "orderflow_oversold_units",
        "orderflow_dlq_records_total",
        "orderflow_kafka_errors_total",
        "orderflow_payment_captures_total",
        "orderflow_payment_retries_total",
        "orderflow_payments_attention",
        "orderflow_payment_capture_seconds_bucket",
        "orderflow_inputs_rejected_total",
    ] {
        assert!(uses(metric), "no panel shows {metric}");
    }
    for q in ["0.5", "0.99"] {
        assert!(
            queries
                .iter()
                .any(|(_, e)| e.starts_with(&format!("histogram_quantile({q},"))
                    && e.contains("rate(orderflow_payment_capture_seconds_bucket")),
            "p{q} capture latency"
        );
    }
    for q in ["0.5", "0.99", "0.999"] {
        assert!(
            queries
                .iter()
                .any(|(_, e)| e.starts_with(&format!("histogram_quantile({q},"))
                    && e.contains("rate(orderflow_order_latency_seconds_bucket")),
            "p{q} latency"
        );
    }
    let oversold = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["type"] == "stat"
                && p["targets"][0]["expr"]
                    .as_str()
                    .unwrap()
                    .contains("oversold")
        })
        .expect("an oversold stat panel");
    let steps = oversold["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap();
    assert_eq!(steps[0]["color"], "green");
    assert!(steps[0]["value"].is_null(), "green is the base");
    let red = steps
        .iter()
        .find(|s| s["color"] == "red")
        .expect("a red step");
    let at = red["value"].as_f64().unwrap();
    assert!(
        at > 0.0 && at <= 1.0,
        "red from the first oversold unit, got {at}"
    );
}

#[test]
fn every_metric_in_dashboards_and_alerts_is_defined_in_telemetry() {
    let defined: BTreeSet<String> = telemetry::series_names().into_iter().collect();
    let dashboard: Value =
        serde_json::from_str(&read("grafana/dashboards/flash-sale.json")).unwrap();
    let mut all = dashboard_queries(&dashboard);
    all.extend(alert_expressions());
    for (name, expr) in &all {
        let used = metric_names(expr);
        assert!(
            !used.is_empty() || expr.contains("up{job=\"orderflow\"}"),
            "{name}: {expr} uses no orderflow metric"
        );
        for metric in used {
            assert!(
                defined.contains(&metric),
                "{name}: {metric} is not defined in src/telemetry.rs"
            );
        }
    }
    let alerts: Vec<String> = alert_expressions().into_iter().map(|(n, _)| n).collect();
    for needed in [
        "Oversold",
        "ProcessorDown",
        "LagGrowing",
        "NoProgress",
        "DeadLetters",
        "PaymentsNeedAttention",
        "CapturesFailing",
    ] {
        assert!(
            alerts.iter().any(|a| a.contains(needed)),
            "no {needed} alert: {alerts:?}"
        );
    }
}

#[test]
fn metric_name_extraction() {
    assert_eq!(
        metric_names("sum(rate(orderflow_a_total[1m])) / orderflow_b{x=\"y\"}"),
        ["orderflow_a_total", "orderflow_b"]
    );
    assert!(metric_names("up == 0").is_empty());
}
