//! Test harness: a real broker on free loopback ports, started and stopped
//! by the test, plus helpers to produce contract JSON with a real rdkafka
//! producer and read output topics back.
//!
//! [`Broker::start`] runs Apache Kafka (one KRaft broker+controller) through
//! `scripts/kafka.sh`, which fetches the pinned jars into a cache outside the
//! checkout once (`.ci/run` does it first). Its data lives in a fresh
//! directory removed when the `Broker` is dropped, also when a test panics;
//! if the test process dies without unwinding (SIGKILL, abort), the
//! script's watchdog kills the broker and removes the directory.

#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a broker may take to accept connections and answer metadata
/// (a JVM start on two busy cores takes 5 to 20 s).
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker may take to stop after SIGTERM before it is killed.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh brokers tried when one exits while starting (a port picked as
/// free was taken by someone else before the JVM bound it).
const BROKER_START_ATTEMPTS: usize = 3;
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many records `read_until` reads at most before it asks its
/// predicate again.
const READ_UNTIL_BATCH: usize = 1_000;
/// How long one HTTP request to a test server may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `scripts/kafka.sh` of this checkout.
pub fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports: every listener is held until all are
/// picked, so no two are the same.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Waits until `done` returns `Some`, or panics naming `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the tests of one test binary that hold it one at a time: each
/// starts a broker and processors whose timing (session timeouts, a
/// stopped process's partitions moving) two cores cannot keep for several
/// at once. A test that panicked does not block the others.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh directory for one broker's files.
fn broker_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orderflow-kafka-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir); // left by a process with our pid
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a Kafka broker is started with besides the single-node defaults
/// of `scripts/kafka.sh`.
#[derive(Debug, Default, Clone)]
pub struct KafkaOptions {
    /// Lines appended to `server.properties` (a later key wins). `{port}`
    /// and `{controller_port}` stand for the broker's PLAINTEXT and
    /// controller ports, `{extra_port}` for one more free port (another
    /// listener's, see [`Broker::extra_port`]), `{dir}` for its directory.
    pub properties: Vec<String>,
    /// Arguments passed to `StorageTool format` (e.g. `--add-scram`).
    pub format_args: Vec<String>,
}

/// Topic configs, as (key, value).
pub type TopicConfigs<'a> = &'a [(&'a str, &'a str)];

/// The topic config of a compacted topic (`order-state`).
pub const COMPACTED: TopicConfigs<'static> = &[("cleanup.policy", "compact")];

pub struct Broker {
    child: Option<Child>,
    /// The PLAINTEXT listener, which the harness itself uses.
    pub port: u16,
    pub controller_port: u16,
    /// A free port picked with the others, for `{extra_port}` in
    /// [`KafkaOptions::properties`].
    pub extra_port: u16,
    /// The broker's files (config, data, logs); removed on drop.
    pub dir: PathBuf,
}

impl Broker {
    /// Apache Kafka with the single-node settings, a fresh log dir.
    pub fn start() -> Broker {
        Self::start_kafka(&KafkaOptions::default())
    }

