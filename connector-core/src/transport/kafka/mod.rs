//! The Kafka transport (rdkafka): an idempotent producer, one consumer group per sink with
//! manual commits, topics created through the admin API, and source offsets in a compacted topic.

mod group;
mod producer;

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

struct KafkaReader {
    consumer: Arc<StreamConsumer<Member>>,
    /// Rebalances the group reported and the task has not completed yet.
    changes: Arc<group::Changes>,
    /// The partitions this member reads; `None` until the group first assigned it some (or none).
    owned: Option<BTreeSet<TopicPartition>>,
    /// Partitions of its topics in all.
    partitions: usize,
    /// Next offset per owned partition: where it was assigned, then after what this reader
    /// returned.
    positions: HashMap<TopicPartition, i64>,
    delivered: DeliveredEnds,
    /// Asks for watermarks on the producer's connections: the consumer's may be held by a
    /// long-polling fetch.
    watermarks: Producer,
    /// The topic of the last message read, shared by the records that follow from it.
    last_topic: Option<Arc<str>>,
    /// Since when the broker reports a topic unknown, and when it last did (see [`missing_for`]).
    missing: Option<(Instant, Instant)>,
    /// Whether its partitions are paused (the sink is paused): it still polls, so that the
    /// group does not evict it after `max.poll.interval.ms`.
    paused: bool,
    /// Records fetched before a pause took effect, returned once resumed.
    stash: std::collections::VecDeque<Incoming>,
}

/// Dropping the consumer leaves the group: the rebalance that closing reports is completed at
/// once, since the task stored and committed what it read before it let the reader go.
impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.changes.complete_at_once();
    }
}

/// How long a topic may be reported unknown before the sink fails: right after creation a
/// broker may not know it yet; a topic deleted under a running sink stays unknown.
const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(10);

/// What a consumer error means for the sink reading.
#[derive(Debug, PartialEq, Eq)]
enum ConsumerErrorKind {
    /// librdkafka retries by itself; log it.
    Transient,
    /// The topic or partition is unknown: transient for a while, then permanent.
    UnknownTopic,
    /// Retrying cannot help (authorization, authentication, a feature the broker refuses).
    Permanent,
}

fn classify(error: &KafkaError) -> ConsumerErrorKind {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::InvalidTopic
            | C::SecurityDisabled
            | C::UnsupportedCompressionType
            | C::UnsupportedFeature,
        ) => ConsumerErrorKind::Permanent,
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            ConsumerErrorKind::UnknownTopic
        }
        _ => ConsumerErrorKind::Transient,
    }
}

/// How long a topic has been reported unknown, given one more report at `now`. A report more
/// than [`UNKNOWN_TOPIC_GRACE`] after the previous one starts a new episode: a topic missing
/// for a moment long ago must not fail the sink at its next moment.
fn missing_for(missing: &mut Option<(Instant, Instant)>, now: Instant) -> Duration {
    let since = match *missing {
        Some((since, last)) if now.duration_since(last) < UNKNOWN_TOPIC_GRACE => since,
        _ => now,
    };
    *missing = Some((since, now));
    now.duration_since(since)
}

