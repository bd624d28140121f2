//! One typed [`Config`], layered: the built-in `config/default.toml`, then a
//! file (`--config`), then `ORDERFLOW__SECTION__KEY` environment variables,
//! then flags (`--set section.key=value`). Every leaf remembers which layer
//! it came from, so [`Config::load`] can report *all* problems at once, each
//! with the place to fix it.
//!
//! What makes a config bad (docs/contract.md, "Config errors"): a key the
//! defaults do not have, a value where a section is or a section where a
//! value is, a key with an empty part, a value of another type than the
//! default's, an integer outside its range in [`INTEGER_RANGES`], a name
//! that is not one of a setting's choices, and the checks of
//! `Config::other_errors` (empty names, duplicate topics, bad addresses).
//! A bad value never hides another: each is reported, then replaced by its
//! default so that the rest can still be checked.

use crate::order::validate::Limits;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The defaults, compiled into the binary so it runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "ORDERFLOW__";
/// Sections whose keys are free-form librdkafka properties.
const PROPERTY_MAPS: [&str; 3] = ["kafka.properties", "kafka.consumer", "kafka.producer"];

/// The range of every integer setting, inclusive: `(key, min, max)`.
/// `check-config` enforces them; config/default.toml and docs/contract.md
/// document them (a unit test keeps this list and the defaults in step).
pub const INTEGER_RANGES: [(&str, i64, i64); 19] = [
    // librdkafka's own range for session.timeout.ms; brokers narrow it
    // further (group.min/max.session.timeout.ms).
    ("kafka.session_timeout_ms", 1, 3_600_000),
    // librdkafka's largest message.max.bytes.
    ("kafka.max_dlq_payload_bytes", 0, 1_000_000_000),
    ("engine.shards", 1, 1_024),
    // Each waiting record holds its bytes (up to limits.max_record_bytes).
    ("engine.shard_queue_records", 1, 1_048_576),
    // A few hundred bytes per remembered order, per partition.
    ("engine.dedup_window_orders", 1, 100_000_000),
    ("engine.commit_interval_ms", 1, 600_000),
    ("engine.shutdown_timeout_ms", 0, 3_600_000),
    // librdkafka's default receive.message.max.bytes: larger records are
    // not fetched at all.
    ("limits.max_record_bytes", 64, 100_000_000),
    // max_lines × max_quantity stays below u32::MAX, the unit counter.
    ("limits.max_lines", 1, 1_000),
    ("limits.max_quantity", 1, 1_000_000),
    ("limits.max_text_chars", 1, 65_536),
    ("limits.max_addresses", 1, 1_000),
    ("limits.max_payments", 1, 1_000),
    // A gateway call may take up to ten minutes; the result timeout must
    // outlast it (checked below).
    ("payments.http_timeout_ms", 1, 600_000),
    ("payments.http_max_in_flight", 1, 10_000),
    // One second to a day without a result before an attempt counts as
    // failed.
    ("payments.result_timeout_ms", 1_000, 86_400_000),
    ("payments.retry_initial_ms", 1, 86_400_000),
    // At most a week between two attempts.
    ("payments.retry_max_ms", 1, 604_800_000),
    // Attempt numbers are u32; a hundred attempts is weeks of retrying.
    ("payments.max_attempts", 1, 100),
];

/// The range of every float setting, inclusive: `(key, min, max)`. An
/// integer is read as the float it names.
pub const FLOAT_RANGES: [(&str, f64, f64); 1] = [
    // From under a second (for tests) to a hundred years.
    ("lifecycle.retention_days", 0.00001, 36_500.0),
];

/// Settings that take one of a few names, each checked by deserializing
/// the value alone into its enum, whose variants are the choices.
const CHOICES: [(&str, CheckChoice); 6] = [
    ("kafka.auto_offset_reset", choice::<AutoOffsetReset>),
    ("kafka.transactions", choice::<TransactionMode>),
    ("engine.stock_split", choice::<StockSplit>),
    ("log.format", choice::<LogFormat>),
    ("payments.adapter", choice::<PaymentAdapter>),
    (
        "kafka.orders_partitioner",
        choice::<crate::partitioner::Partitioner>,
    ),
];

impl Choices for crate::partitioner::Partitioner {
    const NAMES: &'static [&'static str] = &["murmur2", "consistent_random", "off"];
}

/// Checks a value against a setting's choices; `Err` says what it must be.
type CheckChoice = fn(&Value) -> Result<(), String>;

