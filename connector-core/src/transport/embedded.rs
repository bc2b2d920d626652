//! The embedded transport: topics as bounded in-process logs with partitions, key hashing,
//! offsets, consumer groups and commits — Kafka's semantics without a broker.
//!
//! The log lives in memory and ends with the process. So that a `kill -9` loses nothing, a send
//! is *acknowledged* only once every consumer group reading the topic has committed past it
//! (that is, once every sink has flushed it). Sources store their offsets on that acknowledgement,
//! so after a crash they resume from what the sinks really hold. A topic nobody reads acknowledges
//! at once. Producers wait while a topic holds `capacity` records not yet committed by every group.

use super::{
    fixed_partition, Delivery, Incoming, OffsetStore, PartitionOffset, Rebalance, TopicPartition,
    TopicReader, TopicWriter, Transport, TransportError,
};
use crate::config::TopicSpec;
use crate::transport::FileOffsetStore;
use crate::Record;
use async_trait::async_trait;
use futures::FutureExt;
use indexmap::IndexMap;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The in-process broker.
pub struct EmbeddedTransport {
    broker: Arc<Broker>,
    state_dir: PathBuf,
}

struct Broker {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    capacity: usize,
    /// Woken on every append, for readers.
    data: Notify,
}

struct Topic {
    name: String,
    state: Mutex<TopicState>,
    /// Per partition: what deliveries wait on.
    committed_by_all: Vec<watch::Sender<Low>>,
    /// Woken when commits free space, for producers.
    space: Notify,
    /// Writers blocked until records of this topic are committed (see [`super::Blocked`]).
    blocked: Arc<std::sync::atomic::AtomicUsize>,
}

struct TopicState {
    partitions: Vec<PartitionLog>,
    /// Consumer group → next offset to read, per partition.
    groups: HashMap<String, Vec<i64>>,
    /// Records held across partitions (not yet committed by every group).
    retained: usize,
    next_unkeyed: usize,
}

/// The low mark of a partition, as deliveries see it.
#[derive(Debug, Clone, Copy, Default)]
struct Low {
    /// Offset below which every group has committed.
    committed: i64,
    /// Lowest offset a group that left (its reader dropped) had not committed: records from
    /// here on were never stored by that sink, so their deliveries fail rather than let the
    /// source store an offset past them.
    lost_from: Option<i64>,
}

impl Low {
    /// `Some(true)` once records below `needed` are committed by all, `Some(false)` once some
    /// of them never will be, `None` while undecided.
    fn settles(&self, needed: i64) -> Option<bool> {
        if self.lost_from.is_some_and(|lost| lost < needed) {
            Some(false)
        } else if self.committed >= needed {
            Some(true)
        } else {
            None
        }
    }
}

#[derive(Default)]
struct PartitionLog {
    /// Offset of `records[0]`.
    base: i64,
    records: VecDeque<Arc<Record>>,
}

impl PartitionLog {
    fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere already failed the run; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    fn topic(&self, name: &str, partitions: i32) -> Arc<Topic> {
        let mut topics = lock(&self.topics);
        topics
            .entry(name.to_string())
            .or_insert_with(|| {
                let n = partitions.max(1) as usize;
                Arc::new(Topic {
                    name: name.to_string(),
                    state: Mutex::new(TopicState {
                        partitions: (0..n).map(|_| PartitionLog::default()).collect(),
                        groups: HashMap::new(),
                        retained: 0,
                        next_unkeyed: 0,
                    }),
                    committed_by_all: (0..n).map(|_| watch::channel(Low::default()).0).collect(),
                    space: Notify::new(),
                    blocked: Arc::default(),
                })
            })
            .clone()
    }
}