    /// Apache Kafka with extra settings (listeners, SASL, ACLs).
    pub fn start_kafka(options: &KafkaOptions) -> Broker {
        let mut failures = Vec::new();
        for _ in 0..BROKER_START_ATTEMPTS {
            match Self::try_start(options) {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("Kafka did not start: {failures:#?}");
    }

    /// Formats a fresh directory and starts the broker; `Err` (with its
    /// log's tail) if the broker exits while starting.
    fn try_start(options: &KafkaOptions) -> Result<Broker, String> {
        let dir = broker_dir();
        let [port, controller_port, extra_port] = free_ports::<3>();
        let mut format = Command::new("bash");
        format.arg(kafka_script()).args([
            "format",
            "--dir",
            &dir.to_string_lossy(),
            "--port",
            &port.to_string(),
            "--controller-port",
            &controller_port.to_string(),
        ]);
        if !options.properties.is_empty() {
            let text = options.properties.join("\n") + "\n";
            let text = text
                .replace("{port}", &port.to_string())
                .replace("{controller_port}", &controller_port.to_string())
                .replace("{extra_port}", &extra_port.to_string())
                .replace("{dir}", &dir.to_string_lossy());
            let extra = dir.join("extra.properties");
            std::fs::write(&extra, text).unwrap();
            format.arg("--config-extra").arg(&extra);
        }
        for arg in &options.format_args {
            format.arg("--format-arg").arg(arg);
        }
        let output = format.output().expect("running scripts/kafka.sh format");
        assert!(
            output.status.success(),
            "scripts/kafka.sh format failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut broker = Broker {
            child: None,
            port,
            controller_port,
            extra_port,
            dir,
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// Runs the formatted broker and waits until it answers metadata.
    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("bash")
            .arg(kafka_script())
            .args(["run", "--dir", &self.dir.to_string_lossy()])
            .args(["--owner", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting Kafka");
        self.child = Some(child);
        let addr = self.addr();
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        while TcpStream::connect(&addr).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(format!(
                    "the broker exited with {status}; its log ends:\n{}",
                    self.log_tail(20)
                ));
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not accept connections within {BROKER_START_TIMEOUT:?} \
                 (logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A TCP accept is not yet a working broker: wait for metadata.
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        wait_for("broker metadata", BROKER_START_TIMEOUT, || {
            consumer.fetch_metadata(None, Duration::from_secs(2)).ok()
        });
        Ok(())
    }

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("logs/server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.addr());
        config
    }

    /// Stops the broker with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM (a controlled shutdown), SIGKILL if
    /// it has not stopped within a deadline.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports and data (killing it
    /// first if it runs).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(failure) = self.spawn() {
            panic!("Kafka did not start again: {failure}");
        }
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let plain: Vec<_> = topics
            .iter()
            .map(|(name, n)| (*name, *n, &[][..]))
            .collect();
        self.create_configured_topics(&plain);
    }

    /// Creates topics (name, partitions, topic configs); one that exists
    /// already is left as it is.
    pub fn create_configured_topics(&self, topics: &[(&str, i32, TopicConfigs<'_>)]) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions, configs)| {
                configs.iter().fold(
                    NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let topics: Vec<(&str, i32)> = topics.iter().map(|(name, n, _)| (*name, *n)).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = runtime
            .block_on(admin.create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)),
            ))
            .expect("create_topics request");
        for result in results {
            if let Err((topic, code)) = result {
                assert_eq!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating {topic}"
                );
            }
        }
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        for (name, partitions) in &topics {
            wait_for(
                &format!("topic {name} with {partitions} partitions"),
                ADMIN_TIMEOUT,
                || {
                    let md = consumer
                        .fetch_metadata(Some(name), Duration::from_secs(2))
                        .ok()?;
                    let topic = md.topics().iter().find(|t| t.name() == *name)?;
                    // Every partition with a leader: a fresh topic's
                    // partitions answer NotLeaderForPartition until then.
                    let led = topic.partitions().iter().all(|p| p.leader() >= 0);
                    (topic.partitions().len() == *partitions as usize && led).then_some(())
                },
            );
        }
    }

    /// The contract's topics with the given partition counts, `order-state`
    /// compacted as the README creates it.
    pub fn create_contract_topics(&self, partitions: i32) {
        self.create_configured_topics(&[("order-state", partitions, COMPACTED)]);
        self.create_topics(&[
            ("orders", partitions),
            ("inventory", 1),
            ("order-status", partitions),
            ("fulfillments", partitions),
            ("orders-dlq", 1),
            ("order-events", partitions),
            ("payment-requests", partitions),
        ]);
    }

    pub fn producer(&self) -> FutureProducer {
        producer_for(&self.addr())
    }

    /// Produces `records` (key, value) to `topic` and waits for every ack.
    pub fn produce(&self, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
        produce_with(&self.producer(), topic, records);
    }

    /// Reads every partition of `topic` from the beginning until `enough`
    /// holds for what was read, or panics at the deadline.
    pub fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        enough: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        let (consumer, _) = self.reader(topic);
        let mut messages = Vec::new();
        let deadline = Instant::now() + timeout;
        while !enough(&messages) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} reading {topic}: {} records so far",
                messages.len()
            );
            // `enough` is asked again once the reader has caught up, or
            // every READ_UNTIL_BATCH records: asked after every record it
            // costs O(n²) (a minute for 6,600 statuses in a debug build).
            while let Some(result) = consumer.poll(Duration::from_millis(100)) {
                messages.push(result.expect("consuming").detach());
                if messages.len() % READ_UNTIL_BATCH == 0 {
                    break;
                }
            }
        }
        messages
    }

    /// A `read_committed` consumer assigned to every partition of `topic`
    /// from the beginning.
    pub fn committed_reader(&self, topic: &str) -> BaseConsumer {
        self.reader(topic).0
    }

    /// A consumer assigned to every partition of `topic` from the
    /// beginning, and each non-empty partition's high watermark as of now.
    fn reader(&self, topic: &str) -> (BaseConsumer, HashMap<i32, i64>) {
        self.reader_with(topic, "read_committed")
    }

    /// [`Self::reader`] with an `isolation.level`.
    fn reader_with(&self, topic: &str, isolation: &str) -> (BaseConsumer, HashMap<i32, i64>) {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", format!("test-reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            // read_committed: what downstream consumers of a transactional
            // processor see (librdkafka's default, made explicit).
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut highs = HashMap::new();
        for p in md.topics()[0].partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            if high > low {
                highs.insert(p.id(), high);
            }
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        (consumer, highs)
    }

    /// Reads every committed record of `topic` (`read_committed`: no
    /// record of an aborted or open transaction) up to its high watermarks
    /// as of now.
    pub fn read_to_end(&self, topic: &str) -> Vec<OwnedMessage> {
        self.read_to_end_with(topic, "read_committed")
    }

    /// Reads every record of `topic`, aborted transactions' included
    /// (`read_uncommitted`), up to its high watermarks as of now.
    pub fn read_to_end_uncommitted(&self, topic: &str) -> Vec<OwnedMessage> {
        self.read_to_end_with(topic, "read_uncommitted")
    }

    fn read_to_end_with(&self, topic: &str, isolation: &str) -> Vec<OwnedMessage> {
        let (consumer, mut remaining) = self.reader_with(topic, isolation);
        let mut messages = Vec::new();
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        while !remaining.is_empty() {
            assert!(
                Instant::now() < deadline,
                "timed out reading {topic} to its end"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(result) => {
                    let message = result.expect("consuming").detach();
                    if remaining
                        .get(&message.partition())
                        .is_some_and(|high| message.offset() + 1 >= *high)
                    {
                        remaining.remove(&message.partition());
                    }
                    messages.push(message);
                }
                // Transaction markers (and aborted records, which a
                // read_committed reader skips) sit below the high
                // watermark: the position says where the reader really is.
                None => {
                    for element in consumer.position().unwrap().elements() {
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
        messages
    }

    /// The high watermark of every partition of `topic`.
    pub fn end_offsets(&self, topic: &str) -> HashMap<i32, i64> {
        let (consumer, _) = self.reader(topic);
        let md = consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT).unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)
                    .unwrap();
                (p.id(), high)
            })
            .collect()
    }

    /// The offset `group` has committed for each partition of `topic`, as
    /// the broker's group coordinator answers it (`None`: no commit), with
    /// `require_stable` so a commit of a transaction still open is waited
    /// for rather than skipped.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> HashMap<i32, Option<i64>> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in self.end_offsets(topic).keys() {
            tpl.add_partition(topic, *partition);
        }
        let committed = consumer
            .committed_offsets(tpl, ADMIN_TIMEOUT)
            .expect("fetching committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().filter(|o| *o >= 0)))
            .collect()
    }

    /// Produces one record to an explicit partition and waits for the ack.
    pub fn produce_to_partition(&self, topic: &str, partition: i32, key: &[u8], value: &[u8]) {
        let producer = self.producer();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let record = FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(value);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
        });
    }
}