/// A setting's choices: a fieldless serde enum that lists its names.
pub trait Choices: DeserializeOwned {
    /// Every name the setting accepts, in the enum's order.
    const NAMES: &'static [&'static str];
}

fn choice<T: Choices>(value: &Value) -> Result<(), String> {
    match value.clone().try_into::<T>() {
        Ok(_) => Ok(()),
        Err(_) => {
            let names: Vec<String> = T::NAMES.iter().map(|n| format!("{n:?}")).collect();
            // The value is the operator's, but may be long: bounded.
            let found = crate::order::bounded_detail(value.to_string());
            Err(format!(
                "must be one of {}, found {found}",
                names.join(", ")
            ))
        }
    }
}

/// Declares a setting's enum: serde names in snake_case, `as_str`, and
/// its [`Choices`].
macro_rules! choices {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The setting's name of this choice.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl Choices for $name {
            const NAMES: &'static [&'static str] = &[$($text),+];
        }
    };
}

choices! {
    /// `payments.adapter`: who answers the payment commands.
    PaymentAdapter {
        /// This process, deterministically by authorization ID.
        Simulated = "simulated",
        /// This process POSTs each command to `payments.http_url`.
        Http = "http",
        /// Another service answers through the topics.
        External = "external",
    }
}

/// `[payments]`: the adapter and how payment operations are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    pub adapter: PaymentAdapter,
    /// Where the `http` adapter POSTs commands.
    pub http_url: String,
    /// How long one HTTP call may take before it counts as `failed`.
    pub http_timeout_ms: u64,
    /// HTTP calls in flight at most; further commands wait.
    pub http_max_in_flight: usize,
    /// No result within this long after an attempt counts as `failed`.
    pub result_timeout_ms: u64,
    /// Wait before the second attempt; doubles per attempt.
    pub retry_initial_ms: u64,
    /// The longest wait between attempts.
    pub retry_max_ms: u64,
    /// Attempts before a payment needs staff.
    pub max_attempts: u32,
}

/// `[lifecycle]`: how long an order's state is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Days an order's state is kept after its last change (with the
    /// order stores and transactions; docs/architecture.md).
    pub retention_days: f64,
}

impl LifecycleConfig {
    /// [`LifecycleConfig::retention_days`] as a duration (the range check
    /// keeps it positive and finite).
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64(self.retention_days * 86_400.0)
            .unwrap_or(std::time::Duration::MAX)
    }
}

impl PaymentsConfig {
    /// The lifecycle's retry policy.
    pub fn policy(&self) -> crate::lifecycle::Policy {
        crate::lifecycle::Policy {
            result_timeout_ms: self.result_timeout_ms,
            retry_initial_ms: self.retry_initial_ms,
            retry_max_ms: self.retry_max_ms,
            max_attempts: self.max_attempts,
        }
    }
}

choices! {
    /// `kafka.auto_offset_reset`: where the group starts without a
    /// committed offset (librdkafka's `auto.offset.reset`).
    AutoOffsetReset {
        Earliest = "earliest",
        Latest = "latest",
    }
}

choices! {
    /// `kafka.transactions` (docs/architecture.md, "Where each guarantee holds").
    TransactionMode {
        /// Kafka transactions if the brokers can commit one (probed at
        /// start), else without.
        Auto = "auto",
        /// Transactions, or refuse to start.
        On = "on",
        /// Never.
        Off = "off",
    }
}

choices! {
    /// `engine.stock_split`: how instances share each SKU's stock.
    StockSplit {
        /// This instance sells every SKU's whole stock, and decides only
        /// while it owns every partition of `orders`.
        Whole = "whole",
        /// Each partition sells its quota, so instances can share a sale.
        Partition = "partition",
    }
}