impl KafkaReader {
    /// Up to `max` records, waiting up to `wait` for the first.
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Incoming>, TransportError> {
        let consumer = self.consumer.clone();
        let mut out = Vec::new();
        let changes = self.changes.clone();
        // A rebalance reported while waiting ends the wait: the group waits for the task.
        let first = tokio::select! {
            first = tokio::time::timeout(wait, consumer.recv()) => match first {
                Err(_) => return Ok(out),
                Ok(first) => first,
            },
            _ = changes.reported() => return Ok(out),
        };
        match first {
            Ok(message) => out.push(self.decode(&message)),
            Err(e) => {
                self.consumer_error(e)?;
                return Ok(out);
            }
        }
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => out.push(self.decode(&message)),
                Some(Err(e)) => {
                    self.consumer_error(e)?;
                    break;
                }
                None => break,
            }
        }
        if !out.is_empty() {
            self.missing = None;
        }
        Ok(out)
    }
    /// Logs a transient consumer error; a permanent one (or a topic unknown for longer than
    /// [`UNKNOWN_TOPIC_GRACE`]) is returned with the broker's message.
    fn consumer_error(&mut self, error: KafkaError) -> Result<(), TransportError> {
        let fatal =
            |e: &KafkaError| TransportError::fatal(format!("the Kafka consumer cannot go on: {e}"));
        match classify(&error) {
            ConsumerErrorKind::Permanent => Err(fatal(&error)),
            ConsumerErrorKind::UnknownTopic => {
                if missing_for(&mut self.missing, Instant::now()) >= UNKNOWN_TOPIC_GRACE {
                    return Err(fatal(&error));
                }
                tracing::warn!(error = %error, "Kafka reports a topic or partition unknown; the sink fails if it stays so");
                Ok(())
            }
            ConsumerErrorKind::Transient => {
                tracing::warn!(error = %error, "Kafka consumer error; librdkafka retries");
                Ok(())
            }
        }
    }

    fn decode(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> Incoming {
        let topic = match &self.last_topic {
            Some(topic) if **topic == *message.topic() => topic.clone(),
            _ => self.last_topic.insert(message.topic().into()).clone(),
        };
        self.positions
            .insert((topic.clone(), message.partition()), message.offset() + 1);
        let envelope = Record {
            encoded_value: None,
            key: message.key().map(<[u8]>::to_vec),
            value: Value::Null,
            headers: message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp: message.timestamp().to_millis(),
            topic,
            partition: message.partition(),
            offset: message.offset(),
        };
        match message.payload() {
            None => Incoming::Record(Arc::new(envelope)),
            Some(bytes) => match crate::record::parse_value(bytes) {
                Ok(value) => Incoming::Record(Arc::new(Record { value, ..envelope })),
                Err(e) => Incoming::Undecodable {
                    envelope: Box::new(envelope),
                    raw: bytes.to_vec(),
                    error: format!("value is not JSON: {e}"),
                },
            },
        }
    }
}

#[async_trait]
impl TopicReader for KafkaReader {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming>, TransportError> {
        if self.paused {
            // Polled only to stay in the group: what comes is kept for the resume.
            let fetched = self.receive(max, wait).await?;
            self.stash.extend(fetched);
            return Ok(Vec::new());
        }
        if !self.stash.is_empty() {
            let n = max.min(self.stash.len());
            return Ok(self.stash.drain(..n).collect());
        }
        self.receive(max, wait).await
    }

    async fn set_paused(&mut self, paused: bool) -> Result<(), TransportError> {
        if paused == self.paused {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition) in self.owned.iter().flatten() {
            list.add_partition(topic, *partition);
        }
        let done = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        done.map_err(|e| {
            TransportError::transient(format!("cannot pause or resume the consumer: {e}"))
        })?;
        self.paused = paused;
        Ok(())
    }

    fn polls_while_paused(&self) -> bool {
        true
    }

