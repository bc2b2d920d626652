//! Sinks: connectors that write records out to a store.
//!
//! The runtime reads records from the sink's topics and calls `put` with a batch, delivers the
//! batch's dead letters, then calls `flush`; only after `flush` succeeds does it commit the
//! consumer offsets. A sink is told which topic partitions it reads ([`Sink::open`]) and which
//! it gave up ([`Sink::close`]): with several workers they move between processes. A record the store refuses
//! for its content (a mapping error, a value too long) is reported in [`PutOutcome::rejected`] and
//! dead-lettered by the runtime; the rest of the batch must still land.

use crate::topic::{PartitionOffset, TopicPartition};
use crate::{ConnectorError, FieldError, Record};
use async_trait::async_trait;
use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

/// What a sink is given when it is built.
#[derive(Debug, Clone, Default)]
pub struct SinkBuildContext {
    /// Component id from the pipeline file.
    pub component: String,
    /// Topics the sink reads.
    pub topics: Vec<String>,
    /// Consumer group the sink reads as (`sluice-<pipeline>-<component>`).
    pub group: String,
    /// True when topic offsets stay the same across runs (Kafka); the embedded transport's
    /// restart at 0 in each process, so a sink must not resume from offsets it stored.
    pub durable_offsets: bool,
}

/// The result of one `put`.
#[derive(Debug, Default, PartialEq)]
pub struct PutOutcome {
    /// Records the store refused for their content: index into the batch, and the store's reason.
    pub rejected: Vec<(usize, String)>,
    /// Records not written because an earlier run wrote them (exactly once); counted as skipped.
    pub skipped: usize,
}

/// A batch's store-ready form (statements, a request body), as a sink's [`PrepareBatch`] made it.
pub type Prepared = Box<dyn Any + Send>;

/// The part of writing a batch that needs nothing from the store: turning records into
/// statements or a request body. The runtime runs it on the next batch while the current one is
/// being stored, so the store does not wait for it between batches (Vector splits its sinks into
/// a request builder and a service the same way).
pub trait PrepareBatch: Send + Sync {
    /// Prepares `batch`; [`Sink::put_prepared`] receives the result with the same batch.
    fn prepare(&self, batch: &[Arc<Record>]) -> Prepared;
}

/// The YAML config of a sink; `type:` picks the implementation.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait SinkConfig: Debug + Send + Sync {
    /// Checks the config without any I/O, so `sluice validate` runs anywhere.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Connects to the store. May fail for reasons `validate` can't see.
    async fn build(&self, ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError>;

    /// The config field that relies on topic offsets staying the same across runs (ids or keys
    /// made of them, offsets stored with the data), if any. The embedded transport's offsets
    /// restart at 0 with each process, so such a sink needs Kafka.
    fn needs_durable_offsets(&self) -> Option<&'static str> {
        None
    }

    /// Where the records go, in a few words (a file's path, a table, an index), for the
    /// end-of-run summary; never a credential.
    fn destination(&self) -> Option<String> {
        None
    }

    /// The config field that makes the sink skip records an earlier run wrote, by their
    /// `sluice.position` headers (see [`crate::exactly_once`]), if it is on.
    fn exactly_once(&self) -> Option<&'static str> {
        None
    }
}

/// A running sink.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. Transient failures of the store should be retried inside, with backoff;
    /// an `Err` with `retryable: true` makes the runtime retry the whole batch. Records are
    /// shared with the transport (the embedded transport's log keeps them until committed), so
    /// reading them costs no copy.
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError>;

    /// What prepares batches ahead of `put_prepared`, for sinks that split the two.
    fn preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        None
    }

    /// `put` with what the sink's [`Sink::preparer`] made of this very batch. A sink may find it
    /// stale (e.g. its tables changed since) and prepare the batch again.
    async fn put_prepared(
        &mut self,
        batch: &[Arc<Record>],
        prepared: Prepared,
    ) -> Result<PutOutcome, ConnectorError> {
        let _ = prepared;
        self.put(batch).await
    }

    /// Makes everything `put` so far durable. Consumer offsets are committed after it returns,
    /// unless [`Sink::pre_commit`] holds them back.
    async fn flush(&mut self) -> Result<(), ConnectorError>;

    /// Called after a `flush` and whenever the task could commit offsets it holds back: whether
    /// the consumer offsets of everything flushed may be committed now (Kafka Connect's
    /// `preCommit`). A sink that makes its progress durable less often than it flushes (a
    /// stream transform checkpoints its state every `checkpoint_interval`) answers false until
    /// it has, and the task keeps the offsets for a later commit. With `now`, a writer waits for
    /// this commit or the task gives up partitions or stops: the sink makes its progress
    /// durable and answers true.
    async fn pre_commit(&mut self, now: bool) -> Result<bool, ConnectorError> {
        let _ = now;
        Ok(true)
    }

    /// The sink now reads `partitions` (at start, and when its worker group gives it more,
    /// maybe from another worker): a sink that keeps state per partition loads it here, as
    /// the store has it now. Returns where to resume those of them whose consumer offsets it
    /// stores with its data (exactly once); the others resume at the group's committed offsets.
    async fn open(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<PartitionOffset>, ConnectorError> {
        let _ = partitions;
        Ok(Vec::new())
    }

    /// The sink no longer reads `partitions`: their records are flushed and committed, and
    /// another worker may write them from now on. A sink drops what it keeps of them.
    async fn close(&mut self, partitions: &[TopicPartition]) -> Result<(), ConnectorError> {
        let _ = partitions;
        Ok(())
    }

    /// The sink read everything its sources will ever write (they finished, or `--once`): a
    /// sink holding incomplete work (a stream transform's open windows) writes it now.
    async fn end_of_input(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Forgets the offsets and positions the sink stores with its data (exactly once), so that
    /// it writes again what it reads from the beginning: `DELETE /connectors/{name}/offsets`
    /// on a stopped sink (KIP-875). Called on a sink built for this alone.
    async fn reset_offsets(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