choices! {
    /// `log.format`.
    LogFormat {
        Text = "text",
        Json = "json",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub engine: EngineConfig,
    pub limits: Limits,
    pub payments: PaymentsConfig,
    pub lifecycle: LifecycleConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    pub group_id: String,
    pub session_timeout_ms: u64,
    pub auto_offset_reset: AutoOffsetReset,
    /// Dead-letter values above this size are left out (the broker would
    /// refuse them); headers still point at the original record.
    pub max_dlq_payload_bytes: usize,
    /// The partitioner upstream producers of `orders` use; a record on
    /// another partition than the one it gives the record's key is
    /// dead-lettered as `wrong_partition` (`off`: no check).
    pub orders_partitioner: crate::partitioner::Partitioner,
    pub transactions: TransactionMode,
    /// The producer's `transactional.id`; `{group_id}`, `{hostname}` and
    /// `{pid}` are replaced. Must be unique per live instance.
    pub transactional_id: String,
    /// librdkafka properties for every client.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub orders: String,
    pub inventory: String,
    pub status: String,
    pub fulfillments: String,
    pub dlq: String,
    /// Facts after the decision (contract Part 2), partitioned as `orders`.
    pub events: String,
    /// Payment commands for the adapter, partitioned as `orders`.
    pub payment_requests: String,
    /// Orders' records after changes that have no status (internal,
    /// compacted, partitioned as `orders`).
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub shards: usize,
    pub shard_queue_records: usize,
    pub dedup_window_orders: usize,
    /// Where the partitions' local order stores are (see `cold`): a
    /// directory, `""` for the system's temporary one; `"off"`: none, and
    /// orders past `dedup_window_orders` are forgotten.
    pub store_dir: String,
    /// Whether restores read the status topic before the state topic even
    /// with transactions (without them they always do): for orders
    /// decided before statuses were copied to the state topic.
    pub restore_statuses: bool,
    pub commit_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub stock_split: StockSplit,
}

impl KafkaConfig {
    /// `transactional_id` with its placeholders replaced.
    pub fn transactional_id(&self) -> String {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        self.transactional_id
            .replace("{group_id}", &self.group_id)
            .replace("{hostname}", &hostname)
            .replace("{pid}", &std::process::id().to_string())
    }
}

impl EngineConfig {
    /// Whether each partition sells only its quota of a SKU's stock.
    pub fn split_by_partition(&self) -> bool {
        self.stock_split == StockSplit::Partition
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: String,
    pub watched_skus: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "built-in default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag => write!(f, "flag --set"),
        }
    }
}

/// One problem with the config: which key, what is wrong, where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    pub source: Option<Source>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// All problems found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// The layered table before it becomes a `Config`, with every leaf's source.
#[derive(Debug, Clone)]
pub struct Layers {
    table: Table,
    sources: BTreeMap<String, Source>,
    errors: Vec<ConfigError>,
}

impl Layers {
    /// The built-in defaults.
    pub fn defaults() -> Self {
        let table: Table = DEFAULT_TOML
            .parse()
            .expect("config/default.toml is valid TOML");
        let mut layers = Layers {
            table: Table::new(),
            sources: BTreeMap::new(),
            errors: Vec::new(),
        };
        layers.merge(table, &Source::Default);
        layers
    }