/// A key that the default `kafka.orders_partitioner` (murmur2) puts on
/// `partition` of `partitions`: `{prefix}-{partition}`, or the first
/// `{prefix}-{partition}-{n}` that lands there. Deterministic, so a test can
/// compute it again to look for it.
pub fn key_for_partition(prefix: &str, partition: i32, partitions: i32) -> String {
    use orderflow::partitioner::Partitioner;
    let lands = |key: &str| {
        Partitioner::Murmur2.partition(key.as_bytes(), partitions as u32) == Some(partition as u32)
    };
    let plain = format!("{prefix}-{partition}");
    if lands(&plain) {
        return plain;
    }
    (0..)
        .map(|n| format!("{prefix}-{partition}-{n}"))
        .find(|key| lands(key))
        .expect("some key lands on every partition")
}

/// The processor, in this test process, against `broker`.
pub struct Processor {
    pub shutdown: orderflow::shutdown::Shutdown,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Processor {
    /// Starts `orderflow run` logic with the defaults, the broker's address,
    /// metrics off, and `overrides` (`section.key=value`).
    pub fn start(broker: &Broker, overrides: &[&str]) -> Processor {
        Self::start_at(&broker.addr(), overrides)
    }

    /// [`Processor::start`] against any brokers (a MockCluster).
    pub fn start_at(brokers: &str, overrides: &[&str]) -> Processor {
        let mut flags = vec![
            format!("kafka.brokers={brokers}"),
            "metrics.enabled=false".to_string(),
        ];
        flags.extend(overrides.iter().map(|s| s.to_string()));
        let config = orderflow::config::Config::load(None, &flags).expect("test config");
        let shutdown = orderflow::shutdown::Shutdown::new();
        let for_thread = shutdown.clone();
        let handle = std::thread::spawn(move || orderflow::app::run(config, for_thread));
        Processor {
            shutdown,
            handle: Some(handle),
        }
    }

    /// Graceful stop: finish in-flight work, flush, commit.
    pub fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.handle.take() {
            handle
                .join()
                .expect("processor thread")
                .expect("processor result");
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An idempotent producer for the broker at `addr`; its retries ride out
/// a broker restart. It places keyed records as the Java client does
/// (murmur2), the processor's default `kafka.orders_partitioner`.
pub fn producer_for(addr: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        // Tests send 10 MB poison records.
        .set("message.max.bytes", "16000000")
        .create()
        .unwrap()
}

/// Produces `records` (key, value) to `topic` and waits for every ack.
pub fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut pending = Vec::with_capacity(records.len());
        for (key, value) in records {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value.as_slice());
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            pending.push(producer.send_result(record).expect("enqueue"));
        }
        for delivery in pending {
            delivery.await.expect("delivery future").expect("delivered");
        }
    });
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A header's value as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Inventory events as records keyed by their SKU.
pub fn inventory_records(events: &[serde_json::Value]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    events
        .iter()
        .map(|v| {
            (
                Some(v["sku"].as_str().expect("a sku").as_bytes().to_vec()),
                serde_json::to_vec(v).unwrap(),
            )
        })
        .collect()
}

pub fn json(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().expect("a payload")).expect("JSON payload")
}

/// A minimal HTTP/1.0 GET (Prometheus and orderflow both close the
/// connection after the body): returns status and body, or `None` if the
/// server is not accepting connections.
pub fn http_get(addr: &str, path_and_query: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
