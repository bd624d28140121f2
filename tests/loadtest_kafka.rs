//! A short flash sale on Apache Kafka, with the processor running in this
//! process: every share of the mix above zero, and the audit of what came
//! back must be clean.

mod common;

use common::{Broker, Processor};
use orderflow::config::Config;
use orderflow::loadtest::scenario::{Overrides, Scenario};
use orderflow::loadtest::{self, Event, Options};
use orderflow::order::Reason;

const PARTITIONS: i32 = 4;

/// About 1,500 orders in 8 s: 40/s, then 400/s for 2 s from T0 = 2 s.
const SCENARIO: &str = r#"
name = "kafka-test"
[load]
rate = 40.0
duration_secs = 8.0
burst_at_secs = 2.0
burst_secs = 2.0
tail_secs = 1.5
drain_timeout_secs = 90.0
probe_timeout_secs = 90.0
seed = 2026
[catalog]
skus = 100
hot_skus = 2
hot_stock = 25
hot_restock = 5
[mix]
hot_share = 0.25
invalid_share = 0.15
malformed_share = 0.03
duplicate_share = 0.05
cancel_share = 0.08
"#;

#[test]
fn a_flash_sale_on_kafka_audits_clean() {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let processor = Processor::start(&broker, &["engine.shards=2"]);
    let config = Config::load(None, &[format!("kafka.brokers={}", broker.addr())]).unwrap();
    let scenario = Scenario::layered(&[("kafka-test", SCENARIO)], &Overrides::default()).unwrap();

    let mut progress_lines = 0;
    let summary = loadtest::run(
        &config,
        &scenario,
        &Options::default(),
        &mut |event| match event {
            Event::Notice(text) => eprintln!("loadtest: {text}"),
            Event::Progress(progress) => {
                progress_lines += 1;
                eprintln!("{progress}");
            }
        },
    )
    .expect("the loadtest runs");
    processor.stop();
    println!("{summary}");
    println!("{}", summary.to_json());

    assert!(summary.passed, "{summary}");
    assert!(
        summary.drained,
        "every outcome arrived before the drain timeout"
    );
    assert_eq!(summary.oversold_units, 0);
    assert_eq!(summary.missing_status, 0);
    assert_eq!(summary.conflicting_statuses, 0);
    assert_eq!(summary.duplicate_statuses, 0);
    assert_eq!(summary.unexpected_reasons, 0);
    assert_eq!(summary.fulfillment_errors, 0);
    assert_eq!(summary.cancellation_errors, 0);
    assert!(summary.orders_sent > 1000, "{} orders", summary.orders_sent);
    assert!(summary.accepted > 0 && summary.cancelled > 0);
    for reason in Reason::ALL {
        assert!(
            summary
                .rejected
                .get(reason.as_str())
                .is_some_and(|n| *n > 0),
            "no {} rejection seen: {:?}",
            reason.as_str(),
            summary.rejected
        );
    }
    assert!(summary.duplicates > 0, "duplicates were sent");
    assert!(summary.malformed_sent > 0 && summary.dlq == summary.malformed_sent);
    assert!(summary.latency_ms.p50 > 0.0 && summary.latency_ms.max >= summary.latency_ms.p99);
    assert!(progress_lines >= 2, "a progress line every few seconds");
}
