//! Test harness: a real `tansu` broker on a free loopback port, started and
//! stopped by the test, plus helpers to produce contract JSON with a real
//! rdkafka producer and read output topics back.
//!
//! The broker binary is found in `$TANSU_BIN`, on `PATH`, or in
//! `~/.cargo/bin` (`.ci/run` installs it there).

#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to accept connections.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP request to a test server may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("tansu"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    assert!(
        cargo_bin.is_file(),
        "tansu not found: set TANSU_BIN or run `cargo install tansu --locked --version 0.6.0 --features dynostore,libsql`"
    );
    cargo_bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    dir: PathBuf,
}

impl Broker {
    /// A broker with its own fresh sqlite file. (tansu 0.6's `memory://`
    /// engine answers ListOffsets with a high watermark of 1 for every
    /// partition, which breaks reading a topic to its end; sqlite is right.)
    pub fn start() -> Broker {
        let dir = std::env::temp_dir().join(format!(
            "orderflow-tansu-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_sqlite(&dir.join("broker.db"))
    }

    /// A broker whose data survives its own restart.
    /// (tansu 0.6 reads the sqlite path relative to its working directory.)
    pub fn start_sqlite(file: &std::path::Path) -> Broker {
        let name = file.file_name().expect("a file name").to_string_lossy();
        let dir = file.parent().expect("a directory").to_path_buf();
        Self::start_with_storage(format!("sqlite://{name}"), dir)
    }

    fn start_with_storage(storage: String, dir: PathBuf) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            storage,
            dir,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .env("RUST_LOG", "warn")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        let addr = self.addr();
        wait_for("tansu to accept connections", BROKER_START_TIMEOUT, || {
            std::net::TcpStream::connect(&addr).ok()
        });
        // A TCP accept is not yet a working broker: wait for metadata.
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        wait_for("tansu metadata", BROKER_START_TIMEOUT, || {
            consumer.fetch_metadata(None, Duration::from_secs(2)).ok()
        });
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

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
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
        for (name, partitions) in topics {
            wait_for(
                &format!("topic {name} with {partitions} partitions"),
                ADMIN_TIMEOUT,
                || {
                    let md = consumer
                        .fetch_metadata(Some(name), Duration::from_secs(2))
                        .ok()?;
                    let topic = md.topics().iter().find(|t| t.name() == *name)?;
                    (topic.partitions().len() == *partitions as usize).then_some(())
                },
            );
        }
    }

    /// The contract's five topics with the given partition counts.
    pub fn create_contract_topics(&self, partitions: i32) {
        self.create_topics(&[
            ("orders", partitions),
            ("inventory", 1),
            ("order-status", partitions),
            ("fulfillments", partitions),
            ("orders-dlq", 1),
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
            if let Some(result) = consumer.poll(Duration::from_millis(100)) {
                messages.push(result.expect("consuming").detach());
            }
        }
        messages
    }

    /// A consumer assigned to every partition of `topic` from the
    /// beginning, and each non-empty partition's high watermark as of now.
    fn reader(&self, topic: &str) -> (BaseConsumer, std::collections::HashMap<i32, i64>) {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", format!("test-reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut highs = std::collections::HashMap::new();
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

    /// Reads every record of `topic` up to its high watermarks as of now.
    pub fn read_to_end(&self, topic: &str) -> Vec<OwnedMessage> {
        let (consumer, mut remaining) = self.reader(topic);
        let mut messages = Vec::new();
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        while !remaining.is_empty() {
            assert!(
                Instant::now() < deadline,
                "timed out reading {topic} to its end"
            );
            if let Some(result) = consumer.poll(Duration::from_millis(100)) {
                let message = result.expect("consuming").detach();
                if remaining
                    .get(&message.partition())
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    remaining.remove(&message.partition());
                }
                messages.push(message);
            }
        }
        messages
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
    }
}

/// An idempotent producer for the broker at `addr`; its retries ride out
/// a broker restart.
pub fn producer_for(addr: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
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