impl Topic {
    /// Drops records every group has committed and publishes the new low mark.
    fn trim(&self, state: &mut TopicState) {
        for (p, log) in state.partitions.iter_mut().enumerate() {
            let low = state
                .groups
                .values()
                .map(|offsets| offsets[p])
                .min()
                .unwrap_or_else(|| log.end());
            while log.base < low && !log.records.is_empty() {
                log.records.pop_front();
                log.base += 1;
                state.retained -= 1;
            }
            self.committed_by_all[p].send_if_modified(|v| {
                let changed = v.committed != low;
                v.committed = low;
                changed
            });
        }
        self.space.notify_waiters();
    }
}

impl EmbeddedTransport {
    /// A broker whose topics hold at most `capacity` uncommitted records; source offsets are
    /// kept under `state_dir`.
    pub fn new(capacity: usize, state_dir: PathBuf) -> Self {
        EmbeddedTransport {
            broker: Arc::new(Broker {
                topics: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
                data: Notify::new(),
            }),
            state_dir,
        }
    }
}

#[async_trait]
impl Transport for EmbeddedTransport {
    async fn ensure_topics(
        &self,
        topics: &IndexMap<String, TopicSpec>,
    ) -> Result<(), TransportError> {
        for (name, spec) in topics {
            let topic = self.broker.topic(name, spec.partitions);
            let have = lock(&topic.state).partitions.len() as i32;
            if have != spec.partitions {
                return Err(TransportError::fatal(format!(
                    "topic `{name}` exists with {have} partitions, the pipeline declares {}",
                    spec.partitions
                )));
            }
        }
        Ok(())
    }

    fn sends_json_text(&self) -> bool {
        false
    }

    fn default_in_flight_batches(&self) -> usize {
        // Deliveries wait for the readers' commits, and a stream transform commits with its
        // checkpoints, which it writes early when all of a source's batches wait for one: 8
        // made the window benchmark checkpoint every 16,000 records (4.2-4.5 s for 1M, 2.9 s
        // with 32). More holds more records in memory (180 MB against 130 MB there).
        32
    }

    fn writer(&self) -> Arc<dyn TopicWriter> {
        Arc::new(EmbeddedWriter {
            broker: self.broker.clone(),
        })
    }

