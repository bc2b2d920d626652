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

use crate::exactly_once::{self, Position};
use crate::stream::StreamOperator;
use crate::transport::{OffsetStore, PartitionOffset, TopicPartition, TopicWriter, Transport};
use crate::{ConnectorError, PutOutcome, Record, Sink};
use async_trait::async_trait;
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
    /// Output made since the last flush.
    output: Vec<Record>,
    /// Least time between two checkpoints.
    checkpoint_interval: Duration,
    /// When the last checkpoint was stored (or the transform started).
    checkpointed_at: Instant,
    /// Whether inputs were taken in since the last checkpoint.
    dirty: bool,
}

impl StreamSink {
    pub fn new(
        id: String,
        pipeline: String,
        operator: Box<dyn StreamOperator>,
        topic: &str,
        transport: Arc<dyn Transport>,
        durable_offsets: bool,
        checkpoint_interval: Duration,
    ) -> Self {
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
            checkpoint_interval,
            checkpointed_at: Instant::now(),
            dirty: false,
        }
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
                    Some((source.clone(), *position))
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

    /// Writes the output and waits for it to be acknowledged.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let output = std::mem::take(&mut self.output);
        if output.is_empty() {
            return Ok(());
        }
        let delivery = self.writer.send(output).await.map_err(|e| {
            ConnectorError::transient(format!("cannot write to `{}`: {}", self.topic, e.message))
        })?;
        // Nothing more is written until then: readers of the output that hold their commits
        // back commit now.
        let _blocked = self.writer.blocked_on(std::slice::from_ref(&self.topic));
        delivery.await.map_err(|e| {
            ConnectorError::transient(format!(
                "`{}` did not take the output: {}",
                self.topic, e.message
            ))
        })
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
        for partition in partitions {
            let name = checkpoint_store(&self.pipeline, &self.id, partition);
            let store = Self::store_of(&self.transport, name).await?;
            let stored = store.load(&self.id).await.map_err(|e| {
                ConnectorError::transient(format!("cannot read the checkpoint: {}", e.message))
            })?;
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