    async fn commit(
        &mut self,
        offsets: &[PartitionOffset],
        wait: bool,
    ) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::new();
        for o in offsets {
            list.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.offset))
                .map_err(|e| TransportError::fatal(format!("bad offset {o:?}: {e}")))?;
        }
        let consumer = self.consumer.clone();
        if !wait {
            // Queued behind the fetch on the broker connection; the sink goes on meanwhile.
            return consumer.commit(&list, CommitMode::Async).map_err(|e| {
                TransportError::transient(format!("cannot commit consumer offsets: {e}"))
            });
        }
        blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await?
            .map_err(|e| TransportError::transient(format!("cannot commit consumer offsets: {e}")))
    }

    fn rebalance(&mut self) -> Option<Rebalance> {
        self.changes.next()
    }

    async fn assign(
        &mut self,
        partitions: &[TopicPartition],
        resume: &[PartitionOffset],
    ) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        // Where the group resumes the others, for `caught_up`.
        let (consumer, query) = (self.consumer.clone(), list.clone());
        let committed =
            blocking(move || consumer.committed_offsets(query, Duration::from_secs(10)))
                .await?
                .map_err(|e| {
                    TransportError::transient(format!("cannot read committed offsets: {e}"))
                })?;
        let mut start = TopicPartitionList::new();
        for e in committed.elements() {
            let key: TopicPartition = (e.topic().into(), e.partition());
            let stored = resume
                .iter()
                .find(|o| *o.topic == *key.0 && o.partition == key.1)
                .map(|o| o.offset);
            let at = match (stored, e.offset()) {
                (Some(offset), _) | (None, Offset::Offset(offset)) => Some(offset),
                _ => None,
            };
            let offset = stored.map(Offset::Offset).unwrap_or(Offset::Stored);
            start
                .add_partition_offset(&key.0, key.1, offset)
                .map_err(|err| {
                    TransportError::fatal(format!("cannot assign {}/{}: {err}", key.0, key.1))
                })?;
            if let Some(at) = at {
                self.positions.insert(key.clone(), at);
            }
            self.owned.get_or_insert_default().insert(key);
        }
        self.owned.get_or_insert_default();
        group::complete_assign(&*self.consumer, &start)?;
        if self.paused {
            self.consumer.pause(&start).map_err(|e| {
                TransportError::transient(format!("cannot pause the consumer: {e}"))
            })?;
        }
        Ok(())
    }

    async fn revoke(&mut self, partitions: &[TopicPartition]) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::new();
        for key in partitions {
            list.add_partition(&key.0, key.1);
            if let Some(owned) = &mut self.owned {
                owned.remove(key);
            }
            self.positions.remove(key);
        }
        // Kept while paused, they are read again by the partitions' next owner.
        self.stash.retain(|item| {
            let (topic, partition, _) = item.coordinates();
            !partitions
                .iter()
                .any(|(t, p)| **t == **topic && *p == partition)
        });
        group::complete_revoke(&*self.consumer, &list)
    }

    async fn caught_up(&mut self) -> Result<bool, TransportError> {
        // Before its first assignment a member cannot tell what it has to read.
        if self.owned.is_none() {
            return Ok(false);
        }
        Ok(self.lag().await?.iter().all(|(_, lag)| *lag == 0))
    }

    fn owns_every_partition(&self) -> bool {
        self.owned
            .as_ref()
            .is_some_and(|owned| owned.len() >= self.partitions)
    }

    fn lag(&mut self) -> crate::transport::LagMeasure {
        let client = self.watermarks.clone();
        let partitions: Vec<TopicPartition> = self.owned.iter().flatten().cloned().collect();
        let positions = self.positions.clone();
        let delivered = self.delivered.clone();
        Box::pin(
            blocking(move || {
                let mut lag = Vec::with_capacity(partitions.len());
                for key in partitions {
                    let (low, high) = client
                        .client()
                        .fetch_watermarks(&key.0, key.1, Duration::from_secs(5))
                        .map_err(|e| {
                            TransportError::transient(format!(
                                "cannot read watermarks of {}/{}: {e}",
                                key.0, key.1
                            ))
                        })?;
                    let high = high.max(delivered.get(&key.0, key.1));
                    let behind = high - positions.get(&key).copied().unwrap_or(low);
                    lag.push((key, behind.max(0)));
                }
                Ok(lag)
            })
            .map(|r| r.and_then(|lag| lag)),
        )
    }
}

/// Every component's source offsets of one pipeline: component → source partition → offset.
type PipelineOffsets = HashMap<String, HashMap<String, Value>>;

