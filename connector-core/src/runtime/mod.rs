//! Runs a pipeline: builds the transport and components, wires source tasks and sink tasks to
//! topics, and shuts everything down in order.
//!
//! ```text
//! source task: poll → transforms → send(topic) → ack (in order) → store source offset
//! sink task:   poll(topics) → transforms → put(batch) → flush → commit consumer offsets
//! ```
//! A run ends when every source is finished and every sink has read and flushed everything
//! written before that, or on shutdown (SIGINT/SIGTERM): sources stop, sinks drain what is in
//! flight within a deadline, flush and commit.

mod dead_letter;
mod deadline;
mod sink_task;
mod source_task;
mod units;

pub use dead_letter::DeadLetters;
use deadline::Deadline;

use crate::config::PipelineConfig;
use crate::metrics::ComponentMetrics;
use crate::transport::embedded::EmbeddedTransport;
use crate::transport::kafka::KafkaTransport;
use crate::transport::Transport;
use crate::{ConnectorError, SinkBuildContext, SourceBuildContext};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Tasks = tokio::task::JoinSet<Result<(), ConnectorError>>;

/// The running tasks of a pipeline and the signals that make its sinks drain.
struct Started {
    sources: Tasks,
    sinks: Tasks,
    /// Sinks reading the dead-letter topic; they drain once every other task is done, on every
    /// path (sources finished, shutdown, a failure), since the others may still dead-letter.
    dead_letter_sinks: Tasks,
    /// Cancelled once sources are done or on shutdown: other sinks read what is left and end.
    drain: CancellationToken,
    /// Cancelled once every source and every other sink has ended.
    drain_dead_letters: CancellationToken,
    /// `drain_timeout` after shutdown; bounds every wait of every task.
    deadline: Deadline,
}

/// How a run is driven from outside.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the embedded transport keeps source offsets.
    pub state_dir: PathBuf,
    /// Cancelled to stop the run (on SIGINT/SIGTERM).
    pub shutdown: CancellationToken,
    /// After shutdown, how long sinks may drain before they flush what they have and stop.
    pub drain_timeout: Duration,
    /// End once sources are finished and sinks have caught up, even a pipeline without sources
    /// (a backfill from a topic). Otherwise a pipeline without sources runs until shutdown.
    pub once: bool,
}

/// Why a run failed.
#[derive(Debug)]
pub enum RunError {
    /// While connecting and building components, before any record moved.
    Setup(ConnectorError),
    /// While records were moving.
    Run(ConnectorError),
}

impl RunError {
    /// A setup failure that is the user's to fix in the pipeline file (a missing input file…).
    pub fn is_config(&self) -> bool {
        matches!(self, RunError::Setup(e) if e.kind == crate::ErrorKind::User)
    }

    pub fn error(&self) -> &ConnectorError {
        match self {
            RunError::Setup(e) | RunError::Run(e) => e,
        }
    }
}

/// A pipeline ready to run, with the counters the CLI displays.
pub struct PipelineRun {
    pub config: PipelineConfig,
    pub metrics: Vec<Arc<ComponentMetrics>>,
    /// True from the moment every task runs until the run ends.
    ready: std::sync::atomic::AtomicBool,
}

