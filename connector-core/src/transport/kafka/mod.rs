//! The Kafka transport (rdkafka): an idempotent producer, one consumer group per sink with
//! manual commits, topics created through the admin API, and source offsets in a compacted topic.

mod group;
mod offsets;
mod producer;
mod reader;

use offsets::{latest_records, partition_count, KafkaOffsetStore, OFFSETS_TOPIC_PARTITIONS};
use reader::KafkaReader;

use group::Member;
use producer::{Acks, DeliveredEnds, KafkaWriter, Producer};

use super::{
    Incoming, OffsetStore, PartitionOffset, Rebalance, TopicPartition, TopicReader, TopicWriter,
    Transport, TransportError,
};
use crate::config::{KafkaConfig, TopicSpec, WorkerConfig};
use crate::Record;
use async_trait::async_trait;
use futures::FutureExt;
use indexmap::IndexMap;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Transport over a Kafka cluster.
pub struct KafkaTransport {
    config: KafkaConfig,
    /// Group membership of the readers: every reader is a member of its group, and the
    /// partitions of its topics are spread over the group's live workers.
    worker: WorkerConfig,
    producer: Producer,
    /// The producer's `message.max.bytes`.
    max_message_bytes: usize,
    /// Partition counts of written topics, shared by the writers (see [`KafkaWriter`]).
    partition_counts: producer::PartitionCounts,
}

/// The producer's settings. A record that times out in librdkafka's queue
/// (`message.timeout.ms`, e.g. while a partition's leader is away) is dropped while later ones
/// may still be delivered: a gap (librdkafka documents it). With `exactly_once` the records
/// after a gap carry higher positions, so the ones resent after a restart would be skipped as
/// written: there (`gapless`) records never time out; a leader away makes the source wait.
fn producer_config(config: &KafkaConfig, gapless: bool) -> ClientConfig {
    let mut client = base_config(config);
    client
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", if gapless { "0" } else { "300000" });
    for (k, v) in &config.producer {
        client.set(k, v);
    }
    client
}

impl KafkaTransport {
    /// Fails unless existing topic `name` is compacted: the offsets topic keeps each
    /// pipeline's latest snapshot only through compaction, and deleting by age would lose them.
    /// A cluster that does not describe topic configs is taken at its word (logged).
    async fn check_compacted(&self, name: &str) -> Result<(), TransportError> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let described = self
            .admin()?
            .describe_configs(&[ResourceSpecifier::Topic(name)], &options)
            .await;
        let policy = match described.as_deref() {
            Ok([Ok(resource)]) => resource
                .entry_map()
                .get("cleanup.policy")
                .and_then(|entry| entry.value.clone()),
            other => {
                tracing::debug!(topic = %name, answer = ?other.map(|r| r.len()), "cannot read the topic's cleanup.policy; taking it as compacted");
                return Ok(());
            }
        };
        match policy {
            Some(policy) if !policy.split(',').any(|p| p.trim() == "compact") => {
                Err(TransportError::fatal(format!(
                    "the offsets topic `{name}` has cleanup.policy={policy}: the source offsets and checkpoints stored there would be deleted by age and every source would start over; set cleanup.policy=compact on it, or name another topic in kafka.offsets_topic"
                )))
            }
            _ => Ok(()),
        }
    }

    fn admin(&self) -> Result<AdminClient<Quiet>, TransportError> {
        base_config(&self.config)
            .create_with_context(Quiet::default())
            .map_err(|e| {
                TransportError::fatal(format!(
                    "cannot create Kafka admin client: {}",
                    redact(&self.config, e)
                ))
            })
    }

    /// Connects and checks the cluster answers, retrying until `connect_timeout`. With
    /// `gapless` (a pipeline with `exactly_once`) the producer never gives up on a record.
    pub async fn connect(
        config: &KafkaConfig,
        worker: &WorkerConfig,
        gapless: bool,
    ) -> Result<Self, TransportError> {
        let client = producer_config(config, gapless);
        let producer: Producer = client.create_with_context(Acks::default()).map_err(|e| {
            TransportError::fatal(format!(
                "invalid Kafka producer settings: {}",
                redact(config, e)
            ))
        })?;
        let max_message_bytes = client
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let transport = KafkaTransport {
            config: config.clone(),
            worker: worker.clone(),
            producer,
            max_message_bytes,
            partition_counts: Arc::default(),
        };
        transport.wait_for_cluster().await?;
        Ok(transport)
    }

    async fn wait_for_cluster(&self) -> Result<(), TransportError> {
        let started = Instant::now();
        let mut attempt = 0;
        let mut backoff = Duration::from_millis(250);
        loop {
            attempt += 1;
            let producer = self.producer.clone();
            let result = blocking(move || {
                producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(3))
                    .map(|_| ())
            })
            .await?;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() + backoff >= self.config.connect_timeout => {
                    return Err(TransportError::fatal(format!(
                        "cannot reach Kafka at {} after {attempt} attempts in {:.0?}: {e}",
                        self.config.bootstrap_servers,
                        started.elapsed()
                    )))
                }
                Err(e) => {
                    tracing::warn!(bootstrap = %self.config.bootstrap_servers, attempt, error = %e, "Kafka not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Partition count and replicas of each existing topic among `names`.
    async fn describe(
        &self,
        names: Vec<String>,
    ) -> Result<HashMap<String, (i32, i32)>, TransportError> {
        let producer = self.producer.clone();
        blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map_err(|e| {
                    TransportError::transient(format!("cannot read cluster metadata: {e}"))
                })?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| {
                    names.iter().any(|n| n == t.name())
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                })
                .map(|t| {
                    let replicas = t
                        .partitions()
                        .first()
                        .map(|p| p.replicas().len() as i32)
                        .unwrap_or(0);
                    (
                        t.name().to_string(),
                        (t.partitions().len() as i32, replicas),
                    )
                })
                .collect())
        })
        .await?
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