/// Source offsets of a pipeline as snapshots: each store writes every component's offsets as
/// one record keyed `[pipeline]` to the pipeline's own partition of the compacted offsets
/// topic, so its latest record alone is the state (and all compaction keeps of it).
///
/// Start-up does not trust the broker's high watermark (tansu 0.6's stops at the base offset
/// of the last batch, which made restarts read stale offsets): it writes a marker keyed
/// `[pipeline, "start"]` to the same partition, learns the marker's offset from its delivery
/// report, and reads back from there in growing windows until it meets the last snapshot
/// before it. That is the true end, read in time bound by what was written since the last
/// snapshot, not by the pipeline's age. A read that finds no snapshot writes a record keyed
/// `[pipeline, "nothing_before"]` naming its marker's offset, and later reads stop there (or
/// at the partition's start for the chunks of a snapshot found above it), so a store that is
/// opened again and again but never written costs what was written since, too.
///
/// A snapshot larger than a record may be (stream transforms checkpoint their whole state here)
/// is written as chunks keyed `[pipeline, "chunk", parity, i]`, each with its generation in a
/// header, followed by a manifest keyed `[pipeline]` naming the generation and the number of
/// chunks. Generations alternate between two parities, so the chunks of the last complete
/// snapshot are never the ones a torn write (a crash between chunks) replaced: compaction keeps
/// them until the next snapshot's manifest is written.
struct KafkaOffsetStore {
    config: KafkaConfig,
    producer: Producer,
    pipeline: String,
    writer: KafkaWriter,
    /// Read once, then what the last store wrote. Held through a store's hand-over, so the
    /// snapshots reach the partition in the order they were made.
    state: tokio::sync::Mutex<Option<Loaded>>,
}

struct Loaded {
    /// The pipeline's partition of the offsets topic.
    partition: i32,
    offsets: PipelineOffsets,
    /// Generation of the last chunked snapshot (0 if none); `None` while it is not known:
    /// from when a manifest is written until it is acknowledged, and after a manifest whose
    /// acknowledgement was lost (it may be stored or not, so the next snapshot reads back which
    /// is current before it picks a parity: it must not overwrite the chunks of the current one).
    generation: Option<u64>,
}

/// The field of a manifest: the snapshot is in chunks.
const CHUNKS_FIELD: &str = "sluice.chunks";

/// The header holding a chunk's generation.
const GENERATION_HEADER: &str = "sluice.generation";

/// What a chunked snapshot's manifest says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Manifest {
    generation: u64,
    count: u32,
}

/// The generation of the next chunked snapshot after the last stored one, `last`: increasing
/// (across restarts too, from the clock) and of the other parity, so that its chunks never
/// replace those of `last`.
fn next_generation(last: u64, now_ms: u64) -> u64 {
    let next = (last + 1).max(now_ms);
    if next % 2 == last % 2 {
        next + 1
    } else {
        next
    }
}

/// The field of the record keyed [`nothing_before_key`]: the offset below which `pipeline`
/// has no snapshot (what a read back that found none learnt), so later reads stop there.
const NOTHING_BEFORE: &str = "nothing_before";

/// The key of the record saying where `pipeline`'s snapshots start.
fn nothing_before_key(pipeline: &str) -> Vec<u8> {
    serde_json::to_vec(&(pipeline, NOTHING_BEFORE)).unwrap_or_default()
}

/// The key of chunk `index` of snapshots of `pipeline` with generation parity `parity`.
fn chunk_key(pipeline: &str, parity: u64, index: u32) -> Vec<u8> {
    serde_json::to_vec(&(pipeline, "chunk", parity, index)).unwrap_or_default()
}

/// Partitions of an offsets topic Sluice creates.
const OFFSETS_TOPIC_PARTITIONS: i32 = 25;

/// Records read back from the marker at first; each further window is 8 times larger.
const FIRST_WINDOW: i64 = 64;

