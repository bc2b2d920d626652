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

/// Stores one batch: put → dead letters (with the records the sink refused) acknowledged →
/// flush. Returns how many records were stored and how many became dead letters.
async fn store(
    id: &str,
    sink: &mut Box<dyn Sink>,
    dead_letters: &DeadLetters,
    metrics: &ComponentMetrics,
    (mut batch, prepared): (Vec<Arc<Record>>, Option<Prepared>),
    mut dead: Vec<Record>,
    deadline: &Deadline,
) -> Result<(usize, usize), Stopped> {
    let put = !batch.is_empty();
    let mut stored = batch.len();
    let started = Instant::now();
    if put {
        metrics::histogram!("sluice_sink_batch_records", "component" => id.to_string())
            .record(batch.len() as f64);
        // The first attempt uses what was prepared; retries prepare again.
        let prepared = std::sync::Mutex::new(prepared);
        let outcome = with_retries(
            id,
            sink,
            "put",
            |sink, batch| {
                let prepared = prepared.lock().ok().and_then(|mut p| p.take());
                match prepared {
                    Some(prepared) => Box::pin(sink.put_prepared(batch, prepared)),
                    None => Box::pin(sink.put(batch)),
                }
            },
            &batch,
            deadline,
        )
        .await?;
        stored -= outcome.rejected.len() + outcome.skipped;
        ComponentMetrics::add(&metrics.skipped, outcome.skipped);
        for (index, reason) in outcome.rejected.into_iter().rev() {
            if index >= batch.len() {
                return Err(ConnectorError::internal(format!(
                    "sink rejected record #{index} of a batch of {}",
                    batch.len()
                ))
                .in_component(id)
                .into());
            }
            let record = Arc::unwrap_or_clone(batch.swap_remove(index));
            dead.extend(dead_letters.route(Failure {
                component: id,
                stage: "put",
                message: reason,
                record,
                raw: None,
                location: None,
            })?);
        }
    }
    // Dead letters are delivered before the flush: a sink that makes its batch (and its own
    // offsets) durable in `flush` never gets past a record that is nowhere yet.
    let dead_count = dead.len();
    if !dead.is_empty() {
        let delivered = async {
            let delivery = dead_letters.writer.send(dead).await?;
            delivery.await
        };
        match bounded(deadline, delivered).await {
            Some(Ok(())) => {}
            // Past the deadline the dead-letter sink stops too, failing what it did not store:
            // the batch stays uncommitted, as any batch cut short by the deadline.
            Some(Err(e)) if deadline.is_passed() => {
                tracing::warn!(component = %id, error = %e.message, "dead letters were not stored before the shutdown deadline");
                return Err(Stopped::Abandoned);
            }
            Some(Err(e)) => return Err(transport_error(id, e).into()),
            None => return Err(Stopped::Abandoned),
        }
    }
    if put || dead_count > 0 {
        with_retries(
            id,
            sink,
            "flush",
            |sink, _| Box::pin(sink.flush()),
            &[],
            deadline,
        )
        .await?;
    }
    metrics::histogram!("sluice_sink_store_seconds", "component" => id.to_string())
        .record(started.elapsed().as_secs_f64());
    // Freeing a large batch takes a while; the next batch's `put` need not wait for it.
    if batch.len() >= DROP_APART {
        tokio::task::spawn_blocking(move || drop(batch));
    }
    Ok((stored, dead_count))
}

