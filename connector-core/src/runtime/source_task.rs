//! A source task: poll → transforms → send → acknowledge in order → store source offsets.
//!
//! Batches are sent as they come and acknowledged strictly in order by a second task, so a
//! source offset is stored only when everything before it is delivered. Offsets are written by a
//! third task that always stores the latest acknowledged position (coalescing when storage is
//! slower than the source).

use super::dead_letter::{DeadLetters, Failure};
use super::deadline::Deadline;
use super::{apply_transforms, transport_error};
use crate::exactly_once::{self, Position};
use crate::metrics::ComponentMetrics;
use crate::transport::{Delivery, OffsetStore, TopicWriter};
use crate::{ConnectorError, Payload, Record, Source, Transform};
use futures::FutureExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub(super) struct SourceTask {
    pub id: String,
    pub source: Box<dyn Source>,
    pub topic: Arc<str>,
    pub batch_size: usize,
    /// Batches sent but not yet acknowledged: bounds memory and duplicates after a crash.
    pub max_in_flight_batches: usize,
    pub transforms: Vec<Box<dyn Transform>>,
    pub writer: Arc<dyn TopicWriter>,
    pub offsets: Arc<dyn OffsetStore>,
    /// Least time between two stores of the offsets.
    pub offsets_store_interval: Duration,
    pub dead_letters: DeadLetters,
    pub metrics: Arc<ComponentMetrics>,
    /// With `exactly_once`: how records are numbered.
    pub numbering: Option<Numbering>,
    /// The last batch whose stored offsets the source was told of ([`Source::commit`]).
    pub committed_batch: u64,
}

/// What the offset writer stored last: through which batch, and the offsets.
#[derive(Debug, Clone, Default)]
struct Stored {
    batch: u64,
    offsets: HashMap<String, Value>,
}

/// Stamps records with their source partition and position (see [`crate::exactly_once`]).
pub(super) struct Numbering {
    pipeline: String,
    /// The last source partition seen and its name in the header: consecutive items mostly
    /// share it.
    last: Option<(Arc<str>, String)>,
}

impl Numbering {
    pub(super) fn new(pipeline: &str) -> Self {
        Numbering {
            pipeline: pipeline.to_string(),
            last: None,
        }
    }

    /// Stamps `records`, all made from the item at `position` of `partition`.
    fn stamp(
        &mut self,
        component: &str,
        partition: &Arc<str>,
        position: Option<u64>,
        records: &mut [Record],
    ) -> Result<(), ConnectorError> {
        if records.is_empty() {
            return Ok(());
        }
        let Some(input) = position else {
            return Err(ConnectorError::user(
                "this source does not number its records, so it cannot run with `exactly_once` (set `exactly_once: false` on it)",
            )
            .with_field("exactly_once")
            .in_component(component));
        };
        let name = match &self.last {
            Some((last, name)) if Arc::ptr_eq(last, partition) || last == partition => name,
            _ => {
                let name = exactly_once::source_name(&self.pipeline, component, partition);
                &self.last.insert((partition.clone(), name)).1
            }
        };
        for (index, record) in records.iter_mut().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            exactly_once::stamp(record, name, Position { input, index });
        }
        Ok(())
    }
}

struct Sent {
    delivery: Delivery,
    /// Source partition → offset after the last item of the batch.
    offsets: HashMap<String, Value>,
    records: usize,
    /// The batch ends with a [`Payload::Checkpoint`]: its offsets are stored at once, and
    /// nothing more is sent until they are.
    checkpoint: bool,
}

/// The offsets acknowledged so far: those of every batch through the `batch`-th.
#[derive(Default, Clone)]
struct Acknowledged {
    batch: u64,
    offsets: HashMap<String, Value>,
    /// A batch ending with a checkpoint is among them: store without waiting the interval.
    checkpoint: bool,
}

