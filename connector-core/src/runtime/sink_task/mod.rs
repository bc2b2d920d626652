//! A sink task: read → transforms → put(batch) → flush → pre_commit → commit consumer offsets.
//!
//! Offsets are committed only after `flush` returned and every dead-letter record of the batch is
//! acknowledged, so whatever is committed is in the store or in the dead-letter topic; a sink
//! whose `pre_commit` holds them back (a stream transform between checkpoints) has them
//! committed with a later flush, or before the task gives up partitions, pauses or ends.

use super::dead_letter::{DeadLetters, Failure};
use super::deadline::Deadline;
use super::{apply_transforms, transport_error};
use crate::config::BatchConfig;
use crate::metrics::ComponentMetrics;
use crate::transport::{Incoming, PartitionOffset, Rebalance, TopicPartition, TopicReader};
use crate::{ConnectorError, PrepareBatch, Prepared, Record, Sink, Transform};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Attempts at a batch whose `put`/`flush` fails with a retryable error, before the task fails.
const MAX_BATCH_ATTEMPTS: u32 = 12;

/// Records per poll while reading ahead: decoding one poll's worth delays the batch being
/// stored by at most that long.
const READ_AHEAD_POLL: usize = 500;

/// How often a sink measures its consumer lag (for `/metrics` and the status page).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Longest wait of a poll once the sink drains with nothing pending: how late it notices it
/// has caught up.
const DRAINING_POLL: Duration = Duration::from_millis(10);

/// A spawned task that ends with its handle.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a measure of the consumer lag found.
type LagMeasured = Result<Vec<(TopicPartition, i64)>, crate::transport::TransportError>;

/// What a spawned measure of the consumer lag ends with.
type LagResult = Result<LagMeasured, tokio::task::JoinError>;

/// Batches of at least this many records are freed on a blocking thread.
const DROP_APART: usize = 1_000;

pub(super) struct SinkTask {
    pub id: String,
    pub sink: Box<dyn Sink>,
    pub reader: Box<dyn TopicReader>,
    pub transforms: Vec<Box<dyn Transform>>,
    pub batch: BatchConfig,
    pub dead_letters: DeadLetters,
    pub metrics: Arc<ComponentMetrics>,
    /// In a worker group: how long a sink that has read all it owns keeps reading after the
    /// sources finished (or `--once`) and the last rebalance, while it does not own every
    /// partition, to take over those of a worker that died. Zero outside a group.
    pub group_linger: Duration,
    /// Cancelled on SIGINT/SIGTERM, or when this sink alone is stopped: then it ends as soon
    /// as it has read what it owns.
    pub shutdown: CancellationToken,
    /// Cancelled when this sink alone is stopped (REST API): it stores and commits what it has
    /// read and ends without reading more, keeping its group's position for a later start.
    pub stop: CancellationToken,
    /// Whether a failed task keeps its group's position too (it waits for a restart), rather
    /// than leave the group (see [`TopicReader::hold_position`]).
    pub hold_position_on_failure: bool,
    /// When the last commit the sink allowed ended, and what asking for it cost.
    pub last_release: Option<(Instant, Duration)>,
}

/// What has been read but not yet committed.
#[derive(Default)]
struct Pending {
    /// Shared with the transport (the embedded log), not copied.
    records: Vec<Arc<Record>>,
    dead: Vec<Record>,
    /// (topic, partition) → next offset to commit.
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    since: Option<Instant>,
    /// What the sink's preparer made of `records` while the batch before was being stored;
    /// dropped when more records join.
    prepared: Option<Prepared>,
}

/// (topic, partition) → next offset.
type Offsets = BTreeMap<(Arc<str>, i32), i64>;

/// Offsets of everything flushed so far.
#[derive(Default)]
struct Flushed {
    /// Committed: committed once more, waiting, when the task stops.
    committed: Offsets,
    /// Flushed, but held back by the sink's [`Sink::pre_commit`].
    held: Offsets,
}

/// When [`SinkTask::release`] asks the sink for the offsets it holds back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// A batch was stored: committed once the sink allows (its interval passed), or once a
    /// writer waits for them, at most as often as keeps the sink's commit work to a fifth of
    /// the time.
    AfterBatch,
    /// Nothing more to read: committed once the sink allows, or at once if a writer waits.
    Idle,
    /// Stopping, pausing or handing partitions over: committed now.
    Now,
}

/// Least time between two commits a waiting writer forces, as a multiple of what the last
/// commit cost (a stream transform's checkpoint of a large state takes tens of ms).
const FORCED_COMMIT_SPACING: u32 = 4;

