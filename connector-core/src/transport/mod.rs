//! Topics between components: one [`Transport`] trait, two implementations — Kafka (rdkafka) and
//! an embedded bounded in-process log. Connectors never see which one runs.

pub mod embedded;
pub mod kafka;
mod offsets_file;

pub use offsets_file::{FileOffsetStore, StateLock};
// The topic vocabulary connectors share is the API's; the transport uses it as its own.
pub use sluice_api::exactly_once::fixed_partition;
pub use sluice_api::topic::{partition_for_key, PartitionOffset, TopicPartition, TopicSpec};

use crate::Record;
use async_trait::async_trait;
use futures::future::BoxFuture;
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A transport failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub message: String,
    /// True when the operation may succeed later.
    pub retryable: bool,
}

impl TransportError {
    pub fn fatal(message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            retryable: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Resolves once every record of one `send` is acknowledged by the transport.
pub type Delivery = BoxFuture<'static, Result<(), TransportError>>;

/// A record read from a topic, or bytes that are not a JSON record.
#[derive(Debug)]
pub enum Incoming {
    /// A record as the transport holds it: shared, not copied, with the embedded transport's
    /// log (which keeps it until every reader committed it).
    Record(std::sync::Arc<Record>),
    Undecodable {
        /// Coordinates and headers of the message; `value` is null.
        envelope: Box<Record>,
        raw: Vec<u8>,
        error: String,
    },
}

impl Incoming {
    /// Where the item sits in its topic.
    pub fn coordinates(&self) -> (&std::sync::Arc<str>, i32, i64) {
        let r: &Record = match self {
            Incoming::Record(r) => r,
            Incoming::Undecodable { envelope, .. } => envelope,
        };
        (&r.topic, r.partition, r.offset)
    }
}

/// What a transport without worker groups answers to their calls.
fn no_worker_group() -> TransportError {
    TransportError::fatal(
        "this transport runs in one process: it has no worker group to share sources with",
    )
}

/// Topics, producers, consumer groups and source-offset storage.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Creates missing topics; reports an existing topic whose layout differs from its spec.
    async fn ensure_topics(
        &self,
        topics: &IndexMap<String, TopicSpec>,
    ) -> Result<(), TransportError>;

    /// The shared writer.
    fn writer(&self) -> std::sync::Arc<dyn TopicWriter>;

    /// True when the writer sends values as JSON text, so records whose source already wrote
    /// that text ([`Record::encoded_value`]) are cheapest; false when it keeps `Value`s.
    fn sends_json_text(&self) -> bool;

    /// How many batches a source keeps unacknowledged unless its config says.
    fn default_in_flight_batches(&self) -> usize;

    /// Joins consumer group `group` on `topics`. Create every reader before producing: the
    /// embedded transport keeps records until every group reading a topic has committed them.
    async fn reader(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn TopicReader>, TransportError>;

    /// Creates the compacted control topic `name` of a split source with `partitions`
    /// partitions (one per work unit) unless it exists; returns its partition count, which
    /// fixes how units map to partitions for good. Only transports with worker groups have them.
    async fn control_topic(&self, name: &str, partitions: i32) -> Result<i32, TransportError> {
        let _ = (name, partitions);
        Err(no_worker_group())
    }

    /// Makes `status` the latest record of partition `slot` of control topic `name` (what
    /// the workers of a group read with [`Transport::control_statuses`]).
    async fn set_control_status(
        &self,
        name: &str,
        slot: i32,
        status: Value,
    ) -> Result<(), TransportError> {
        let _ = (name, slot, status);
        Err(no_worker_group())
    }

    /// The latest record of each of the `partitions` partitions of control topic `name`
    /// (`None` where nothing was written), read without joining its group.
    async fn control_statuses(
        &self,
        name: &str,
        partitions: i32,
    ) -> Result<Vec<Option<Value>>, TransportError> {
        let _ = (name, partitions);
        Err(no_worker_group())
    }

    /// Forgets what consumer group `group` committed, so that its next reader starts from the
    /// oldest record still kept (KIP-875's offset reset of a stopped sink). Fails while other
    /// members still read for the group.
    async fn reset_group(&self, group: &str) -> Result<(), TransportError>;

    /// Storage of source offsets for the pipeline `pipeline`.
    async fn offset_store(&self, pipeline: &str) -> Result<Box<dyn OffsetStore>, TransportError>;

    /// Least time between two stores of a source's offsets: each store is a record on Kafka,
    /// so this bounds what the offsets topic grows by, at the price of reading up to this much
    /// again after a crash. Zero where a store costs nothing that grows.
    fn offsets_store_interval(&self) -> Duration {
        Duration::ZERO
    }
}

/// Held by a writer that can send nothing more until records it already wrote are stored (a
/// source whose sends in flight reached their bound, a stream transform waiting for its
/// output to be taken): readers of those topics see it through
/// [`TopicReader::writer_blocked`]. Dropping it ends the wait.
#[derive(Default)]
pub struct Blocked(Vec<Arc<AtomicUsize>>);

impl Blocked {
    /// A wait counted in each of `counters`.
    pub fn counting(counters: Vec<Arc<AtomicUsize>>) -> Self {
        for c in &counters {
            c.fetch_add(1, Ordering::SeqCst);
        }
        Blocked(counters)
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        for c in &self.0 {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A record the transport refused at once, and why (it is larger than the topic takes).
pub type Refused = (Record, String);

/// Writes records to topics.
#[async_trait]
pub trait TopicWriter: Send + Sync {
    /// Hands records (each naming its `topic`) to the transport, waiting while its buffers are
    /// full. The returned [`Delivery`] resolves once all are acknowledged. A record the
    /// transport refuses (see [`TopicWriter::send_or_refuse`]) fails the send.
    async fn send(&self, records: Vec<Record>) -> Result<Delivery, TransportError> {
        let (delivery, refused) = self.send_or_refuse(records).await?;
        match refused.into_iter().next() {
            None => Ok(delivery),
            Some((record, reason)) => Err(TransportError::fatal(format!(
                "cannot write to `{}`: {reason}",
                record.topic
            ))),
        }
    }

    /// Like [`TopicWriter::send`], but records the transport refuses outright (over its size
    /// limit) are handed back with the reason instead of failing the rest; the [`Delivery`]
    /// covers the others.
    async fn send_or_refuse(
        &self,
        records: Vec<Record>,
    ) -> Result<(Delivery, Vec<Refused>), TransportError>;

    /// Marks this writer blocked on the acknowledgement of what it wrote to `topics` until the
    /// guard is dropped. Only where acknowledgements wait for readers (the embedded transport)
    /// does this tell them anything.
    fn blocked_on(&self, _topics: &[Arc<str>]) -> Blocked {
        Blocked::default()
    }
}

/// A member of a consumer group.
#[async_trait]
pub trait TopicReader: Send {
    /// Waits up to `wait` for records; returns at most `max`.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming>, TransportError>;

    /// Commits where the group resumes, per partition. With `wait` it returns once the commit is
    /// stored; without, it may return before (a lost commit only means reading records again).
    async fn commit(
        &mut self,
        offsets: &[PartitionOffset],
        wait: bool,
    ) -> Result<(), TransportError>;

    /// True once everything written to the assigned partitions before this call has been read.
    async fn caught_up(&mut self) -> Result<bool, TransportError>;

    /// Whether this reader owns every partition of its topics (always, outside a worker group).
    fn owns_every_partition(&self) -> bool {
        true
    }

    /// Whether a writer is waiting for records of these topics to be stored before it goes on
    /// (the embedded transport acknowledges a send once every group committed it): a batch
    /// lingering for more records then only delays everyone, so the sink stores it at once.
    fn writer_waiting(&self) -> bool {
        false
    }

    /// Whether a writer of these topics can send nothing more until this reader commits (see
    /// [`Blocked`]): a sink that holds commits back (a stream transform between checkpoints)
    /// commits now rather than stall it.
    fn writer_blocked(&self) -> bool {
        false
    }

    /// Stops fetching (`true`) or fetches again (`false`) while the task is paused (REST API).
    /// Nothing by default.
    async fn set_paused(&mut self, paused: bool) -> Result<(), TransportError> {
        let _ = paused;
        Ok(())
    }

    /// Whether the task must go on calling [`TopicReader::poll`] while paused: a Kafka
    /// consumer that does not poll for `max.poll.interval.ms` is evicted from its group. A
    /// paused reader's poll returns nothing (what it had fetched waits for the resume).
    fn polls_while_paused(&self) -> bool {
        false
    }

    /// Records written to each partition this reader owns that it has not read yet, measured
    /// by the returned future, which holds no borrow of the reader: the task runs it apart
    /// from its reading (on Kafka it asks the cluster, a round trip per partition).
    fn lag(&mut self) -> LagMeasure;

    /// The next change of the partitions this reader owns, if one waits for the task. A reader
    /// reports the partitions it starts with as an [`Rebalance::Assign`] before it returns any
    /// record; a member of a worker group reports every later change too. The reader reads
    /// none of an assigned partition before [`TopicReader::assign`], and keeps a revoked one
    /// until [`TopicReader::revoke`], so the task can store and commit what it read first.
    fn rebalance(&mut self) -> Option<Rebalance>;

    /// Completes an [`Rebalance::Assign`]: reads `partitions` from `resume` where it names them
    /// (offsets a sink stored with its data), else from the group's committed offsets.
    async fn assign(
        &mut self,
        partitions: &[TopicPartition],
        resume: &[PartitionOffset],
    ) -> Result<(), TransportError>;

    /// When this reader is dropped, its group keeps its committed position and what it has not
    /// read waits for it, for a task that stopped or failed and will be started again. (By
    /// default a dropped reader leaves its group: on Kafka its partitions go to other workers,
    /// and the committed offsets stay with the broker either way.)
    fn hold_position(&mut self) {}

    /// Completes a [`Rebalance::Revoke`]: the task has stored and committed what it read of
    /// `partitions`, which go to other members now.
    async fn revoke(&mut self, partitions: &[TopicPartition]) -> Result<(), TransportError>;
}

/// A measure of a reader's lag in progress (see [`TopicReader::lag`]).
pub type LagMeasure = BoxFuture<'static, Result<Vec<(TopicPartition, i64)>, TransportError>>;

/// A change of the partitions a [`TopicReader`] owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// Partitions granted to this member.
    Assign(Vec<TopicPartition>),
    /// Partitions this member gives up, to other members of its group.
    Revoke(Vec<TopicPartition>),
}

/// Source offsets of one pipeline: per component, source partition → offset.
#[async_trait]
pub trait OffsetStore: Send + Sync {
    /// Offsets stored for `component`.
    async fn load(&self, component: &str) -> Result<HashMap<String, Value>, TransportError>;

    /// Stores offsets for `component` durably (merged with those stored before). They are
    /// taken, not copied: a stream transform's checkpoint is its whole state.
    async fn store(
        &self,
        component: &str,
        offsets: HashMap<String, Value>,
    ) -> Result<(), TransportError>;

    /// Forgets every offset of `component` (a reset: it starts from the beginning).
    async fn remove(&self, component: &str) -> Result<(), TransportError>;
}
