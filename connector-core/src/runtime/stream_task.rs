//! A stream transform runs as a sink whose store is its output topic plus a checkpoint: the
//! sink task gives it everything a sink has (its consumer group and rebalances, batches,
//! pause/stop/restart, lag, dead letters), and this module turns records into the operator's
//! output.
//!
//! ```text
//! put(batch)    → operator.process(record) per record → output kept; bad and late records refused
//! flush()       → output written to `topic` and acknowledged
//! pre_commit()  → once `checkpoint_interval` passed (or a writer of the inputs waits, or the
//!                 task stops or hands partitions over): checkpoint stored, per input partition
//!                 {offset, state, seen}; only then are the input offsets committed
//! open(parts)   → checkpoint read → operator.restore(part) → resume at its offset (Kafka)
//! ```
//! The checkpoint lives where the runtime stores source offsets (the offsets topic on Kafka,
//! the state dir on the embedded transport), one store per input partition,
//! `<pipeline>/<transform>/<topic>/<partition>`, written only by the worker that owns the
//! partition and read afresh when a worker is assigned it; the store `<pipeline>/<transform>`
//! lists the partitions that have one (what a reset removes). A kill -9 between
//! writing output and storing the checkpoint makes the transform read those inputs again from
//! the last checkpoint and make the same output again: outputs carry `sluice.position` headers
//! derived from their inputs, so `exactly_once` sinks skip the repeats. Inputs numbered by
//! their source (`exactly_once` pipelines) are also skipped by the transform when its state
//! already holds them, which is what keeps the embedded transport (whose offsets restart at 0)
//! exact.

use super::dead_letter::{DeadLetters, Failure};
use crate::exactly_once::{self, Position};
use crate::stream::StreamOperator;
use crate::transport::{OffsetStore, PartitionOffset, TopicPartition, TopicWriter, Transport};
use crate::{ConnectorError, PutOutcome, Record, Sink};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Input index given to output made when input ends (partial windows): numbered after any
/// output of the last input (output indexes are the input's index × 1024 + their rank).
const FLUSH_INDEX: u32 = 1 << 20;

/// The entry of a partition's checkpoint in its store.
const CHECKPOINT: &str = "checkpoint";

/// The store of the checkpoint of `partition`.
pub(super) fn checkpoint_store(pipeline: &str, id: &str, partition: &TopicPartition) -> String {
    format!("{pipeline}/{id}/{}/{}", partition.0, partition.1)
}

/// The store listing the partitions with a checkpoint (`<topic>/<partition>` → true).
pub(super) fn index_store(pipeline: &str, id: &str) -> String {
    format!("{pipeline}/{id}")
}

/// Every partition with a checkpoint of transform `id`, from its index.
pub(super) async fn checkpointed_partitions(
    transport: &dyn Transport,
    pipeline: &str,
    id: &str,
) -> Result<Vec<TopicPartition>, crate::transport::TransportError> {
    let index = transport.offset_store(&index_store(pipeline, id)).await?;
    Ok(index
        .load(id)
        .await?
        .keys()
        .filter_map(|key| {
            let (topic, partition) = key.rsplit_once('/')?;
            Some((topic.into(), partition.parse().ok()?))
        })
        .collect())
}

/// What is checkpointed per input partition.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Next input offset to read (Kafka; meaningless on the embedded transport).
    offset: i64,
    /// The operator's state after the inputs before `offset` (its JSON text).
    state: String,
    /// Highest source position taken in, per source partition of numbered inputs.
    #[serde(default)]
    seen: BTreeMap<String, Position>,
    /// Source name and position of the last input taken in: what output made at the end of
    /// input is numbered after.
    #[serde(default)]
    last: Option<(String, Position)>,
}