impl PipelineRun {
    pub fn new(config: PipelineConfig) -> Self {
        let metrics = config
            .sources
            .keys()
            .map(|id| ComponentMetrics::new("source", id))
            .chain(
                config
                    .sinks
                    .keys()
                    .map(|id| ComponentMetrics::new("sink", id)),
            )
            .collect();
        PipelineRun {
            config,
            metrics,
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn metrics_of(&self, id: &str) -> Arc<ComponentMetrics> {
        self.metrics
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .unwrap_or_else(|| ComponentMetrics::new("component", id))
    }

    /// Runs until the sources finish and the sinks have caught up, or until shutdown.
    pub async fn run(self: &Arc<Self>, options: RunOptions) -> Result<(), RunError> {
        let tasks = self.start(&options).await.map_err(RunError::Setup)?;
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let result = self.wait(tasks, &options).await.map_err(RunError::Run);
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Connected, with every task started, and not ended yet.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects, creates topics and starts every task.
    async fn start(self: &Arc<Self>, options: &RunOptions) -> Result<Started, ConnectorError> {
        let config = &self.config;
        let pipeline = config.name.as_str();
        let transport: Arc<dyn Transport> = match &config.kafka {
            Some(kafka) => Arc::new(
                KafkaTransport::connect(kafka, config.worker.as_ref())
                    .await
                    .map_err(|e| transport_error(pipeline, e))?,
            ),
            None => Arc::new(EmbeddedTransport::new(
                config.embedded.capacity,
                options.state_dir.clone(),
            )),
        };
        transport
            .ensure_topics(&config.all_topics())
            .await
            .map_err(|e| transport_error(pipeline, e))?;
        let dead_letters = DeadLetters::new(config.errors.clone(), transport.writer());

        // Readers first: the embedded log keeps records for every group that exists.
        let deadline = Deadline::after(&options.shutdown, options.drain_timeout);
        let drain = CancellationToken::new();
        let drain_dead_letters = CancellationToken::new();
        let mut sinks = tokio::task::JoinSet::new();
        let mut dead_letter_sinks = tokio::task::JoinSet::new();
        for (id, sink) in &config.sinks {
            let group = format!("sluice-{pipeline}-{id}");
            let reader = transport
                .reader(&group, &sink.topics)
                .await
                .map_err(|e| transport_error(id, e))?;
            let built = sink
                .inner
                .build(SinkBuildContext {
                    component: id.clone(),
                    topics: sink.topics.clone(),
                    group: group.clone(),
                    durable_offsets: config.kafka.is_some(),
                })
                .await
                .map_err(|e| e.in_component(id))?;
            let transforms = build_transforms(id, &sink.transforms)?;
            let task = sink_task::SinkTask {
                id: id.clone(),
                sink: built,
                reader,
                transforms,
                batch: sink.batch.clone(),
                dead_letters: dead_letters.clone(),
                metrics: self.metrics_of(id),
                group_linger: group_linger(config),
                shutdown: options.shutdown.clone(),
            };
            // Sinks reading the dead-letter topic drain last: other sinks may still write to it.
            let reads_dead_letters = config
                .errors
                .dead_letter_topic
                .as_ref()
                .is_some_and(|t| sink.topics.contains(t));
            let (set, token) = if reads_dead_letters {
                (&mut dead_letter_sinks, &drain_dead_letters)
            } else {
                (&mut sinks, &drain)
            };
            set.spawn(task.run(token.clone(), deadline.clone()));
        }

        let offsets = transport
            .offset_store(pipeline)
            .await
            .map_err(|e| transport_error(pipeline, e))?;
        let offsets: Arc<dyn crate::transport::OffsetStore> = Arc::from(offsets);
        let mut sources = tokio::task::JoinSet::new();
        for (id, source) in &config.sources {
            if config.worker.is_some() && config.kafka.is_some() {
                // Shared by the worker group: this worker runs the units it is assigned.
                let slots = source.inner.work_units().unwrap_or(1).max(1) as i32;
                let topic = units::control_topic(pipeline, id);
                let count = transport
                    .control_topic(&topic, slots)
                    .await
                    .map_err(|e| transport_error(id, e))?;
                let units = units::Units {
                    run: self.clone(),
                    id: id.clone(),
                    topic,
                    count,
                    transport: transport.clone(),
                    legacy: offsets.clone(),
                    dead_letters: dead_letters.clone(),
                    linger: group_linger(config),
                };
                sources.spawn(units.run(options.shutdown.clone(), deadline.clone()));
                continue;
            }
            let stored = offsets.load(id).await.map_err(|e| transport_error(id, e))?;
            let task = self
                .source_task(id, &transport, offsets.clone(), stored, None, &dead_letters)
                .await?;
            sources.spawn(task.run(options.shutdown.clone(), deadline.clone()));
        }
        Ok(Started {
            sources,
            sinks,
            dead_letter_sinks,
            drain,
            drain_dead_letters,
            deadline,
        })
    }

    /// Builds source `id` (the units of it in `units`, when it is split between workers),
    /// resuming at `stored`, into a task that stores its offsets in `offsets`.
    async fn source_task(
        &self,
        id: &str,
        transport: &Arc<dyn Transport>,
        offsets: Arc<dyn crate::transport::OffsetStore>,
        stored: crate::SourceOffsets,
        units: Option<crate::UnitShare>,
        dead_letters: &DeadLetters,
    ) -> Result<source_task::SourceTask, ConnectorError> {
        let config = &self.config;
        let source = config.sources.get(id).ok_or_else(|| {
            ConnectorError::internal(format!("no source `{id}` in the pipeline")).in_component(id)
        })?;
        if !stored.is_empty() {
            tracing::info!(component = %id, partitions = stored.len(), "resuming from stored source offsets");
        }
        let built = source
            .inner
            .build(SourceBuildContext {
                component: id.to_string(),
                offsets: stored,
                encode_values: transport.sends_json_text() && source.transforms.is_empty(),
                units,
            })
            .await
            .map_err(|e| e.in_component(id))?;
        Ok(source_task::SourceTask {
            id: id.to_string(),
            source: built,
            topic: source.topic.as_str().into(),
            batch_size: source.batch_size,
            max_in_flight_batches: source
                .max_in_flight_batches
                .unwrap_or_else(|| transport.default_in_flight_batches()),
            transforms: build_transforms(id, &source.transforms)?,
            writer: transport.writer(),
            offsets,
            offsets_store_interval: transport.offsets_store_interval(),
            dead_letters: dead_letters.clone(),
            metrics: self.metrics_of(id),
            numbering: config
                .source_exactly_once(id)
                .then(|| source_task::Numbering::new(&config.name)),
        })
    }

    /// Waits for the tasks: sources end (finished or stopped) → sinks drain → dead-letter sinks
    /// drain; a failure stops everything, in the same order.
    async fn wait(&self, tasks: Started, options: &RunOptions) -> Result<(), ConnectorError> {
        let Started {
            mut sources,
            mut sinks,
            mut dead_letter_sinks,
            drain,
            drain_dead_letters,
            deadline,
        } = tasks;
        let pipeline = self.config.name.as_str();
        let has_sources = !self.config.sources.is_empty();
        let mut first_error: Option<ConnectorError> = None;
        let mut note = |result: Result<Result<(), ConnectorError>, tokio::task::JoinError>| {
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(e) => {
                    ConnectorError::internal(format!("a task panicked: {e}")).in_component(pipeline)
                }
            };
            let trace_id = trace_id();
            tracing::error!(component = %error.component, error = %error.message, %trace_id, "component failed");
            self.metrics_of(&error.component)
                .fail(crate::metrics::Failure {
                    message: error.message.clone(),
                    trace_id,
                });
            options.shutdown.cancel();
            first_error.get_or_insert(error);
        };
        loop {
            let stopping = options.shutdown.is_cancelled();
            if stopping || (has_sources && sources.is_empty()) || (options.once && !has_sources) {
                drain.cancel();
            }
            if drain.is_cancelled() && sources.is_empty() && sinks.is_empty() {
                drain_dead_letters.cancel();
            }
            if sources.is_empty() && sinks.is_empty() && dead_letter_sinks.is_empty() {
                break;
            }
            tokio::select! {
                Some(result) = sources.join_next() => note(result),
                Some(result) = sinks.join_next() => note(result),
                Some(result) = dead_letter_sinks.join_next() => note(result),
                _ = options.shutdown.cancelled(), if !stopping => {}
            }
        }
        deadline.expire();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How long a worker of a group whose own work is done stays, to take over that of a worker
/// that dies (noticed after its session timeout, then a rebalance); zero outside a group.
fn group_linger(config: &PipelineConfig) -> Duration {
    match (&config.kafka, &config.worker) {
        (Some(_), Some(worker)) => worker.session_timeout * 2,
        _ => Duration::ZERO,
    }
}

/// An id for one failure, in its log line and in the REST API's status.
fn trace_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{now}-{}", std::process::id());
    format!("{:016x}", crate::exactly_once::fnv1a(seed.as_bytes()))
}

fn transport_error(component: &str, e: crate::transport::TransportError) -> ConnectorError {
    let error = if e.retryable {
        ConnectorError::transient(e.message)
    } else {
        ConnectorError::external(e.message)
    };
    error.in_component(component)
}

fn build_transforms(
    id: &str,
    configs: &[Box<dyn crate::TransformConfig>],
) -> Result<Vec<Box<dyn crate::Transform>>, ConnectorError> {
    configs
        .iter()
        .map(|t| t.build().map_err(|e| e.in_component(id)))
        .collect()
}

/// Applies `transforms` in order to one record.
pub(crate) fn apply_transforms(
    transforms: &[Box<dyn crate::Transform>],
    record: crate::Record,
) -> Result<Vec<crate::Record>, String> {
    let mut current = vec![record];
    for transform in transforms {
        let mut next = Vec::with_capacity(current.len());
        for r in current {
            transform.apply(r, &mut next)?;
        }
        current = next;
    }
    Ok(current)
}
