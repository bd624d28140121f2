//! Reading a whole topic, from its beginning to the end it has now: how the
//! inventory cache and the recovery state are built before any order is
//! decided.

use super::{StartError, METADATA_TIMEOUT};
use crate::shutdown::Shutdown;
use crate::telemetry;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often catching up logs its progress.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The partition numbers of `topic`, or `TopicMissing`.
pub fn partitions_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    brokers: &str,
) -> Result<Vec<i32>, StartError> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(StartError::TopicMissing {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        });
    }
    Ok(partitions)
}

/// Assigns `partitions` of `topic` (every partition if `None`) to
/// `consumer` from the beginning and calls `apply` on each record until
/// every one reached its high watermark as of the start (or shutdown).
/// Returns the records read. The consumer stays assigned, so a caller can
/// go on reading new records.
pub fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: Option<&[i32]>,
    brokers: &str,
    shutdown: &Shutdown,
    mut apply: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, StartError> {
    let partitions = match partitions {
        Some(partitions) => partitions.to_vec(),
        None => partitions_of(consumer, topic, brokers)?,
    };
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, METADATA_TIMEOUT)?;
        if high > low {
            remaining.insert(*partition, high);
        }
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut read = 0;
    while !remaining.is_empty() && !shutdown.is_triggered() {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                apply(&message);
                read += 1;
                let partition = message.partition();
                if remaining
                    .get(&partition)
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    remaining.remove(&partition);
                }
            }
            Some(Err(error)) => {
                telemetry::kafka_error(super::sink::error_kind(&error), &error.to_string())
            }
            // Compaction or transaction markers can leave the last offset
            // below the high watermark: the position says where we really are.
            None => {
                if let Ok(position) = consumer.position() {
                    for element in position.elements() {
                        if let Offset::Offset(next) = element.offset() {
                            if remaining
                                .get(&element.partition())
                                .is_some_and(|high| next >= *high)
                            {
                                remaining.remove(&element.partition());
                            }
                        }
                    }
                }
            }
        }
        if last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            tracing::info!(
                topic,
                records = read,
                partitions_left = remaining.len(),
                "reading to the end"
            );
            last_log = Instant::now();
        }
    }
    tracing::info!(
        topic,
        records = read,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "read to the end"
    );
    Ok(read)
}
