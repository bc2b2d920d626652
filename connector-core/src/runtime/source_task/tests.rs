use super::*;
use crate::config::ErrorsConfig;
use crate::transport::{embedded::EmbeddedTransport, Refused, Transport, TransportError};
use crate::SourceRecord;
use std::sync::Mutex;

/// A live API: the answer to its request arrives `answer_after` into the poll.
struct SlowAnswer {
    answer_after: Duration,
    answered: bool,
}

#[async_trait::async_trait]
impl Source for SlowAnswer {
    async fn poll(&mut self, _: usize) -> Result<Option<Vec<crate::SourceRecord>>, ConnectorError> {
        if self.answered {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.answer_after).await;
        self.answered = true;
        Ok(Some(
            (0..3)
                .map(|i| SourceRecord {
                    partition: "api".into(),
                    offset: Value::from(i + 1),
                    position: None,
                    payload: Payload::Record(Record::new(serde_json::json!({ "price": i }))),
                })
                .collect(),
        ))
    }
}

/// Keeps what it is sent and acknowledges it at once.
#[derive(Default)]
struct Kept(Mutex<Vec<Record>>);

#[async_trait::async_trait]
impl TopicWriter for Kept {
    async fn send_or_refuse(
        &self,
        records: Vec<Record>,
    ) -> Result<(Delivery, Vec<Refused>), TransportError> {
        self.0.lock().unwrap().extend(records);
        Ok((Box::pin(async { Ok(()) }), Vec::new()))
    }
}

/// A task running `source` into `writer`, storing offsets in `offsets` at once.
fn task_of(
    id: &str,
    source: Box<dyn Source>,
    transport: &EmbeddedTransport,
    writer: Arc<Kept>,
    offsets: Arc<dyn OffsetStore>,
) -> SourceTask {
    SourceTask {
        id: id.into(),
        source,
        topic: format!("{id}-topic").into(),
        batch_size: 100,
        max_in_flight_batches: 4,
        transforms: Vec::new(),
        writer,
        offsets,
        offsets_store_interval: Duration::ZERO,
        dead_letters: DeadLetters::new(ErrorsConfig::default(), transport.writer()),
        metrics: ComponentMetrics::new("source", id),
        numbering: None,
        committed_batch: 0,
    }
}

/// SIGTERM 5 ms before a live API's answer arrives: the answer is still sent, and its
/// offsets stored, rather than dropped with the poll.
#[tokio::test]
async fn a_stop_while_an_answer_arrives_still_sends_it_and_stores_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let transport = EmbeddedTransport::new(100, dir.path().to_path_buf());
    let offsets: Arc<dyn OffsetStore> = Arc::from(transport.offset_store("p").await.unwrap());
    let kept = Arc::new(Kept::default());
    let task = task_of(
        "messari",
        Box::new(SlowAnswer {
            answer_after: Duration::from_millis(105),
            answered: false,
        }),
        &transport,
        kept.clone(),
        offsets.clone(),
    );
    let shutdown = CancellationToken::new();
    let deadline = Deadline::after(&shutdown, Duration::from_secs(5));
    let running = tokio::spawn(task.run(shutdown.clone(), deadline));
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the task ends")
        .unwrap()
        .unwrap();
    assert_eq!(kept.0.lock().unwrap().len(), 3, "the answer was sent");
    let stored = offsets.load("messari").await.unwrap();
    assert_eq!(stored.get("api"), Some(&Value::from(3)));
}

/// Sends a record, then a checkpoint; on its next poll records what the store held then
/// and what had been sent.
struct PlansAhead {
    store: Arc<dyn OffsetStore>,
    sent: Arc<Kept>,
    polls: usize,
    seen_at_second_poll: Arc<Mutex<Option<SeenAtPoll>>>,
}

/// The stored offsets and the records sent, as a poll found them.
type SeenAtPoll = (HashMap<String, Value>, usize);

#[async_trait::async_trait]
impl Source for PlansAhead {
    async fn poll(&mut self, _: usize) -> Result<Option<Vec<crate::SourceRecord>>, ConnectorError> {
        self.polls += 1;
        let item = |offset: u64, payload| SourceRecord {
            partition: "page".into(),
            offset: Value::from(offset),
            position: Some(offset),
            payload,
        };
        match self.polls {
            1 => Ok(Some(vec![
                item(
                    1,
                    Payload::Record(Record::new(serde_json::json!({ "n": 1 }))),
                ),
                item(2, Payload::Checkpoint),
            ])),
            2 => {
                let stored = self.store.load("web").await.unwrap();
                let sent = self.sent.0.lock().unwrap().len();
                *self.seen_at_second_poll.lock().unwrap() = Some((stored, sent));
                Ok(Some(vec![item(
                    3,
                    Payload::Record(Record::new(serde_json::json!({ "n": 2 }))),
                )]))
            }
            _ => Ok(None),
        }
    }
}