    async fn reader(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn TopicReader>, TransportError> {
        let mut joined = Vec::new();
        for name in topics {
            let topic = self.broker.topic(name, 1);
            let positions = {
                let mut state = lock(&topic.state);
                let starts: Vec<i64> = state.partitions.iter().map(|p| p.base).collect();
                state
                    .groups
                    .entry(group.to_string())
                    .or_insert(starts)
                    .clone()
            };
            joined.push((topic, positions));
        }
        Ok(Box::new(EmbeddedReader {
            broker: self.broker.clone(),
            group: group.to_string(),
            topics: joined,
            next_topic: 0,
            assignment_reported: false,
            hold_position: false,
        }))
    }

    async fn offset_store(&self, pipeline: &str) -> Result<Box<dyn OffsetStore>, TransportError> {
        Ok(Box::new(FileOffsetStore::open(&self.state_dir, pipeline)?))
    }

    /// The group reads again from the oldest record the log still holds: records every group
    /// had committed are gone from memory, as on Kafka past retention.
    async fn reset_group(&self, group: &str) -> Result<(), TransportError> {
        let topics: Vec<Arc<Topic>> = lock(&self.broker.topics).values().cloned().collect();
        for topic in topics {
            let mut state = lock(&topic.state);
            let starts: Vec<i64> = state.partitions.iter().map(|p| p.base).collect();
            if let Some(positions) = state.groups.get_mut(group) {
                *positions = starts;
            }
        }
        Ok(())
    }
}

struct EmbeddedWriter {
    broker: Arc<Broker>,
}

#[async_trait]
impl TopicWriter for EmbeddedWriter {
    /// In-process records have no size limit: nothing is refused.
    async fn send_or_refuse(
        &self,
        records: Vec<Record>,
    ) -> Result<(Delivery, Vec<super::Refused>), TransportError> {
        let mut by_topic: IndexMap<Arc<str>, Vec<Record>> = IndexMap::new();
        for mut record in records {
            // Readers see `value`: text a source wrote anyway is parsed here.
            record.decode_value().map_err(|e| {
                TransportError::fatal(format!("cannot write a value that is not JSON: {e}"))
            })?;
            match by_topic.get_mut(&record.topic) {
                Some(group) => group.push(record),
                None => {
                    by_topic.insert(record.topic.clone(), vec![record]);
                }
            }
        }
        let mut waits = Vec::new();
        for (name, records) in by_topic {
            let topic = self.broker.topic(&name, 1);
            // While the topic is full, this writer waits for its readers' commits.
            let mut blocked = None;
            loop {
                let space = topic.space.notified();
                tokio::pin!(space);
                space.as_mut().enable();
                if lock(&topic.state).retained < self.broker.capacity {
                    break;
                }
                if blocked.is_none() {
                    blocked = Some(super::Blocked::counting(vec![topic.blocked.clone()]));
                    self.broker.data.notify_waiters();
                }
                space.await;
            }
            drop(blocked);
            let mut state = lock(&topic.state);
            let n = state.partitions.len();
            let mut last = vec![-1i64; n];
            for mut record in records {
                let p = match fixed_partition(&record, n as i32) {
                    Some(p) => p as usize,
                    None => {
                        state.next_unkeyed = state.next_unkeyed.wrapping_add(1);
                        state.next_unkeyed % n
                    }
                };
                let log = &mut state.partitions[p];
                record.partition = p as i32;
                record.offset = log.end();
                last[p] = record.offset;
                log.records.push_back(Arc::new(record));
                state.retained += 1;
            }
            if state.groups.is_empty() {
                topic.trim(&mut state);
            }
            drop(state);
            for (p, offset) in last.into_iter().enumerate() {
                if offset >= 0 {
                    waits.push((
                        topic.name.clone(),
                        topic.committed_by_all[p].subscribe(),
                        offset + 1,
                    ));
                }
            }
        }
        self.broker.data.notify_waiters();
        let delivery = async move {
            for (topic, mut rx, needed) in waits {
                let low = rx
                    .wait_for(|low| low.settles(needed).is_some())
                    .await
                    .map_err(|_| TransportError::fatal("the embedded broker shut down"))?;
                if low.settles(needed) == Some(false) {
                    return Err(TransportError::transient(format!(
                        "a sink reading `{topic}` stopped before storing these records"
                    )));
                }
            }
            Ok(())
        }
        .boxed();
        Ok((delivery, Vec::new()))
    }

