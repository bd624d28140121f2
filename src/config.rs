//! One typed [`Config`], layered: the built-in `config/default.toml`, then a
//! file (`--config`), then `ORDERFLOW__SECTION__KEY` environment variables,
//! then flags (`--set section.key=value`). Every leaf remembers which layer
//! it came from, so [`Config::load`] can report *all* problems at once, each
//! with the place to fix it.

use crate::order::validate::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub engine: EngineConfig,
    pub limits: Limits,
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
    pub auto_offset_reset: String,
    /// Dead-letter values above this size are left out (the broker would
    /// refuse them); headers still point at the original record.
    pub max_dlq_payload_bytes: usize,
    /// "auto": Kafka transactions if the brokers can commit one (probed at
    /// start), else without; "on": transactions or refuse to start; "off":
    /// never (docs/architecture.md, "Where each guarantee holds").
    pub transactions: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub shards: usize,
    pub shard_queue_records: usize,
    pub dedup_window_orders: usize,
    pub commit_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// "whole": this instance sells every SKU's whole stock, and decides
    /// only while it owns every partition of `orders`. "partition": each
    /// partition sells its quota, so instances can share a sale.
    pub stock_split: String,
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
        self.stock_split == "partition"
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
    pub format: String,
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
        merge_into(&mut self.table, other, "", source, &mut self.sources);
    }

    fn source_of(&self, key: &str) -> Option<Source> {
        self.sources.get(key).cloned()
    }

    /// Type-checks every leaf against the defaults, deserializes, then checks
    /// every value's range. Returns all errors found, not just the first.
    pub fn build(self) -> Result<Config, ConfigErrors> {
        let mut errors = self.errors.clone();
        let reference: Table = DEFAULT_TOML
            .parse()
            .expect("config/default.toml is valid TOML");
        for (key, source) in &self.sources {
            let value = lookup(&self.table, key).expect("every source names a leaf");
            if PROPERTY_MAPS
                .iter()
                .any(|map| key.starts_with(&format!("{map}.")))
            {
                if !value.is_str() {
                    errors.push(error(
                        key,
                        "librdkafka properties are strings; quote the value",
                        source,
                    ));
                }
                continue;
            }
            match lookup(&reference, key) {
                None => errors.push(error(key, "unknown key", source)),
                Some(expected) if expected.type_str() != value.type_str() => errors.push(error(
                    key,
                    &format!(
                        "expected {}, found {}",
                        expected.type_str(),
                        value.type_str()
                    ),
                    source,
                )),
                Some(_) => {}
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let config: Config = match Value::Table(self.table.clone()).try_into() {
            Ok(config) => config,
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    key: "(config)".into(),
                    message: e.to_string(),
                    source: None,
                }]))
            }
        };
        let errors: Vec<ConfigError> = config
            .range_errors()
            .into_iter()
            .map(|(key, message)| ConfigError {
                source: self.source_of(&key),
                key,
                message,
            })
            .collect();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
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

fn merge_into(
    base: &mut Table,
    other: Table,
    prefix: &str,
    source: &Source,
    sources: &mut BTreeMap<String, Source>,
) {
    for (name, value) in other {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (base.get_mut(&name), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => {
                merge_into(existing, incoming, &key, source, sources)
            }
            (_, Value::Table(incoming)) => {
                let mut fresh = Table::new();
                merge_into(&mut fresh, incoming, &key, source, sources);
                base.insert(name, Value::Table(fresh));
            }
            (_, value) => {
                sources.insert(key, source.clone());
                base.insert(name, value);
            }
        }
    }
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

    /// Range checks, as (key, message) pairs.
    fn range_errors(&self) -> Vec<(String, String)> {
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
            ["earliest", "latest"].contains(&self.kafka.auto_offset_reset.as_str()),
            "kafka.auto_offset_reset",
            "must be \"earliest\" or \"latest\"",
        );
        check(
            ["auto", "on", "off"].contains(&self.kafka.transactions.as_str()),
            "kafka.transactions",
            "must be \"auto\" (if the brokers support them), \"on\" or \"off\"",
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
            (1..=1024).contains(&self.engine.shards),
            "engine.shards",
            "must be 1 to 1024",
        );
        check(
            self.engine.shard_queue_records >= 1,
            "engine.shard_queue_records",
            "must be at least 1",
        );
        check(
            self.engine.dedup_window_orders >= 1,
            "engine.dedup_window_orders",
            "must be at least 1",
        );
        check(
            ["whole", "partition"].contains(&self.engine.stock_split.as_str()),
            "engine.stock_split",
            "must be \"whole\" (one instance) or \"partition\" (instances share a sale)",
        );
        check(
            self.engine.commit_interval_ms >= 1,
            "engine.commit_interval_ms",
            "must be at least 1",
        );
        let l = &self.limits;
        check(
            l.max_record_bytes >= 64,
            "limits.max_record_bytes",
            "must be at least 64",
        );
        check(l.max_lines >= 1, "limits.max_lines", "must be at least 1");
        check(
            l.max_quantity >= 1,
            "limits.max_quantity",
            "must be at least 1",
        );
        check(
            l.max_text_chars >= 1,
            "limits.max_text_chars",
            "must be at least 1",
        );
        check(
            l.max_addresses >= 1,
            "limits.max_addresses",
            "must be at least 1",
        );
        check(
            l.max_payments >= 1,
            "limits.max_payments",
            "must be at least 1",
        );
        check(
            !l.payment_methods.is_empty(),
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
        check(
            ["text", "json"].contains(&self.log.format.as_str()),
            "log.format",
            "must be \"text\" or \"json\"",
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
        // Range errors come once the types are right; fix the type errors.
        let mut layers = Layers::defaults();
        layers.file(&file);
        layers.flag("engine.turbo=");
        let errors = layers.build().unwrap_err().0;
        assert!(errors.iter().any(|e| e.key == "engine.turbo"));
        std::fs::write(
            &file,
            "[engine]\nshards = 0\n[metrics]\nlisten = \"nowhere\"\n",
        )
        .unwrap();
        let mut layers = Layers::defaults();
        layers.file(&file);
        let text: Vec<String> = layers
            .build()
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("engine.shards: must be 1 to 1024 (from file"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("metrics.listen: must be an IP:port"),
            "{text:?}"
        );
    }

    #[test]
    fn transactions_setting_is_checked_and_the_id_expanded() {
        let config = Config::defaults();
        assert_eq!(config.kafka.transactions, "auto");
        let id = config.kafka.transactional_id();
        assert!(id.starts_with("orderflow-"), "{id}");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(!id.contains('{'), "{id}");
        let mut layers = Layers::defaults();
        layers.flag("kafka.transactions=maybe");
        let errors = layers.build().unwrap_err().to_string();
        assert!(
            errors.starts_with("kafka.transactions: must be \"auto\"")
                && errors.contains("(from flag --set)"),
            "{errors}"
        );
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