/// How long reading the offsets at start may take.
const OFFSETS_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl KafkaOffsetStore {
    fn snapshot_key(pipeline: &str) -> Vec<u8> {
        serde_json::to_vec(&[pipeline]).unwrap_or_default()
    }

    async fn state(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Loaded>>, TransportError> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(self.read_latest().await?);
        }
        Ok(state)
    }

    /// Writes the start marker, then reads back from it to the last snapshot.
    async fn read_latest(&self) -> Result<Loaded, TransportError> {
        let topic = self.config.offsets_topic.clone();
        let producer = self.producer.clone();
        let pipeline = self.pipeline.clone();
        let partition = blocking(move || partition_of(&producer, &topic, &pipeline)).await??;

        let topic = self.config.offsets_topic.clone();
        let started = serde_json::json!({
            "started_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "pid": std::process::id(),
        });
        let mut marker = Record::new(started)
            .with_key(serde_json::to_vec(&(&self.pipeline, "start")).unwrap_or_default());
        marker.topic = topic.as_str().into();
        self.writer
            .write_acknowledged(
                vec![marker],
                partition,
                &format!("write the start marker to `{topic}`"),
            )
            .await?;
        // Nothing else of this pipeline is written there before the state is loaded, so the
        // end this producer saw acknowledged is just after the marker.
        let marker_at = self.producer.context().delivered.get(&topic, partition) - 1;
        let (config, producer, pipeline) = (
            self.config.clone(),
            self.producer.clone(),
            self.pipeline.clone(),
        );
        let found =
            blocking(move || read_back(&config, &producer, &pipeline, partition, marker_at))
                .await??;
        let Some((offsets, generation)) = found else {
            // Nothing stored yet, so this read went back to the partition's start. Saying so
            // bounds the next open's read to what is written after the marker, also when
            // nothing is ever stored (a source that never sends, an idle work unit). It is
            // not an empty snapshot: a snapshot another worker stores meanwhile stays current.
            let mut none = Record::new(serde_json::json!({ NOTHING_BEFORE: marker_at }))
                .with_key(nothing_before_key(&self.pipeline));
            none.topic = topic.as_str().into();
            self.writer
                .write_acknowledged(
                    vec![none],
                    partition,
                    &format!("write to `{topic}` that nothing is stored"),
                )
                .await?;
            return Ok(Loaded {
                partition,
                offsets: PipelineOffsets::new(),
                generation: Some(0),
            });
        };
        Ok(Loaded {
            partition,
            offsets,
            generation: Some(generation),
        })
    }
}

/// The partition of the offsets topic that holds `pipeline`'s records.
fn partition_of(producer: &Producer, topic: &str, pipeline: &str) -> Result<i32, TransportError> {
    Ok(super::partition_for_key(
        pipeline.as_bytes(),
        partition_count(producer, topic)?,
    ))
}

/// How many partitions `topic` has, as the cluster says (a blocking call).
fn partition_count(producer: &Producer, topic: &str) -> Result<i32, TransportError> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| {
            TransportError::transient(format!("cannot read metadata of `{topic}`: {e}"))
        })?;
    let partitions = metadata
        .topics()
        .iter()
        .map(|t| t.partitions().len())
        .sum::<usize>();
    if partitions == 0 {
        return Err(TransportError::transient(format!(
            "topic `{topic}` has no partitions yet"
        )));
    }
    Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
}

/// The low and high watermarks of `partition` of `topic`.
fn watermarks(
    producer: &Producer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), TransportError> {
    producer
        .client()
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| TransportError::transient(format!("cannot read watermarks of `{topic}`: {e}")))
}