impl KafkaTransport {
    fn new_writer(&self) -> KafkaWriter {
        KafkaWriter {
            producer: self.producer.clone(),
            max_message_bytes: self.max_message_bytes,
            partition_counts: self.partition_counts.clone(),
        }
    }
}

/// librdkafka's logs and errors as `tracing` events, each kind at most once per 10 s: a broker
/// that is down for a while otherwise produces dozens of identical lines a second.
#[derive(Clone, Default)]
pub struct Quiet {
    last: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Quiet {
    fn first_in_a_while(&self, kind: &str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.get(kind) {
            Some(at) if now.duration_since(*at) < Duration::from_secs(10) => false,
            _ => {
                last.insert(kind.to_string(), now);
                true
            }
        }
    }
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let serious = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        if serious && self.first_in_a_while(fac) {
            tracing::warn!(target: "librdkafka", facility = fac, "{message}");
        } else {
            tracing::debug!(target: "librdkafka", facility = fac, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.first_in_a_while(&format!("{:?}", error.rdkafka_error_code())) {
            tracing::warn!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// Settings every client shares: the brokers, and `kafka.client` (TLS, SASL…).
fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", "sluice");
    for (k, v) in &config.client {
        client.set(k, v);
    }
    client
}

/// `message` with the value of every secret client property (see
/// [`crate::secret::is_secret_setting`]) replaced by `***`: librdkafka quotes values it refuses.
fn redact(config: &KafkaConfig, message: impl std::fmt::Display) -> String {
    let mut text = crate::secret::redact_url(&message.to_string());
    for (k, v) in config
        .client
        .iter()
        .chain(&config.producer)
        .chain(&config.consumer)
    {
        if !v.is_empty() && crate::secret::is_secret_setting(k) {
            text = text.replace(v.as_str(), "***");
        }
    }
    text
}

/// Runs blocking librdkafka calls off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransportError::fatal(format!("Kafka client task failed: {e}")))
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn ensure_topics(
        &self,
        topics: &IndexMap<String, TopicSpec>,
    ) -> Result<(), TransportError> {
        let mut all = topics.clone();
        // Spread over partitions like Kafka Connect's `connect-offsets` (25), so that a
        // pipeline reading back to its last snapshot at start-up passes few records of others.
        all.entry(self.config.offsets_topic.clone())
            .or_insert_with(|| TopicSpec {
                partitions: OFFSETS_TOPIC_PARTITIONS,
                config: [("cleanup.policy".to_string(), "compact".to_string())].into(),
                ..TopicSpec::default()
            });
        let existing = self.describe(all.keys().cloned().collect()).await?;
        for (name, (partitions, replicas)) in &existing {
            let spec = &all[name];
            // An existing offsets topic is used as it is: each pipeline picks its partition
            // from the count the broker reports.
            let declared = topics.contains_key(name);
            if *partitions != spec.partitions && declared {
                return Err(TransportError::fatal(format!(
                    "topic `{name}` exists with {partitions} partitions, the pipeline declares {}",
                    spec.partitions
                )));
            }
            if *replicas != spec.replication_factor && declared {
                return Err(TransportError::fatal(format!(
                    "topic `{name}` exists with replication factor {replicas}, the pipeline declares {}",
                    spec.replication_factor
                )));
            }
        }
        if existing.contains_key(&self.config.offsets_topic) {
            self.check_compacted(&self.config.offsets_topic).await?;
        }
        let missing: Vec<(&String, &TopicSpec)> = all
            .iter()
            .filter(|(n, _)| !existing.contains_key(*n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let admin = self.admin()?;
        let new_topics: Vec<NewTopic> = missing
            .iter()
            .map(|(name, spec)| {
                spec.config.iter().fold(
                    NewTopic::new(
                        name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| TransportError::transient(format!("cannot create topics: {e}")))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(TransportError::fatal(format!(
                        "cannot create topic `{name}`: {code}"
                    )))
                }
            }
        }
        // Wait until the cluster reports what was created, so producers see every partition.
        let names: Vec<String> = missing.iter().map(|(n, _)| n.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = self.describe(names.clone()).await?;
            if names
                .iter()
                .all(|n| seen.get(n).is_some_and(|(p, _)| *p == all[n].partitions))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TransportError::transient(format!(
                    "topics {names:?} were created but do not show up in the cluster metadata"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sends_json_text(&self) -> bool {
        true
    }

    fn default_in_flight_batches(&self) -> usize {
        // Acknowledgements take a linger plus a broker round trip; fewer batches than this left
        // the source waiting for them a quarter of the time (1M-row benchmark).
        32
    }

    fn writer(&self) -> Arc<dyn TopicWriter> {
        Arc::new(self.new_writer())
    }

    async fn reader(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn TopicReader>, TransportError> {
        let mut client = base_config(&self.config);
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka prefetches up to 64 MiB and fetches up to 50 MiB per request by default;
            // 16 MiB prefetched and 4 MiB per request keep a sink's batches fed and the process
            // small. Asking the broker for at least 512 KiB per fetch (waiting at most 100 ms)
            // makes fewer, fuller responses: Kafka → MySQL went from 128k to 230k rows/s on
            // tansu, with a topic that trickles getting its records within 100 ms.
            // Once that prefetch is full, librdkafka (2.2 and later) fetches again only after
            // `fetch.queue.backoff.ms`, 1 s by default: a sink draining 16 MiB faster than that
            // waited 0.2-0.5 s for records every ~2 s (Kafka → MySQL lost a fifth of its time).
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.queue.backoff.ms", "20")
            .set("fetch.max.bytes", "4194304")
            .set("fetch.min.bytes", "524288")
            .set("fetch.wait.max.ms", "100");
        // Workers of a pipeline share each sink's partitions (Kafka Connect's way): on a
        // rebalance a member gives up only the partitions that move, after storing and
        // committing what it read of them.
        client
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                self.worker.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                self.worker.heartbeat_interval.as_millis().to_string(),
            );
        for (k, v) in &self.config.consumer {
            client.set(k, v);
        }
        // A clear error for a topic that is missing, rather than a group that waits for it.
        let layout = self.describe(topics.to_vec()).await?;
        if let Some(missing) = topics.iter().find(|t| !layout.contains_key(*t)) {
            return Err(TransportError::transient(format!(
                "topic `{missing}` does not exist"
            )));
        }
        let member = Member::default();
        let changes = member.changes.clone();
        let consumer: StreamConsumer<Member> = client.create_with_context(member).map_err(|e| {
            TransportError::fatal(format!(
                "invalid Kafka consumer settings: {}",
                redact(&self.config, e)
            ))
        })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| TransportError::fatal(format!("cannot subscribe to {topics:?}: {e}")))?;
        Ok(Box::new(KafkaReader {
            consumer: Arc::new(consumer),
            changes,
            owned: None,
            partitions: layout.values().map(|(p, _)| *p as usize).sum(),
            positions: HashMap::new(),
            delivered: self.producer.context().delivered.clone(),
            watermarks: self.producer.clone(),
            last_topic: None,
            missing: None,
            paused: false,
            stash: std::collections::VecDeque::new(),
        }))
    }

    fn offsets_store_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn control_topic(&self, name: &str, partitions: i32) -> Result<i32, TransportError> {
        if let Some((existing, _)) = self.describe(vec![name.to_string()]).await?.get(name) {
            return Ok(*existing);
        }
        let spec = TopicSpec {
            partitions,
            config: [("cleanup.policy".to_string(), "compact".to_string())].into(),
            ..TopicSpec::default()
        };
        self.ensure_topics(&[(name.to_string(), spec)].into_iter().collect())
            .await?;
        Ok(partitions)
    }

    async fn set_control_status(
        &self,
        name: &str,
        slot: i32,
        status: Value,
    ) -> Result<(), TransportError> {
        let mut record = Record::new(status).with_key(b"status".to_vec());
        record.topic = name.into();
        self.new_writer()
            .write_acknowledged(vec![record], slot, &format!("write to `{name}`"))
            .await
    }

    async fn control_statuses(
        &self,
        name: &str,
        partitions: i32,
    ) -> Result<Vec<Option<Value>>, TransportError> {
        let (config, producer, name) =
            (self.config.clone(), self.producer.clone(), name.to_string());
        blocking(move || latest_records(&config, &producer, &name, partitions)).await?
    }

    async fn reset_group(&self, group: &str) -> Result<(), TransportError> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .admin()?
            .delete_groups(&[group], &options)
            .await
            .map_err(|e| {
                TransportError::transient(format!("cannot delete group `{group}`: {e}"))
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((_, RDKafkaErrorCode::NonEmptyGroup)) => {
                    return Err(TransportError::fatal(format!(
                        "consumer group `{group}` still has members: another worker still runs this connector; stop it on every worker first"
                    )))
                }
                Err((_, code)) => {
                    return Err(TransportError::transient(format!(
                        "cannot delete group `{group}`: {code}"
                    )))
                }
            }
        }
        tracing::info!(%group, "consumer group deleted: its sink reads from the oldest record kept");
        Ok(())
    }

    async fn offset_store(&self, pipeline: &str) -> Result<Box<dyn OffsetStore>, TransportError> {
        Ok(Box::new(KafkaOffsetStore {
            config: self.config.clone(),
            producer: self.producer.clone(),
            pipeline: pipeline.to_string(),
            writer: self.new_writer(),
            state: tokio::sync::Mutex::new(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record that times out in the producer's queue while later ones are delivered leaves
    /// a gap that exactly-once positions would hide for good: with `exactly_once` records
    /// never time out; otherwise they do after 5 minutes.
    #[test]
    fn with_exactly_once_the_producer_never_times_records_out() {
        let config: KafkaConfig =
            serde_yaml::from_str("bootstrap_servers: \"127.0.0.1:1\"").unwrap();
        assert_eq!(
            producer_config(&config, true).get("message.timeout.ms"),
            Some("0")
        );
        assert_eq!(
            producer_config(&config, false).get("message.timeout.ms"),
            Some("300000")
        );
    }

    /// librdkafka is built with OpenSSL and zstd: clients accept TLS, SASL (PLAIN, SCRAM) and
    /// zstd settings (without them: "Unsupported value … OpenSSL not available at build time").
    #[test]
    fn clients_accept_tls_sasl_and_zstd_settings() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_PLAINTEXT", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-256")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
        ] {
            let mut yaml = format!(
                "bootstrap_servers: 127.0.0.1:1\nclient: {{ security.protocol: {protocol}, ssl.endpoint.identification.algorithm: https"
            );
            if let Some(mechanism) = mechanism {
                yaml.push_str(&format!(
                    ", sasl.mechanism: {mechanism}, sasl.username: u, sasl.password: p"
                ));
            }
            yaml.push_str(" }\nproducer: { compression.type: zstd }\n");
            let config: KafkaConfig = serde_yaml::from_str(&yaml).unwrap();
            let mut client = base_config(&config);
            for (k, v) in &config.producer {
                client.set(k, v);
            }
            let created: Result<BaseConsumer<Quiet>, _> =
                client.create_with_context(Quiet::default());
            assert!(
                created.is_ok(),
                "{protocol} {mechanism:?}: {:?}",
                created.err()
            );
        }
    }

    #[test]
    fn secret_client_properties_are_redacted_from_messages() {
        let config: KafkaConfig = serde_yaml::from_str(
            "bootstrap_servers: h:9092\nclient: { sasl.password: 20240917, sasl.username: bob }\n",
        )
        .unwrap();
        assert_eq!(config.client["sasl.password"], "20240917");
        let text = redact(
            &config,
            "Invalid value \"20240917\" for sasl.password; user bob",
        );
        assert!(!text.contains("20240917") && text.contains("bob"), "{text}");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("20240917") && debug.contains("bob"),
            "{debug}"
        );
    }
}
