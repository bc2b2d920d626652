//! The pipeline file: topics, sources, sinks, transport and error handling.
//!
//! Framework fields (`topic`, `topics`, `transforms`, `batch`) live in the wrappers
//! [`SourceOuter`]/[`SinkOuter`]; everything else of a component belongs to its connector config,
//! picked by `type:`.

mod load;

pub use load::{field_from, in_words, load_pipeline, warnings, ConfigError, LoadOptions};

pub use crate::topic::TopicSpec;
use crate::{SinkConfig, SourceConfig, TransformOuter};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A whole pipeline file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name; names consumer groups (`sluice-<name>-<sink>`) and stored offsets.
    pub name: String,
    /// Kafka cluster to use. Without this section records flow through the embedded in-process log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConfig>,
    /// The worker group's settings (Kafka only). On Kafka every `sluice run` process of the
    /// same pipeline against the same cluster is a worker of one group, with or without this
    /// section: sinks' partitions and sources' work units are spread over the live workers,
    /// and a second copy of the pipeline is a second worker, never a second reader. Without
    /// the section the defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerConfig>,
    /// Settings of the embedded transport (used when `kafka` is absent).
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Topics to create if missing, with their layout. Topics used but not declared get the defaults.
    #[serde(default)]
    pub topics: IndexMap<String, TopicSpec>,
    /// Sources by component id.
    #[serde(default)]
    pub sources: IndexMap<String, SourceOuter>,
    /// Sinks by component id.
    #[serde(default)]
    pub sinks: IndexMap<String, SinkOuter>,
    /// Stream transforms by component id: stateful steps (windows, indicators, anomalies,
    /// forecasts), each reading `inputs` topics and writing a `topic`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub transforms: IndexMap<String, StreamTransformOuter>,
    /// What happens to records that cannot be parsed, transformed or stored.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Every source numbers its records (header `sluice.position`), so
    /// that sinks with `exactly_once: true` skip what a restarted source sends again: each
    /// input lands in the store once, across crashes and restarts. Without it a crash makes a
    /// source send again what it sent since its offsets were last stored (at most its
    /// unacknowledged batches and one second of records). A source may override it.
    #[serde(default)]
    pub exactly_once: bool,
}

impl PipelineConfig {
    /// The worker group this process joins: on Kafka always (with the `worker` settings or
    /// their defaults), on the embedded transport never.
    pub fn worker_group(&self) -> Option<WorkerConfig> {
        self.kafka
            .as_ref()
            .map(|_| self.worker.clone().unwrap_or_default())
    }

    /// Whether the source `id` numbers its records for exactly-once sinks.
    pub fn source_exactly_once(&self, id: &str) -> bool {
        self.sources
            .get(id)
            .and_then(|s| s.exactly_once)
            .unwrap_or(self.exactly_once)
    }
}

/// Connection to a Kafka cluster.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Compacted topic holding source offsets (like Kafka Connect's `connect-offsets`).
    #[serde(default = "default_offsets_topic")]
    pub offsets_topic: String,
    /// How long to keep trying to reach the cluster at start before giving up.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Extra librdkafka producer properties, e.g. `compression.type: zstd`. Values whose name
    /// holds `password`, `secret`, `sasl.jaas` or `token` are never shown.
    #[serde(default, deserialize_with = "client_properties")]
    pub producer: BTreeMap<String, String>,
    /// Extra librdkafka consumer properties.
    #[serde(default, deserialize_with = "client_properties")]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for every client (producer, consumers, admin): where TLS and SASL
    /// go, e.g. `security.protocol: SASL_SSL`, `sasl.mechanism: SCRAM-SHA-512`,
    /// `sasl.username`, `sasl.password: "${KAFKA_PASSWORD}"`, `ssl.ca.location`.
    #[serde(default, deserialize_with = "client_properties")]
    pub client: BTreeMap<String, String>,
}