/// The latest record's value of each of the first `partitions` partitions of `topic`, read by
/// a consumer of no group; `None` where the partition is empty.
fn latest_records(
    config: &KafkaConfig,
    producer: &Producer,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<Value>>, TransportError> {
    let mut latest = vec![None; usize::try_from(partitions).unwrap_or(0)];
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in 0..partitions {
        let (low, high) = watermarks(producer, topic, partition)?;
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(high - 1))
                .map_err(|e| TransportError::fatal(e.to_string()))?;
            ends.insert(partition, high);
        }
    }
    if ends.is_empty() {
        return Ok(latest);
    }
    let mut client = base_config(config);
    // librdkafka assigns partitions only to a consumer with a group; this one never joins it
    // nor commits.
    client
        .set("group.id", format!("sluice-status-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<Quiet> = client
        .create_with_context(Quiet::default())
        .map_err(|e| TransportError::fatal(format!("cannot create a reader of `{topic}`: {e}")))?;
    consumer
        .assign(&list)
        .map_err(|e| TransportError::fatal(format!("cannot read `{topic}`: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ends.is_empty() {
        let message = next_message(&consumer, topic, deadline, "the latest records")?;
        let partition = message.partition();
        if ends.get(&partition) != Some(&(message.offset() + 1)) {
            continue;
        }
        ends.remove(&partition);
        let value = match message.payload() {
            Some(payload) => Some(serde_json::from_slice(payload).map_err(|e| {
                TransportError::fatal(format!("a record of `{topic}` is not JSON: {e}"))
            })?),
            None => None,
        };
        if let Some(slot) = usize::try_from(partition)
            .ok()
            .and_then(|p| latest.get_mut(p))
        {
            *slot = value;
        }
    }
    Ok(latest)
}

/// The last snapshot of `pipeline` before offset `upto` of `partition`, read back in windows
/// of growing size, with its generation (when chunked); `None` when there is none.
fn read_back(
    config: &KafkaConfig,
    producer: &Producer,
    pipeline: &str,
    partition: i32,
    mut upto: i64,
) -> Result<Option<(PipelineOffsets, u64)>, TransportError> {
    let topic = &config.offsets_topic;
    let (low, _) = watermarks(producer, topic, partition)?;
    if upto <= low {
        return Ok(None);
    }
    let nothing_before = nothing_before_key(pipeline);
    // Below this no snapshot of the pipeline starts (chunks of one may still lie below it).
    let mut floor = low;
    let mut client = base_config(config);
    client
        .set("group.id", format!("sluice-offsets-reader-{pipeline}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<Quiet> = client
        .create_with_context(Quiet::default())
        .map_err(|e| TransportError::fatal(format!("cannot create offsets reader: {e}")))?;
    let key = KafkaOffsetStore::snapshot_key(pipeline);
    let unreadable = |e: serde_json::Error| {
        TransportError::fatal(format!(
            "the stored source offsets of pipeline `{pipeline}` in `{topic}` are not readable: {e}"
        ))
    };
    let deadline = Instant::now() + OFFSETS_READ_TIMEOUT;
    let mut window = FIRST_WINDOW;
    // Once the last snapshot is found to be chunked: its manifest, offset, and the chunks
    // found so far (index → bytes), the newest of each index before the manifest.
    let mut chunked: Option<(Manifest, i64, BTreeMap<u32, Vec<u8>>)> = None;
    loop {
        let bottom = if chunked.is_some() { low } else { floor };
        if upto <= bottom {
            break;
        }
        let from = upto.saturating_sub(window).max(bottom);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| TransportError::fatal(e.to_string()))?;
        consumer
            .assign(&list)
            .map_err(|e| TransportError::fatal(format!("cannot read `{topic}`: {e}")))?;
        // The window's last snapshot and its offset: `None` payload for a tombstone (offsets
        // deleted); and every chunk of this pipeline in it, in offset order.
        let mut latest: Option<(i64, Option<Vec<u8>>)> = None;
        let mut chunks: Vec<(i64, u64, u32, Vec<u8>)> = Vec::new();
        loop {
            let message = next_message(&consumer, topic, deadline, "source offsets")?;
            // Past the window: what was left of it is compacted away.
            if message.offset() >= upto {
                break;
            }
            if message.key() == Some(key.as_slice()) {
                latest = Some((message.offset(), message.payload().map(<[u8]>::to_vec)));
            } else if message.key() == Some(nothing_before.as_slice()) {
                // No snapshot lies below that offset: the read need not go further.
                let below = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                    .and_then(|v| v.get(NOTHING_BEFORE)?.as_i64());
                if let Some(below) = below {
                    floor = floor.max(below);
                }
            } else if let Some(index) = message.key().and_then(|k| chunk_index(k, pipeline)) {
                let generation = message
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == GENERATION_HEADER)
                            .and_then(|h| h.value)
                    })
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                if let (Some(generation), Some(payload)) = (generation, message.payload()) {
                    chunks.push((message.offset(), generation, index, payload.to_vec()));
                }
            }
            if message.offset() + 1 >= upto {
                break;
            }
        }
        if chunked.is_none() {
            match latest {
                Some((_, None)) => return Ok(Some((PipelineOffsets::new(), 0))),
                Some((at, Some(payload))) => match manifest_of(&payload).map_err(unreadable)? {
                    None => {
                        return Ok(Some((
                            serde_json::from_slice(&payload).map_err(unreadable)?,
                            0,
                        )))
                    }
                    Some(manifest) => chunked = Some((manifest, at, BTreeMap::new())),
                },
                None => {}
            }
        }
        if let Some((manifest, at, found)) = &mut chunked {
            // Newest first: the first of an index met is the one the manifest follows.
            for (offset, generation, index, payload) in chunks.into_iter().rev() {
                if offset < *at && generation == manifest.generation && index < manifest.count {
                    found.entry(index).or_insert(payload);
                }
            }
            if found.len() == manifest.count as usize {
                let bytes: Vec<u8> = std::mem::take(found).into_values().flatten().collect();
                let offsets = serde_json::from_slice(&bytes).map_err(unreadable)?;
                return Ok(Some((offsets, manifest.generation)));
            }
        }
        upto = from;
        window = window.saturating_mul(8);
    }
    match chunked {
        Some((manifest, _, found)) => Err(TransportError::fatal(format!(
            "the stored source offsets of pipeline `{pipeline}` in `{topic}` are incomplete: {} of the {} chunks of generation {} are left",
            found.len(),
            manifest.count,
            manifest.generation
        ))),
        None => Ok(None),
    }
}

/// The next message `consumer` reads of `topic`, unless `deadline` passes first (`what` it
/// reads, for the message).
fn next_message<'c>(
    consumer: &'c BaseConsumer<Quiet>,
    topic: &str,
    deadline: Instant,
    what: &str,
) -> Result<rdkafka::message::BorrowedMessage<'c>, TransportError> {
    loop {
        if Instant::now() > deadline {
            return Err(TransportError::transient(format!(
                "timed out reading {what} from `{topic}`"
            )));
        }
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            return message
                .map_err(|e| TransportError::transient(format!("cannot read `{topic}`: {e}")));
        }
    }
}