impl Intake<'_> {
    /// Decodes, transforms and queues what was read; bad records become dead letters.
    fn take(&self, incoming: Vec<Incoming>, pending: &mut Pending) -> Result<(), ConnectorError> {
        if incoming.is_empty() {
            return Ok(());
        }
        self.metrics.received(incoming.len());
        pending.since.get_or_insert_with(Instant::now);
        pending.prepared = None;
        for item in incoming {
            let (topic, partition, offset) = item.coordinates();
            pending
                .offsets
                .insert((topic.clone(), partition), offset + 1);
            match item {
                Incoming::Record(record) if self.transforms.is_empty() => {
                    pending.records.push(record)
                }
                Incoming::Record(record) => match apply_transforms(self.transforms, &record) {
                    Ok(out) => {
                        if out.is_empty() {
                            ComponentMetrics::add(&self.metrics.skipped, 1);
                        }
                        pending.records.extend(out.into_iter().map(Arc::new));
                    }
                    Err(message) => pending.dead.extend(self.dead_letters.route(Failure {
                        component: self.id,
                        stage: "transform",
                        message,
                        record: Arc::unwrap_or_clone(record),
                        raw: None,
                        location: None,
                    })?),
                },
                Incoming::Undecodable {
                    envelope,
                    raw,
                    error,
                } => pending.dead.extend(self.dead_letters.route(Failure {
                    component: self.id,
                    stage: "deserialize",
                    message: error,
                    record: *envelope,
                    raw: Some(raw),
                    location: None,
                })?),
            }
        }
        Ok(())
    }
}

/// Whether [`SinkTask::flush`] reads the next batch while it stores one.
enum ReadAheadMode<'a> {
    /// Nothing more is read meanwhile (the partitions are about to be given up, or the
    /// deadline has passed).
    Off,
    /// Read ahead, and prepare what was read with the sink's preparer if it has one.
    On(Option<&'a dyn PrepareBatch>),
}

/// `topic/partition` list for logs.
fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(|(topic, partition)| format!("{topic}/{partition}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reading the next batch while the current one is being stored.
struct ReadAhead<'a> {
    intake: &'a Intake<'a>,
    reader: &'a mut dyn TopicReader,
    /// Records to read at most: a batch.
    max: usize,
    preparer: Option<&'a dyn PrepareBatch>,
}

impl ReadAhead<'_> {
    /// Runs `work` while reading into `next`, up to `max` records, and preparing them once
    /// that many were read; stops reading at the first poll that finds nothing, or at a
    /// failure, returned with `work`'s result.
    async fn run<T>(
        self,
        next: &mut Pending,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Option<ConnectorError>) {
        tokio::pin!(work);
        let mut read = 0;
        loop {
            // In small polls: the store's task resumes between them.
            let room = self.max.saturating_sub(read).min(READ_AHEAD_POLL);
            if room == 0 {
                if let Some(preparer) = self.preparer.filter(|_| !next.records.is_empty()) {
                    next.prepared = Some(preparer.prepare(&next.records));
                }
                return (work.await, None);
            }
            tokio::select! {
                biased;
                done = &mut work => return (done, None),
                polled = self.reader.poll(room, Duration::from_millis(500)) => match polled {
                    Ok(items) if items.is_empty() => return (work.await, None),
                    Ok(items) => {
                        read += items.len();
                        if let Err(e) = self.intake.take(items, next) {
                            return (work.await, Some(e));
                        }
                        // A poll that finds records waiting never suspends: let tasks the
                        // store spawned onto this worker run.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => return (work.await, Some(transport_error(self.intake.id, e))),
                }
            }
        }
    }
}

/// Runs `op` until it succeeds, retrying retryable errors with backoff, each attempt and each
/// wait bounded by `deadline`.
async fn with_retries<T>(
    id: &str,
    sink: &mut Box<dyn Sink>,
    what: &str,
    op: impl for<'a> Fn(
        &'a mut Box<dyn Sink>,
        &'a [Arc<Record>],
    ) -> futures::future::BoxFuture<'a, Result<T, ConnectorError>>,
    batch: &[Arc<Record>],
    deadline: &Deadline,
) -> Result<T, Stopped> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(result) = bounded(deadline, op(sink, batch)).await else {
            return Err(Stopped::Abandoned);
        };
        match result {
            Ok(value) => return Ok(value),
            Err(e) if e.retryable && attempt < MAX_BATCH_ATTEMPTS && !deadline.is_passed() => {
                metrics::counter!("sluice_retries_total", "component" => id.to_string(), "operation" => what.to_string())
                    .increment(1);
                tracing::warn!(component = %id, attempt, error = %e.message, "{what} failed; retrying in {backoff:?}");
                if bounded(deadline, tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return Err(Stopped::Abandoned);
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) if deadline.is_passed() => {
                tracing::warn!(component = %id, error = %e.message, "{what} failed after the shutdown deadline");
                return Err(Stopped::Abandoned);
            }
            Err(e) => return Err(e.in_component(id).into()),
        }
    }
}