    fn blocked_on(&self, topics: &[Arc<str>]) -> super::Blocked {
        let blocked = super::Blocked::counting(
            topics
                .iter()
                .map(|name| self.broker.topic(name, 1).blocked.clone())
                .collect(),
        );
        // Readers waiting for records wake to see it.
        self.broker.data.notify_waiters();
        blocked
    }
}

struct EmbeddedReader {
    broker: Arc<Broker>,
    group: String,
    /// Each topic with this reader's next offset per partition.
    topics: Vec<(Arc<Topic>, Vec<i64>)>,
    /// Topic to read first on the next poll, so that no topic starves the others.
    next_topic: usize,
    /// Whether the partitions it reads were reported as assigned (see [`TopicReader::rebalance`]).
    assignment_reported: bool,
    /// The group stays when the reader is dropped (see [`TopicReader::hold_position`]).
    hold_position: bool,
}

impl EmbeddedReader {
    fn take(&mut self, max: usize) -> Vec<Incoming> {
        let mut out = Vec::new();
        let count = self.topics.len();
        for i in 0..count {
            let (topic, positions) = &mut self.topics[(self.next_topic + i) % count];
            let state = lock(&topic.state);
            // A share of each partition per round, so the oldest records of every partition go
            // first: a source's batch spans partitions, and its delivery waits for all of them.
            let share = (max / state.partitions.len().max(1)).max(64);
            loop {
                let before = out.len();
                for (p, log) in state.partitions.iter().enumerate() {
                    let pos = &mut positions[p];
                    *pos = (*pos).max(log.base);
                    let stop = (*pos + share as i64).min(log.end());
                    while *pos < stop && out.len() < max {
                        let record = &log.records[(*pos - log.base) as usize];
                        out.push(Incoming::Record(Arc::clone(record)));
                        *pos += 1;
                    }
                }
                if out.len() == before || out.len() >= max {
                    break;
                }
            }
        }
        self.next_topic = (self.next_topic + 1) % count.max(1);
        out
    }
}

/// A reader that is dropped leaves its group: records stop waiting for it, and those it had not
/// committed fail their deliveries (see [`Low::lost_from`]).
impl Drop for EmbeddedReader {
    fn drop(&mut self) {
        if self.hold_position {
            return;
        }
        for (topic, _) in &self.topics {
            let mut state = lock(&topic.state);
            let Some(committed) = state.groups.remove(&self.group) else {
                continue;
            };
            for (p, log) in state.partitions.iter().enumerate() {
                if committed[p] < log.end() {
                    topic.committed_by_all[p].send_modify(|low| {
                        low.lost_from =
                            Some(low.lost_from.map_or(committed[p], |l| l.min(committed[p])));
                    });
                }
            }
            topic.trim(&mut state);
        }
    }
}

#[async_trait]
impl TopicReader for EmbeddedReader {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming>, TransportError> {
        let broker = self.broker.clone();
        let data = broker.data.notified();
        tokio::pin!(data);
        data.as_mut().enable();
        let records = self.take(max);
        if !records.is_empty() {
            return Ok(records);
        }
        let _ = tokio::time::timeout(wait, data).await;
        Ok(self.take(max))
    }

    /// Every unresolved delivery holds a receiver of its partitions' low marks.
    fn writer_waiting(&self) -> bool {
        self.topics.iter().any(|(topic, _)| {
            topic
                .committed_by_all
                .iter()
                .any(|low| low.receiver_count() > 0)
        })
    }

    fn writer_blocked(&self) -> bool {
        self.topics
            .iter()
            .any(|(topic, _)| topic.blocked.load(std::sync::atomic::Ordering::SeqCst) > 0)
    }

    async fn commit(
        &mut self,
        offsets: &[PartitionOffset],
        _wait: bool,
    ) -> Result<(), TransportError> {
        for (topic, _) in &self.topics {
            let mut state = lock(&topic.state);
            let mut changed = false;
            if let Some(committed) = state.groups.get_mut(&self.group) {
                for o in offsets.iter().filter(|o| o.topic == topic.name) {
                    let slot = committed.get_mut(o.partition as usize).ok_or_else(|| {
                        TransportError::fatal(format!(
                            "no partition {} in `{}`",
                            o.partition, o.topic
                        ))
                    })?;
                    if o.offset > *slot {
                        *slot = o.offset;
                        changed = true;
                    }
                }
            }
            if changed {
                topic.trim(&mut state);
            }
        }
        Ok(())
    }

    /// The one group member: every partition, once.
    fn rebalance(&mut self) -> Option<Rebalance> {
        if std::mem::replace(&mut self.assignment_reported, true) {
            return None;
        }
        Some(Rebalance::Assign(
            self.topics
                .iter()
                .flat_map(|(topic, positions)| {
                    let name: Arc<str> = topic.name.as_str().into();
                    (0..positions.len() as i32).map(move |p| (name.clone(), p))
                })
                .collect(),
        ))
    }

    async fn assign(
        &mut self,
        _partitions: &[TopicPartition],
        resume: &[PartitionOffset],
    ) -> Result<(), TransportError> {
        if resume.is_empty() {
            return Ok(());
        }
        Err(TransportError::fatal(
            "offsets stored by a sink cannot be resumed on the embedded transport (its log does not \
             outlive the process); exactly-once sinks need a `kafka:` section",
        ))
    }

