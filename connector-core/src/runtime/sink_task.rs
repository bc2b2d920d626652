//! A sink task: read → transforms → put(batch) → flush → commit consumer offsets.
//!
//! Offsets are committed only after `flush` returned and every dead-letter record of the batch is
//! acknowledged, so whatever is committed is in the store or in the dead-letter topic.

use super::dead_letter::{DeadLetters, Failure};
use super::deadline::Deadline;
use super::{apply_transforms, transport_error};
use crate::config::BatchConfig;
use crate::metrics::ComponentMetrics;
use crate::transport::{Incoming, PartitionOffset, TopicReader, TransportError};
use crate::{ConnectorError, Record, Sink, Transform};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Attempts at a batch whose `put`/`flush` fails with a retryable error, before the task fails.
const MAX_BATCH_ATTEMPTS: u32 = 12;

/// Records per poll while reading ahead: decoding one poll's worth delays the batch being
/// stored by at most that long.
const READ_AHEAD_POLL: usize = 500;

pub(super) struct SinkTask {
    pub id: String,
    pub sink: Box<dyn Sink>,
    pub reader: Box<dyn TopicReader>,
    pub transforms: Vec<Box<dyn Transform>>,
    pub batch: BatchConfig,
    pub dead_letters: DeadLetters,
    pub metrics: Arc<ComponentMetrics>,
}

/// What has been read but not yet committed.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    dead: Vec<Record>,
    /// (topic, partition) → next offset to commit.
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    since: Option<Instant>,
    /// Everything flushed so far, committed once more, waiting, when the task stops.
    flushed: BTreeMap<(Arc<str>, i32), i64>,
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

impl SinkTask {
    /// Runs until `drain` is cancelled and the sink has caught up, or until `deadline`.
    pub async fn run(
        mut self,
        drain: CancellationToken,
        deadline: Deadline,
    ) -> Result<(), ConnectorError> {
        let mut pending = Pending::default();
        let result = match self.consume(&mut pending, &drain, &deadline).await {
            Ok(()) => Ok(()),
            Err(Stopped::Abandoned) => {
                tracing::warn!(component = %self.id, "shutdown deadline passed while a batch was being stored; it stays uncommitted and is read again by the next run");
                Ok(())
            }
            Err(Stopped::Failed(e)) => Err(e),
        };
        if result.is_ok() {
            let flushed = std::mem::take(&mut pending.flushed);
            self.commit(&flushed, true, &deadline).await;
        }
        self.metrics.finish();
        result
    }

