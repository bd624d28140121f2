//! Reading a whole topic, from its beginning to the end it has now: how the
//! inventory cache and the recovery state are built before any order is
//! decided.

use super::{StartError, METADATA_TIMEOUT};
use crate::telemetry;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often catching up logs its progress.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// How long a start keeps asking for committed offsets while the group
/// coordinator moves or loads (right after a broker start, or after an
/// instance was killed): long enough for a coordinator to load
/// `__consumer_offsets`, short enough that a broker that never answers
/// stops the start with its error.
const COORDINATOR_WAIT: Duration = Duration::from_secs(60);
/// The pause between two such questions.
const COORDINATOR_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Whether a failed offset fetch is the coordinator moving or loading,
/// which the broker itself says to retry.
fn coordinator_is_settling(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

/// The offsets committed for `partitions` by the consumer's group, asked
/// again while the coordinator is settling (counted as Kafka errors) until
/// [`COORDINATOR_WAIT`] has passed or `stop` says so.
pub fn committed_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &TopicPartitionList,
    stop: &dyn Fn() -> bool,
) -> Result<TopicPartitionList, StartError> {
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        match consumer.committed_offsets(partitions.clone(), METADATA_TIMEOUT) {
            Ok(committed) => return Ok(committed),
            Err(error)
                if coordinator_is_settling(&error) && Instant::now() < deadline && !stop() =>
            {
                telemetry::kafka_error(super::error_kind(&error), &error.to_string());
                std::thread::sleep(COORDINATOR_RETRY_PAUSE);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

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
/// every one reached its high watermark as of the start (or `stop` says so).
/// Returns the records read. The consumer stays assigned, so a caller can
/// go on reading new records.
pub fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: Option<&[i32]>,
    brokers: &str,
    stop: &dyn Fn() -> bool,
    apply: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, StartError> {
    let partitions = match partitions {
        Some(partitions) => partitions.to_vec(),
        None => partitions_of(consumer, topic, brokers)?,
    };
    let starts: Vec<(i32, i64)> = partitions.iter().map(|p| (*p, 0)).collect();
    read_from(consumer, topic, &starts, stop, apply).map(|(read, _)| read)
}

/// [`read_to_end`] of `(partition, first offset)` pairs (an offset below
/// the partition's first record reads from its first record). Returns the
/// records read, and each partition's end: the high watermark it was read
/// to (every record before it that a `read_committed` reader may see was
/// given to `apply`).
pub fn read_from<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    starts: &[(i32, i64)],
    stop: &dyn Fn() -> bool,
    mut apply: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(u64, HashMap<i32, i64>), StartError> {
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &(partition, start) in starts {
        let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
        let first = start.max(low);
        if high > first {
            remaining.insert(partition, high);
        }
        ends.insert(partition, high);
        let offset = if start <= low {
            Offset::Beginning
        } else {
            Offset::Offset(first)
        };
        tpl.add_partition_offset(topic, partition, offset)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut read = 0;
    while !remaining.is_empty() && !stop() {
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
                telemetry::kafka_error(super::error_kind(&error), &error.to_string())
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
    Ok((read, ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_or_loading_coordinator_is_asked_again_and_other_errors_are_not() {
        let settling = [
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::CoordinatorLoadInProgress,
            RDKafkaErrorCode::CoordinatorNotAvailable,
            RDKafkaErrorCode::RequestTimedOut,
        ];
        for code in settling {
            assert!(
                coordinator_is_settling(&KafkaError::MetadataFetch(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(
                !coordinator_is_settling(&KafkaError::MetadataFetch(code)),
                "{code:?}"
            );
        }
    }
}