    /// Never called: the embedded reader keeps its partitions.
    fn hold_position(&mut self) {
        self.hold_position = true;
    }

    async fn revoke(&mut self, _partitions: &[TopicPartition]) -> Result<(), TransportError> {
        Ok(())
    }

    fn lag(&mut self) -> super::LagMeasure {
        let mut lag = Vec::new();
        for (topic, positions) in &self.topics {
            let state = lock(&topic.state);
            let name: Arc<str> = topic.name.as_str().into();
            for (p, (log, pos)) in state.partitions.iter().zip(positions).enumerate() {
                lag.push(((name.clone(), p as i32), (log.end() - pos).max(0)));
            }
        }
        Box::pin(std::future::ready(Ok(lag)))
    }

    async fn caught_up(&mut self) -> Result<bool, TransportError> {
        Ok(self.topics.iter().all(|(topic, positions)| {
            let state = lock(&topic.state);
            state
                .partitions
                .iter()
                .zip(positions)
                .all(|(log, pos)| *pos >= log.end())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(topic: &str, key: &str, n: i64) -> Record {
        let mut r = Record::new(json!({ "n": n })).with_key(key);
        r.topic = topic.into();
        r
    }

    fn transport(capacity: usize) -> EmbeddedTransport {
        EmbeddedTransport::new(capacity, std::env::temp_dir())
    }

    /// A transport holding topic `t` of `partitions` partitions.
    async fn with_topic_t(capacity: usize, partitions: i32) -> EmbeddedTransport {
        let t = transport(capacity);
        t.ensure_topics(&IndexMap::from([(
            "t".to_string(),
            TopicSpec {
                partitions,
                ..TopicSpec::default()
            },
        )]))
        .await
        .unwrap();
        t
    }

    async fn read_all(reader: &mut Box<dyn TopicReader>) -> Vec<Record> {
        let mut out = Vec::new();
        loop {
            let batch = reader.poll(1000, Duration::from_millis(20)).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.into_iter().map(|i| match i {
                Incoming::Record(r) => Arc::unwrap_or_clone(r),
                Incoming::Undecodable { .. } => panic!("embedded records are always decoded"),
            }));
        }
    }

    #[tokio::test]
    async fn a_send_is_acknowledged_only_after_every_group_commits() {
        let t = with_topic_t(100, 3).await;
        let mut a = t.reader("a", &["t".into()]).await.unwrap();
        let mut b = t.reader("b", &["t".into()]).await.unwrap();
        let delivery = t
            .writer()
            .send((0..10).map(|n| record("t", &format!("k{n}"), n)).collect())
            .await
            .unwrap();
        let mut delivery = Box::pin(delivery);
        let got = read_all(&mut a).await;
        assert_eq!(got.len(), 10);
        let commits: Vec<PartitionOffset> = (0..3)
            .map(|p| PartitionOffset {
                topic: "t".into(),
                partition: p,
                offset: got
                    .iter()
                    .filter(|r| r.partition == p)
                    .map(|r| r.offset + 1)
                    .max()
                    .unwrap_or(0),
            })
            .collect();
        a.commit(&commits, true).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut delivery)
                .await
                .is_err(),
            "b has not committed yet"
        );
        assert_eq!(read_all(&mut b).await.len(), 10);
        b.commit(&commits, true).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), delivery)
            .await
            .unwrap()
            .unwrap();
        assert!(a.caught_up().await.unwrap() && b.caught_up().await.unwrap());
    }