impl SourceTask {
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        deadline: Deadline,
    ) -> Result<(), ConnectorError> {
        // Cancelled when the acknowledger or the offset writer fails: producing more would only
        // send records whose offsets are never stored.
        let failed = CancellationToken::new();
        let (sent_tx, sent_rx) = mpsc::channel::<Sent>(self.max_in_flight_batches);
        let (acked_tx, acked_rx) = watch::channel(Acknowledged::default());
        // The last batch whose offsets are stored, and those offsets.
        let (stored_tx, mut stored_rx) = watch::channel(Stored::default());
        // Cancelled once the acknowledger is done: the offset writer stores the last offsets
        // without waiting out its interval.
        let acknowledged_all = CancellationToken::new();
        let acker = tokio::spawn({
            let acknowledged_all = acknowledged_all.clone();
            let acknowledging = cancel_on_error(
                failed.clone(),
                acknowledge(
                    sent_rx,
                    acked_tx,
                    self.metrics.clone(),
                    shutdown.clone(),
                    deadline.clone(),
                    failed.clone(),
                ),
            );
            async move {
                let result = acknowledging.await;
                acknowledged_all.cancel();
                result
            }
        });
        let committer = tokio::spawn(cancel_on_error(
            failed.clone(),
            store_offsets(
                acked_rx,
                stored_tx,
                self.offsets.clone(),
                self.metrics.clone(),
                deadline.clone(),
                (self.offsets_store_interval, acknowledged_all),
            ),
        ));

        let produced = self
            .produce(&shutdown, &deadline, &failed, sent_tx, &mut stored_rx)
            .await;
        // Nothing more to send: readers that hold their commits back commit now.
        let _blocked = self.writer.blocked_on(std::slice::from_ref(&self.topic));
        let acked = acker
            .await
            .map_err(|e| ConnectorError::internal(format!("acknowledger panicked: {e}")));
        let stored = committer
            .await
            .map_err(|e| ConnectorError::internal(format!("offset writer panicked: {e}")));
        // What was stored last, the source is told of before it is dropped.
        let told = self.tell_committed(&stored_rx).await;
        self.metrics.finish();
        // The offset writer's failure first: it is why the others stopped.
        stored??;
        acked??;
        produced?;
        told
    }

    /// Tells the source of offsets stored since it was last told ([`Source::commit`]).
    async fn tell_committed(
        &mut self,
        stored: &watch::Receiver<Stored>,
    ) -> Result<(), ConnectorError> {
        let latest = stored.borrow().clone();
        if latest.batch <= self.committed_batch {
            return Ok(());
        }
        self.committed_batch = latest.batch;
        self.source
            .commit(&latest.offsets)
            .await
            .map_err(|e| e.in_component(&self.id))
    }

    async fn produce(
        &mut self,
        shutdown: &CancellationToken,
        deadline: &Deadline,
        failed: &CancellationToken,
        sent: mpsc::Sender<Sent>,
        stored: &mut watch::Receiver<Stored>,
    ) -> Result<(), ConnectorError> {
        // Batches handed to the acknowledger so far.
        let mut batches = 0u64;
        // At a stop: what the source handed over when drained, sent as the last batch.
        let mut drained: Option<Vec<crate::SourceRecord>> = None;
        loop {
            let (items, stopping, last_batch) = match drained.take() {
                Some(items) => (items, true, true),
                None => {
                    if self.metrics.is_paused() {
                        tracing::info!(component = %self.id, "paused");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = failed.cancelled() => return Ok(()),
                            _ = self.metrics.unpaused() => tracing::info!(component = %self.id, "resumed"),
                        }
                    }
                    self.tell_committed(stored).await?;
                    // On a stop, a poll that already holds its answer (an API's response that
                    // has arrived) still hands it over: what a live API answered cannot be
                    // asked again. It gets `STOP_GRACE` to do so; one still waiting is dropped.
                    // Then the source hands over what it holds (`drain`).
                    let mut stopping = false;
                    // A source that acknowledges its producers hears of stored offsets while
                    // its poll waits: the poll (cancel-safe) is dropped, `commit` called, and
                    // the source polled again.
                    let prompt = self.source.acknowledges_producers();
                    let told = self.committed_batch;
                    let mut interrupted = false;
                    let polled = {
                        let poll = self.source.poll(self.batch_size);
                        tokio::pin!(poll);
                        tokio::select! {
                            biased;
                            _ = failed.cancelled() => return Ok(()),
                            _ = shutdown.cancelled() => {
                                stopping = true;
                                let grace = tokio::time::timeout(STOP_GRACE, &mut poll);
                                tokio::select! {
                                    _ = deadline.passed() => return Ok(()),
                                    polled = grace => polled.ok(),
                                }
                            }
                            // (The offset writer gone: only a failure, handled above, ends it.)
                            _ = async {
                                if stored.wait_for(|s| s.batch > told).await.is_err() {
                                    std::future::pending::<()>().await;
                                }
                            }, if prompt => {
                                interrupted = true;
                                None
                            }
                            polled = &mut poll => Some(polled),
                        }
                    };
                    if interrupted {
                        continue;
                    }
                    let Some(polled) = polled else {
                        drained = Some(self.drain(deadline).await?);
                        continue;
                    };
                    let Some(items) = polled.map_err(|e| e.in_component(&self.id))? else {
                        self.metrics.set_completed();
                        tracing::info!(component = %self.id, "source finished");
                        return Ok(());
                    };
                    (items, stopping, false)
                }
            };
            if items.is_empty() {
                if last_batch {
                    return Ok(());
                }
                if stopping {
                    drained = Some(self.drain(deadline).await?);
                }
                continue;
            }
            let checkpoint = items
                .last()
                .is_some_and(|item| matches!(item.payload, Payload::Checkpoint));
            // A checkpoint is not input.
            self.metrics.received(items.len() - usize::from(checkpoint));
            self.metrics.polled();
            if let Some(progress) = self.source.progress() {
                self.metrics.set_progress(progress);
            }
            let mut records = Vec::with_capacity(items.len());
            let mut offsets = HashMap::new();
            // Consecutive items mostly share a partition: one map insert per run of them.
            let mut last: Option<(std::sync::Arc<str>, Value)> = None;
            // Records read from a source never come from the dead-letter topic, so every
            // failure below becomes one dead letter.
            let mut dead = 0;
            for item in items {
                let made_from = records.len();
                match item.payload {
                    Payload::Record(mut record) if self.transforms.is_empty() => {
                        record.topic.clone_from(&self.topic);
                        records.push(record);
                    }
                    Payload::Record(mut record) => {
                        // The source's topic, set before the transforms: a `route` among them
                        // may change it.
                        record.topic.clone_from(&self.topic);
                        record.decode_value().map_err(|e| {
                            ConnectorError::internal(format!(
                                "the source wrote a value that is not JSON: {e}"
                            ))
                            .in_component(&self.id)
                        })?;
                        match apply_transforms(&self.transforms, &record) {
                            Ok(out) if out.is_empty() => {
                                ComponentMetrics::add(&self.metrics.skipped, 1)
                            }
                            Ok(out) => records.extend(out),
                            Err(message) => {
                                records.extend(self.dead_letters.route(Failure {
                                    component: &self.id,
                                    stage: "transform",
                                    message,
                                    record,
                                    raw: None,
                                    location: Some(item.partition.to_string()),
                                })?);
                                dead += 1;
                            }
                        }
                    }
                    Payload::Skipped { reason } => {
                        tracing::debug!(component = %self.id, %reason, "skipped input");
                        ComponentMetrics::add(&self.metrics.skipped, 1);
                    }
                    Payload::Checkpoint => {}
                    Payload::Bad(bad) => {
                        let mut record = Record::new(Value::Null);
                        record.key = bad.key;
                        record.timestamp = bad.timestamp;
                        records.extend(self.dead_letters.route(Failure {
                            component: &self.id,
                            stage: "source",
                            message: bad.message,
                            record,
                            raw: Some(bad.raw),
                            location: Some(bad.location),
                        })?);
                        dead += 1;
                    }
                }
                if let Some(numbering) = &mut self.numbering {
                    numbering.stamp(
                        &self.id,
                        &item.partition,
                        item.position,
                        &mut records[made_from..],
                    )?;
                }
                match &mut last {
                    Some((partition, offset)) if *partition == item.partition => {
                        *offset = item.offset
                    }
                    _ => {
                        if let Some((partition, offset)) =
                            last.replace((item.partition, item.offset))
                        {
                            offsets.insert(partition.to_string(), offset);
                        }
                    }
                }
            }
            if let Some((partition, offset)) = last {
                offsets.insert(partition.to_string(), offset);
            }
            let mut count = records.len() - dead;
            let (delivery, refused) = tokio::select! {
                _ = deadline.passed() => return Ok(()),
                _ = failed.cancelled() => return Ok(()),
                d = self.writer.send_or_refuse(records) => d.map_err(|e| transport_error(&self.id, e))?,
            };
            // Records larger than the topic takes: bad records, dead-lettered with a readable
            // start of their value (the whole would be refused again) and their size.
            let delivery = if refused.is_empty() {
                delivery
            } else {
                count -= refused.len();
                dead += refused.len();
                let mut letters = Vec::with_capacity(refused.len());
                for (mut record, message) in refused {
                    shrink_value(&mut record, OVERSIZED_VALUE_KEPT);
                    letters.extend(self.dead_letters.route(Failure {
                        component: &self.id,
                        stage: "produce",
                        message,
                        record,
                        raw: None,
                        location: None,
                    })?);
                }
                let letters = tokio::select! {
                    _ = deadline.passed() => return Ok(()),
                    d = self.writer.send(letters) => d.map_err(|e| transport_error(&self.id, e))?,
                };
                async move {
                    delivery.await?;
                    letters.await
                }
                .boxed()
            };
            ComponentMetrics::add(&self.metrics.dead_lettered, dead);
            let batch = Sent {
                delivery,
                offsets,
                records: count,
                checkpoint,
            };
            // With every batch in flight unacknowledged, this waits for the oldest: readers
            // that hold their commits back (stream transforms between checkpoints) commit now.
            let _blocked = (sent.capacity() == 0)
                .then(|| self.writer.blocked_on(std::slice::from_ref(&self.topic)));
            // Stops when the acknowledger did; its error is reported by `run`.
            tokio::select! {
                _ = deadline.passed() => return Ok(()),
                _ = failed.cancelled() => return Ok(()),
                sent = sent.send(batch) => if sent.is_err() { return Ok(()) },
            }
            batches += 1;
            if last_batch {
                return Ok(());
            }
            if stopping {
                drained = Some(self.drain(deadline).await?);
                continue;
            }
            if checkpoint {
                // What comes next is numbered as the checkpoint says: it is stored first.
                // Meanwhile readers that hold their commits back commit now.
                let _blocked = self.writer.blocked_on(std::slice::from_ref(&self.topic));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = failed.cancelled() => return Ok(()),
                    waited = stored.wait_for(|stored| stored.batch >= batches) => {
                        if waited.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

impl SourceTask {
    /// At a stop, once no poll runs: what the source holds ([`Source::drain`]); nothing when
    /// the shutdown deadline passes first.
    async fn drain(
        &mut self,
        deadline: &Deadline,
    ) -> Result<Vec<crate::SourceRecord>, ConnectorError> {
        tokio::select! {
            _ = deadline.passed() => Ok(Vec::new()),
            drained = self.source.drain() => drained.map_err(|e| e.in_component(&self.id)),
        }
    }
}

/// How long a stopping source's poll in progress may take to hand over what it holds.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Bytes of an oversized record's value kept in its dead letter.
const OVERSIZED_VALUE_KEPT: usize = 1024;

/// Replaces the value of `record` by its first `keep` bytes of JSON text, as a string, when
/// it is longer.
fn shrink_value(record: &mut Record, keep: usize) {
    let text = match record.encoded_value.take() {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => record.value.to_string(),
    };
    if text.len() <= keep {
        if let Ok(value) = serde_json::from_str(&text) {
            record.value = value;
        }
        return;
    }
    let mut end = keep;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    record.value = Value::String(format!("{}…", &text[..end]));
}

/// Runs `task`; cancels `failed` if it fails.
async fn cancel_on_error(
    failed: CancellationToken,
    task: impl std::future::Future<Output = Result<(), ConnectorError>>,
) -> Result<(), ConnectorError> {
    let result = task.await;
    if result.is_err() {
        failed.cancel();
    }
    result
}

/// Awaits deliveries in send order and publishes the offsets they make safe to store.
async fn acknowledge(
    mut sent: mpsc::Receiver<Sent>,
    acked: watch::Sender<Acknowledged>,
    metrics: Arc<ComponentMetrics>,
    shutdown: CancellationToken,
    deadline: Deadline,
    failed: CancellationToken,
) -> Result<(), ConnectorError> {
    let component = metrics.id.clone();
    let mut merged = Acknowledged::default();
    while let Some(batch) = sent.recv().await {
        let delivered = tokio::select! {
            _ = deadline.passed() => {
                tracing::warn!(component = %component, "shutdown deadline passed with records unacknowledged; they will be read again on restart");
                return Ok(());
            }
            // The offset writer failed: its error ends the task.
            _ = failed.cancelled() => return Ok(()),
            delivered = batch.delivery => delivered,
        };
        match delivered {
            Ok(()) => {}
            // Stopping: a reader that left without committing fails its deliveries; the
            // records are read from the source again next run, since no offset moves past them.
            Err(e) if shutdown.is_cancelled() => {
                tracing::warn!(component = %component, error = %e, "records not acknowledged while stopping; they will be read again on restart");
                return Ok(());
            }
            Err(e) => return Err(transport_error(&component, e)),
        }
        ComponentMetrics::add(&metrics.records_out, batch.records);
        merged.batch += 1;
        merged.offsets.extend(batch.offsets);
        merged.checkpoint = batch.checkpoint;
        acked.send_replace(merged.clone());
    }
    Ok(())
}

/// Stores the latest acknowledged offsets when they change, at most once per `interval`
/// (the transport's [`offsets_store_interval`](crate::transport::Transport::offsets_store_interval)),
/// and once more when everything is acknowledged; offsets through a checkpoint at once. Each
/// store is announced on `stored` (the last batch it covers, and the offsets). Retryable failures
/// are retried a while; then, or on any other failure, the source stops.
async fn store_offsets(
    mut acked: watch::Receiver<Acknowledged>,
    stored_through: watch::Sender<Stored>,
    store: Arc<dyn OffsetStore>,
    metrics: Arc<ComponentMetrics>,
    deadline: Deadline,
    (interval, acknowledged_all): (Duration, CancellationToken),
) -> Result<(), ConnectorError> {
    let component = metrics.id.clone();
    let mut last_store: Option<tokio::time::Instant> = None;
    while acked.changed().await.is_ok() {
        let checkpoint = acked.borrow().checkpoint;
        if let Some(last) = last_store.filter(|_| !interval.is_zero() && !checkpoint) {
            tokio::select! {
                _ = tokio::time::sleep_until(last + interval) => {}
                _ = acknowledged_all.cancelled() => {}
                _ = deadline.passed() => {}
                // A checkpoint acknowledged meanwhile is not kept waiting.
                _ = acked.wait_for(|a| a.checkpoint) => {}
            }
        }
        last_store = Some(tokio::time::Instant::now());
        let Acknowledged { batch, offsets, .. } = acked.borrow_and_update().clone();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stored = tokio::select! {
                stored = store.store(&component, offsets.clone()) => stored,
                _ = deadline.passed() => {
                    tracing::warn!(component = %component, "shutdown deadline passed before source offsets were stored; the last records will be read again on restart");
                    return Ok(());
                }
            };
            match stored {
                Ok(()) => {
                    metrics.source_offsets_stored(&offsets);
                    stored_through.send_replace(Stored { batch, offsets });
                    break;
                }
                Err(e) if e.retryable && attempt < 10 => {
                    tracing::warn!(component = %component, error = %e, "cannot store source offsets yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(ConnectorError::external(format!(
                        "cannot store source offsets: {e}"
                    ))
                    .in_component(&component))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