impl Checkpoint {
    /// The checkpoint as stored, with `state` (the operator's, which can be megabytes) moved
    /// in rather than copied.
    fn to_value(&self, state: String) -> Result<Value, serde_json::Error> {
        let mut value = serde_json::to_value(Checkpoint {
            offset: self.offset,
            state: String::new(),
            seen: self.seen.clone(),
            last: self.last.clone(),
        })?;
        if let Some(fields) = value.as_object_mut() {
            fields.insert("state".into(), Value::String(state));
        }
        Ok(value)
    }
}

/// How a stream transform checkpoints.
pub(super) struct Checkpoints {
    /// Whether input offsets stay valid across runs (Kafka): then a restart resumes at the
    /// checkpoint's offset and outputs of unnumbered inputs are numbered by it.
    pub durable_offsets: bool,
    /// Least time between two checkpoints.
    pub interval: Duration,
}

pub(super) struct StreamSink {
    id: String,
    pipeline: String,
    operator: Box<dyn StreamOperator>,
    writer: Arc<dyn TopicWriter>,
    topic: Arc<str>,
    transport: Arc<dyn Transport>,
    /// The checkpoint store of each owned input partition.
    stores: HashMap<TopicPartition, Arc<dyn OffsetStore>>,
    /// Partitions known to be listed in the index store.
    indexed: HashSet<TopicPartition>,
    /// Whether input offsets stay valid across runs (Kafka): then a restart resumes at the
    /// checkpoint's offset and outputs of unnumbered inputs are numbered by it.
    durable_offsets: bool,
    /// Per owned input partition: what the next checkpoint stores (state is taken at flush).
    partitions: HashMap<TopicPartition, Checkpoint>,
    /// Output made since the last flush; kept until the topic acknowledged it, so a failed
    /// flush sends it again when retried.
    output: Vec<Record>,
    /// Output the topic refused outright (larger than it takes), with the reason: dead letters
    /// still to deliver, kept until they are.
    refused: Vec<(Record, String)>,
    /// Where refused output goes.
    dead_letters: DeadLetters,
    /// Least time between two checkpoints.
    checkpoint_interval: Duration,
    /// When the last checkpoint was stored (or the transform started).
    checkpointed_at: Instant,
    /// Whether inputs were taken in since the last checkpoint.
    dirty: bool,
    /// Where the output written is counted (`records_written`), if anywhere.
    metrics: Option<Arc<crate::metrics::ComponentMetrics>>,
}

impl StreamSink {
    /// Transform `id` of `pipeline`, writing `topic`.
    pub fn new(
        id: String,
        pipeline: String,
        operator: Box<dyn StreamOperator>,
        topic: &str,
        transport: Arc<dyn Transport>,
        checkpoints: Checkpoints,
        dead_letters: DeadLetters,
    ) -> Self {
        let Checkpoints {
            durable_offsets,
            interval: checkpoint_interval,
        } = checkpoints;
        StreamSink {
            id,
            pipeline,
            operator,
            writer: transport.writer(),
            topic: topic.into(),
            transport,
            stores: HashMap::new(),
            indexed: HashSet::new(),
            durable_offsets,
            partitions: HashMap::new(),
            output: Vec::new(),
            refused: Vec::new(),
            dead_letters,
            checkpoint_interval,
            checkpointed_at: Instant::now(),
            dirty: false,
            metrics: None,
        }
    }

