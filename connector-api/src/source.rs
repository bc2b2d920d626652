//! Sources: connectors that bring records in from the outside world.
//!
//! A source `poll()`s records, each carrying a *source partition* (a file, an API endpoint) and the
//! *source offset* reached after it. The runtime stores that offset once the transport has
//! acknowledged the record and hands the stored offsets back through [`SourceBuildContext`] on the
//! next start. Sources never store offsets themselves.

use crate::{BadInput, ConnectorError, FieldError, Record};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

/// Stored offsets of one source: source partition → offset of the last acknowledged record.
pub type SourceOffsets = HashMap<String, Value>;

/// One item a source produced: a record or input that could not become one.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// Source partition, e.g. the file path (shared by the records of one partition).
    pub partition: Arc<str>,
    /// Where this source partition resumes once this item is delivered. The runtime stores, for
    /// each batch `poll` returns, the offset of each partition's last item in it, so a source
    /// that pays to build offsets may leave the others `Value::Null`.
    pub offset: Value,
    /// The item's place in its partition for `exactly_once`: grows from item to item and is
    /// the same for the same input on every run (a byte offset, a row number, an event time).
    /// `None` when the source cannot say; such a source cannot run with `exactly_once`.
    pub position: Option<u64>,
    /// What the input became.
    pub payload: Payload,
}

/// What one input of a source became.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A record to write to the source's topic.
    Record(Record),
    /// Input dropped on purpose, as configured (e.g. `all_null_rows: skip`); counted, not written.
    Skipped { reason: String },
    /// Input that could not become a record; dead-lettered or fatal per `errors.tolerance`.
    Bad(BadInput),
    /// No input: this item's offset is stored before anything the source hands over after
    /// it is sent. A source whose input may change between a crash and the restart (a web
    /// page) stores here, ahead, how it numbers what it is about to send, so that a restart
    /// numbers it alike. Costs an offset store (and the wait for it) each; put it last in a
    /// batch.
    Checkpoint,
}

/// What a source is given when it is built.
#[derive(Debug, Clone, Default)]
pub struct SourceBuildContext {
    /// Component id from the pipeline file.
    pub component: String,
    /// Offsets stored by earlier runs; empty on a first run.
    pub offsets: SourceOffsets,
    /// True when the records go untransformed to a transport that sends JSON text (Kafka): a
    /// source that can write its values as JSON directly should then fill
    /// [`Record::encoded_value`] instead of building `value`. Sources may ignore it.
    pub encode_values: bool,
    /// When the source's work units are shared between the workers of a group: the units
    /// this instance runs. A source reads only the source partitions it [`UnitShare::owns`];
    /// `None` runs them all.
    pub units: Option<UnitShare>,
    /// True when the source's records are numbered for `exactly_once`: a source whose
    /// positions need more work to stay the same across runs does it only then.
    pub exactly_once: bool,
    /// Where a source reports what its poll cannot return (waiting out a rate limit); `None`
    /// when nothing listens (tests, `validate`).
    pub status: Option<Arc<dyn SourceStatus>>,
}

/// What a running source tells the operator besides its records: shown in the status (REST
/// API, the live table, the status page).
pub trait SourceStatus: Send + Sync + std::fmt::Debug {
    /// The source waits out a rate limit now (`THROTTLED`, each start counted), or no longer.
    fn set_throttled(&self, now: bool);
}

/// The work units of a split source that one instance runs. A work unit is a source partition
/// (a file of a glob): units are spread over `count` slots by the hash of their name, and the
/// instance runs the units of the slots it `holds`. The slots are the partitions of the
/// source's control topic, which the worker group assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitShare {
    /// Slots in all.
    pub count: i32,
    /// The slots this instance runs.
    pub holds: Vec<i32>,
}

impl UnitShare {
    /// Whether this instance runs the source partition `unit`.
    pub fn owns(&self, unit: &str) -> bool {
        self.holds.contains(&crate::topic::partition_for_key(
            unit.as_bytes(),
            self.count,
        ))
    }
}

/// The YAML config of a source; `type:` picks the implementation.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait SourceConfig: Debug + Send + Sync {
    /// Checks the config without any I/O, so `sluice validate` runs anywhere.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Opens files and connections. May fail for reasons `validate` can't see.
    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError>;

    /// For a source that can be split between workers (the files of a glob): how many work
    /// units it has now, so its control topic gets one partition each. Such a source reads
    /// only the units of [`SourceBuildContext::units`]. `None` (the default): the source runs
    /// whole, on one worker of the group at a time.
    fn work_units(&self) -> Option<usize> {
        None
    }
}

/// A running source.
///
/// The runtime calls `poll` in a loop, sends what it returns to the topic, and stores each
/// item's offset once the topic has it and everything before it; it then tells the source with
/// [`Source::commit`]. At a graceful stop it drops the `poll` in progress (after a short grace
/// for an answer that has arrived), asks [`Source::drain`] for what the source holds, sends
/// that, stores the offsets and calls `commit` a last time.
#[async_trait]
pub trait Source: Send {
    /// Waits for the next items, at most `max` of them. `Ok(None)` means the source is finished
    /// (a finite file read to its end); an empty batch means nothing for now. Implementations
    /// pace themselves (rate limits, polling intervals) by waiting inside `poll`.
    ///
    /// **Cancel-safe**: the runtime drops a pending `poll` at a stop, a pause or a rebalance.
    /// Whatever it had taken from its input when dropped must still be in the source (for
    /// `drain` or the next `poll`), or be read again by the next run from the stored offsets.
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError>;

    /// At a graceful stop, once `poll` is no longer running: the items the source holds that
    /// no later run could read again (lines taken from a pipe or a socket, messages pushed to
    /// it), for the runtime to send and store before it stops. Default: none.
    async fn drain(&mut self) -> Result<Vec<SourceRecord>, ConnectorError> {
        Ok(Vec::new())
    }

    /// The items returned so far are in the topic and their offsets stored, up to `offsets`
    /// (source partition → the offset of the last such item): a source whose producers wait
    /// for an acknowledgement (a queue, a push API, a pipe's writer) gives it here, as Kafka
    /// Connect's `SourceTask.commit`. Called between polls, never during one. Default: nothing.
    async fn commit(&mut self, offsets: &HashMap<String, Value>) -> Result<(), ConnectorError> {
        let _ = offsets;
        Ok(())
    }

    /// True for a source whose producers wait for [`Source::commit`] (a socket's writer, a
    /// queue): the runtime then drops a `poll` that is waiting when offsets are stored, calls
    /// `commit`, and polls again, so the acknowledgement does not wait for more input. Default
    /// false: `commit` comes between polls only (a poll in progress, such as an HTTP request,
    /// is never cut short for it).
    fn acknowledges_producers(&self) -> bool {
        false
    }

    /// How far a source whose end is known has come, as `(done, total)` in units of its own
    /// (bytes of a file, records of a count), read after each poll for the percentage and the
    /// time left shown while it runs; `None` (the default) when its end is not known.
    fn progress(&self) -> Option<(u64, u64)> {
        None
    }
}
