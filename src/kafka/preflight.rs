//! Before anything else at start: can orderflow talk to the brokers with
//! its credentials at all, and may it read and write its topics?
//!
//! librdkafka treats a refused SASL handshake or a failed TLS handshake
//! like a broker that is down: it reports the error and connects again,
//! forever. Without this check the first symptom is a later step timing
//! out (the transactions probe, then reading the inventory) with "broker
//! transport failure", which names neither the cause nor the setting, and
//! `kafka.transactions = "auto"` even concludes the brokers have no
//! transactions. So one metadata request goes first; an authentication or
//! TLS error reported meanwhile stops the start with an error naming the
//! settings to check (docs/security.md).
//!
//! A missing ACL on a topic shows even later: a refused write aborts the
//! first transaction, and librdkafka reports the records it then purges
//! only as "purged", not why (without transactions the write is retried
//! forever). So the brokers are asked, once, which operations this
//! principal may perform on each topic (DescribeTopics with authorized
//! operations, KIP-430; rust-rdkafka does not wrap it, so librdkafka's C
//! API is called directly), and every missing one is named at once.
//! Brokers that do not say (no authorizer answers all operations; older
//! brokers answer none) pass.
//!
//! Both run only where clients authenticate or encrypt (a
//! `security.protocol` other than plaintext).

use crate::config::{Config, KafkaConfig};
use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the check waits for metadata before leaving the brokers'
/// health to the steps after it; also the DescribeTopics deadline.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// One metadata attempt; between attempts the reported errors are looked at.
const ATTEMPT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "the brokers at {brokers} refused orderflow's credentials ({cause}): check \
         kafka.properties \"sasl.username\", \"sasl.password\" and \"sasl.mechanism\" \
         (docs/security.md)"
    )]
    Authentication { brokers: String, cause: String },
    #[error(
        "the TLS handshake with the brokers at {brokers} failed ({cause}): check \
         kafka.properties \"ssl.ca.location\" (the CA that signed the brokers' certificates) \
         and that the certificates name the addresses in kafka.brokers (docs/security.md)"
    )]
    Tls { brokers: String, cause: String },
    #[error(
        "orderflow's principal is not allowed {missing} on the brokers at {brokers}: grant \
         the ACLs (docs/security.md, \"The least-privilege ACL set\")"
    )]
    Acls { brokers: String, missing: String },
    #[error(
        "topic {topic} has cleanup.policy={policy} on the brokers at {brokers}: it is \
         orderflow's changelog and must be compacted, or the records of orders older than \
         its retention are deleted and a restore decides those orders again. Fix it with \
         kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
         --add-config cleanup.policy=compact (README, \"Run against a real cluster\")"
    )]
    NotCompacted {
        brokers: String,
        topic: String,
        policy: String,
    },
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
}

/// How long the changelog check waits for the brokers' answer before
/// leaving the topic unchecked (brokers that do not answer DescribeConfigs,
/// such as librdkafka's MockCluster, answer nothing).
const CONFIG_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The state topic is the changelog a restore reads (with transactions,
/// alone): it must be compacted, not deleted by time. An error if the
/// brokers say its `cleanup.policy` has no `compact`; a warning if they do
/// not answer (the start goes on: the topic is then unchecked).
pub fn check_changelog(config: &Config) -> Result<(), PreflightError> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let topic = &config.topics.state;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        super::base_config(&config.kafka).create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaError::AdminOpCreation(e.to_string()))?;
    let options = AdminOptions::new().request_timeout(Some(CONFIG_CHECK_TIMEOUT));
    let described = runtime.block_on(async {
        tokio::time::timeout(
            CONFIG_CHECK_TIMEOUT,
            admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
        )
        .await
    });
    let policy = match described {
        Ok(Ok(results)) => results
            .into_iter()
            .next()
            .and_then(Result::ok)
            .and_then(|resource| resource.get("cleanup.policy")?.value.clone()),
        _ => None,
    };
    match policy {
        Some(policy) if !policy.split(',').any(|p| p.trim() == "compact") => {
            Err(PreflightError::NotCompacted {
                brokers: config.kafka.brokers.clone(),
                topic: topic.clone(),
                policy,
            })
        }
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                topic = %topic,
                "the brokers did not say whether the state topic is compacted; it must be \
                 (cleanup.policy=compact)"
            );
            Ok(())
        }
    }
}