    /// Counts the output it writes into `metrics`.
    pub fn counting_into(mut self, metrics: Arc<crate::metrics::ComponentMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn key(partition: &TopicPartition) -> String {
        format!("{}/{}", partition.0, partition.1)
    }

    /// The checkpoint store of `partition`, opened (and its stored state read) afresh.
    async fn store_of(
        transport: &Arc<dyn Transport>,
        name: String,
    ) -> Result<Arc<dyn OffsetStore>, ConnectorError> {
        transport
            .offset_store(&name)
            .await
            .map(Arc::from)
            .map_err(|e| {
                ConnectorError::transient(format!(
                    "cannot open the checkpoint store: {}",
                    e.message
                ))
            })
    }

    /// Lists `partitions` in the index store, once each.
    async fn index(&mut self, partitions: &[TopicPartition]) -> Result<(), ConnectorError> {
        let new: HashMap<String, Value> = partitions
            .iter()
            .filter(|p| !self.indexed.contains(*p))
            .map(|p| (Self::key(p), Value::Bool(true)))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let index = self
            .transport
            .offset_store(&index_store(&self.pipeline, &self.id))
            .await
            .map_err(|e| {
                ConnectorError::transient(format!(
                    "cannot open the checkpoint index: {}",
                    e.message
                ))
            })?;
        index.store(&self.id, new).await.map_err(|e| {
            ConnectorError::transient(format!("cannot store the checkpoint index: {}", e.message))
        })?;
        self.indexed.extend(partitions.iter().cloned());
        Ok(())
    }

    /// Numbers `records` made from the input at `position` of source `source`.
    fn stamp(&self, records: &mut [Record], source: &str, position: Position) {
        let name = exactly_once::source_name(&self.pipeline, &self.id, source);
        for (i, record) in records.iter_mut().enumerate() {
            record
                .headers
                .retain(|(n, _)| n != exactly_once::POSITION_HEADER);
            let index = position
                .index
                .saturating_mul(1024)
                .saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            exactly_once::stamp(
                record,
                &name,
                Position {
                    input: position.input,
                    index,
                },
            );
        }
    }

    /// Delivers the refused output as dead letters (or fails the transform when bad records
    /// are not tolerated); they are forgotten only once stored.
    async fn deliver_refused(&mut self) -> Result<(), ConnectorError> {
        if self.refused.is_empty() {
            return Ok(());
        }
        let mut dead = Vec::with_capacity(self.refused.len());
        for (record, reason) in &self.refused {
            let failure = Failure {
                component: &self.id,
                stage: "put",
                message: format!("output to `{}` refused: {reason}", self.topic),
                record: record.clone(),
                raw: None,
                location: None,
            };
            dead.extend(self.dead_letters.route(failure)?);
        }
        let delivery = self.dead_letters.writer.send(dead).await.map_err(|e| {
            ConnectorError::transient(format!("cannot write dead letters: {}", e.message))
        })?;
        delivery.await.map_err(|e| {
            ConnectorError::transient(format!("dead letters were not stored: {}", e.message))
        })?;
        self.refused.clear();
        Ok(())
    }

    /// Stores the checkpoint of every owned partition: its next input offset, the operator's
    /// state and the source positions taken in.
    async fn checkpoint(&mut self) -> Result<(), ConnectorError> {
        let mut writes = Vec::new();
        for (partition, checkpoint) in &self.partitions {
            let state = self
                .operator
                .snapshot(partition)
                .map_err(ConnectorError::internal)?;
            let value = checkpoint.to_value(state).map_err(|e| {
                ConnectorError::internal(format!("cannot encode the checkpoint: {e}"))
            })?;
            writes.push((partition.clone(), value));
        }
        let partitions: Vec<TopicPartition> = writes.iter().map(|(p, _)| p.clone()).collect();
        self.index(&partitions).await?;
        for (partition, _) in &writes {
            if !self.stores.contains_key(partition) {
                let name = checkpoint_store(&self.pipeline, &self.id, partition);
                let store = Self::store_of(&self.transport, name).await?;
                self.stores.insert(partition.clone(), store);
            }
        }
        let id = self.id.as_str();
        let stores = &self.stores;
        futures::future::try_join_all(writes.into_iter().map(|(partition, value)| async move {
            let store = stores
                .get(&partition)
                .ok_or_else(|| ConnectorError::internal("no checkpoint store"))?;
            let entry = HashMap::from([(CHECKPOINT.to_string(), value)]);
            store.store(id, entry).await.map_err(|e| {
                ConnectorError::transient(format!("cannot store the checkpoint: {}", e.message))
            })
        }))
        .await?;
        self.dirty = false;
        self.checkpointed_at = Instant::now();
        Ok(())
    }
}

#[async_trait]
impl Sink for StreamSink {
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
        let mut outcome = PutOutcome::default();
        self.dirty |= !batch.is_empty();
        for (i, record) in batch.iter().enumerate() {
            let partition: TopicPartition = (record.topic.clone(), record.partition);
            let numbered = exactly_once::position_of(record)
                .map(|(source, position)| (source.to_string(), position));
            let checkpoint = self.partitions.entry(partition.clone()).or_default();
            checkpoint.offset = record.offset + 1;
            // Where this input's output is numbered from.
            let origin = match &numbered {
                Some((source, position)) => {
                    if checkpoint
                        .seen
                        .get(source)
                        .is_some_and(|seen| position <= seen)
                    {
                        outcome.skipped += 1;
                        continue;
                    }
                    checkpoint.seen.insert(source.clone(), *position);
                    // Output is numbered per input partition: inputs of one source partition
                    // are in order within a topic partition, not across them, and the output
                    // of several input partitions may share an output partition.
                    Some((format!("{}/{source}", Self::key(&partition)), *position))
                }
                None if self.durable_offsets => Some((
                    Self::key(&partition),
                    Position {
                        input: record.offset.max(0) as u64,
                        index: 0,
                    },
                )),
                None => None,
            };
            checkpoint.last.clone_from(&origin);
            let emitted = self.operator.process(&partition, record);
            let mut records = emitted.records;
            if let Some((source, position)) = &origin {
                self.stamp(&mut records, source, *position);
            }
            for r in &mut records {
                r.topic = self.topic.clone();
                r.partition = -1;
                r.offset = -1;
            }
            self.output.extend(records);
            if let Some(reason) = emitted.rejected {
                outcome.rejected.push((i, reason));
            }
        }
        Ok(outcome)
    }