/// The index of a chunk of `pipeline`'s snapshots, if `key` is one's key.
fn chunk_index(key: &[u8], pipeline: &str) -> Option<u32> {
    let (name, kind, _parity, index): (String, String, u64, u32) =
        serde_json::from_slice(key).ok()?;
    (name == pipeline && kind == "chunk").then_some(index)
}

/// The manifest in a snapshot's payload, if it is one (rather than the offsets themselves).
fn manifest_of(payload: &[u8]) -> Result<Option<Manifest>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "sluice.chunks")]
        chunks: Option<Manifest>,
    }
    // Only a manifest is this small; a large payload is read once, as the offsets.
    if payload.len() > 256 {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Probe>(payload)?.chunks)
}

#[async_trait]
impl OffsetStore for KafkaOffsetStore {
    async fn load(&self, component: &str) -> Result<HashMap<String, Value>, TransportError> {
        let state = self.state().await?;
        Ok(state
            .as_ref()
            .and_then(|s| s.offsets.get(component).cloned())
            .unwrap_or_default())
    }

    async fn store(
        &self,
        component: &str,
        offsets: HashMap<String, Value>,
    ) -> Result<(), TransportError> {
        let mut state = self.state().await?;
        let Some(loaded) = state.as_mut() else {
            return Err(TransportError::fatal("source offsets were not loaded"));
        };
        loaded
            .offsets
            .entry(component.to_string())
            .or_default()
            .extend(offsets);
        self.publish(state).await
    }

    async fn remove(&self, component: &str) -> Result<(), TransportError> {
        let mut state = self.state().await?;
        let Some(loaded) = state.as_mut() else {
            return Err(TransportError::fatal("source offsets were not loaded"));
        };
        if loaded.offsets.remove(component).is_none() {
            return Ok(());
        }
        self.publish(state).await
    }
}