/// Shows client properties whose names say they are secret as `***`.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |settings: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            settings
                .iter()
                .map(|(k, v)| {
                    let shown = if crate::secret::is_secret_setting(k) {
                        "***".to_string()
                    } else {
                        crate::secret::redact_url(v)
                    };
                    (k.clone(), shown)
                })
                .collect()
        };
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("offsets_topic", &self.offsets_topic)
            .field("connect_timeout", &self.connect_timeout)
            .field("producer", &redacted(&self.producer))
            .field("consumer", &redacted(&self.consumer))
            .field("client", &redacted(&self.client))
            .finish()
    }
}

/// librdkafka properties: any scalar value as text (`linger.ms: 5`, a numeric password), and
/// no error showing a value.
fn client_properties<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, crate::Secret>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_string()))
        .collect())
}

fn default_offsets_topic() -> String {
    "sluice-offsets".into()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A worker's membership in its pipeline's worker group (Kafka consumer groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// A worker not heard from for this long is taken as dead: the others take over its
    /// partitions and work units (Kafka's `session.timeout.ms`; the broker bounds it).
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_timeout: Duration,
    /// How often a worker tells the group it is alive (`heartbeat.interval.ms`); well under
    /// `session_timeout`.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            session_timeout: default_session_timeout(),
            heartbeat_interval: default_heartbeat_interval(),
        }
    }
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(1)
}

/// The embedded transport: a bounded in-process log per topic.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Records a topic holds that some sink has not yet committed; producers wait beyond it.
    #[serde(default = "default_embedded_capacity")]
    pub capacity: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            capacity: default_embedded_capacity(),
        }
    }
}

fn default_embedded_capacity() -> usize {
    200_000
}

/// Whether a bad record stops the pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// The first bad record fails the pipeline (nothing after it is committed).
    #[default]
    None,
    /// Bad records go to the dead-letter topic and the pipeline goes on.
    All,
}

/// Handling of bad records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `none` (fail on the first bad record) or `all` (dead-letter it and go on).
    #[serde(default)]
    pub tolerance: Tolerance,
    /// Topic receiving bad records, with headers naming origin, component, stage and reason.
    /// Required with `tolerance: all`, so that nothing vanishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// What happens when a sink reading the dead-letter topic refuses one of its records (it is
    /// never sent back there, which would loop): `fail` stops the run (default); `log` writes
    /// the record with its headers to the log at warn level and goes on without it.
    #[serde(default)]
    pub dead_letter_refused: DeadLetterRefused,
    /// What a failed source or sink does to the rest of the pipeline. `stop_pipeline`
    /// (default): every component stops and `sluice run` exits non-zero, for a supervisor
    /// (systemd, Kubernetes) to restart the process. `wait_for_restart`: the failed component
    /// shows `FAILED` in the REST API and waits for `POST /connectors/{name}/restart`, while
    /// the others go on, as in Kafka Connect. Sinks keep reading while a source waits; a
    /// waiting sink's records wait for it in the topic.
    #[serde(default)]
    pub on_task_failure: OnTaskFailure,
}

/// What a component that fails does to the rest of its pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTaskFailure {
    /// Stop every component; the run fails.
    #[default]
    StopPipeline,
    /// Only the failed component stops; it waits for a restart through the REST API.
    WaitForRestart,
}

/// What to do with a dead letter that a sink of the dead-letter topic refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterRefused {
    /// Fail the run, naming the record; nothing after it is committed.
    #[default]
    Fail,
    /// Log the record and its reason at warn level and drop it.
    Log,
}