    /// Merges a TOML file over what is there.
    pub fn file(&mut self, path: &Path) {
        let source = Source::File(path.to_path_buf());
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| text.parse::<Table>().map_err(|e| e.to_string()));
        match parsed {
            Ok(table) => self.merge(table, &source),
            Err(message) => self.errors.push(ConfigError {
                key: "(file)".into(),
                message,
                source: Some(source),
            }),
        }
    }

    /// Applies `ORDERFLOW__SECTION__KEY=value` variables from `vars`.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, value) in vars {
            let parts: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|part| part.to_ascii_lowercase())
                .collect();
            let mut key = parts.join(".");
            if let Some(map) = PROPERTY_MAPS
                .iter()
                .find(|map| key.starts_with(&format!("{map}.")))
            {
                // librdkafka property names use dots, which env names cannot.
                key = format!("{map}.{}", key[map.len() + 1..].replace('_', "."));
            }
            self.set(&key, &value, Source::Env(name.clone()));
        }
    }

    /// Applies one `section.key=value` flag.
    pub fn flag(&mut self, assignment: &str) {
        match assignment.split_once('=') {
            Some((key, value)) => self.set(key.trim(), value.trim(), Source::Flag),
            None => self.errors.push(ConfigError {
                key: assignment.to_string(),
                message: "expected section.key=value".into(),
                source: Some(Source::Flag),
            }),
        }
    }

    /// Sets one key from text. The text is read with the type of the value
    /// already there (so `group_id=123` stays a string), as TOML otherwise.
    pub fn set(&mut self, key: &str, text: &str, source: Source) {
        if let Err(message) = check_key(key) {
            self.errors.push(error(key, message, &source));
            return;
        }
        let existing = lookup(&self.table, key);
        let value = match existing {
            Some(Value::String(_)) | None if !text.starts_with('[') => {
                Value::String(text.to_string())
            }
            _ => match format!("v = {text}").parse::<Table>() {
                Ok(mut t) => t.remove("v").unwrap_or(Value::String(text.to_string())),
                Err(_) => Value::String(text.to_string()),
            },
        };
        let mut table = Table::new();
        insert_path(&mut table, key, value);
        self.merge(table, &source);
    }

    fn merge(&mut self, other: Table, source: &Source) {
        let mut merge = Merge {
            source,
            sources: &mut self.sources,
            errors: &mut self.errors,
        };
        merge.table(&mut self.table, other, "");
    }

    fn source_of(&self, key: &str) -> Option<Source> {
        self.sources.get(key).cloned()
    }

    /// Checks every leaf against the defaults (known key, same type, range,
    /// choices), deserializes, then runs the checks that need the typed
    /// config. Returns all errors found, not just the first: a bad value is
    /// left out (its default stands in) so that it hides no other error.
    pub fn build(self) -> Result<Config, ConfigErrors> {
        let mut errors = self.errors.clone();
        let reference: Table = DEFAULT_TOML
            .parse()
            .expect("config/default.toml is valid TOML");
        // What is deserialized: the defaults, and every leaf that passed.
        let mut table = reference.clone();
        for (key, source) in &self.sources {
            let Some(value) = lookup(&self.table, key) else {
                // Merging refuses what would leave a source without its leaf;
                // should one slip through, it is an error, not a panic.
                errors.push(error(key, "has no value the config can read", source));
                continue;
            };
            if let Some(map) = property_map(key) {
                if key.len() == map.len() + 1 {
                    errors.push(error(key, "a librdkafka property needs a name", source));
                } else if !value.is_str() {
                    let message = "librdkafka properties are strings; quote the value";
                    errors.push(error(key, message, source));
                } else {
                    insert_path(&mut table, key, value.clone());
                }
                continue;
            }
            let Some(expected) = lookup(&reference, key) else {
                errors.push(error(key, "unknown key", source));
                continue;
            };
            match check_leaf(key, value, expected) {
                Ok(()) => insert_path(&mut table, key, value.clone()),
                Err(message) => errors.push(error(key, &message, source)),
            }
        }
        let bad: BTreeSet<String> = errors.iter().map(|e| e.key.clone()).collect();
        let config: Config = match Value::Table(table).try_into() {
            Ok(config) => config,
            Err(e) => {
                // Every leaf was checked above; only a structure the checks
                // missed gets here, and it is still an error, not a panic.
                errors.push(ConfigError {
                    key: "(config)".into(),
                    message: e.to_string(),
                    source: None,
                });
                return Err(ConfigErrors(errors));
            }
        };
        errors.extend(
            config
                .other_errors()
                .into_iter()
                .filter(|(key, _)| !bad.contains(key))
                .map(|(key, message)| ConfigError {
                    source: self.source_of(&key),
                    key,
                    message,
                }),
        );
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Is `key` a key at all: not empty, no empty part (outside the name of a
/// librdkafka property, which may contain dots)?
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("names no key");
    }
    let path = property_map(key).unwrap_or(key);
    if path.split('.').any(str::is_empty) {
        return Err("a key has no empty parts");
    }
    Ok(())
}

/// One leaf against its default: the same TOML type, then the setting's
/// range or choices, or for lists, strings only (every list setting is a
/// list of names).
fn check_leaf(key: &str, value: &Value, expected: &Value) -> Result<(), String> {
    if let (Some(range), Some(n)) = (
        FLOAT_RANGES.iter().find(|(k, _, _)| *k == key),
        value.as_float().or(value.as_integer().map(|n| n as f64)),
    ) {
        let (_, min, max) = range;
        if !(*min..=*max).contains(&n) {
            return Err(format!("must be {min} to {max}, found {n}"));
        }
        return Ok(());
    }
    if expected.type_str() != value.type_str() {
        return Err(format!(
            "expected {}, found {}",
            expected.type_str(),
            value.type_str()
        ));
    }
    if let Some(items) = value.as_array() {
        if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_str()) {
            return Err(format!(
                "expected a list of strings, found {} at [{i}]",
                item.type_str()
            ));
        }
    }
    if let (Some(n), Some((_, min, max))) = (
        value.as_integer(),
        INTEGER_RANGES.iter().find(|(k, _, _)| *k == key),
    ) {
        if !(*min..=*max).contains(&n) {
            return Err(format!("must be {min} to {max}, found {n}"));
        }
    }
    if let Some((_, check)) = CHOICES.iter().find(|(k, _)| *k == key) {
        check(value)?;
    }
    Ok(())
}