/// A checkpoint's offset is stored before the source is polled again, at once even when
/// stores are spaced out, and it is not counted as a record.
#[tokio::test]
async fn a_checkpoint_is_stored_before_anything_after_it_is_polled() {
    let dir = tempfile::tempdir().unwrap();
    let transport = EmbeddedTransport::new(100, dir.path().to_path_buf());
    let offsets: Arc<dyn OffsetStore> = Arc::from(transport.offset_store("p").await.unwrap());
    let kept = Arc::new(Kept::default());
    let seen = Arc::new(Mutex::new(None));
    let metrics = ComponentMetrics::new("source", "web");
    let task = SourceTask {
        offsets_store_interval: Duration::from_secs(3600),
        metrics: metrics.clone(),
        numbering: Some(Numbering::new("p")),
        ..task_of(
            "web",
            Box::new(PlansAhead {
                store: offsets.clone(),
                sent: kept.clone(),
                polls: 0,
                seen_at_second_poll: seen.clone(),
            }),
            &transport,
            kept.clone(),
            offsets.clone(),
        )
    };
    let shutdown = CancellationToken::new();
    let deadline = Deadline::after(&shutdown, Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(5), task.run(shutdown, deadline))
        .await
        .expect("the task ends")
        .unwrap();
    let (stored, sent) = seen.lock().unwrap().clone().expect("polled twice");
    assert_eq!(stored.get("page"), Some(&Value::from(2)));
    assert_eq!(sent, 1);
    assert_eq!(kept.0.lock().unwrap().len(), 2);
    assert_eq!(
        metrics
            .records_in
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

/// A pipe: lines taken from it cannot be read again. It holds 10, hands 3 to the first
/// poll, and waits in the next for more that never come.
struct Pipe {
    held: std::collections::VecDeque<u64>,
    polls: usize,
    committed: Arc<Mutex<Vec<HashMap<String, Value>>>>,
}

impl Pipe {
    fn item(n: u64) -> SourceRecord {
        SourceRecord {
            partition: "pipe".into(),
            offset: Value::from(n + 1),
            position: None,
            payload: Payload::Record(Record::new(serde_json::json!({ "line": n }))),
        }
    }
}

#[async_trait::async_trait]
impl Source for Pipe {
    async fn poll(&mut self, _: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        self.polls += 1;
        if self.polls > 1 {
            std::future::pending::<()>().await;
        }
        Ok(Some(self.held.drain(..3).map(Pipe::item).collect()))
    }

    async fn drain(&mut self) -> Result<Vec<SourceRecord>, ConnectorError> {
        Ok(self.held.drain(..).map(Pipe::item).collect())
    }

    async fn commit(&mut self, offsets: &HashMap<String, Value>) -> Result<(), ConnectorError> {
        self.committed.lock().unwrap().push(offsets.clone());
        Ok(())
    }
}

/// At a stop, a source whose input cannot be read again hands over what it holds
/// (`drain`): it is sent and stored, and the source is told (`commit`) before it is
/// dropped, so it can acknowledge its producers. Before `drain`, the 7 lines were lost.
#[tokio::test]
async fn a_stop_drains_what_a_source_holds_and_tells_it_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let transport = EmbeddedTransport::new(100, dir.path().to_path_buf());
    let offsets: Arc<dyn OffsetStore> = Arc::from(transport.offset_store("p").await.unwrap());
    let kept = Arc::new(Kept::default());
    let committed = Arc::new(Mutex::new(Vec::new()));
    let task = task_of(
        "lines",
        Box::new(Pipe {
            held: (0..10).collect(),
            polls: 0,
            committed: committed.clone(),
        }),
        &transport,
        kept.clone(),
        offsets.clone(),
    );
    let shutdown = CancellationToken::new();
    let deadline = Deadline::after(&shutdown, Duration::from_secs(5));
    let running = tokio::spawn(task.run(shutdown.clone(), deadline));
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the task ends")
        .unwrap()
        .unwrap();
    let sent: Vec<Value> = kept
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.value["line"].clone())
        .collect();
    assert_eq!(sent, (0..10).map(Value::from).collect::<Vec<_>>());
    let stored = offsets.load("lines").await.unwrap();
    assert_eq!(stored.get("pipe"), Some(&Value::from(10)));
    let told = committed.lock().unwrap().clone();
    assert_eq!(
        told.last().and_then(|o| o.get("pipe")),
        Some(&Value::from(10)),
        "{told:?}"
    );
}