    /// A poll smaller than what is waiting takes the oldest records of every partition, not
    /// one partition after the other: a source batch spans partitions and its delivery waits
    /// for all of them, so starving the last partitions stalled sources until the sink lingered.
    #[tokio::test]
    async fn a_small_poll_takes_from_every_partition() {
        let t = transport(100_000);
        let spec = TopicSpec {
            partitions: 10,
            ..TopicSpec::default()
        };
        t.ensure_topics(&IndexMap::from([("t".to_string(), spec)]))
            .await
            .unwrap();
        let mut reader = t.reader("g", &["t".into()]).await.unwrap();
        let _delivery = t
            .writer()
            .send(
                (0..10_000)
                    .map(|n| record("t", &format!("k{n}"), n))
                    .collect(),
            )
            .await
            .unwrap();
        let polled = reader.poll(1_000, Duration::from_millis(20)).await.unwrap();
        assert_eq!(polled.len(), 1_000);
        let mut per_partition = [0; 10];
        for item in &polled {
            let (_, partition, offset) = item.coordinates();
            assert!(
                offset < 200,
                "offset {offset} of partition {partition} is not among the oldest"
            );
            per_partition[partition as usize] += 1;
        }
        assert!(per_partition.iter().all(|&n| n >= 64), "{per_partition:?}");
    }

    #[tokio::test]
    async fn records_with_the_same_key_keep_their_order_in_one_partition() {
        let t = transport(100);
        t.ensure_topics(&IndexMap::from([(
            "t".to_string(),
            TopicSpec {
                partitions: 4,
                ..TopicSpec::default()
            },
        )]))
        .await
        .unwrap();
        let mut r = t.reader("g", &["t".into()]).await.unwrap();
        let _delivery = t
            .writer()
            .send((0..20).map(|n| record("t", "same", n)).collect())
            .await
            .unwrap();
        let got = read_all(&mut r).await;
        let partitions: std::collections::HashSet<i32> = got.iter().map(|r| r.partition).collect();
        assert_eq!(partitions.len(), 1);
        let ns: Vec<i64> = got.iter().map(|r| r.value["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_full_topic_makes_the_producer_wait_until_a_commit() {
        let t = transport(5);
        let mut r = t.reader("g", &["t".into()]).await.unwrap();
        let w = t.writer();
        let _delivery = w
            .send((0..5).map(|n| record("t", "k", n)).collect())
            .await
            .unwrap();
        let blocked =
            tokio::time::timeout(Duration::from_millis(50), w.send(vec![record("t", "k", 5)]))
                .await;
        assert!(blocked.is_err(), "the send should wait for space");
        let got = read_all(&mut r).await;
        r.commit(
            &[PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset: got.len() as i64,
            }],
            true,
        )
        .await
        .unwrap();
        let _delivery =
            tokio::time::timeout(Duration::from_secs(1), w.send(vec![record("t", "k", 5)]))
                .await
                .unwrap()
                .unwrap();
    }

    /// A sink that stops (its reader dropped) leaves its group: records it had committed are
    /// delivered, those it had not fail their delivery (never acknowledged, so the source reads
    /// them again), and nothing waits for it any more.
    #[tokio::test]
    async fn a_dropped_reader_leaves_its_group_and_fails_what_it_never_committed() {
        let t = transport(100);
        let mut stays = t.reader("stays", &["t".into()]).await.unwrap();
        let mut leaves = t.reader("leaves", &["t".into()]).await.unwrap();
        let w = t.writer();
        let first = w
            .send((0..3).map(|n| record("t", "k", n)).collect())
            .await
            .unwrap();
        let second = w
            .send((3..5).map(|n| record("t", "k", n)).collect())
            .await
            .unwrap();
        let upto = |offset| {
            vec![PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset,
            }]
        };
        assert_eq!(read_all(&mut stays).await.len(), 5);
        stays.commit(&upto(5), true).await.unwrap();
        assert_eq!(read_all(&mut leaves).await.len(), 5);
        leaves.commit(&upto(3), true).await.unwrap();
        drop(leaves);
        let within = |d| tokio::time::timeout(Duration::from_secs(1), d);
        assert!(within(first).await.unwrap().is_ok(), "committed by both");
        let error = within(second).await.unwrap().unwrap_err();
        assert!(error.message.contains("stopped before storing"), "{error}");
        // Later writes no longer wait for the group that left, but fail too: it never reads them.
        let later = w.send(vec![record("t", "k", 5)]).await.unwrap();
        assert!(within(later).await.unwrap().is_err());
    }