/// The librdkafka property map `key` is in, if any.
fn property_map(key: &str) -> Option<&'static str> {
    PROPERTY_MAPS
        .iter()
        .find(|map| key.starts_with(&format!("{map}.")))
        .copied()
}

/// Merging one layer into the table, remembering each leaf's source.
struct Merge<'a> {
    source: &'a Source,
    sources: &'a mut BTreeMap<String, Source>,
    errors: &'a mut Vec<ConfigError>,
}

impl Merge<'_> {
    /// Merges `other` into `base`, the section at `prefix`. A value where
    /// `base` has a section, or a section where it has a value, is an error
    /// and changes nothing: every leaf with a source keeps its value.
    fn table(&mut self, base: &mut Table, other: Table, prefix: &str) {
        for (name, value) in other {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match (base.get_mut(&name), value) {
                // librdkafka property names contain dots, which TOML reads
                // as nested tables (`security.protocol = "SSL"`): one name.
                (Some(Value::Table(existing)), Value::Table(incoming))
                    if PROPERTY_MAPS.contains(&key.as_str()) =>
                {
                    let mut names = Table::new();
                    flatten(incoming, "", &mut names);
                    self.table(existing, names, &key)
                }
                (Some(Value::Table(existing)), Value::Table(incoming)) => {
                    self.table(existing, incoming, &key)
                }
                (Some(Value::Table(_)), _) => {
                    let message =
                        format!("is a section, not a value; set its keys ({key}.KEY=value)");
                    self.errors.push(error(&key, &message, self.source));
                }
                (Some(_), Value::Table(incoming)) => {
                    // Named by the key the user wrote: the first leaf below.
                    let error = match first_leaf(&incoming) {
                        Some(leaf) => {
                            let message = format!("{key} is a value, not a section");
                            error(&format!("{key}.{leaf}"), &message, self.source)
                        }
                        None => error(&key, "is a value, not a section", self.source),
                    };
                    self.errors.push(error);
                }
                (None, Value::Table(incoming)) => {
                    let mut fresh = Table::new();
                    self.table(&mut fresh, incoming, &key);
                    base.insert(name, Value::Table(fresh));
                }
                (_, value) => {
                    self.sources.insert(key, self.source.clone());
                    base.insert(name, value);
                }
            }
        }
    }
}

/// The leaves of `table` under their dotted names, into `out`.
fn flatten(table: Table, prefix: &str, out: &mut Table) {
    for (name, value) in table {
        let name = format!("{prefix}{name}");
        match value {
            Value::Table(inner) => flatten(inner, &format!("{name}."), out),
            value => {
                out.insert(name, value);
            }
        }
    }
}

/// The dotted path of the first leaf of `table`, if it has one.
fn first_leaf(table: &Table) -> Option<String> {
    let (name, value) = table.iter().next()?;
    match value {
        Value::Table(inner) => first_leaf(inner).map(|leaf| format!("{name}.{leaf}")),
        _ => Some(name.clone()),
    }
}

fn error(key: &str, message: &str, source: &Source) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.to_string(),
        source: Some(source.clone()),
    }
}

fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    // Property names contain dots themselves: match the map prefix first.
    if let Some(map) = PROPERTY_MAPS
        .iter()
        .find(|map| key.starts_with(&format!("{map}.")))
    {
        let (section, name) = map.split_once('.').expect("maps are section.name");
        return table.get(section)?.get(name)?.get(&key[map.len() + 1..]);
    }
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

fn insert_path(table: &mut Table, key: &str, value: Value) {
    let (path, leaf): (Vec<&str>, &str) = match PROPERTY_MAPS
        .iter()
        .find(|map| key.starts_with(&format!("{map}.")))
    {
        Some(map) => (map.split('.').collect(), &key[map.len() + 1..]),
        None => {
            let mut parts: Vec<&str> = key.split('.').collect();
            let leaf = parts.pop().unwrap_or_default();
            (parts, leaf)
        }
    };
    let mut current = table;
    for part in path {
        current = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("config sections are tables");
    }
    current.insert(leaf.to_string(), value);
}