    /// Writes the output and waits for it to be acknowledged; output the topic refuses
    /// outright becomes a dead letter. Until both are stored, the output is kept: a retried
    /// flush sends it again (its `sluice.position` headers let exactly-once readers skip the
    /// part that had arrived).
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if !self.output.is_empty() {
            let (delivery, refused) = self
                .writer
                .send_or_refuse(self.output.clone())
                .await
                .map_err(|e| {
                    ConnectorError::transient(format!(
                        "cannot write to `{}`: {}",
                        self.topic, e.message
                    ))
                })?;
            // Nothing more is written until then: readers of the output that hold their
            // commits back commit now.
            let _blocked = self.writer.blocked_on(std::slice::from_ref(&self.topic));
            delivery.await.map_err(|e| {
                ConnectorError::transient(format!(
                    "`{}` did not take the output: {}",
                    self.topic, e.message
                ))
            })?;
            if let Some(metrics) = &self.metrics {
                let written = self.output.len() - refused.len();
                crate::metrics::ComponentMetrics::add(&metrics.records_written, written);
            }
            self.output.clear();
            self.refused.extend(refused);
        }
        self.deliver_refused().await
    }
    /// Checkpoints when `now`, or once `checkpoint_interval` passed since the last one; the
    /// input offsets are committed only then.
    async fn pre_commit(&mut self, now: bool) -> Result<bool, ConnectorError> {
        if !self.dirty {
            return Ok(true);
        }
        if !now && self.checkpointed_at.elapsed() < self.checkpoint_interval {
            return Ok(false);
        }
        self.checkpoint().await?;
        Ok(true)
    }

    /// Restores the state of `partitions` from the checkpoint; on Kafka they resume at its
    /// offsets.
    async fn open(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<PartitionOffset>, ConnectorError> {
        let mut resume = Vec::new();
        // Each partition's checkpoint is a store of its own: read them side by side.
        let (transport, pipeline, id) = (&self.transport, &self.pipeline, &self.id);
        let opened: Vec<_> = futures::stream::iter(partitions.iter().cloned())
            .map(|partition: TopicPartition| async move {
                let name = checkpoint_store(pipeline, id, &partition);
                let store = Self::store_of(transport, name).await?;
                let stored = store.load(id).await.map_err(|e| {
                    ConnectorError::transient(format!("cannot read the checkpoint: {}", e.message))
                })?;
                Ok::<_, ConnectorError>((partition, store, stored))
            })
            .buffered(super::STORE_OPENS_AT_ONCE)
            .try_collect()
            .await?;
        for (partition, store, stored) in opened {
            let partition = &partition;
            self.stores.insert(partition.clone(), store);
            let mut checkpoint: Checkpoint = match stored.get(CHECKPOINT) {
                Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                    ConnectorError::internal(format!(
                        "the checkpoint of {} is unreadable: {e}",
                        Self::key(partition)
                    ))
                })?,
                None => Checkpoint::default(),
            };
            self.operator
                .restore(partition, &checkpoint.state)
                .map_err(ConnectorError::internal)?;
            if self.durable_offsets && stored.contains_key(CHECKPOINT) {
                resume.push(PartitionOffset {
                    topic: partition.0.to_string(),
                    partition: partition.1,
                    offset: checkpoint.offset,
                });
            }
            // The operator holds the state now; the next checkpoint takes it from there.
            checkpoint.state = String::new();
            self.partitions.insert(partition.clone(), checkpoint);
        }
        Ok(resume)
    }

    async fn close(&mut self, partitions: &[TopicPartition]) -> Result<(), ConnectorError> {
        for partition in partitions {
            self.operator.forget(partition);
            self.partitions.remove(partition);
            self.stores.remove(partition);
        }
        Ok(())
    }

    /// End of input: what is still open is written (partial windows), and checkpointed.
    async fn end_of_input(&mut self) -> Result<(), ConnectorError> {
        let owned: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for partition in owned {
            let mut records = self.operator.flush(&partition);
            let last = self.partitions.get(&partition).and_then(|c| c.last.clone());
            if let Some((source, position)) = last {
                self.stamp(
                    &mut records,
                    &source,
                    Position {
                        input: position.input,
                        index: FLUSH_INDEX,
                    },
                );
            }
            for r in &mut records {
                r.topic = self.topic.clone();
            }
            self.output.extend(records);
        }
        self.dirty = true;
        self.flush().await?;
        self.checkpoint().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ErrorsConfig, Tolerance};
    use crate::stream::Emitted;
    use crate::transport::{embedded::EmbeddedTransport, Delivery, Refused, TransportError};
    use serde_json::json;
    use std::sync::Mutex;

    /// Writes every input as it is, keyed as it came.
    struct PassThrough;

    impl StreamOperator for PassThrough {
        fn process(&mut self, _: &TopicPartition, record: &Record) -> Emitted {
            let mut out = Record::new(record.value.clone());
            out.key.clone_from(&record.key);
            Emitted {
                records: vec![out],
                rejected: None,
            }
        }
        fn flush(&mut self, _: &TopicPartition) -> Vec<Record> {
            Vec::new()
        }
        fn snapshot(&self, _: &TopicPartition) -> Result<String, String> {
            Ok(String::new())
        }
        fn restore(&mut self, _: &TopicPartition, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn forget(&mut self, _: &TopicPartition) {}
    }

    /// A topic writer that fails its first `fail` sends after taking them, refuses records
    /// whose value holds `"big"` (unless `takes_big`), and keeps what it stored.
    #[derive(Default)]
    struct Flaky {
        fail: Mutex<usize>,
        takes_big: bool,
        stored: Mutex<Vec<Record>>,
    }

    #[async_trait]
    impl TopicWriter for Flaky {
        async fn send_or_refuse(
            &self,
            records: Vec<Record>,
        ) -> Result<(Delivery, Vec<Refused>), TransportError> {
            let fail = {
                let mut fail = self.fail.lock().unwrap();
                let now = *fail > 0;
                *fail = fail.saturating_sub(1);
                now
            };
            let (refused, taken): (Vec<Record>, Vec<Record>) = records
                .into_iter()
                .partition(|r| !self.takes_big && r.value.get("big").is_some());
            if !fail {
                self.stored.lock().unwrap().extend(taken);
            }
            let delivery: Delivery = Box::pin(async move {
                if fail {
                    Err(TransportError::transient("the leader went away"))
                } else {
                    Ok(())
                }
            });
            let refused = refused
                .into_iter()
                .map(|r| (r, "larger than message.max.bytes".to_string()))
                .collect();
            Ok((delivery, refused))
        }
    }

    fn sink(writer: Arc<Flaky>, dead: Arc<Flaky>, tolerance: Tolerance) -> StreamSink {
        let dir = tempfile::tempdir().unwrap().keep();
        let transport: Arc<dyn Transport> = Arc::new(EmbeddedTransport::new(1000, dir));
        let errors = ErrorsConfig {
            tolerance,
            dead_letter_topic: Some("dlq".into()),
            ..ErrorsConfig::default()
        };
        let checkpoints = Checkpoints {
            durable_offsets: false,
            interval: Duration::from_secs(5),
        };
        let mut sink = StreamSink::new(
            "t".into(),
            "p".into(),
            Box::new(PassThrough),
            "out",
            transport,
            checkpoints,
            DeadLetters::new(errors, dead),
        );
        sink.writer = writer;
        sink
    }

    fn input(n: u64, partition: i32) -> Arc<Record> {
        let mut record = Record::new(json!({ "n": n }));
        record.topic = "in".into();
        record.partition = partition;
        record.offset = n as i64;
        Arc::new(record)
    }

    /// An embedded transport whose offset stores take a while to open (as a Kafka read-back
    /// does), counting how many opens run at once.
    struct SlowStores {
        inner: EmbeddedTransport,
        opening: std::sync::atomic::AtomicUsize,
        most_at_once: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Transport for SlowStores {
        async fn ensure_topics(
            &self,
            topics: &indexmap::IndexMap<String, crate::config::TopicSpec>,
        ) -> Result<(), TransportError> {
            self.inner.ensure_topics(topics).await
        }
        fn writer(&self) -> Arc<dyn TopicWriter> {
            self.inner.writer()
        }
        fn sends_json_text(&self) -> bool {
            self.inner.sends_json_text()
        }
        fn default_in_flight_batches(&self) -> usize {
            self.inner.default_in_flight_batches()
        }
        async fn reader(
            &self,
            group: &str,
            topics: &[String],
        ) -> Result<Box<dyn crate::transport::TopicReader>, TransportError> {
            self.inner.reader(group, topics).await
        }
        async fn reset_group(&self, group: &str) -> Result<(), TransportError> {
            self.inner.reset_group(group).await
        }
        async fn offset_store(&self, name: &str) -> Result<Box<dyn OffsetStore>, TransportError> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.opening.fetch_add(1, SeqCst) + 1;
            self.most_at_once.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.opening.fetch_sub(1, SeqCst);
            self.inner.offset_store(name).await
        }
    }

    /// A worker assigned many input partitions reads their checkpoints side by side, not one
    /// read-back after another inside the rebalance.
    #[tokio::test]
    async fn the_checkpoints_of_assigned_partitions_are_opened_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let transport = Arc::new(SlowStores {
            inner: EmbeddedTransport::new(1000, dir.path().to_path_buf()),
            opening: Default::default(),
            most_at_once: Default::default(),
        });
        let mut sink = StreamSink::new(
            "t".into(),
            "p".into(),
            Box::new(PassThrough),
            "out",
            transport.clone(),
            Checkpoints {
                durable_offsets: false,
                interval: Duration::from_secs(5),
            },
            DeadLetters::new(ErrorsConfig::default(), Arc::new(Flaky::default())),
        );
        let partitions: Vec<TopicPartition> = (0..24).map(|p| ("in".into(), p)).collect();
        sink.open(&partitions).await.unwrap();
        assert_eq!(sink.stores.len(), 24);
        let most = transport
            .most_at_once
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            most,
            crate::runtime::STORE_OPENS_AT_ONCE,
            "opened at once at most"
        );
    }

    #[tokio::test]
    async fn a_flush_that_failed_sends_the_same_output_when_retried() {
        let writer = Arc::new(Flaky {
            fail: Mutex::new(1),
            ..Flaky::default()
        });
        let mut sink = sink(writer.clone(), Arc::default(), Tolerance::All);
        sink.put(&[input(0, 0), input(1, 0)]).await.unwrap();
        assert!(sink.flush().await.is_err());
        sink.flush().await.unwrap();
        let stored = writer.stored.lock().unwrap();
        let values: Vec<&Value> = stored.iter().map(|r| &r.value).collect();
        assert_eq!(values, [&json!({ "n": 0 }), &json!({ "n": 1 })]);
    }

    #[tokio::test]
    async fn output_the_topic_refuses_becomes_a_dead_letter() {
        let writer = Arc::new(Flaky::default());
        let dead = Arc::new(Flaky {
            takes_big: true,
            ..Flaky::default()
        });
        let mut sink = sink(writer.clone(), dead.clone(), Tolerance::All);
        let mut big = Record::new(json!({ "big": "x" }));
        big.topic = "in".into();
        big.offset = 1;
        sink.put(&[input(0, 0), Arc::new(big)]).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(writer.stored.lock().unwrap().len(), 1);
        let dead = dead.stored.lock().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].value, json!({ "big": "x" }));
        assert_eq!(&*dead[0].topic, "dlq");
    }

    #[tokio::test]
    async fn refused_output_fails_the_transform_when_bad_records_are_not_tolerated() {
        let mut sink = sink(Arc::default(), Arc::default(), Tolerance::None);
        let mut big = Record::new(json!({ "big": "x" }));
        big.topic = "in".into();
        sink.put(&[Arc::new(big)]).await.unwrap();
        let error = sink.flush().await.unwrap_err();
        assert!(error.message.contains("refused"), "{}", error.message);
    }

    /// Inputs of one source partition spread over input partitions 0 and 1 (positions 0, 2, 4
    /// in one and 1, 3, 5 in the other) and written to one output partition must give each
    /// input partition's output a sequence of its own, or exactly-once readers skip most of it.
    #[tokio::test]
    async fn output_is_numbered_per_input_partition() {
        let writer = Arc::new(Flaky::default());
        let mut sink = sink(writer.clone(), Arc::default(), Tolerance::All);
        let numbered = |n: u64| {
            let mut record = Arc::unwrap_or_clone(input(n, (n % 2) as i32));
            exactly_once::stamp(&mut record, "p/src/file", Position { input: n, index: 0 });
            Arc::new(record)
        };
        // Input partition 0 is read first, then 1: output positions interleave.
        let batch: Vec<_> = [0, 2, 4, 1, 3, 5].into_iter().map(numbered).collect();
        sink.put(&batch).await.unwrap();
        sink.flush().await.unwrap();
        let mut stored: Vec<Record> = std::mem::take(&mut *writer.stored.lock().unwrap());
        for r in &mut stored {
            r.topic = "out".into();
            r.partition = 0;
        }
        let screened = exactly_once::WrittenPositions::default().screen(&stored);
        assert_eq!(screened.duplicates, 0, "{:?}", screened.fresh);
        let names: HashSet<&str> = stored
            .iter()
            .map(|r| exactly_once::position_of(r).unwrap().0)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
