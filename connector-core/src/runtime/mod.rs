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
mod stream_task;
mod supervisor;
mod units;

pub use dead_letter::DeadLetters;
pub use supervisor::{Command, CommandError};

use crate::config::PipelineConfig;
use crate::metrics::ComponentMetrics;
use crate::transport::embedded::EmbeddedTransport;
use crate::transport::kafka::KafkaTransport;
use crate::transport::Transport;
use crate::{ConnectorError, SourceBuildContext};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Where the REST API's commands go while the pipeline runs.
    commands: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<supervisor::Request>>>,
}

/// How long a command (a stop, a restart, an offset reset) may take to be answered.
/// How many offset stores a rebalance opens side by side (each open reads its store back
/// from the transport: on Kafka a round trip or more).
const STORE_OPENS_AT_ONCE: usize = 8;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl PipelineRun {
    pub fn new(config: PipelineConfig) -> Self {
        let metrics = config
            .sources
            .keys()
            .map(|id| ComponentMetrics::new("source", id))
            .chain(
                config
                    .transforms
                    .keys()
                    .map(|id| ComponentMetrics::new("transform", id)),
            )
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
            commands: std::sync::Mutex::new(None),
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
        // A stop while the cluster does not answer ends the run at once: nothing moved yet.
        let transport = tokio::select! {
            biased;
            _ = options.shutdown.cancelled() => return Ok(()),
            transport = self.connect(&options) => transport.map_err(RunError::Setup)?,
        };
        let supervisor = supervisor::Supervisor::start(self.clone(), options, transport)
            .await
            .map_err(RunError::Setup)?;
        let (commands, requests) = tokio::sync::mpsc::channel(16);
        *self.commands.lock().unwrap_or_else(|e| e.into_inner()) = Some(commands);
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        // A component that failed to build (connect) is a failure of the setup, as before
        // any task started: a user's error there is the pipeline file's (exit 2).
        let result = supervisor.wait(requests).await.map_err(|e| {
            if self.metrics_of(&e.component).build_failed() {
                RunError::Setup(e)
            } else {
                RunError::Run(e)
            }
        });
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        *self.commands.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result
    }

    /// Connected, with every task started, and not ended yet.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the running pipeline to stop, restart, resume or reset component `id`; answers
    /// with what was done.
    pub async fn command(&self, id: &str, command: Command) -> Result<String, CommandError> {
        let not_running = || CommandError::NotRunning(self.config.name.clone());
        let sender = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(not_running)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = supervisor::Request {
            component: id.to_string(),
            command,
            reply,
        };
        sender.send(request).await.map_err(|_| not_running())?;
        match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(not_running()),
            Err(_) => Err(CommandError::Conflict(format!(
                "no answer within {COMMAND_TIMEOUT:?}; the pipeline may be busy stopping"
            ))),
        }
    }

    /// Connects the transport and creates the pipeline's topics.
    async fn connect(&self, options: &RunOptions) -> Result<Arc<dyn Transport>, ConnectorError> {
        let config = &self.config;
        let pipeline = config.name.as_str();
        let transport: Arc<dyn Transport> = match &config.kafka {
            Some(kafka) => Arc::new(
                KafkaTransport::connect(
                    kafka,
                    &config.worker_group().unwrap_or_default(),
                    config
                        .sources
                        .keys()
                        .any(|id| config.source_exactly_once(id)),
                )
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
        Ok(transport)
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
            self.metrics_of(id).set_resumed();
            tracing::info!(component = %id, partitions = stored.len(), "resuming after the offsets an earlier run stored: what it read is not read again");
        }
        let built = source
            .inner
            .build(SourceBuildContext {
                component: id.to_string(),
                offsets: stored,
                encode_values: transport.sends_json_text() && source.transforms.is_empty(),
                units,
                exactly_once: config.source_exactly_once(id),
                status: Some(self.metrics_of(id)),
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
            committed_batch: 0,
        })
    }
}

/// How long a worker of a group whose own work is done stays, to take over that of a worker
/// that dies (noticed after its session timeout, then a rebalance); zero outside a group.
fn group_linger(config: &PipelineConfig) -> Duration {
    config
        .worker_group()
        .map_or(Duration::ZERO, |worker| worker.session_timeout * 2)
}

/// Runs a task of component `owner`; a panic in it ends it as a failure of the component
/// (which the supervisor reports and acts on) rather than silently.
async fn panic_as_error(
    task: impl std::future::Future<Output = Result<(), ConnectorError>>,
    owner: &str,
) -> Result<(), ConnectorError> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(ConnectorError::internal(format!("the task panicked: {what}")).in_component(owner))
        })
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
    configs: &[crate::TransformOuter],
) -> Result<Vec<Box<dyn crate::Transform>>, ConnectorError> {
    configs
        .iter()
        .enumerate()
        .map(|(position, t)| t.build(position).map_err(|e| e.in_component(id)))
        .collect()
}

/// Applies `transforms` in order to one record, which is left as it was (for its dead letter).
pub(crate) fn apply_transforms(
    transforms: &[Box<dyn crate::Transform>],
    record: &crate::Record,
) -> Result<Vec<crate::Record>, String> {
    let Some((first, rest)) = transforms.split_first() else {
        return Ok(vec![record.clone()]);
    };
    let mut current = Vec::with_capacity(1);
    first.apply_borrowed(record, &mut current)?;
    for transform in rest {
        let mut next = Vec::with_capacity(current.len());
        for r in current {
            transform.apply(r, &mut next)?;
        }
        current = next;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_ends_as_a_failure_of_its_component() {
        let result = panic_as_error(async { panic!("boom") }, "src").await;
        let error = result.unwrap_err();
        assert_eq!(error.component, "src");
        assert!(
            error.message.contains("panicked: boom"),
            "{}",
            error.message
        );
    }
}
