//! Kafka transactions, where the brokers support them (`kafka.transactions`).
//!
//! One transactional producer per process. A transaction spans
//! `engine.commit_interval_ms`: at its end the consumer stops handing out
//! records, waits until every record it dispatched is decided and every
//! output (follow-ups included) acknowledged, then commits the consumed
//! offsets inside the transaction (KIP-447: `send_offsets_to_transaction`
//! with the consumer's group metadata) and commits it. Statuses,
//! fulfillments, dead letters and offsets thus become visible together or
//! not at all, and an instance that lost its partitions in a rebalance is
//! fenced by the group generation: its commit fails.
//!
//! A commit that fails for good leaves the in-memory state (order books,
//! reservations) ahead of what was committed. The processor does not go on
//! with it. Where the group's generation moved on under the commit (a
//! rebalance raced it: ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
//! REBALANCE_IN_PROGRESS), the transaction is aborted, the next begun, and
//! the source rewinds every partition it still owns: gives back what their
//! books hold, seeks them to their committed offsets and restores their
//! state from the committed statuses, as Kafka Streams does on a migrated
//! task. Any other failure aborts the transaction and stops the processor
//! with an error, so the supervisor restarts it and it restores from the
//! committed statuses.
//!
//! Brokers without transactions (tansu: EndTxn unsupported) are found at
//! start by committing one probe transaction. An empty transaction would
//! prove nothing: librdkafka commits it locally without an EndTxn. The
//! probe therefore commits offset 0 of the first `orders` partition for a
//! group of its own, `{group_id}-transactions-probe`, which nothing reads.

use super::sink::{ChangelogFeed, OutputLimits, Sink, SinkSetup, TxnState};
use super::tracker::OffsetTracker;
use crate::config::{Config, KafkaConfig, TransactionMode};
use crate::shutdown::Shutdown;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long each step of the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Transaction timeout bounds; between them it is half the session timeout.
const TRANSACTION_TIMEOUT_MIN: Duration = Duration::from_secs(2);
const TRANSACTION_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// First wait before retrying a commit that failed retriably; doubles.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the commit barrier looks at delivery progress.
pub const SETTLE_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error(
        "kafka.transactions = \"on\", but the brokers at {brokers} cannot commit a \
         transaction ({cause}); set kafka.transactions = \"auto\" or \"off\" to run without \
         (see docs/architecture.md, \"Where each guarantee holds\")"
    )]
    Unsupported { brokers: String, cause: String },
    #[error(
        "the brokers at {brokers} refused orderflow's transactions ({cause}): its principal \
         needs the ACLs Write on transactional-id {id} (a prefixed ACL covers every instance) \
         and Read on group {probe_group} (docs/security.md). kafka.transactions = \"auto\" \
         runs without transactions only where the brokers have none, not when they refuse"
    )]
    NotAuthorized {
        brokers: String,
        id: String,
        probe_group: String,
        cause: String,
    },
    #[error(
        "a transaction could not be committed ({cause}) and was aborted: the in-memory state \
         (order books, reservations) is ahead of what was committed, so the processor stops; \
         restarting it restores the state from the committed statuses"
    )]
    Aborted { cause: String },
    #[error(
        "the consumer group moved on while a transaction was being committed ({cause}): it \
         was aborted, a new one begun, and the partitions still owned are to be rewound to \
         their committed offsets and restored"
    )]
    Rebalanced { cause: String },
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
}

