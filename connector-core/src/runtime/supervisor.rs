//! Starts a pipeline's tasks, watches them end, and carries out what the REST API asks of one
//! component while the others run: stop, restart, resume, reset its offsets (Kafka Connect's
//! `PUT …/stop`, `POST …/restart`, `PUT …/resume`, `DELETE …/offsets`).
//!
//! Each task has its own stop token (a child of the run's shutdown) and its own deadline, so
//! one component stops alone, bounded by the drain timeout: a source stops polling and stores
//! its offsets once what it sent is acknowledged; a sink stores and commits what it has read
//! and reads no more (on the embedded log its group keeps its place, and records wait for it).

use super::deadline::Deadline;
use super::{sink_task, stream_task, transport_error, units, DeadLetters, PipelineRun, RunOptions};
use crate::config::OnTaskFailure;
use crate::transport::{OffsetStore, Transport};
use crate::{ConnectorError, SinkBuildContext};
use futures::FutureExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the REST API asks of one component of a running pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a failed or stopped component again; a running one is stopped, then started.
    Restart,
    /// Stop the component (it stores its offsets) and keep it stopped.
    Stop,
    /// Start a stopped component again (and unpause a paused one).
    Resume,
    /// Forget the component's offsets: a source reads its input from the start, a sink its
    /// topics from the oldest record kept. Only while it is stopped.
    ResetOffsets,
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The pipeline is not running (starting, or ended).
    #[error("pipeline `{0}` is not running")]
    NotRunning(String),
    /// The component's state does not allow the command.
    #[error("{0}")]
    Conflict(String),
    /// The command was tried and failed.
    #[error("{}", .0.message)]
    Failed(ConnectorError),
}

/// A command on its way to the supervisor, with where the answer goes.
pub(super) struct Request {
    pub component: String,
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, CommandError>>,
}

/// How a component's task ended, or that it runs.
#[derive(Debug)]
enum Life {
    Running,
    /// Asked to stop; then started again if `restart`.
    Stopping {
        restart: bool,
    },
    /// A source that read all of its input.
    Finished,
    /// Stopped through the API; waits for a resume or restart.
    Stopped,
    /// Failed; waits for a restart (with `on_task_failure: wait_for_restart`).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Source,
    /// A stream transform: it drains before the sinks, which may read what it writes.
    Stream,
    Sink,
    /// A sink reading the dead-letter topic: it drains last, since the others may still
    /// dead-letter.
    DeadLetterSink,
}

struct Component {
    role: Role,
    life: Life,
    /// Stops this component's task alone (a child of the run's shutdown).
    stop: CancellationToken,
    /// Cancelled only by a stop through the API (not on shutdown): a sink then stores what it
    /// read and ends without draining, keeping its group's position for the next start.
    stopped_by_api: CancellationToken,
    /// The task's own shutdown deadline.
    deadline: Option<Deadline>,
    /// Work-unit slots of a source shared by a worker group (0 otherwise).
    slots: i32,
}

type Ended = (String, Result<(), ConnectorError>);

/// A pipeline's running tasks.
pub(super) struct Supervisor {
    run: Arc<PipelineRun>,
    options: RunOptions,
    transport: Arc<dyn Transport>,
    /// The pipeline's source offsets.
    offsets: Arc<dyn OffsetStore>,
    dead_letters: DeadLetters,
    sources: JoinSet<Ended>,
    streams: JoinSet<Ended>,
    sinks: JoinSet<Ended>,
    dead_letter_sinks: JoinSet<Ended>,
    /// Cancelled once sources are done or on shutdown: stream transforms read what is left
    /// and end, each once the stream transforms it reads from ended (`stream_drains`).
    drain: CancellationToken,
    /// Per stream transform, what makes it read what is left and end.
    stream_drains: BTreeMap<String, CancellationToken>,
    /// Per stream transform, the stream transforms whose topics it reads.
    upstream: BTreeMap<String, Vec<String>>,
    /// Cancelled once `drain` is and every stream transform ended: other sinks read what is
    /// left and end.
    drain_sinks: CancellationToken,
    /// Cancelled once every source and every other sink has ended.
    drain_dead_letters: CancellationToken,
    components: BTreeMap<String, Component>,
    /// The failure that stopped the pipeline (`on_task_failure: stop_pipeline`).
    first_error: Option<ConnectorError>,
}