impl KafkaOffsetStore {
    /// Writes the pipeline's offsets as `state` holds them now, as one snapshot record, and
    /// waits for it to be acknowledged.
    async fn publish(
        &self,
        mut state: tokio::sync::MutexGuard<'_, Option<Loaded>>,
    ) -> Result<(), TransportError> {
        let Some(loaded) = state.as_mut() else {
            return Err(TransportError::fatal("source offsets were not loaded"));
        };
        let snapshot = serde_json::to_vec(&loaded.offsets)
            .map_err(|e| TransportError::fatal(format!("cannot encode source offsets: {e}")))?;
        let topic: Arc<str> = self.config.offsets_topic.as_str().into();
        let record = |key: Vec<u8>, payload: Vec<u8>| {
            let mut record = Record::new(Value::Null).with_key(key);
            record.encoded_value = Some(payload);
            record.topic = topic.clone();
            record
        };
        let chunk_bytes = self
            .writer
            .max_message_bytes
            .saturating_sub(CHUNK_MARGIN)
            .max(CHUNK_MARGIN);
        let records = if snapshot.len() <= chunk_bytes {
            vec![record(Self::snapshot_key(&self.pipeline), snapshot)]
        } else {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let last = match loaded.generation {
                Some(last) => last,
                None => {
                    let current = self.read_latest().await?.generation;
                    loaded.generation = current;
                    current.unwrap_or_default()
                }
            };
            let generation = next_generation(last, now_ms);
            let mut records = Vec::new();
            for (index, chunk) in snapshot.chunks(chunk_bytes).enumerate() {
                let mut chunk = record(
                    chunk_key(&self.pipeline, generation % 2, index as u32),
                    chunk.to_vec(),
                );
                chunk.headers.push((
                    GENERATION_HEADER.into(),
                    generation.to_string().into_bytes(),
                ));
                records.push(chunk);
            }
            let manifest = Manifest {
                generation,
                count: records.len() as u32,
            };
            // The chunks are all stored before the manifest that makes them the snapshot.
            let what = format!("store the source offsets of pipeline `{}`", self.pipeline);
            self.writer
                .write_acknowledged(records, loaded.partition, &what)
                .await?;
            let manifest = serde_json::to_vec(&serde_json::json!({ CHUNKS_FIELD: manifest }))
                .map_err(|e| TransportError::fatal(format!("cannot encode source offsets: {e}")))?;
            let manifest = vec![record(Self::snapshot_key(&self.pipeline), manifest)];
            // Until the manifest is acknowledged, either generation may be the current one.
            loaded.generation = None;
            self.writer
                .write_acknowledged(manifest, loaded.partition, &what)
                .await?;
            // Only a generation whose manifest is stored decides the next one's parity.
            loaded.generation = Some(generation);
            return Ok(());
        };
        let (delivery, refused) = self
            .writer
            .hand_over(records, Some(loaded.partition))
            .await?;
        drop(state);
        if let Some((_, reason)) = refused.into_iter().next() {
            return Err(TransportError::fatal(format!(
                "cannot store the source offsets of pipeline `{}`: {reason}",
                self.pipeline
            )));
        }
        // Storing offsets again is harmless (the latest wins), so a failed delivery is one
        // more retryable failure: a broker answering an error while it stops must not end
        // the source.
        delivery
            .await
            .map_err(|e| TransportError::transient(e.message))
    }
}

/// Room left in a chunk's record for its key, headers and framing.
const CHUNK_MARGIN: usize = 16 * 1024;

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

    #[test]
    fn chunked_snapshot_generations_increase_and_alternate_parity() {
        let mut last = 0;
        for now_ms in [
            1_700_000_000_000,
            1_700_000_000_000,
            1_700_000_000_002,
            5,
            1_800_000_000_001,
        ] {
            let next = next_generation(last, now_ms);
            assert!(next > last && next >= now_ms, "{last} → {next} at {now_ms}");
            assert_ne!(next % 2, last % 2, "{last} → {next} at {now_ms}");
            last = next;
        }
    }

    #[test]
    fn authorization_failures_are_permanent_and_network_errors_are_not() {
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageConsumption(code)),
                ConsumerErrorKind::Permanent,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(&KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition
            )),
            ConsumerErrorKind::UnknownTopic
        );
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageConsumption(code)),
                ConsumerErrorKind::Transient,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_topic_is_missing_for_as_long_as_the_reports_keep_coming() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut missing = None;
        assert_eq!(missing_for(&mut missing, at(0)), Duration::ZERO);
        assert_eq!(missing_for(&mut missing, at(4)), Duration::from_secs(4));
        assert_eq!(missing_for(&mut missing, at(8)), Duration::from_secs(8));
        assert!(missing_for(&mut missing, at(12)) >= UNKNOWN_TOPIC_GRACE);
        // A report long after the last one is a new episode.
        assert_eq!(missing_for(&mut missing, at(100)), Duration::ZERO);
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
