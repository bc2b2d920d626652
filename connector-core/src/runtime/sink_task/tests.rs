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