impl Supervisor {
    /// Connects, creates topics and starts every task: sinks first, since the embedded log
    /// keeps records only for the groups that exist.
    pub async fn start(
        run: Arc<PipelineRun>,
        options: RunOptions,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, ConnectorError> {
        let config = &run.config;
        let pipeline = config.name.clone();
        let dead_letters = DeadLetters::new(config.errors.clone(), transport.writer());
        let offsets: Arc<dyn OffsetStore> = Arc::from(
            transport
                .offset_store(&pipeline)
                .await
                .map_err(|e| transport_error(&pipeline, e))?,
        );
        let mut components = BTreeMap::new();
        for (id, sink) in &config.sinks {
            let reads_dead_letters = config
                .errors
                .dead_letter_topic
                .as_ref()
                .is_some_and(|t| sink.topics.contains(t));
            let role = if reads_dead_letters {
                Role::DeadLetterSink
            } else {
                Role::Sink
            };
            components.insert(id.clone(), Component::new(role));
        }
        for id in config.sources.keys() {
            components.insert(id.clone(), Component::new(Role::Source));
        }
        for id in config.transforms.keys() {
            components.insert(id.clone(), Component::new(Role::Stream));
        }
        let mut supervisor = Supervisor {
            run: run.clone(),
            options,
            transport,
            offsets,
            dead_letters,
            sources: JoinSet::new(),
            streams: JoinSet::new(),
            sinks: JoinSet::new(),
            dead_letter_sinks: JoinSet::new(),
            drain: CancellationToken::new(),
            stream_drains: config
                .transforms
                .keys()
                .map(|id| (id.clone(), CancellationToken::new()))
                .collect(),
            upstream: config
                .transforms
                .iter()
                .map(|(id, stream)| {
                    let reads: Vec<String> = config
                        .transforms
                        .iter()
                        .filter(|(_, other)| stream.inputs.contains(&other.topic))
                        .map(|(other, _)| other.clone())
                        .collect();
                    (id.clone(), reads)
                })
                .collect(),
            drain_sinks: CancellationToken::new(),
            drain_dead_letters: CancellationToken::new(),
            components,
            first_error: None,
        };
        for id in run.config.sinks.keys() {
            supervisor.spawn(id).await?;
        }
        for id in run.config.transforms.keys() {
            supervisor.spawn(id).await?;
        }
        for id in run.config.sources.keys() {
            supervisor.spawn(id).await?;
        }
        Ok(supervisor)
    }

    /// Waits for the tasks: sources finish → sinks drain → dead-letter sinks drain, answering
    /// the API's commands meanwhile. A failure stops everything, in the same order, unless
    /// failed components wait for a restart. A component stopped through the API, or failed
    /// and waiting, keeps the run going (sinks do not drain while a source waits) until it
    /// runs again or shutdown.
    pub async fn wait(
        mut self,
        mut commands: mpsc::Receiver<Request>,
    ) -> Result<(), ConnectorError> {
        let shutdown = self.options.shutdown.clone();
        let has_sources = !self.run.config.sources.is_empty();
        loop {
            let stopping = shutdown.is_cancelled();
            let sources_finished = has_sources
                && self
                    .components
                    .values()
                    .filter(|c| c.role == Role::Source)
                    .all(|c| matches!(c.life, Life::Finished));
            if stopping || sources_finished || (self.options.once && !has_sources) {
                self.drain.cancel();
            }
            if self.drain.is_cancelled() {
                self.drain_streams(stopping);
            }
            if self.drain.is_cancelled() && self.streams.is_empty() {
                self.drain_sinks.cancel();
            }
            if self.drain_sinks.is_cancelled()
                && self.sources.is_empty()
                && self.streams.is_empty()
                && self.sinks.is_empty()
            {
                self.drain_dead_letters.cancel();
            }
            // A stopped or failed component waits for a resume or restart until shutdown.
            let waiting = self
                .components
                .values()
                .any(|c| matches!(c.life, Life::Stopped | Life::Failed));
            let idle = self.sources.is_empty()
                && self.streams.is_empty()
                && self.sinks.is_empty()
                && self.dead_letter_sinks.is_empty();
            if idle && (stopping || !waiting) {
                break;
            }
            tokio::select! {
                Some(ended) = self.sources.join_next() => self.ended(ended).await,
                Some(ended) = self.streams.join_next() => self.ended(ended).await,
                Some(ended) = self.sinks.join_next() => self.ended(ended).await,
                Some(ended) = self.dead_letter_sinks.join_next() => self.ended(ended).await,
                Some(request) = commands.recv(), if !stopping => {
                    let answer = self.command(&request.component, request.command).await;
                    let _ = request.reply.send(answer);
                }
                _ = shutdown.cancelled(), if !stopping => {}
            }
        }
        for component in self.components.values() {
            if let Some(deadline) = &component.deadline {
                deadline.expire();
            }
        }
        if let Some(e) = self.first_error {
            return Err(e);
        }
        // A component that failed and was never restarted fails the run.
        match self
            .components
            .iter()
            .find(|(_, c)| matches!(c.life, Life::Failed))
        {
            Some((id, _)) => Err(self.run.metrics_of(id).failure().map_or_else(
                || ConnectorError::internal("failed").in_component(id),
                |f| ConnectorError::external(f.message).in_component(id),
            )),
            None => Ok(()),
        }
    }

    /// Drains each stream transform whose upstream stream transforms ended (finished; on
    /// shutdown, also stopped or failed), so that it reads their last output first.
    fn drain_streams(&self, stopping: bool) {
        for (id, drain) in &self.stream_drains {
            let upstream_ended = self.upstream.get(id).into_iter().flatten().all(|up| {
                self.components.get(up).is_none_or(|c| match c.life {
                    Life::Finished => true,
                    Life::Stopped | Life::Failed => stopping,
                    Life::Running | Life::Stopping { .. } => false,
                })
            });
            if upstream_ended {
                drain.cancel();
            }
        }
    }

    /// Notes how a task ended; starts it again when it was stopped to be restarted.
    async fn ended(&mut self, joined: Result<Ended, tokio::task::JoinError>) {
        let (id, result) = match joined {
            Ok(ended) => ended,
            // Tasks catch their panics (see `spawn`); this is a cancelled task at most.
            Err(e) => {
                tracing::error!(error = %e, "a task ended without a result");
                return;
            }
        };
        let metrics = self.run.metrics_of(&id);
        let restartable = self.run.config.errors.on_task_failure == OnTaskFailure::WaitForRestart;
        let Some(component) = self.components.get_mut(&id) else {
            return;
        };
        let restart = matches!(component.life, Life::Stopping { restart: true });
        match result {
            Ok(()) => {
                component.life = match component.life {
                    Life::Stopping { .. } => {
                        metrics.finish();
                        tracing::info!(component = %id, "stopped");
                        Life::Stopped
                    }
                    _ => Life::Finished,
                };
            }
            Err(error) => {
                let trace_id = super::trace_id();
                tracing::error!(component = %error.component, error = %error.message, %trace_id, "component failed");
                metrics.fail(crate::metrics::Failure {
                    message: error.message.clone(),
                    trace_id,
                });
                component.life = Life::Failed;
                if restartable {
                    tracing::warn!(component = %id, "waiting for a restart (POST /connectors/{}.{id}/restart); the rest of the pipeline goes on", self.run.config.name);
                } else {
                    self.options.shutdown.cancel();
                    // A component that could not connect is the cause of what fails after it
                    // (a source whose records nobody will store): it is the one reported.
                    let first_is_cause = self
                        .first_error
                        .as_ref()
                        .is_some_and(|first| self.run.metrics_of(&first.component).build_failed());
                    if self.first_error.is_none() || (metrics.build_failed() && !first_is_cause) {
                        self.first_error = Some(error);
                    }
                }
            }
        }
        if restart && !self.options.shutdown.is_cancelled() {
            if let Err(e) = self.start_again(&id).await {
                tracing::error!(component = %id, error = %e, "restart failed");
            }
        }
    }

    /// Carries out `command` on component `id`; the answer is a message for the API.
    async fn command(&mut self, id: &str, command: Command) -> Result<String, CommandError> {
        let Some(component) = self.components.get_mut(id) else {
            return Err(CommandError::Conflict(format!("no component `{id}`")));
        };
        let metrics = self.run.metrics_of(id);
        match (command, &component.life) {
            (Command::Stop, Life::Running) => {
                component.stop_task(false);
                Ok("stopping".into())
            }
            (Command::Stop, Life::Stopping { .. }) => {
                component.life = Life::Stopping { restart: false };
                Ok("stopping".into())
            }
            (Command::Stop, Life::Finished | Life::Failed | Life::Stopped) => {
                // Kept as it is, and now stopped: a reset and a resume run it again.
                component.life = Life::Stopped;
                metrics.restarted();
                metrics.finish();
                Ok("stopped".into())
            }
            (Command::Restart, Life::Running) => {
                component.stop_task(true);
                Ok("restarting".into())
            }
            (Command::Restart, Life::Stopping { .. }) => {
                component.life = Life::Stopping { restart: true };
                Ok("restarting".into())
            }
            (Command::Restart, Life::Failed | Life::Stopped)
            | (Command::Resume, Life::Stopped) => {
                metrics.set_paused(false);
                self.start_again(id).await.map_err(CommandError::Failed)?;
                Ok("started".into())
            }
            (Command::Restart, Life::Finished) => Err(CommandError::Conflict(format!(
                "`{id}` finished reading its input; stop it, reset its offsets and resume it to read it again"
            ))),
            (Command::Resume, _) => {
                metrics.set_paused(false);
                Ok("resumed".into())
            }
            (Command::ResetOffsets, Life::Stopping { restart: false }) => {
                // Its task shows STOPPED as it ends, maybe before this loop noticed.
                self.settle(id).await;
                self.reset_stopped(id).await
            }
            (Command::ResetOffsets, Life::Stopped) => self.reset_stopped(id).await,
            (Command::ResetOffsets, _) => Err(CommandError::Conflict(format!(
                "`{id}` must be stopped first (PUT /connectors/{}.{id}/stop), and its offsets are reset only once it shows STOPPED",
                self.run.config.name
            ))),
        }
    }

    /// Resets the offsets of `id` if it is stopped.
    async fn reset_stopped(&mut self, id: &str) -> Result<String, CommandError> {
        match self.components.get(id).map(|c| &c.life) {
            Some(Life::Stopped) => {
                self.reset_offsets(id).await.map_err(CommandError::Failed)?;
                self.run.metrics_of(id).clear_offsets();
                Ok("The offsets for this connector have been reset successfully".into())
            }
            _ => Err(CommandError::Conflict(format!(
                "`{id}` did not stop: it is no longer stopped"
            ))),
        }
    }

    /// Waits for the task of `id`, which was asked to stop, to end (bounded by its drain
    /// timeout), noting every task that ends meanwhile.
    async fn settle(&mut self, id: &str) {
        loop {
            let Some(component) = self.components.get(id) else {
                return;
            };
            if !matches!(component.life, Life::Stopping { .. }) {
                return;
            }
            let set = match component.role {
                Role::Source => &mut self.sources,
                Role::Stream => &mut self.streams,
                Role::Sink => &mut self.sinks,
                Role::DeadLetterSink => &mut self.dead_letter_sinks,
            };
            match set.join_next().await {
                Some(ended) => self.ended(ended).await,
                None => return,
            }
        }
    }

    /// Starts component `id` again after a stop or failure.
    async fn start_again(&mut self, id: &str) -> Result<(), ConnectorError> {
        tracing::info!(component = %id, "starting again");
        self.run.metrics_of(id).restarted();
        let result = self.spawn(id).await;
        if let Err(e) = &result {
            if let Some(component) = self.components.get_mut(id) {
                component.life = Life::Failed;
            }
            self.run.metrics_of(id).fail(crate::metrics::Failure {
                message: e.message.clone(),
                trace_id: super::trace_id(),
            });
        }
        result
    }

    /// Builds component `id`'s task and starts it.
    async fn spawn(&mut self, id: &str) -> Result<(), ConnectorError> {
        let role = match self.components.get(id) {
            Some(c) => c.role,
            None => return Err(ConnectorError::internal("no such component").in_component(id)),
        };
        let stop = self.options.shutdown.child_token();
        let deadline = Deadline::after(&stop, self.options.drain_timeout);
        let stopped_by_api = CancellationToken::new();
        let (task, slots) = match role {
            Role::Source => self.source(id, &stop, &deadline).await?,
            Role::Stream | Role::Sink | Role::DeadLetterSink => {
                let set_drain = match role {
                    Role::Stream => self.stream_drains.get(id).unwrap_or(&self.drain),
                    Role::Sink => &self.drain_sinks,
                    _ => &self.drain_dead_letters,
                };
                let (task, build) = self.sink(id, &stop, &stopped_by_api).await?;
                let task = task
                    .connect_and_run(build, set_drain.clone(), deadline.clone())
                    .boxed();
                (task, 0)
            }
        };
        let owner = id.to_string();
        let caught = async move {
            let result = super::panic_as_error(task, &owner).await;
            (owner, result)
        };
        match role {
            Role::Source => self.sources.spawn(caught),
            Role::Stream => self.streams.spawn(caught),
            Role::Sink => self.sinks.spawn(caught),
            Role::DeadLetterSink => self.dead_letter_sinks.spawn(caught),
        };
        if let Some(component) = self.components.get_mut(id) {
            if let Some(old) = component.deadline.replace(deadline) {
                old.expire();
            }
            component.life = Life::Running;
            component.stop = stop;
            component.stopped_by_api = stopped_by_api;
            component.slots = slots;
        }
        Ok(())
    }

    /// Source `id`'s task, and its work-unit slots when a worker group shares it.
    async fn source(
        &self,
        id: &str,
        stop: &CancellationToken,
        deadline: &Deadline,
    ) -> Result<(TaskFuture, i32), ConnectorError> {
        let config = &self.run.config;
        let pipeline = config.name.as_str();
        let Some(source) = config.sources.get(id) else {
            return Err(ConnectorError::internal("no such source").in_component(id));
        };
        if config.worker_group().is_some() {
            // Shared by the worker group: this worker runs the units it is assigned.
            let slots = source.inner.work_units().unwrap_or(1).max(1) as i32;
            let topic = units::control_topic(pipeline, id);
            let count = self
                .transport
                .control_topic(&topic, slots)
                .await
                .map_err(|e| transport_error(id, e))?;
            let units = units::Units {
                run: self.run.clone(),
                id: id.to_string(),
                topic,
                count,
                transport: self.transport.clone(),
                legacy: self.offsets.clone(),
                dead_letters: self.dead_letters.clone(),
            };
            return Ok((units.run(stop.clone(), deadline.clone()).boxed(), count));
        }
        let stored = self
            .offsets
            .load(id)
            .await
            .map_err(|e| transport_error(id, e))?;
        // Built inside the task: a connect that never answers must not hold up a stop, and a
        // failed one fails this component alone when it may wait for a restart.
        let (run, transport, offsets) = (
            self.run.clone(),
            self.transport.clone(),
            self.offsets.clone(),
        );
        let (dead_letters, owner) = (self.dead_letters.clone(), id.to_string());
        let (stop, deadline) = (stop.clone(), deadline.clone());
        let task = async move {
            let build = run.source_task(&owner, &transport, offsets, stored, None, &dead_letters);
            let task = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    tracing::info!(component = %owner, "stopped while connecting");
                    run.metrics_of(&owner).finish();
                    return Ok(());
                }
                task = build => task,
            };
            run.metrics_of(&owner).set_build_failed(task.is_err());
            task?.run(stop, deadline).await
        };
        Ok((task.boxed(), 0))
    }

    /// Sink `id`'s task, reading as its consumer group, and the connect of its sink, which
    /// the task makes (see [`sink_task::SinkTask::connect_and_run`]). The reader is made here,
    /// before the task runs: the embedded log keeps records only for the groups that exist.
    async fn sink(
        &self,
        id: &str,
        stop: &CancellationToken,
        stopped_by_api: &CancellationToken,
    ) -> Result<(sink_task::SinkTask, sink_task::SinkBuild), ConnectorError> {
        let config = &self.run.config;
        let group = sink_group(&config.name, id);
        let (topics, build, transforms, batch) =
            match (config.sinks.get(id), config.transforms.get(id)) {
                (Some(sink), _) => {
                    let run = self.run.clone();
                    let context = self.sink_context(id, &group);
                    let owner = id.to_string();
                    let build: sink_task::SinkBuild = async move {
                        let sink = run.config.sinks.get(&owner).ok_or_else(|| {
                            ConnectorError::internal("no such sink").in_component(&owner)
                        })?;
                        sink.inner
                            .build(context)
                            .await
                            .map_err(|e| e.in_component(&owner))
                    }
                    .boxed();
                    let transforms = super::build_transforms(id, &sink.transforms)?;
                    (&sink.topics, build, transforms, sink.batch.clone())
                }
                (None, Some(stream)) => {
                    let operator = stream.inner.build().map_err(|e| e.in_component(id))?;
                    let built: Box<dyn crate::Sink> = Box::new(
                        stream_task::StreamSink::new(
                            id.to_string(),
                            config.name.clone(),
                            operator,
                            &stream.topic,
                            self.transport.clone(),
                            stream_task::Checkpoints {
                                durable_offsets: config.kafka.is_some(),
                                interval: stream.checkpoint_interval,
                            },
                            self.dead_letters.clone(),
                        )
                        .counting_into(self.run.metrics_of(id)),
                    );
                    let build: sink_task::SinkBuild = futures::future::ready(Ok(built)).boxed();
                    (&stream.inputs, build, Vec::new(), stream.batch.clone())
                }
                (None, None) => {
                    return Err(ConnectorError::internal("no such sink").in_component(id))
                }
            };
        let reader = self
            .transport
            .reader(&group, topics)
            .await
            .map_err(|e| transport_error(id, e))?;
        let task = sink_task::SinkTask {
            id: id.to_string(),
            sink: Box::new(sink_task::NotConnected),
            reader,
            transforms,
            batch,
            dead_letters: self.dead_letters.clone(),
            metrics: self.run.metrics_of(id),
            group_linger: super::group_linger(config),
            shutdown: stop.clone(),
            stop: stopped_by_api.clone(),
            hold_position_on_failure: config.errors.on_task_failure
                == OnTaskFailure::WaitForRestart,
            last_release: None,
        };
        Ok((task, build))
    }

    fn sink_context(&self, id: &str, group: &str) -> SinkBuildContext {
        let config = &self.run.config;
        SinkBuildContext {
            component: id.to_string(),
            topics: config
                .sinks
                .get(id)
                .map(|s| s.topics.clone())
                .unwrap_or_default(),
            group: group.to_string(),
            durable_offsets: config.kafka.is_some(),
        }
    }

    /// Forgets the stored offsets of stopped component `id`.
    async fn reset_offsets(&self, id: &str) -> Result<(), ConnectorError> {
        let Some(component) = self.components.get(id) else {
            return Ok(());
        };
        let pipeline = self.run.config.name.as_str();
        match component.role {
            Role::Source => {
                if self.run.config.worker_group().is_some() {
                    // Other workers that still run the source would store its offsets again
                    // within a second: refused while its units group has members, as the
                    // reset of a sink is while its consumer group has.
                    self.transport
                        .reset_group(&units::units_group(pipeline, id))
                        .await
                        .map_err(|e| transport_error(id, e))?;
                }
                self.offsets
                    .remove(id)
                    .await
                    .map_err(|e| transport_error(id, e))?;
                for slot in 0..component.slots {
                    let store = self
                        .transport
                        .offset_store(&units::slot_store(pipeline, id, slot))
                        .await
                        .map_err(|e| transport_error(id, e))?;
                    store.remove(id).await.map_err(|e| transport_error(id, e))?;
                    if self.run.config.worker_group().is_some() {
                        // Its units are to be read again: no worker may leave on their account.
                        self.transport
                            .set_control_status(
                                &units::control_topic(pipeline, id),
                                slot,
                                units::slot_status(false),
                            )
                            .await
                            .map_err(|e| transport_error(id, e))?;
                    }
                }
                tracing::info!(component = %id, "source offsets reset: it reads its input from the start");
            }
            Role::Stream => {
                self.transport
                    .reset_group(&sink_group(pipeline, id))
                    .await
                    .map_err(|e| transport_error(id, e))?;
                let mut checkpointed =
                    stream_task::checkpointed_partitions(&*self.transport, pipeline, id)
                        .await
                        .map_err(|e| transport_error(id, e))?;
                // The index lists the partitions this worker's view of it held when stored:
                // two workers storing it overwrite each other's entries. Every partition of a
                // declared input may have a checkpoint, listed or not.
                let topics = self.run.config.all_topics();
                let inputs = self.run.config.transforms.get(id).map(|s| &s.inputs);
                for input in inputs.into_iter().flatten() {
                    for partition in 0..topics.get(input).map_or(0, |spec| spec.partitions) {
                        let key: crate::transport::TopicPartition =
                            (input.as_str().into(), partition);
                        if !checkpointed.contains(&key) {
                            checkpointed.push(key);
                        }
                    }
                }
                for partition in &checkpointed {
                    let name = stream_task::checkpoint_store(pipeline, id, partition);
                    let store = self
                        .transport
                        .offset_store(&name)
                        .await
                        .map_err(|e| transport_error(id, e))?;
                    store.remove(id).await.map_err(|e| transport_error(id, e))?;
                }
                let index = self
                    .transport
                    .offset_store(&stream_task::index_store(pipeline, id))
                    .await
                    .map_err(|e| transport_error(id, e))?;
                index.remove(id).await.map_err(|e| transport_error(id, e))?;
                tracing::info!(component = %id, "stream transform reset: its state is gone and it reads its inputs from the oldest record kept");
            }
            Role::Sink | Role::DeadLetterSink => {
                let group = sink_group(pipeline, id);
                self.transport
                    .reset_group(&group)
                    .await
                    .map_err(|e| transport_error(id, e))?;
                let Some(sink) = self.run.config.sinks.get(id) else {
                    return Ok(());
                };
                let mut built = sink
                    .inner
                    .build(self.sink_context(id, &group))
                    .await
                    .map_err(|e| e.in_component(id))?;
                built
                    .reset_offsets()
                    .await
                    .map_err(|e| e.in_component(id))?;
                tracing::info!(component = %id, "sink offsets reset: it reads its topics from the oldest record kept");
            }
        }
        Ok(())
    }
}

type TaskFuture = futures::future::BoxFuture<'static, Result<(), ConnectorError>>;

impl Component {
    fn new(role: Role) -> Self {
        Component {
            role,
            life: Life::Running,
            stop: CancellationToken::new(),
            stopped_by_api: CancellationToken::new(),
            deadline: None,
            slots: 0,
        }
    }

    /// Asks the running task to stop, storing its offsets (within the drain timeout);
    /// `restart` starts it again then.
    fn stop_task(&mut self, restart: bool) {
        self.life = Life::Stopping { restart };
        self.stopped_by_api.cancel();
        self.stop.cancel();
    }
}

/// The consumer group of sink `id` of `pipeline`.
pub(super) fn sink_group(pipeline: &str, id: &str) -> String {
    format!("sluice-{pipeline}-{id}")
}