    async fn consume(
        &mut self,
        pending: &mut Pending,
        drain: &CancellationToken,
        deadline: &Deadline,
    ) -> Result<(), Stopped> {
        // Read while the last batch was being stored, not yet taken.
        let mut ahead: Vec<Incoming> = Vec::new();
        loop {
            let draining = drain.is_cancelled();
            let room = self
                .batch
                .max_records
                .saturating_sub(pending.records.len())
                .max(1);
            let wait = match pending.since {
                Some(since) => self.batch.linger.saturating_sub(since.elapsed()),
                None => self.batch.linger.max(Duration::from_millis(100)),
            }
            .min(Duration::from_millis(500));
            let incoming = if !ahead.is_empty() {
                std::mem::take(&mut ahead)
            } else {
                tokio::select! {
                    biased;
                    _ = deadline.passed() => Vec::new(),
                    _ = drain.cancelled(), if !draining => Vec::new(),
                    polled = self.reader.poll(room, wait) => polled.map_err(|e| transport_error(&self.id, e))?,
                }
            };
            let idle = incoming.is_empty();
            self.take(incoming, pending)?;

            let full = pending.records.len() >= self.batch.max_records;
            let lingered = pending
                .since
                .is_some_and(|s| s.elapsed() >= self.batch.linger);
            if deadline.is_passed() {
                if !pending.is_empty() {
                    self.flush(pending, &mut ahead, deadline).await?;
                }
                tracing::warn!(component = %self.id, "shutdown deadline reached; stopping with unread records left for the next run");
                return Ok(());
            }
            if !pending.is_empty() && (full || lingered || (draining && idle)) {
                self.flush(pending, &mut ahead, deadline).await?;
            }
            if draining && idle && pending.is_empty() {
                let caught_up = tokio::select! {
                    _ = deadline.passed() => continue,
                    caught_up = self.reader.caught_up() => caught_up,
                };
                match caught_up {
                    Ok(true) => {
                        tracing::info!(component = %self.id, "sink caught up");
                        return Ok(());
                    }
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

    /// Decodes, transforms and queues what was read; bad records become dead letters.
    fn take(&self, incoming: Vec<Incoming>, pending: &mut Pending) -> Result<(), ConnectorError> {
        if incoming.is_empty() {
            return Ok(());
        }
        self.metrics.received(incoming.len());
        pending.since.get_or_insert_with(Instant::now);
        for item in incoming {
            let (topic, partition, offset) = item.coordinates();
            pending
                .offsets
                .insert((topic.clone(), partition), offset + 1);
            match item {
                Incoming::Record(record) if self.transforms.is_empty() => {
                    pending.records.push(record)
                }
                Incoming::Record(record) => {
                    match apply_transforms(&self.transforms, record.clone()) {
                        Ok(out) => {
                            if out.is_empty() {
                                ComponentMetrics::add(&self.metrics.skipped, 1);
                            }
                            pending.records.extend(out);
                        }
                        Err(message) => pending.dead.extend(self.dead_letters.route(Failure {
                            component: &self.id,
                            stage: "transform",
                            message,
                            record,
                            raw: None,
                            location: None,
                        })?),
                    }
                }
                Incoming::Undecodable {
                    envelope,
                    raw,
                    error,
                } => pending.dead.extend(self.dead_letters.route(Failure {
                    component: &self.id,
                    stage: "deserialize",
                    message: error,
                    record: envelope,
                    raw: Some(raw),
                    location: None,
                })?),
            }
        }
        Ok(())
    }

    /// put → dead letters acknowledged → flush → commit. Past `deadline`, one attempt bounded
    /// by [`Deadline::GRACE`]; a batch not stored by then stays uncommitted. While the batch is
    /// being stored, up to a batch of what follows is read (and decoded) into `ahead`, so that
    /// work overlaps the store's round trips instead of waiting for them.
    async fn flush(
        &mut self,
        pending: &mut Pending,
        ahead: &mut Vec<Incoming>,
        deadline: &Deadline,
    ) -> Result<(), Stopped> {
        let batch = std::mem::take(&mut pending.records);
        let dead = std::mem::take(&mut pending.dead);
        let SinkTask {
            id,
            sink,
            reader,
            batch: batch_config,
            dead_letters,
            metrics,
            ..
        } = self;
        let storing = store(id, sink, dead_letters, metrics, batch, dead, deadline);
        let (stored, read_error) =
            while_reading_ahead(reader.as_mut(), batch_config.max_records, ahead, storing).await;
        let (stored, dead_count) = stored?;
        let offsets = std::mem::take(&mut pending.offsets);
        self.commit(&offsets, false, deadline).await;
        pending.flushed.extend(offsets);
        ComponentMetrics::add(&self.metrics.records_out, stored);
        ComponentMetrics::add(&self.metrics.dead_lettered, dead_count);
        pending.since = None;
        match read_error {
            // The batch is stored and committed; the read failure fails the task as a poll's does.
            Some(e) => Err(transport_error(&self.id, e).into()),
            None => Ok(()),
        }
    }

    /// Commits `offsets`; `wait` for the last commit of the task. The data is stored already, so
    /// a commit that keeps failing only means reading it again (at-least-once): it is logged.
    async fn commit(
        &mut self,
        offsets: &BTreeMap<(Arc<str>, i32), i64>,
        wait: bool,
        deadline: &Deadline,
    ) {
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
                Ok(()) => break,
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
    mut batch: Vec<Record>,
    mut dead: Vec<Record>,
    deadline: &Deadline,
) -> Result<(usize, usize), Stopped> {
    let put = !batch.is_empty();
    let mut stored = batch.len();
    if put {
        let outcome = with_retries(
            id,
            sink,
            "put",
            |sink, batch| Box::pin(sink.put(batch)),
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
            let record = batch.swap_remove(index);
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
            Some(result) => result.map_err(|e| transport_error(id, e))?,
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
    Ok((stored, dead_count))
}

/// Runs `work` while reading from `reader` into `ahead`, up to `max` records; stops reading at
/// the first poll that finds nothing (or fails: the error is returned with `work`'s result).
async fn while_reading_ahead<T>(
    reader: &mut dyn TopicReader,
    max: usize,
    ahead: &mut Vec<Incoming>,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<TransportError>) {
    tokio::pin!(work);
    loop {
        // In small polls: the store's task resumes between them.
        let room = max.saturating_sub(ahead.len()).min(READ_AHEAD_POLL);
        if room == 0 {
            return (work.await, None);
        }
        tokio::select! {
            biased;
            done = &mut work => return (done, None),
            polled = reader.poll(room, Duration::from_millis(500)) => match polled {
                Ok(items) if items.is_empty() => return (work.await, None),
                Ok(items) => {
                    ahead.extend(items);
                    // A poll that finds records waiting never suspends: let tasks the store
                    // spawned onto this worker run.
                    tokio::task::yield_now().await;
                }
                Err(e) => return (work.await, Some(e)),
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
        &'a [Record],
    ) -> futures::future::BoxFuture<'a, Result<T, ConnectorError>>,
    batch: &[Record],
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