/// Remembers the first authentication or TLS error librdkafka reports.
#[derive(Default)]
struct Refusal(Mutex<Option<(RDKafkaErrorCode, String)>>);

impl ClientContext for Refusal {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code @ (RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)) =
            error.rdkafka_error_code()
        {
            let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| (code, reason.to_string()));
        }
    }
}

impl ProducerContext for Refusal {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// With a `security.protocol` other than plaintext: requests metadata with
/// the configured security settings, then which operations the principal
/// may perform on the configured topics. An error if the brokers refuse
/// the credentials, the TLS handshake fails, or the brokers say an ACL
/// orderflow needs is missing. Any other trouble (brokers down or slow, a
/// missing topic) is left to the steps after it.
pub fn check(config: &Config) -> Result<(), PreflightError> {
    let kafka = &config.kafka;
    if !secured(kafka) {
        return Ok(());
    }
    let producer = client(kafka)?;
    if !credentials_accepted(&producer, kafka)? {
        return Ok(()); // no metadata yet: the steps after this one report it
    }
    let topics = &config.topics;
    use rd::rd_kafka_AclOperation_t::{
        RD_KAFKA_ACL_OPERATION_READ as READ, RD_KAFKA_ACL_OPERATION_WRITE as WRITE,
    };
    let mut needs = vec![
        (&topics.orders, READ),
        (&topics.inventory, READ),
        (&topics.status, READ), // restoring a partition reads its statuses
        (&topics.status, WRITE),
        (&topics.fulfillments, WRITE),
        (&topics.dlq, WRITE),
        (&topics.state, READ), // ... and then its state records
        (&topics.state, WRITE),
        (&topics.events, WRITE),
        (&topics.payment_requests, WRITE),
    ];
    if config.payments.adapter != crate::config::PaymentAdapter::External {
        // The in-process adapter reads commands and writes results.
        needs.extend([(&topics.payment_requests, READ), (&topics.orders, WRITE)]);
    }
    let Some(allowed) = authorized_operations(&producer, needs.iter().map(|(t, _)| t.as_str()))
    else {
        return Ok(()); // the brokers did not say
    };
    let missing: Vec<String> = needs
        .iter()
        .filter(|(topic, op)| {
            allowed
                .get(topic.as_str())
                .is_some_and(|ops| !ops.contains(op))
        })
        .map(|(topic, op)| {
            let op = if *op == READ { "Read" } else { "Write" };
            format!("{op} on topic {topic}")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PreflightError::Acls {
        brokers: kafka.brokers.clone(),
        missing: missing.join(", "),
    })
}

/// Whether the clients authenticate or encrypt (`security.protocol` other
/// than plaintext), which is where credentials and ACLs come into play.
/// Plaintext clients (the demo's embedded broker, a local Kafka) skip the
/// check: it would cost them a round trip, and up to its deadline where
/// the brokers do not answer DescribeTopics (librdkafka's MockCluster).
fn secured(kafka: &KafkaConfig) -> bool {
    kafka
        .properties
        .get("security.protocol")
        .is_some_and(|protocol| !protocol.eq_ignore_ascii_case("plaintext"))
}

/// A client with the configured security settings (a producer only for
/// its client: it sends nothing).
fn client(kafka: &KafkaConfig) -> Result<BaseProducer<Refusal>, PreflightError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    Ok(config.create_with_context(Refusal::default())?)
}

/// Whether metadata arrived within the deadline; an error if the brokers
/// refused the credentials or the TLS handshake failed meanwhile.
fn credentials_accepted(
    producer: &BaseProducer<Refusal>,
    kafka: &KafkaConfig,
) -> Result<bool, PreflightError> {
    let deadline = Instant::now() + CHECK_TIMEOUT;
    loop {
        if producer.client().fetch_metadata(None, ATTEMPT).is_ok() {
            return Ok(true);
        }
        producer.poll(Duration::ZERO); // serves the error callback
        let refused = producer
            .context()
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let brokers = kafka.brokers.clone();
        match refused {
            Some((RDKafkaErrorCode::SSL, cause)) => {
                return Err(PreflightError::Tls { brokers, cause })
            }
            Some((_, cause)) => return Err(PreflightError::Authentication { brokers, cause }),
            None if Instant::now() >= deadline => return Ok(false),
            None => {}
        }
    }
}

/// The operations the brokers allow this principal on each of `topics`
/// (none for a topic whose authorization failed), leaving out topics the
/// brokers say nothing about (unknown, or no operations given). `None` if
/// the request fails or times out.
fn authorized_operations<'a>(
    producer: &BaseProducer<Refusal>,
    topics: impl Iterator<Item = &'a str>,
) -> Option<std::collections::HashMap<String, Vec<rd::rd_kafka_AclOperation_t>>> {
    // Each name once: DescribeTopics refuses a list with duplicates.
    let names: std::collections::BTreeSet<&str> = topics.collect();
    let names: Vec<CString> = names
        .into_iter()
        .filter_map(|t| CString::new(t).ok())
        .collect();
    let mut pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = producer.client().native_ptr();
    let mut errstr = [0 as c_char; 256];
    // SAFETY: `rk` lives as long as `producer`; `names` outlive the call
    // that copies them; every object created here is destroyed once, at
    // the end, after the event's contents were copied out.
    unsafe {
        let collection =
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let queue = rd::rd_kafka_queue_new(rk);
        let include = rd::rd_kafka_AdminOptions_set_include_authorized_operations(options, 1);
        let mut answer = None;
        if include.is_null() {
            rd::rd_kafka_AdminOptions_set_request_timeout(
                options,
                CHECK_TIMEOUT.as_millis() as i32,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
            let event = rd::rd_kafka_queue_poll(queue, CHECK_TIMEOUT.as_millis() as i32 + 1000);
            if !event.is_null() {
                answer = topic_operations(event);
                rd::rd_kafka_event_destroy(event);
            }
        } else {
            rd::rd_kafka_error_destroy(include);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        answer
    }
}

/// The contents of a DescribeTopics result event.
///
/// # Safety
/// `event` must be a live DescribeTopics result event.
unsafe fn topic_operations(
    event: *mut rd::rd_kafka_event_t,
) -> Option<std::collections::HashMap<String, Vec<rd::rd_kafka_AclOperation_t>>> {
    if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    let result = rd::rd_kafka_event_DescribeTopics_result(event);
    if result.is_null() {
        return None;
    }
    let mut count = 0;
    let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
    let mut operations = std::collections::HashMap::new();
    for i in 0..count {
        let description = *descriptions.add(i);
        let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(description))
            .to_string_lossy()
            .into_owned();
        let error = rd::rd_kafka_TopicDescription_error(description);
        if !error.is_null() {
            if rd::rd_kafka_error_code(error)
                == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED
            {
                operations.insert(name, Vec::new()); // not even Describe
            }
            continue; // unknown topic and the like: reported later
        }
        let mut allowed = 0;
        let ops = rd::rd_kafka_TopicDescription_authorized_operations(description, &mut allowed);
        if !ops.is_null() && allowed > 0 {
            operations.insert(name, std::slice::from_raw_parts(ops, allowed).to_vec());
        }
    }
    Some(operations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(protocol: Option<&str>) -> KafkaConfig {
        let mut kafka = Config::defaults().kafka;
        if let Some(protocol) = protocol {
            kafka
                .properties
                .insert("security.protocol".into(), protocol.into());
        }
        kafka
    }

    #[test]
    fn only_secured_clients_are_checked() {
        assert!(!secured(&kafka(None)));
        assert!(!secured(&kafka(Some("PLAINTEXT"))));
        assert!(!secured(&kafka(Some("plaintext"))));
        for protocol in ["SASL_SSL", "sasl_plaintext", "SSL"] {
            assert!(secured(&kafka(Some(protocol))), "{protocol}");
        }
    }
}