/// A source with the framework's fields around the connector's own.
#[derive(Debug, Serialize, Deserialize)]
pub struct SourceOuter {
    /// Topic the source writes.
    pub topic: String,
    /// Transforms applied to each record before it is written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformOuter>,
    /// Most records taken from the source per poll.
    #[serde(default = "default_source_batch")]
    pub batch_size: usize,
    /// Most batches written to the topic but not yet acknowledged by it. More keeps the broker
    /// busier; fewer bounds memory and what a crash can write twice (at most these batches,
    /// since a source offset is stored only once everything before it is acknowledged).
    /// Unset: 32. On the embedded transport acknowledgements wait for the readers' commits,
    /// so this also bounds how far a source runs ahead of a stream transform between its
    /// checkpoints (it checkpoints early when all of them wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_batches: Option<usize>,
    /// Number this source's records for exactly-once sinks; unset follows the pipeline's
    /// `exactly_once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exactly_once: Option<bool>,
    /// The connector's own config.
    #[serde(flatten)]
    pub inner: Box<dyn SourceConfig>,
}

fn default_source_batch() -> usize {
    2_000
}

/// A stream transform with the framework's fields around its own.
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamTransformOuter {
    /// Topics it reads (as the consumer group `sluice-<pipeline>-<id>`). Records of one key
    /// must be in one partition: key them by what the transform groups by. Set the
    /// pipeline's `exactly_once: true` so that its sources number their records: the
    /// transform then skips what a source sends again after a crash; otherwise such a record
    /// counts twice in a window or a score.
    pub inputs: Vec<String>,
    /// Topic it writes.
    pub topic: String,
    /// How often its output is written: after `max_records` records or `linger`.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Least time between two checkpoints of its state with the input offsets it reflects
    /// (Kafka Streams' `commit.interval.ms`). Input offsets are committed only with a
    /// checkpoint, so after a crash it reads up to this much input again (and writes the
    /// same output again, numbered alike for `exactly_once` sinks). It checkpoints sooner
    /// when a writer of its inputs waits for it (the embedded transport's sources, once their
    /// sends in flight reach `max_in_flight_batches`): at once when it has read everything
    /// there is, otherwise at most every 4× what its last checkpoint took. And when it stops
    /// or hands partitions over. `0s` checkpoints at every batch.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// The transform's own config.
    #[serde(flatten)]
    pub inner: Box<dyn crate::stream::StreamTransformConfig>,
}

/// A sink with the framework's fields around the connector's own.
#[derive(Debug, Serialize, Deserialize)]
pub struct SinkOuter {
    /// Topics the sink reads.
    pub topics: Vec<String>,
    /// Transforms applied to each record before `put`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformOuter>,
    /// When a batch is handed to the sink.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The connector's own config.
    #[serde(flatten)]
    pub inner: Box<dyn SinkConfig>,
}

/// Batching of a sink: a batch goes out when it holds `max_records` or is `linger` old.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records per `put`.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Longest a record waits for its batch to fill.
    #[serde(default = "default_linger", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            linger: default_linger(),
        }
    }
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_max_records() -> usize {
    5_000
}

fn default_linger() -> Duration {
    Duration::from_millis(500)
}

/// Keys of [`SourceOuter`] that belong to the framework, not to the connector.
pub(crate) const SOURCE_FRAMEWORK_FIELDS: &[&str] = &["topic", "transforms", "batch_size"];
/// Keys of [`SinkOuter`] that belong to the framework, not to the connector.
pub(crate) const SINK_FRAMEWORK_FIELDS: &[&str] = &["topics", "transforms", "batch"];

impl PipelineConfig {
    /// Every topic the pipeline touches, with its declared or default layout.
    pub fn all_topics(&self) -> IndexMap<String, TopicSpec> {
        let mut all = self.topics.clone();
        let used = self
            .sources
            .values()
            .map(|s| &s.topic)
            .chain(self.sinks.values().flat_map(|s| s.topics.iter()))
            .chain(
                self.transforms
                    .values()
                    .flat_map(|t| t.inputs.iter().chain(std::iter::once(&t.topic))),
            )
            .chain(self.errors.dead_letter_topic.iter());
        for topic in used {
            all.entry(topic.clone()).or_default();
        }
        all
    }
}