impl Config {
    /// Defaults, then `file`, then the process environment, then `--set` flags.
    pub fn load(file: Option<&Path>, flags: &[String]) -> Result<Config, ConfigErrors> {
        let mut layers = Layers::defaults();
        if let Some(file) = file {
            layers.file(file);
        }
        layers.env(std::env::vars());
        for flag in flags {
            layers.flag(flag);
        }
        layers.build()
    }

    /// The built-in defaults alone (tests, demo).
    pub fn defaults() -> Config {
        Layers::defaults()
            .build()
            .expect("the built-in defaults are valid")
    }

    /// The checks that need more than one leaf's value (names not empty,
    /// topics distinct, addresses and filters that parse), as (key,
    /// message) pairs. Ranges and choices are checked per leaf, earlier.
    fn other_errors(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                errors.push((key.to_string(), message.to_string()));
            }
        };
        check(
            !self.kafka.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one host:port",
        );
        check(
            !self.kafka.group_id.is_empty(),
            "kafka.group_id",
            "must not be empty",
        );
        check(
            !self.kafka.transactional_id.is_empty(),
            "kafka.transactional_id",
            "must not be empty",
        );
        let topics = [
            ("topics.orders", &self.topics.orders),
            ("topics.inventory", &self.topics.inventory),
            ("topics.status", &self.topics.status),
            ("topics.fulfillments", &self.topics.fulfillments),
            ("topics.dlq", &self.topics.dlq),
            ("topics.events", &self.topics.events),
            ("topics.payment_requests", &self.topics.payment_requests),
            ("topics.state", &self.topics.state),
        ];
        for (i, (key, name)) in topics.iter().enumerate() {
            check(!name.is_empty(), key, "must not be empty");
            check(
                !topics[..i].iter().any(|(_, other)| other == name),
                key,
                "must differ from the other topics",
            );
        }
        check(
            self.payments.retry_max_ms >= self.payments.retry_initial_ms,
            "payments.retry_max_ms",
            "must be at least payments.retry_initial_ms",
        );
        check(
            self.payments.http_timeout_ms < self.payments.result_timeout_ms,
            "payments.http_timeout_ms",
            "must be below payments.result_timeout_ms (a call still running when its result \
             times out would be retried beside itself)",
        );
        if self.payments.adapter == PaymentAdapter::Http {
            check(
                crate::payments::http::Gateway::new(
                    &self.payments.http_url,
                    std::time::Duration::from_millis(self.payments.http_timeout_ms),
                )
                .is_ok(),
                "payments.http_url",
                "must be an http://host[:port]/path URL (payments.adapter = \"http\")",
            );
        }
        check(
            !self.limits.payment_methods.is_empty(),
            "limits.payment_methods",
            "must name at least one method",
        );
        if self.metrics.enabled {
            check(
                self.metrics.listen.parse::<SocketAddr>().is_ok(),
                "metrics.listen",
                "must be an IP:port such as 127.0.0.1:9898",
            );
        }
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "must be a tracing filter such as \"info\" or \"orderflow=debug\"",
        );
        errors
    }

    /// The effective config as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let config = Config::defaults();
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.topics.status, "order-status");
        assert_eq!(config.metrics.listen, "127.0.0.1:9898");
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn retention_takes_whole_and_fractional_days_within_its_range() {
        let retention = |text: &str| {
            let mut layers = Layers::defaults();
            layers.flag(&format!("lifecycle.retention_days={text}"));
            layers.build().map(|config| config.lifecycle.retention())
        };
        assert_eq!(
            Config::defaults().lifecycle.retention(),
            std::time::Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            retention("2").unwrap(),
            std::time::Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            retention("0.0001").unwrap(),
            std::time::Duration::from_secs_f64(8.64)
        );
        for bad in ["0", "-1", "40000"] {
            let errors = retention(bad).unwrap_err().to_string();
            assert!(
                errors.contains("lifecycle.retention_days") && errors.contains("must be"),
                "{bad}: {errors}"
            );
        }
    }

    #[test]
    fn env_and_flags_override_in_order() {
        let mut layers = Layers::defaults();
        layers.env(env(&[
            ("ORDERFLOW__KAFKA__BROKERS", "b1:9092,b2:9092"),
            ("ORDERFLOW__ENGINE__SHARDS", "4"),
            ("ORDERFLOW__KAFKA__GROUP_ID", "123"),
            (
                "ORDERFLOW__KAFKA__PROPERTIES__SECURITY_PROTOCOL",
                "SASL_SSL",
            ),
            ("OTHER", "x"),
        ]));
        layers.flag("engine.shards=8");
        let config = layers.build().unwrap();
        assert_eq!(config.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(config.kafka.group_id, "123", "a string key stays a string");
        assert_eq!(config.engine.shards, 8, "flags win over env");
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn reports_every_error_with_its_source() {
        let dir = std::env::temp_dir().join(format!("orderflow-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(
            &file,
            "[engine]\nshards = 0\nturbo = true\n[metrics]\nlisten = \"nowhere\"\n",
        )
        .unwrap();
        let mut layers = Layers::defaults();
        layers.file(&file);
        layers.env(env(&[("ORDERFLOW__LIMITS__MAX_LINES", "many")]));
        let errors = layers.build().unwrap_err().0;
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("engine.turbo: unknown key (from file")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("limits.max_lines: expected integer, found string (from environment variable ORDERFLOW__LIMITS__MAX_LINES)")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("engine.shards: must be 1 to 1024, found 0 (from file")),
            "range errors are reported beside type errors: {text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("metrics.listen: must be an IP:port")),
            "{text:?}"
        );
        assert_eq!(text.len(), 4, "{text:?}");
    }

    #[test]
    fn transactions_setting_is_checked_and_the_id_expanded() {
        let config = Config::defaults();
        assert_eq!(config.kafka.transactions, TransactionMode::Auto);
        let id = config.kafka.transactional_id();
        assert!(id.starts_with("orderflow-"), "{id}");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(!id.contains('{'), "{id}");
        let mut layers = Layers::defaults();
        layers.flag("kafka.transactions=maybe");
        let errors = layers.build().unwrap_err().to_string();
        assert_eq!(
            errors,
            "kafka.transactions: must be one of \"auto\", \"on\", \"off\", found \"maybe\" \
             (from flag --set)"
        );
    }

    /// Every choice's names are its enum's serde names, both ways.
    fn names_round_trip<T: Choices + Serialize + PartialEq + fmt::Debug>() {
        for name in T::NAMES {
            let value: T = Value::String(name.to_string()).try_into().unwrap();
            assert_eq!(Value::try_from(&value).unwrap().as_str(), Some(*name));
        }
        assert!(choice::<T>(&Value::String("no such".into())).is_err());
    }

    #[test]
    fn choices_are_the_enums_names() {
        names_round_trip::<AutoOffsetReset>();
        names_round_trip::<TransactionMode>();
        names_round_trip::<StockSplit>();
        names_round_trip::<LogFormat>();
        assert_eq!(TransactionMode::On.as_str(), "on");
        assert_eq!(StockSplit::NAMES, ["whole", "partition"]);
        let reference: Table = DEFAULT_TOML.parse().unwrap();
        for (key, check) in CHOICES {
            check(lookup(&reference, key).expect("a choice key is a default")).unwrap();
        }
    }

    /// Every integer leaf of the defaults, by key.
    fn integer_leaves(table: &Table, prefix: &str, out: &mut Vec<(String, i64)>) {
        for (name, value) in table {
            let key = format!("{prefix}{name}");
            match value {
                Value::Table(inner) => integer_leaves(inner, &format!("{key}."), out),
                Value::Integer(n) => out.push((key, *n)),
                _ => {}
            }
        }
    }

    #[test]
    fn every_integer_setting_has_a_range_holding_its_default() {
        let mut leaves = Vec::new();
        integer_leaves(&DEFAULT_TOML.parse().unwrap(), "", &mut leaves);
        let ranged: BTreeSet<&str> = INTEGER_RANGES.iter().map(|(k, _, _)| *k).collect();
        let integers: BTreeSet<&str> = leaves.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            ranged, integers,
            "INTEGER_RANGES and the defaults' integers"
        );
        for (key, default) in &leaves {
            let (_, min, max) = INTEGER_RANGES.iter().find(|(k, _, _)| k == key).unwrap();
            assert!((min..=max).contains(&default), "{key} = {default}");
        }
    }

    #[test]
    fn range_edges_are_accepted_and_one_past_is_refused() {
        for (key, min, max) in INTEGER_RANGES {
            for (n, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
                let mut layers = Layers::defaults();
                layers.flag(&format!("{key}={n}"));
                match layers.build() {
                    Ok(_) => assert!(ok, "{key}={n} accepted"),
                    // An edge within range may still break a rule between
                    // settings (payments.http_timeout_ms below
                    // payments.result_timeout_ms): never a range error.
                    Err(errors) if ok => {
                        assert!(!errors.to_string().contains(" to "), "{key}={n}: {errors}")
                    }
                    Err(errors) => {
                        assert_eq!(
                            errors.to_string(),
                            format!("{key}: must be {min} to {max}, found {n} (from flag --set)")
                        );
                    }
                }
            }
        }
        // The documented combination keeps an order's units within u32.
        let most = |key| INTEGER_RANGES.iter().find(|(k, _, _)| *k == key).unwrap().2;
        assert!(most("limits.max_lines") * most("limits.max_quantity") < i64::from(u32::MAX));
    }

    mod any_input {
        //! Whatever keys and values the layers get: no panic, and every
        //! error names a key and the source it came from.
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            let mut known = Vec::new();
            integer_leaves(&DEFAULT_TOML.parse().unwrap(), "", &mut known);
            let mut keys: Vec<String> = known.into_iter().map(|(k, _)| k).collect();
            keys.extend(
                [
                    "kafka",
                    "engine",
                    "limits",
                    "topics",
                    "kafka.brokers",
                    "kafka.transactions",
                    "engine.stock_split",
                    "log.format",
                    "log",
                    "metrics.watched_skus",
                    "limits.payment_methods",
                    "kafka.properties",
                    "kafka.producer.linger.ms",
                    "kafka.brokers.x",
                    "engine.shards.x.y",
                    "",
                    ".",
                    "a..b",
                    "nope",
                    "x.y",
                ]
                .map(String::from),
            );
            prop_oneof![
                4 => proptest::sample::select(keys),
                1 => "[a-z._]{0,12}",
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                proptest::sample::select(vec![
                    "0",
                    "-1",
                    "1",
                    "9223372036854775807",
                    "-9223372036854775808",
                    "99999999999999999999",
                    "1.5",
                    "true",
                    "[]",
                    "[1]",
                    "[\"a\"]",
                    "{}",
                    "{a = 1}",
                    "\"quoted\"",
                    "",
                    "auto",
                    "json",
                    "partition",
                    "x",
                ])
                .prop_map(String::from),
                "\\PC{0,8}",
            ]
        }

        proptest! {
            #[test]
            fn never_panics_and_names_every_source(
                sets in prop::collection::vec((key(), value(), 0..2u8), 1..6)
            ) {
                let mut layers = Layers::defaults();
                for (key, value, how) in &sets {
                    if *how == 0 {
                        layers.flag(&format!("{key}={value}"));
                    } else {
                        let name = format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase());
                        layers.env([(name, value.clone())]);
                    }
                }
                if let Err(errors) = layers.build() {
                    for error in &errors.0 {
                        prop_assert!(error.source.is_some(), "{}", error);
                        prop_assert!(error.key != "(config)", "{}", error);
                    }
                }
            }
        }
    }

    #[test]
    fn dotted_property_names_in_a_file_are_one_name() {
        let dir = std::env::temp_dir().join(format!("orderflow-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("props.toml");
        std::fs::write(
            &file,
            "[kafka.properties]\nsecurity.protocol = \"SSL\"\n\"ssl.ca.location\" = \"/ca\"\n\
             [kafka.producer]\nbatch.num.messages = 5\n",
        )
        .unwrap();
        let mut layers = Layers::defaults();
        layers.file(&file);
        let errors = layers.build().unwrap_err();
        assert_eq!(
            errors.to_string(),
            format!(
                "kafka.producer.batch.num.messages: librdkafka properties are strings; \
                 quote the value (from file {})",
                file.display()
            )
        );
        std::fs::write(&file, "[kafka.properties]\nsecurity.protocol = \"SSL\"\n").unwrap();
        let mut layers = Layers::defaults();
        layers.file(&file);
        let config = layers.build().unwrap();
        assert_eq!(config.kafka.properties["security.protocol"], "SSL");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let mut layers = Layers::defaults();
        layers.file(Path::new("/nonexistent/orderflow.toml"));
        let errors = layers.build().unwrap_err();
        assert!(
            errors.to_string().contains("/nonexistent/orderflow.toml"),
            "{errors}"
        );
    }
}