    /// A sink stopped to be started again keeps its group: what it did not commit waits for
    /// it (no delivery fails), the next reader of the group resumes at the commit, and after a
    /// reset at the oldest record the log still holds.
    #[tokio::test]
    async fn a_held_group_waits_for_its_next_reader_and_a_reset_rewinds_it() {
        let t = transport(100);
        let mut other = t.reader("other", &["t".into()]).await.unwrap();
        let mut held = t.reader("held", &["t".into()]).await.unwrap();
        let w = t.writer();
        let delivery = w
            .send((0..4).map(|n| record("t", "k", n)).collect())
            .await
            .unwrap();
        let upto = |offset| {
            vec![PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset,
            }]
        };
        assert_eq!(read_all(&mut other).await.len(), 4);
        other.commit(&upto(4), true).await.unwrap();
        assert_eq!(read_all(&mut held).await.len(), 4);
        held.commit(&upto(2), true).await.unwrap();
        held.hold_position();
        drop(held);
        let pending = tokio::time::timeout(Duration::from_millis(200), delivery).await;
        assert!(pending.is_err(), "the delivery waits for the held group");
        let mut again = t.reader("held", &["t".into()]).await.unwrap();
        let resumed: Vec<i64> = read_all(&mut again)
            .await
            .iter()
            .map(|r| r.value["n"].as_i64().unwrap())
            .collect();
        assert_eq!(resumed, [2, 3]);
        // Records 4 and 5: read and committed by this group, not by the other one yet.
        drop(w.send(vec![record("t", "k", 4), record("t", "k", 5)]).await);
        assert_eq!(read_all(&mut again).await.len(), 2);
        again.commit(&upto(6), true).await.unwrap();
        again.hold_position();
        drop(again);
        t.reset_group("held").await.unwrap();
        let mut rewound = t.reader("held", &["t".into()]).await.unwrap();
        let from: Vec<i64> = read_all(&mut rewound)
            .await
            .iter()
            .map(|r| r.value["n"].as_i64().unwrap())
            .collect();
        assert_eq!(from, [4, 5], "from the oldest record kept");
    }

    #[tokio::test]
    async fn a_declared_layout_that_differs_is_reported() {
        let t = transport(10);
        let _ = t.reader("g", &["t".into()]).await.unwrap();
        let err = t
            .ensure_topics(&IndexMap::from([(
                "t".to_string(),
                TopicSpec {
                    partitions: 3,
                    ..TopicSpec::default()
                },
            )]))
            .await
            .unwrap_err();
        assert!(err.message.contains("3"), "{}", err.message);
    }

    /// `exactly_once` with records without a key: a record the source sends again after a
    /// crash lands in the partition it landed in before, where the sink's stored position
    /// of its source tells it apart (round-robin put it elsewhere: lost or written twice).
    #[tokio::test]
    async fn a_keyless_numbered_record_sent_again_lands_in_the_same_partition() {
        let t = with_topic_t(100, 4).await;
        let mut reader = t.reader("g", &["t".into()]).await.unwrap();
        let numbered = |input: u64| {
            let mut r = Record::new(json!({ "n": input }));
            r.topic = "t".into();
            let position = crate::exactly_once::Position { input, index: 0 };
            crate::exactly_once::stamp(&mut r, "p/c/file", position);
            r
        };
        for _ in 0..2 {
            drop(
                t.writer()
                    .send((0..8).map(numbered).collect())
                    .await
                    .unwrap(),
            );
        }
        let read = read_all(&mut reader).await;
        assert_eq!(read.len(), 16);
        let mut partition_of: HashMap<String, i32> = HashMap::new();
        for r in &read {
            let at = partition_of
                .entry(r.value.to_string())
                .or_insert(r.partition);
            assert_eq!(*at, r.partition, "{} landed in two partitions", r.value);
        }
    }
}
