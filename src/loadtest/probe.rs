//! Waits until the processor knows the announced catalog, by asking it.
//!
//! The processor reads the inventory topic to its end at start and applies
//! later events live, on its own thread, so an order sent right after the
//! `stock_set` that names its SKU may be decided before that event is
//! applied. Rather than sleep and hope, the loadtest writes one probe SKU
//! to each inventory partition *after* the catalog and sends a probe order
//! with a line for each. Partitions are read in order, so once a probe
//! order is accepted every SKU announced before it is known. A probe
//! rejected as `unknown_sku` is retried; no answer means no processor yet
//! (it may be started after the loadtest: its first read of the inventory
//! then includes everything).

use super::catalog::PROBE_STOCK;
use super::collector::Collected;
use super::sender::{self, Failures, LoadProducer};
use super::{Event, LoadtestError};
use crate::config::Config;
use crate::order::events::Status;
use crate::order::{Address, InventoryEvent, Line, OrderPlaced, Payment, Reason};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the inventory records may take to be acknowledged.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before retrying a probe the processor could not yet place.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How often the collector's probe answers are looked at.
const POLL: Duration = Duration::from_millis(20);
/// How often "still waiting" is said while no processor answers.
const NOTICE_INTERVAL: Duration = Duration::from_secs(5);
const PROBE_PRICE_MINOR: i64 = 100;
const PROBE_CURRENCY: &str = "EUR";

/// Order IDs of probe orders of run `tag` start with this.
pub fn prefix(tag: &str) -> String {
    format!("{tag}-p")
}

/// Announces the probe SKUs, then sends probe orders until one is accepted.
pub fn wait_until_ready(
    config: &Config,
    producer: &LoadProducer,
    failures: &Mutex<Failures>,
    collected: &Collected,
    tag: &str,
    timeout: Duration,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<u32, LoadtestError> {
    let partitions = super::topics::partition_counts(config)?
        .get(&config.topics.inventory)
        .copied()
        .ok_or_else(|| LoadtestError::TopicMissing {
            topic: config.topics.inventory.clone(),
            brokers: config.kafka.brokers.clone(),
        })?;
    let skus: Vec<String> = (0..partitions)
        .map(|p| format!("{tag}-PROBE-{p}"))
        .collect();
    let records: Vec<(Vec<u8>, Vec<u8>, Option<i32>)> = skus
        .iter()
        .enumerate()
        .map(|(partition, sku)| {
            let event = InventoryEvent::StockSet {
                sku: sku.clone(),
                available: PROBE_STOCK,
                prices: BTreeMap::from([(PROBE_CURRENCY.to_string(), PROBE_PRICE_MINOR)]),
                max_per_customer: None,
            };
            let value = serde_json::to_vec(&event).expect("inventory events serialize");
            (sku.clone().into_bytes(), value, Some(partition as i32))
        })
        .collect();
    sender::send_and_flush(
        producer,
        failures,
        &config.topics.inventory,
        &records,
        ANNOUNCE_TIMEOUT,
    )?;

    let started = Instant::now();
    let deadline = started + timeout;
    let mut attempt: u32 = 0;
    let mut current = send_probe(config, producer, tag, attempt, &skus)?;
    let mut last_notice = Instant::now();
    loop {
        let answer = collected.probes.lock().get(&current).cloned();
        match answer {
            Some(status) if status.status == Status::Accepted => return Ok(attempt + 1),
            Some(status) if status.reason == Some(Reason::UnknownSku) => {
                attempt += 1;
                std::thread::sleep(RETRY_PAUSE);
                current = send_probe(config, producer, tag, attempt, &skus)?;
            }
            Some(status) => {
                return Err(LoadtestError::ProbeRejected {
                    reason: status.reason.map_or("none", Reason::as_str).to_string(),
                    detail: status.detail.unwrap_or_default(),
                })
            }
            None => {
                if let Some((error, detail)) = collected.probes_dead.lock().get(&current).cloned() {
                    return Err(LoadtestError::ProbeDeadLettered { error, detail });
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(LoadtestError::NoProcessor {
                waited_secs: timeout.as_secs_f64(),
                brokers: config.kafka.brokers.clone(),
            });
        }
        if last_notice.elapsed() >= NOTICE_INTERVAL {
            observe(Event::Notice(&format!(
                "waiting for the processor to answer a probe order ({:.0} s so far); is `orderflow run --brokers {}` running?",
                started.elapsed().as_secs_f64(),
                config.kafka.brokers
            )));
            last_notice = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}

/// Sends probe order number `attempt`; returns its order ID.
fn send_probe(
    config: &Config,
    producer: &LoadProducer,
    tag: &str,
    attempt: u32,
    skus: &[String],
) -> Result<String, LoadtestError> {
    let order_id = format!("{}{attempt}", prefix(tag));
    let address = Address {
        name: "Probe 🔎".into(),
        line1: "Probe Street 1".into(),
        line2: None,
        city: "Berlin".into(),
        region: None,
        postal_code: "10115".into(),
        country: "DE".into(),
    };
    let lines: Vec<Line> = skus
        .iter()
        .map(|sku| Line {
            sku: sku.clone().into(),
            quantity: 1,
            unit_price_minor: PROBE_PRICE_MINOR,
            ship_to: "home".into(),
        })
        .collect();
    let order = OrderPlaced {
        order_id: order_id.clone().into(),
        customer_id: Some(format!("{tag}-probe").into()),
        placed_at: Some(crate::order::events::format_time(time::OffsetDateTime::now_utc()).into()),
        currency: Some(PROBE_CURRENCY.into()),
        payments: Some(vec![Payment {
            method: "card".into(),
            amount_minor: PROBE_PRICE_MINOR * lines.len() as i64,
            authorization_id: Some("probe".into()),
        }]),
        lines: Some(lines),
        addresses: Some(BTreeMap::from([("home".into(), address)])),
    };
    let mut json = serde_json::to_value(&order).expect("orders serialize");
    json["type"] = "order_placed".into();
    let value = serde_json::to_vec(&json).expect("orders serialize");
    sender::send(
        producer,
        &config.topics.orders,
        None,
        order_id.as_bytes(),
        &value,
        0,
    )
    .map_err(|source| LoadtestError::kafka("producing a probe order", source))?;
    Ok(order_id)
}