/// The transaction timeout: half the session timeout, within bounds. A
/// transaction of an instance that stalls is then aborted by the
/// coordinator (after this plus its abort check, 10 s by default on Kafka)
/// before the group hands its partitions to another instance (after the
/// session timeout), so the new owner never restores next to a transaction
/// that could still commit. Overridable as
/// `kafka.producer."transaction.timeout.ms"`.
pub fn transaction_timeout(kafka: &KafkaConfig) -> Duration {
    if let Some(ms) = kafka
        .producer
        .get("transaction.timeout.ms")
        .and_then(|ms| ms.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    (Duration::from_millis(kafka.session_timeout_ms) / 2)
        .clamp(TRANSACTION_TIMEOUT_MIN, TRANSACTION_TIMEOUT_MAX)
}

/// The process's transactions: commits and their policy.
pub struct Transactions {
    sink: Arc<Sink>,
    timeout: Duration,
}

/// Creates the producer for `kafka.transactions`: transactional (with a
/// transaction begun) if the setting and the brokers allow, else plain.
/// With "auto" a broker that cannot commit a transaction is logged as a
/// warning naming the setting; with "on" it is an error.
pub fn start_sink(
    config: &Config,
    trackers: Trackers,
    shutdown: &Shutdown,
    changelog: Option<ChangelogFeed>,
) -> Result<(Arc<Sink>, Option<Transactions>), TransactionError> {
    let limits = OutputLimits::of(
        &super::producer_config(&config.kafka),
        config.kafka.max_dlq_payload_bytes,
    );
    let setup = |transactional| SinkSetup {
        orders: trackers.orders.clone(),
        inventory: trackers.inventory.clone(),
        limits,
        transactional,
        shutdown: shutdown.clone(),
        shutdown_timeout: Duration::from_millis(config.engine.shutdown_timeout_ms),
        changelog: changelog.clone(),
    };
    let plain = || Sink::new(super::producer_config(&config.kafka), setup(false)).map(Arc::new);
    let mode = config.kafka.transactions;
    if mode == TransactionMode::Off {
        tracing::info!("kafka.transactions = \"off\": running without transactions");
        return Ok((plain()?, None));
    }
    let id = config.kafka.transactional_id();
    let timeout = transaction_timeout(&config.kafka);
    let mut producer = super::producer_config(&config.kafka);
    producer
        .set("transaction.timeout.ms", timeout.as_millis().to_string())
        // Set last: the id decides the mode, not a pass-through property.
        .set("transactional.id", &id);
    let sink = Arc::new(Sink::new(producer, setup(true))?);
    match probe(&sink, config) {
        Ok(()) => {
            tracing::info!(
                transactional_id = %id,
                transaction_timeout_ms = timeout.as_millis() as u64,
                "kafka transactions on: statuses, fulfillments, dead letters and consumed \
                 offsets commit together"
            );
            let transactions = Transactions {
                sink: sink.clone(),
                timeout,
            };
            Ok((sink, Some(transactions)))
        }
        // A refusal is a missing ACL, not a broker without transactions:
        // falling back would silently give up what transactions promise.
        Err(cause) if refused(&cause) => Err(TransactionError::NotAuthorized {
            brokers: config.kafka.brokers.clone(),
            id,
            probe_group: probe_group(config),
            cause: cause.to_string(),
        }),
        Err(cause) if mode == TransactionMode::Auto => {
            tracing::warn!(
                %cause,
                "kafka.transactions = \"auto\": the brokers cannot commit a transaction, \
                 running without (statuses stay the commit point; after a crash, follow-ups \
                 may be sent again with the same event_id; see docs/architecture.md)"
            );
            drop(sink);
            Ok((plain()?, None))
        }
        Err(cause) => Err(TransactionError::Unsupported {
            brokers: config.kafka.brokers.clone(),
            cause: cause.to_string(),
        }),
    }
}

/// Whether the brokers refused an operation for want of an ACL.
fn refused(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// The group the probe commits its offset for.
fn probe_group(config: &Config) -> String {
    format!("{}-transactions-probe", config.kafka.group_id)
}

/// The offset trackers a sink reports deliveries to: of `orders` records
/// and of `inventory` records (their dead letters).
#[derive(Clone)]
pub struct Trackers {
    pub orders: Arc<OffsetTracker>,
    pub inventory: Arc<OffsetTracker>,
}

/// Commits one transaction that reaches the coordinator, then begins the
/// first real one.
fn probe(sink: &Sink, config: &Config) -> Result<(), KafkaError> {
    let (producer, gate) = sink.transactional().expect("a transactional sink");
    producer.init_transactions(PROBE_TIMEOUT)?;
    producer.begin_transaction()?;
    let group = probe_group(config);
    let consumer: super::Reader =
        super::reader_config(&config.kafka, &group).create_with_context(super::ReaderContext)?;
    let metadata = consumer
        .group_metadata()
        .expect("a consumer with a group.id has group metadata");
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&config.topics.orders, 0, Offset::Offset(0))?;
    producer.send_offsets_to_transaction(&offsets, &metadata, PROBE_TIMEOUT)?;
    producer.commit_transaction(PROBE_TIMEOUT)?;
    let mut state = gate.exclusive();
    producer.begin_transaction()?;
    *state = TxnState::Open;
    Ok(())
}

/// How a commit ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Begin the next transaction.
    Begin,
    /// Shutdown: no transaction follows.
    Finish,
}

impl Transactions {
    /// The transaction timeout: how long a commit barrier may wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a transaction is open (not finished or failed).
    pub fn is_open(&self) -> bool {
        self.sink
            .transactional()
            .is_some_and(|(_, gate)| gate.state() == TxnState::Open)
    }

    /// Whether a record of the open transaction was lost.
    pub fn doomed(&self) -> bool {
        self.sink
            .transactional()
            .is_some_and(|(_, gate)| gate.doomed())
    }

    /// Why the open transaction is doomed (see [`Gate::doom_reason`]).
    ///
    /// [`Gate::doom_reason`]: super::sink::Gate::doom_reason
    pub fn doom_reason(&self) -> String {
        self.sink
            .transactional()
            .map(|(_, gate)| gate.doom_reason())
            .unwrap_or_default()
    }

