//! Makes sure the contract's topics exist before the sale: missing ones are
//! created with the scenario's explicit partition counts (never the broker's
//! defaults, which would silently change how orders spread over workers).

use super::scenario::TopicPlan;
use super::LoadtestError;
use crate::config::Config;
use crate::kafka::METADATA_TIMEOUT;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long topic creation and its propagation to metadata may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
const METADATA_RETRY: Duration = Duration::from_millis(100);

/// A client for metadata only.
fn metadata_client(config: &Config) -> Result<BaseConsumer, LoadtestError> {
    let mut client = crate::kafka::consumer_config(&config.kafka, "orderflow-loadtest-metadata");
    client.set("enable.auto.commit", "false");
    client
        .create()
        .map_err(|source| LoadtestError::kafka("creating a metadata client", source))
}

/// Partition counts of every topic the brokers have. Asks for all topics,
/// since asking for one by name may create it with the broker's defaults.
pub fn partition_counts(config: &Config) -> Result<HashMap<String, usize>, LoadtestError> {
    let client = metadata_client(config)?;
    let metadata = client
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|source| LoadtestError::kafka("reading topic metadata", source))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect())
}

/// Creates the contract topics that do not exist. Returns a line per topic
/// created, e.g. `orders (8 partitions)`.
pub fn ensure(config: &Config, plan: &TopicPlan) -> Result<Vec<String>, LoadtestError> {
    let t = &config.topics;
    let wanted = [
        (&t.orders, plan.orders_partitions),
        (&t.inventory, plan.inventory_partitions),
        (&t.status, plan.status_partitions),
        (&t.fulfillments, plan.fulfillments_partitions),
        (&t.dlq, plan.dlq_partitions),
        // Part 2: partitioned as orders.
        (&t.events, plan.orders_partitions),
        (&t.payment_requests, plan.orders_partitions),
        (&t.state, plan.orders_partitions),
    ];
    let existing = partition_counts(config)?;
    let missing: Vec<(&String, i32)> = wanted
        .into_iter()
        .filter(|(name, _)| !existing.contains_key(name.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !plan.create {
        return Err(LoadtestError::TopicMissing {
            topic: missing[0].0.clone(),
            brokers: config.kafka.brokers.clone(),
        });
    }
    let mut client = crate::kafka::consumer_config(&config.kafka, "orderflow-loadtest-admin");
    client.set("enable.auto.commit", "false");
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|source| LoadtestError::kafka("creating an admin client", source))?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(plan.replication))
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadtestError::TopicCreation {
            topic: missing[0].0.clone(),
            message: e.to_string(),
        })?;
    let results = runtime
        .block_on(admin.create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(CREATE_TIMEOUT)),
        ))
        .map_err(|source| LoadtestError::kafka("creating topics", source))?;
    for result in results {
        if let Err((topic, code)) = result {
            // Another client created it meanwhile: fine.
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(LoadtestError::TopicCreation {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    wait_for_metadata(config, &missing)?;
    Ok(missing
        .iter()
        .map(|(name, partitions)| format!("{name} ({partitions} partitions)"))
        .collect())
}

/// Waits until every created topic shows all its partitions in metadata.
fn wait_for_metadata(config: &Config, topics: &[(&String, i32)]) -> Result<(), LoadtestError> {
    let deadline = Instant::now() + CREATE_TIMEOUT;
    loop {
        let counts = partition_counts(config)?;
        let pending = topics
            .iter()
            .find(|(name, partitions)| counts.get(name.as_str()) != Some(&(*partitions as usize)));
        match pending {
            None => return Ok(()),
            Some((name, _)) if Instant::now() >= deadline => {
                return Err(LoadtestError::TopicCreation {
                    topic: name.to_string(),
                    message: format!("not in metadata after {CREATE_TIMEOUT:?}"),
                })
            }
            Some(_) => std::thread::sleep(METADATA_RETRY),
        }
    }
}