/// `work`, or `None` once `deadline` has passed; past it already, `work` gets [`Deadline::GRACE`].
async fn bounded<T>(deadline: &Deadline, work: impl std::future::Future<Output = T>) -> Option<T> {
    if deadline.is_passed() {
        return tokio::time::timeout(Deadline::GRACE, work).await.ok();
    }
    tokio::select! {
        biased;
        value = work => Some(value),
        _ = deadline.passed() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ErrorsConfig;
    use crate::transport::embedded::EmbeddedTransport;
    use crate::transport::Transport;
    use crate::PutOutcome;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Serves `records`, at most `max` per poll, as a topic that then stays idle; a member of a
    /// group that owns some partitions only unless `owns_all`.
    struct Scripted {
        records: VecDeque<Record>,
        owns_all: bool,
        /// Every commit, as (partition, offset) pairs.
        commits: Commits,
        /// Whether a writer of the topic always waits for this reader's commits.
        writer_blocked: bool,
        /// Whether measuring the lag never answers (a broker that does not answer).
        lag_hangs: bool,
    }

    type Commits = Arc<Mutex<Vec<Vec<(i32, i64)>>>>;

    #[async_trait::async_trait]
    impl TopicReader for Scripted {
        async fn poll(
            &mut self,
            max: usize,
            wait: Duration,
        ) -> Result<Vec<Incoming>, crate::transport::TransportError> {
            if self.records.is_empty() {
                tokio::time::sleep(wait.min(Duration::from_millis(5))).await;
            }
            let n = max.min(self.records.len());
            Ok(self
                .records
                .drain(..n)
                .map(|r| Incoming::Record(Arc::new(r)))
                .collect())
        }
        async fn commit(
            &mut self,
            offsets: &[PartitionOffset],
            _: bool,
        ) -> Result<(), crate::transport::TransportError> {
            let offsets = offsets.iter().map(|o| (o.partition, o.offset)).collect();
            self.commits.lock().unwrap().push(offsets);
            Ok(())
        }
        async fn caught_up(&mut self) -> Result<bool, crate::transport::TransportError> {
            Ok(self.records.is_empty())
        }
        fn lag(&mut self) -> crate::transport::LagMeasure {
            if self.lag_hangs {
                return Box::pin(std::future::pending());
            }
            let lag = vec![(("t".into(), 0), self.records.len() as i64)];
            Box::pin(std::future::ready(Ok(lag)))
        }
        fn rebalance(&mut self) -> Option<Rebalance> {
            None
        }
        fn owns_every_partition(&self) -> bool {
            self.owns_all
        }
        fn writer_blocked(&self) -> bool {
            self.writer_blocked
        }
        async fn assign(
            &mut self,
            _: &[TopicPartition],
            _: &[PartitionOffset],
        ) -> Result<(), crate::transport::TransportError> {
            Ok(())
        }
        async fn revoke(
            &mut self,
            _: &[TopicPartition],
        ) -> Result<(), crate::transport::TransportError> {
            Ok(())
        }
    }

    /// A task of `sink` reading `reader`, in batches of 10 at most `linger` old.
    fn task_of(
        sink: Box<dyn Sink>,
        reader: Box<dyn TopicReader>,
        linger: Duration,
        group_linger: Duration,
    ) -> SinkTask {
        let transport = EmbeddedTransport::new(10, std::env::temp_dir());
        SinkTask {
            id: "sink".into(),
            sink,
            reader,
            transforms: Vec::new(),
            batch: BatchConfig {
                max_records: 10,
                linger,
            },
            dead_letters: DeadLetters::new(ErrorsConfig::default(), transport.writer()),
            metrics: ComponentMetrics::new("sink", "sink"),
            group_linger,
            shutdown: CancellationToken::new(),
            stop: CancellationToken::new(),
            hold_position_on_failure: false,
            last_release: None,
        }
    }

    /// Records at offsets 0..n of topic `t`, each holding its offset.
    fn topic_t(n: i64) -> VecDeque<Record> {
        (0..n)
            .map(|offset| {
                let mut record = Record::new(serde_json::json!(offset));
                record.topic = "t".into();
                record.offset = offset;
                record
            })
            .collect()
    }

    /// Runs `task` with its input ended, until it stops (within 10 s).
    async fn run_to_end(task: SinkTask) {
        let drain = CancellationToken::new();
        drain.cancel();
        let deadline = Deadline::after(&CancellationToken::new(), Duration::from_secs(10));
        tokio::time::timeout(Duration::from_secs(10), task.run(drain, deadline.clone()))
            .await
            .expect("the task stops once caught up")
            .expect("the task succeeds");
        deadline.expire();
    }

    /// Prepares a batch as the offsets of its records.
    struct Offsets;

    impl PrepareBatch for Offsets {
        fn prepare(&self, batch: &[Arc<Record>]) -> Prepared {
            Box::new(batch.iter().map(|r| r.offset).collect::<Vec<_>>())
        }
    }

    /// Each `put`: the batch's offsets, and the offsets it was prepared as (if it was).
    type Puts = Arc<Mutex<Vec<(Vec<i64>, Option<Vec<i64>>)>>>;

    struct Slow {
        puts: Puts,
    }

    #[async_trait::async_trait]
    impl Sink for Slow {
        async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
            self.put_prepared(batch, Box::new(())).await
        }
        fn preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
            Some(Arc::new(Offsets))
        }
        async fn put_prepared(
            &mut self,
            batch: &[Arc<Record>],
            prepared: Prepared,
        ) -> Result<PutOutcome, ConnectorError> {
            // Long enough for the next batch to be read meanwhile.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let offsets = batch.iter().map(|r| r.offset).collect();
            let prepared = prepared.downcast::<Vec<i64>>().ok().map(|p| *p);
            self.puts.lock().unwrap().push((offsets, prepared));
            Ok(PutOutcome::default())
        }
        async fn flush(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    /// Batches read while the one before is stored are prepared then, and given to the sink with
    /// what was prepared of exactly them; a batch that grows after is prepared by `put` itself.
    #[tokio::test]
    async fn full_batches_read_ahead_reach_the_sink_with_what_was_prepared_of_them() {
        let records = topic_t(25);
        let puts = Puts::default();
        let task = task_of(
            Box::new(Slow { puts: puts.clone() }),
            Box::new(Scripted {
                records,
                owns_all: true,
                commits: Commits::default(),
                writer_blocked: false,
                lag_hangs: false,
            }),
            Duration::from_millis(50),
            Duration::ZERO,
        );
        run_to_end(task).await;
        let puts = puts.lock().unwrap().clone();
        let stored: Vec<i64> = puts.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(
            stored,
            (0..25).collect::<Vec<_>>(),
            "every record once, in order"
        );
        let batches: Vec<Vec<i64>> = puts.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        // The first batch is read before anything is stored; the second while the first is
        // stored, prepared; the last is not full when reading ahead stops.
        assert_eq!(puts[0].1, None);
        assert_eq!(puts[1].1.as_ref(), Some(&puts[1].0));
        assert_eq!(puts[2].1, None);
    }

    /// Measuring the lag (watermark requests to the broker) is off the sink's loop: a
    /// measure that never answers holds up neither the records nor the end of the task.
    #[tokio::test]
    async fn a_lag_measure_that_never_answers_holds_nothing_up() {
        let puts = Puts::default();
        let task = task_of(
            Box::new(Slow { puts: puts.clone() }),
            Box::new(Scripted {
                records: topic_t(25),
                owns_all: true,
                commits: Commits::default(),
                writer_blocked: false,
                lag_hangs: true,
            }),
            Duration::from_millis(50),
            Duration::ZERO,
        );
        run_to_end(task).await;
        let stored: usize = puts.lock().unwrap().iter().map(|(b, _)| b.len()).sum();
        assert_eq!(stored, 25);
    }

    /// A sink whose input ends stops as soon as it has caught up, not after a poll's wait:
    /// every `--once` run and every drain waits on it.
    #[tokio::test(start_paused = true)]
    async fn a_draining_sink_ends_once_caught_up_without_waiting_out_a_poll() {
        let transport = EmbeddedTransport::new(10, std::env::temp_dir());
        let reader = transport
            .reader("g", &["t".to_string()])
            .await
            .expect("an embedded reader");
        let task = task_of(
            Box::new(Slow {
                puts: Puts::default(),
            }),
            reader,
            Duration::from_secs(5),
            Duration::ZERO,
        );
        let drain = CancellationToken::new();
        let deadline = Deadline::after(&CancellationToken::new(), Duration::from_secs(60));
        let running = tokio::spawn(task.run(drain.clone(), deadline.clone()));
        tokio::time::sleep(Duration::from_millis(1_234)).await;
        let drained_at = tokio::time::Instant::now();
        drain.cancel();
        running.await.unwrap().unwrap();
        deadline.expire();
        let took = drained_at.elapsed();
        assert!(
            took < Duration::from_millis(50),
            "ended {took:?} after draining began"
        );
    }

    /// Commits only when told to: what a stream transform does between checkpoints.
    struct Holding {
        pre_commits: Arc<Mutex<Vec<bool>>>,
        /// How long a commit it allows takes (a checkpoint).
        cost: Duration,
    }

    #[async_trait::async_trait]
    impl Sink for Holding {
        async fn put(&mut self, _: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
            Ok(PutOutcome::default())
        }
        async fn flush(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }
        async fn pre_commit(&mut self, now: bool) -> Result<bool, ConnectorError> {
            self.pre_commits.lock().unwrap().push(now);
            if now {
                tokio::time::sleep(self.cost).await;
            }
            Ok(now)
        }
    }

    /// Offsets a sink's `pre_commit` holds back stay uncommitted, batch after batch, and are
    /// committed, all of them, once the sink allows it (here when the task ends).
    #[tokio::test]
    async fn offsets_held_back_by_the_sink_are_committed_once_it_allows() {
        let records = topic_t(25);
        let commits = Commits::default();
        let pre_commits = Arc::new(Mutex::new(Vec::new()));
        let task = task_of(
            Box::new(Holding {
                pre_commits: pre_commits.clone(),
                cost: Duration::ZERO,
            }),
            Box::new(Scripted {
                records,
                owns_all: true,
                commits: commits.clone(),
                writer_blocked: false,
                lag_hangs: false,
            }),
            Duration::from_millis(50),
            Duration::ZERO,
        );
        run_to_end(task).await;
        let asked = pre_commits.lock().unwrap().clone();
        assert!(
            asked.iter().filter(|now| !**now).count() >= 3,
            "asked after each of the three batches: {asked:?}"
        );
        assert_eq!(asked.last(), Some(&true), "told to commit at the end");
        let commits = commits.lock().unwrap().clone();
        assert_eq!(
            commits.first(),
            Some(&vec![(-1, 25)]),
            "nothing committed before the sink allowed it, then everything: {commits:?}"
        );
    }

    /// Refuses every record for its content: each becomes a dead letter.
    struct Refusing;

    #[async_trait::async_trait]
    impl Sink for Refusing {
        async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
            Ok(PutOutcome {
                rejected: (0..batch.len()).map(|i| (i, "refused".into())).collect(),
                skipped: 0,
            })
        }
        async fn flush(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    /// At the shutdown deadline the dead-letter sink stops too, failing the delivery of dead
    /// letters it had not stored. A sink waiting for them then stops like any sink at the
    /// deadline (its batch uncommitted, read again next run); it does not fail the pipeline.
    #[tokio::test]
    async fn dead_letters_left_unstored_at_the_deadline_leave_the_batch_uncommitted() {
        let transport = EmbeddedTransport::new(10, std::env::temp_dir());
        let mut dead_letter_reader = transport
            .reader("dead-letter-sink", &["dlq".to_string()])
            .await
            .expect("an embedded reader");
        let commits = Commits::default();
        let mut task = task_of(
            Box::new(Refusing),
            Box::new(Scripted {
                records: topic_t(3),
                owns_all: true,
                commits: commits.clone(),
                writer_blocked: false,
                lag_hangs: false,
            }),
            Duration::from_millis(10),
            Duration::ZERO,
        );
        task.dead_letters = DeadLetters::new(
            ErrorsConfig {
                tolerance: crate::config::Tolerance::All,
                dead_letter_topic: Some("dlq".into()),
                ..ErrorsConfig::default()
            },
            transport.writer(),
        );
        let deadline = Deadline::after(&CancellationToken::new(), Duration::from_secs(60));
        let running = tokio::spawn(task.run(CancellationToken::new(), deadline.clone()));
        let mut dead = 0;
        while dead < 3 {
            dead += tokio::time::timeout(
                Duration::from_secs(10),
                dead_letter_reader.poll(10, Duration::from_millis(100)),
            )
            .await
            .expect("the dead letters arrive")
            .expect("a poll")
            .len();
        }
        // The deadline passes and the dead-letter sink stops, unstored, before the task runs on.
        deadline.expire();
        drop(dead_letter_reader);
        let result = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the task stops at the deadline")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(
            commits.lock().unwrap().iter().all(|c| c.is_empty()),
            "nothing committed: {:?}",
            commits.lock().unwrap()
        );
    }

    /// A writer always waiting for the commits a sink holds back (a source always ahead of a
    /// stream transform) does not make it commit after every batch: such commits are spaced by
    /// what they cost, and the rest wait until nothing is left to read, then go at once.
    #[tokio::test]
    async fn a_writer_always_waiting_gets_commits_spaced_by_their_cost() {
        let commits = Commits::default();
        let pre_commits = Arc::new(Mutex::new(Vec::new()));
        let task = task_of(
            Box::new(Holding {
                pre_commits: pre_commits.clone(),
                cost: Duration::from_millis(200),
            }),
            Box::new(Scripted {
                records: topic_t(200),
                owns_all: true,
                commits: commits.clone(),
                writer_blocked: true,
                lag_hangs: false,
            }),
            Duration::from_millis(50),
            Duration::ZERO,
        );
        run_to_end(task).await;
        let asked = pre_commits.lock().unwrap().clone();
        let forced = asked.iter().filter(|now| **now).count();
        // 20 batches: the first forces a commit, the next ones come well within 4 × 200 ms of
        // it and wait, until the input runs dry; then the end of the task.
        assert!(asked.len() >= 20, "asked after each batch: {asked:?}");
        assert!(forced <= 3, "{forced} forced commits: {asked:?}");
        let commits = commits.lock().unwrap().clone();
        assert_eq!(commits.last(), Some(&vec![(-1, 200)]), "{commits:?}");
    }

    /// A sink of a group that does not own every partition reads on for `group_linger` after
    /// it starts draining, however long it ran before (a dead worker's partitions may come).
    #[tokio::test]
    async fn a_group_sink_lingers_after_draining_starts_not_after_it_started() {
        let puts = Puts::default();
        let task = task_of(
            Box::new(Slow { puts }),
            Box::new(Scripted {
                records: VecDeque::new(),
                owns_all: false,
                commits: Commits::default(),
                writer_blocked: false,
                lag_hangs: false,
            }),
            Duration::from_millis(50),
            Duration::from_millis(400),
        );
        let drain = CancellationToken::new();
        let deadline = Deadline::after(&CancellationToken::new(), Duration::from_secs(10));
        let running = tokio::spawn(task.run(drain.clone(), deadline.clone()));
        // Longer than the linger before the sources finish.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let drained_at = Instant::now();
        drain.cancel();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the task stops after its linger")
            .unwrap()
            .unwrap();
        deadline.expire();
        let lingered = drained_at.elapsed();
        assert!(
            lingered >= Duration::from_millis(400),
            "ended {lingered:?} after draining began"
        );
    }
}