    /// Commits the open transaction with `offsets` (the next record to read
    /// of each partition, every record before it decided and its outputs
    /// acknowledged), then begins the next one unless `next` is `Finish`.
    /// Retriable errors are retried with backoff until the transaction
    /// timeout; anything else aborts the transaction and is an error.
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
        next: Next,
    ) -> Result<(), TransactionError> {
        let (producer, gate) = self.sink.transactional().expect("a transactional sink");
        let mut state = gate.exclusive();
        if *state != TxnState::Open {
            return Ok(()); // finished, or failed before
        }
        let deadline = Instant::now() + self.timeout;
        let mut committed = if gate.doomed() {
            Err(Failure::Doomed(gate.doom_reason()))
        } else {
            retrying(deadline, || match (offsets.count(), group) {
                (0, _) => Ok(()),
                (_, Some(group)) => {
                    producer.send_offsets_to_transaction(offsets, group, self.timeout)
                }
                (_, None) => Err(KafkaError::Canceled), // no group: cannot happen
            })
            .and_then(|()| retrying(deadline, || producer.commit_transaction(self.timeout)))
            .map_err(Failure::Kafka)
        };
        if committed.is_ok() {
            gate.committed();
            self.sink.transaction_committed();
        }
        if committed.is_ok() && next == Next::Begin {
            gate.reset_doom();
            committed = producer.begin_transaction().map_err(Failure::Kafka);
        }
        let failure = match committed {
            Ok(()) => {
                *state = match next {
                    Next::Begin => TxnState::Open,
                    Next::Finish => TxnState::Finished,
                };
                return Ok(());
            }
            Err(failure) => failure,
        };
        *state = TxnState::Finished;
        let aborted = producer.abort_transaction(self.timeout);
        self.sink.transaction_aborted();
        if let Err(error) = &aborted {
            tracing::warn!(%error, "aborting the failed transaction");
        }
        let cause = failure.to_string();
        // The group moved on between the offsets' generation and their
        // commit (a rebalance raced it): nothing of the transaction is
        // visible, so the source can rewind its partitions instead of the
        // processor stopping. Not if inventory dead letters were in it: the
        // inventory feed does not read its records again (see
        // `inventory_feed`), so only a restart sends them again.
        let rewind =
            aborted.is_ok() && failure.group_moved_on() && !gate.held_inventory_dead_letters();
        if !rewind {
            return Err(TransactionError::Aborted { cause });
        }
        if next == Next::Finish {
            // Stopping anyway: the next owner decides them from the
            // committed offsets.
            return Err(TransactionError::Rebalanced { cause });
        }
        gate.reset_doom();
        match producer.begin_transaction() {
            Ok(()) => {
                *state = TxnState::Open;
                Err(TransactionError::Rebalanced { cause })
            }
            Err(error) => Err(TransactionError::Aborted {
                cause: format!("{cause}; then beginning the next transaction: {error}"),
            }),
        }
    }

    /// Aborts the open transaction (the processor is stopping on an error).
    pub fn abort(&self, cause: &str) -> TransactionError {
        let (producer, gate) = self.sink.transactional().expect("a transactional sink");
        let mut state = gate.exclusive();
        if *state == TxnState::Open {
            if let Err(error) = producer.abort_transaction(self.timeout) {
                tracing::warn!(%error, "aborting the transaction");
            }
            self.sink.transaction_aborted();
        }
        *state = TxnState::Finished;
        TransactionError::Aborted {
            cause: cause.to_string(),
        }
    }
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A record of the transaction was lost.
    #[error("{0}")]
    Doomed(String),
    #[error("{0}")]
    Kafka(KafkaError),
}

impl Failure {
    /// The consumer group's generation moved on (a rebalance, or this
    /// member was expired): the offsets were refused, the producer is fine.
    fn group_moved_on(&self) -> bool {
        let Failure::Kafka(KafkaError::Transaction(error)) = self else {
            return false;
        };
        !error.is_fatal()
            && matches!(
                error.code(),
                RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::RebalanceInProgress
            )
    }
}

/// Runs `step` until it succeeds, fails for good, or `deadline` passes;
/// a retriable failure (librdkafka says so, or a timeout) is retried after
/// a backoff.
fn retrying(
    deadline: Instant,
    mut step: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut backoff = RETRY_BACKOFF_MIN;
    loop {
        let error = match step() {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let retriable = match &error {
            KafkaError::Transaction(e) => e.is_retriable() && !e.is_fatal(),
            KafkaError::Flush(_) => true,
            _ => false,
        };
        crate::telemetry::kafka_error(
            crate::telemetry::KafkaErrorKind::Transaction,
            &error.to_string(),
        );
        if !retriable || Instant::now() + backoff >= deadline {
            return Err(error);
        }
        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64,
            "committing the transaction failed; trying again");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}