/// What turns records read into a batch: decoding failures and transforms.
struct Intake<'a> {
    id: &'a str,
    transforms: &'a [Box<dyn Transform>],
    dead_letters: &'a DeadLetters,
    metrics: &'a ComponentMetrics,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// Why a sink stopped before its batch was stored.
enum Stopped {
    /// The shutdown deadline passed: the batch stays uncommitted and is read again next run.
    Abandoned,
    Failed(ConnectorError),
}

impl From<ConnectorError> for Stopped {
    fn from(e: ConnectorError) -> Self {
        Stopped::Failed(e)
    }
}

/// Connecting a sink to its store (its `build`), run inside its task.
pub(super) type SinkBuild =
    futures::future::BoxFuture<'static, Result<Box<dyn Sink>, ConnectorError>>;

/// The sink of a task whose store is not connected yet (see [`SinkTask::connect_and_run`]).
pub(super) struct NotConnected;

#[async_trait::async_trait]
impl Sink for NotConnected {
    async fn put(&mut self, _: &[Arc<Record>]) -> Result<crate::PutOutcome, ConnectorError> {
        Err(ConnectorError::internal("the sink is not connected"))
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Err(ConnectorError::internal("the sink is not connected"))
    }
}

impl SinkTask {
    /// Connects the sink (`build`, which a store that never answers can make last forever) and
    /// runs it. A stop or shutdown meanwhile ends the task at once, with nothing read; a
    /// failed connect fails the task like any later failure, so that with
    /// `on_task_failure: wait_for_restart` it waits for a restart while the rest runs.
    pub async fn connect_and_run(
        mut self,
        build: SinkBuild,
        drain: CancellationToken,
        deadline: Deadline,
    ) -> Result<(), ConnectorError> {
        let built = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            built = build => Some(built),
        };
        match built {
            Some(Ok(sink)) => {
                self.metrics.set_build_failed(false);
                self.sink = sink;
                self.run(drain, deadline).await
            }
            Some(Err(e)) => {
                if self.hold_position_on_failure {
                    self.reader.hold_position();
                }
                self.metrics.set_build_failed(true);
                self.metrics.finish();
                Err(e)
            }
            None => {
                tracing::info!(component = %self.id, "stopped while connecting");
                self.reader.hold_position();
                self.metrics.finish();
                Ok(())
            }
        }
    }

    /// Runs until `drain` is cancelled and the sink has caught up, or until `deadline`.
    pub async fn run(
        mut self,
        drain: CancellationToken,
        deadline: Deadline,
    ) -> Result<(), ConnectorError> {
        let mut flushed = Flushed::default();
        let consumed = match self.consume(&mut flushed, &drain, &deadline).await {
            // What the sink still holds back is made durable and committed before it ends.
            Ok(()) => self.release(&mut flushed, Release::Now, &deadline).await,
            Err(e) => Err(e),
        };
        let result = match consumed {
            Ok(()) => Ok(()),
            Err(Stopped::Abandoned) => {
                tracing::warn!(component = %self.id, "shutdown deadline passed while a batch was being stored; it stays uncommitted and is read again by the next run");
                Ok(())
            }
            Err(Stopped::Failed(e)) => Err(e),
        };
        if result.is_ok() {
            self.commit(&flushed.committed, true, &deadline).await;
        }
        let hold = if result.is_ok() {
            self.stop.is_cancelled()
        } else {
            self.hold_position_on_failure
        };
        if hold {
            self.reader.hold_position();
        }
        self.metrics.finish();
        result
    }

    async fn consume(
        &mut self,
        flushed: &mut Flushed,
        drain: &CancellationToken,
        deadline: &Deadline,
    ) -> Result<(), Stopped> {
        let preparer = self.sink.preparer();
        let pending = &mut Pending::default();
        let mut lag_measured: Option<Instant> = None;
        // The lag being measured, apart from the reading: a slow answer never holds it up.
        // Dropped (aborted) with the loop.
        let mut lag_measure: Option<AbortOnDrop<LagMeasured>> = None;
        // Whether the reader was told the task is paused (told again only on a change).
        let mut reader_paused = false;
        // Since when the sink drains, or its partitions last changed, if later.
        let mut settled_since: Option<Instant> = None;
        loop {
            if lag_measure.as_ref().is_some_and(|m| m.0.is_finished()) {
                if let Some(mut measure) = lag_measure.take() {
                    let measured = (&mut measure.0).await;
                    self.note_lag(measured);
                }
            }
            if lag_measure.is_none() && lag_measured.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                lag_measured = Some(Instant::now());
                lag_measure = Some(AbortOnDrop(tokio::spawn(self.reader.lag())));
            }
            while let Some(change) = self.reader.rebalance() {
                self.rebalance(change, pending, flushed, deadline).await?;
                settled_since = None;
            }
            if self.stop.is_cancelled() {
                if !pending.is_empty() {
                    self.flush(pending, flushed, ReadAheadMode::Off, deadline)
                        .await?;
                }
                self.release(flushed, Release::Now, deadline).await?;
                tracing::info!(component = %self.id, "stopped; what it read is stored");
                return Ok(());
            }
            let draining = drain.is_cancelled();
            let settled = if draining {
                *settled_since.get_or_insert_with(Instant::now)
            } else {
                Instant::now()
            };
            if self.metrics.is_paused() && !draining {
                // What was read is stored; nothing more is read until resumed. A reader that
                // must keep polling to stay in its group (Kafka) pauses its partitions and
                // polls on.
                if !pending.is_empty() {
                    self.flush(pending, flushed, ReadAheadMode::Off, deadline)
                        .await?;
                }
                self.release(flushed, Release::Now, deadline).await?;
                if !reader_paused {
                    self.reader
                        .set_paused(true)
                        .await
                        .map_err(|e| transport_error(&self.id, e))?;
                    reader_paused = true;
                }
                let keep_polling = self.reader.polls_while_paused();
                tokio::select! {
                    _ = self.metrics.unpaused() => {}
                    _ = drain.cancelled() => {}
                    _ = self.stop.cancelled() => {}
                    _ = deadline.passed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)), if !keep_polling => {}
                    polled = self.reader.poll(1, Duration::from_millis(250)), if keep_polling => {
                        polled.map_err(|e| transport_error(&self.id, e))?;
                    }
                }
                continue;
            }
            if reader_paused {
                self.reader
                    .set_paused(false)
                    .await
                    .map_err(|e| transport_error(&self.id, e))?;
                reader_paused = false;
            }
            let room = self
                .batch
                .max_records
                .saturating_sub(pending.records.len())
                .max(1);
            // A writer waiting for what is pending sends nothing more until it is stored.
            let writer_waiting = !pending.is_empty() && self.reader.writer_waiting();
            // A writer blocked on commits held back: if nothing is left to read, they go now.
            let holding_up_writer =
                pending.is_empty() && !flushed.held.is_empty() && self.reader.writer_blocked();
            let wait = match pending.since {
                _ if writer_waiting || holding_up_writer => Duration::ZERO,
                // Input has ended: what is left is there already, and an empty poll leads to
                // the caught-up check.
                None if draining => DRAINING_POLL,
                Some(since) => self.batch.linger.saturating_sub(since.elapsed()),
                None => self.batch.linger.max(Duration::from_millis(100)),
            }
            .min(Duration::from_millis(500));
            // Read ahead while the last batch was being stored: flushed without waiting.
            let read_ahead = pending.records.len() >= self.batch.max_records;
            let incoming = if read_ahead {
                Vec::new()
            } else {
                tokio::select! {
                    biased;
                    _ = deadline.passed() => Vec::new(),
                    _ = drain.cancelled(), if !draining => Vec::new(),
                    _ = self.stop.cancelled() => Vec::new(),
                    polled = self.reader.poll(room, wait) => polled.map_err(|e| transport_error(&self.id, e))?,
                }
            };
            let idle = !read_ahead && incoming.is_empty();
            self.intake().take(incoming, pending)?;
            if idle && pending.is_empty() {
                // Nothing new: offsets held back go once the sink allows (its interval passed,
                // or a writer waits for them).
                self.release(flushed, Release::Idle, deadline).await?;
            }

            let full = pending.records.len() >= self.batch.max_records;
            let lingered = pending
                .since
                .is_some_and(|s| s.elapsed() >= self.batch.linger);
            if deadline.is_passed() {
                if !pending.is_empty() {
                    self.flush(pending, flushed, ReadAheadMode::Off, deadline)
                        .await?;
                }
                self.release(flushed, Release::Now, deadline).await?;
                tracing::warn!(component = %self.id, "shutdown deadline reached; stopping with unread records left for the next run");
                return Ok(());
            }
            if !pending.is_empty() && (full || lingered || (idle && (draining || writer_waiting))) {
                let ahead = ReadAheadMode::On(preparer.as_deref());
                self.flush(pending, flushed, ahead, deadline).await?;
            }
            if draining && idle && pending.is_empty() {
                let caught_up = tokio::select! {
                    _ = deadline.passed() => continue,
                    caught_up = self.reader.caught_up() => caught_up,
                };
                let last_reader = self.reader.owns_every_partition()
                    || self.shutdown.is_cancelled()
                    || settled.elapsed() >= self.group_linger;
                match caught_up {
                    Ok(true) if last_reader => {
                        tracing::info!(component = %self.id, "sink caught up");
                        if !self.shutdown.is_cancelled() {
                            with_retries(
                                &self.id,
                                &mut self.sink,
                                "end of input",
                                |sink, _| Box::pin(async move { sink.end_of_input().await }),
                                &[],
                                deadline,
                            )
                            .await?;
                        }
                        return Ok(());
                    }
                    // Others of the group may still hand over partitions (or die).
                    Ok(true) => {}
                    Ok(false) => {}
                    // The broker may be restarting; keep reading, the next check may pass.
                    Err(e) if e.retryable => {
                        tracing::warn!(component = %self.id, error = %e, "cannot tell whether the sink caught up yet")
                    }
                    Err(e) => return Err(transport_error(&self.id, e).into()),
                }
            }
        }
    }

    /// Completes a change of the partitions the task reads. Before giving partitions up, it
    /// stores and commits everything read so far (without reading ahead), so their next owner
    /// starts where this one stopped; taking partitions, it asks the sink for its state of them.
    async fn rebalance(
        &mut self,
        change: Rebalance,
        pending: &mut Pending,
        flushed: &mut Flushed,
        deadline: &Deadline,
    ) -> Result<(), Stopped> {
        match change {
            Rebalance::Assign(partitions) => {
                let opening = partitions.clone();
                let resume = with_retries(
                    &self.id,
                    &mut self.sink,
                    "open",
                    move |sink, _| {
                        let partitions = opening.clone();
                        Box::pin(async move { sink.open(&partitions).await })
                    },
                    &[],
                    deadline,
                )
                .await?;
                self.reader
                    .assign(&partitions, &resume)
                    .await
                    .map_err(|e| transport_error(&self.id, e))?;
                if !partitions.is_empty() {
                    tracing::info!(component = %self.id, partitions = %list(&partitions), resumed_from_sink = resume.len(), "reading partitions");
                }
            }
            Rebalance::Revoke(partitions) => {
                if !pending.is_empty() {
                    self.flush(pending, flushed, ReadAheadMode::Off, deadline)
                        .await?;
                }
                self.release(flushed, Release::Now, deadline).await?;
                // Committed once more, waiting, and no longer this task's to commit.
                let (handed, kept): (Offsets, Offsets) = std::mem::take(&mut flushed.committed)
                    .into_iter()
                    .partition(|(key, _)| partitions.contains(key));
                flushed.committed = kept;
                self.commit(&handed, true, deadline).await;
                let closing = partitions.clone();
                with_retries(
                    &self.id,
                    &mut self.sink,
                    "close",
                    move |sink, _| {
                        let partitions = closing.clone();
                        Box::pin(async move { sink.close(&partitions).await })
                    },
                    &[],
                    deadline,
                )
                .await?;
                self.reader
                    .revoke(&partitions)
                    .await
                    .map_err(|e| transport_error(&self.id, e))?;
                tracing::info!(component = %self.id, partitions = %list(&partitions), "gave up partitions to another worker, everything read of them stored and committed");
            }
        }
        Ok(())
    }

    /// Measures the consumer lag into the metrics; a failure only leaves the last measure.
    /// Shows what a measure of the lag found.
    fn note_lag(&self, measured: LagResult) {
        match measured {
            Ok(Ok(lag)) => self.metrics.set_lag(
                lag.into_iter()
                    .map(|((topic, partition), lag)| (topic.to_string(), partition, lag))
                    .collect(),
            ),
            Ok(Err(e)) => {
                tracing::debug!(component = %self.id, error = %e, "cannot measure the consumer lag")
            }
            Err(e) => {
                tracing::debug!(component = %self.id, error = %e, "the consumer lag's measure ended")
            }
        }
    }

    fn intake(&self) -> Intake<'_> {
        Intake {
            id: &self.id,
            transforms: &self.transforms,
            dead_letters: &self.dead_letters,
            metrics: &self.metrics,
        }
    }

    /// put → dead letters acknowledged → flush → commit. Past `deadline`, one attempt bounded
    /// by [`Deadline::GRACE`]; a batch not stored by then stays uncommitted. While the batch is
    /// being stored, up to a batch of what follows is read, decoded, transformed and (with a
    /// `preparer`) prepared into `pending`, so that work overlaps the store's round trips
    /// instead of coming between them.
    async fn flush(
        &mut self,
        pending: &mut Pending,
        flushed: &mut Flushed,
        read_ahead: ReadAheadMode<'_>,
        deadline: &Deadline,
    ) -> Result<(), Stopped> {
        let batch = std::mem::take(pending);
        // Stored without reading ahead: the task is about to give up partitions or stop.
        let now = matches!(read_ahead, ReadAheadMode::Off);
        let SinkTask {
            id,
            sink,
            reader,
            transforms,
            batch: batch_config,
            dead_letters,
            metrics,
            ..
        } = self;
        let storing = store(
            id,
            sink,
            dead_letters,
            metrics,
            (batch.records, batch.prepared),
            batch.dead,
            deadline,
        );
        let intake = Intake {
            id,
            transforms,
            dead_letters,
            metrics,
        };
        let (max, preparer) = match read_ahead {
            ReadAheadMode::Off => (0, None),
            ReadAheadMode::On(preparer) => (batch_config.max_records, preparer),
        };
        let ahead = ReadAhead {
            intake: &intake,
            reader: reader.as_mut(),
            max,
            preparer,
        };
        let (stored, ahead_error) = ahead.run(pending, storing).await;
        let (stored, dead_count) = stored?;
        flushed.held.extend(batch.offsets);
        ComponentMetrics::add(&self.metrics.records_out, stored);
        ComponentMetrics::add(&self.metrics.dead_lettered, dead_count);
        let release = if now {
            Release::Now
        } else {
            Release::AfterBatch
        };
        self.release(flushed, release, deadline).await?;
        match ahead_error {
            // The batch is stored and committed; what failed while reading ahead fails the
            // task as it would have when read after it.
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Commits the offsets held back once the sink's [`Sink::pre_commit`] allows it; with `now`
    /// (or while a writer is blocked on these commits) the sink makes its progress durable
    /// first.
    async fn release(
        &mut self,
        flushed: &mut Flushed,
        release: Release,
        deadline: &Deadline,
    ) -> Result<(), Stopped> {
        if flushed.held.is_empty() {
            return Ok(());
        }
        // A writer waiting for these commits gets them at once when nothing else is left to
        // do; with records still to read, not more often than bounds the commits' share of
        // the time, or a writer that is always ahead would have the sink commit every batch.
        let now = match release {
            Release::Now => true,
            Release::Idle => self.reader.writer_blocked(),
            Release::AfterBatch => {
                self.reader.writer_blocked()
                    && self
                        .last_release
                        .is_none_or(|(ended, cost)| ended.elapsed() >= cost * FORCED_COMMIT_SPACING)
            }
        };
        let started = Instant::now();
        let allowed = with_retries(
            &self.id,
            &mut self.sink,
            "pre-commit",
            move |sink, _| Box::pin(sink.pre_commit(now)),
            &[],
            deadline,
        )
        .await?;
        if allowed {
            let held = std::mem::take(&mut flushed.held);
            self.commit(&held, false, deadline).await;
            flushed.committed.extend(held);
            self.last_release = Some((Instant::now(), started.elapsed()));
        }
        Ok(())
    }

    /// Commits `offsets`; `wait` for the last commit of the task. The data is stored already, so
    /// a commit that keeps failing only means reading it again (at-least-once): it is logged.
    async fn commit(&mut self, offsets: &Offsets, wait: bool, deadline: &Deadline) {
        let offsets: Vec<PartitionOffset> = offsets
            .iter()
            .map(|((topic, partition), offset)| PartitionOffset {
                topic: topic.to_string(),
                partition: *partition,
                offset: *offset,
            })
            .collect();
        let mut attempt = 0;
        while !offsets.is_empty() {
            attempt += 1;
            let Some(committed) = bounded(deadline, self.reader.commit(&offsets, wait)).await
            else {
                tracing::warn!(component = %self.id, "shutdown deadline passed before the commit was stored; the next run reads these records again");
                break;
            };
            match committed {
                Ok(()) => {
                    self.metrics.sink_offsets_committed(&offsets);
                    break;
                }
                Err(e) if e.retryable && attempt < 5 => {
                    tracing::warn!(component = %self.id, error = %e, "commit failed; retrying");
                    if bounded(
                        deadline,
                        tokio::time::sleep(Duration::from_millis(200 * attempt)),
                    )
                    .await
                    .is_none()
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(component = %self.id, error = %e, "commit failed; the next commit covers these offsets");
                    break;
                }
            }
        }
    }
}

mod intake;
mod store;
#[cfg(test)]
mod tests;

use intake::{list, ReadAhead, ReadAheadMode};
use store::{bounded, store, with_retries};
