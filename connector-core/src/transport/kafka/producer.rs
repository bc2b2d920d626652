//! The Kafka writer: one idempotent librdkafka producer per transport, acknowledging each
//! `send` as a whole. Every message of a batch carries a shared counter as its delivery opaque;
//! librdkafka's delivery reports count it down and the last one resolves the batch's
//! [`Delivery`] — no future or channel per message.

use super::Quiet;
use crate::transport::{Delivery, TopicWriter, TransportError};
use crate::Record;
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// The producer every writer of a transport shares.
pub(super) type Producer = ThreadedProducer<Acks>;

/// Per topic, per partition: the offset after the last record this process's producer had
/// acknowledged. Sinks drain at least that far: some Kafka-compatible brokers (tansu 0.6)
/// report a high watermark that stops at the base offset of the last batch.
///
/// Updated once per delivery report, so kept as a short list searched by name: a process
/// writes a handful of topics, and comparing a name is cheaper than hashing it.
#[derive(Clone, Default)]
pub(super) struct DeliveredEnds(Arc<Mutex<Vec<TopicEnds>>>);

/// A topic's name and, by partition, the end acknowledged there.
type TopicEnds = (String, Vec<i64>);

impl DeliveredEnds {
    fn lock(&self) -> MutexGuard<'_, Vec<TopicEnds>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, topic: &str, partition: i32, end: i64) {
        let Ok(index) = usize::try_from(partition) else {
            return;
        };
        let mut all = self.lock();
        let at = match all.iter().position(|(name, _)| name == topic) {
            Some(at) => at,
            None => {
                all.push((topic.to_string(), Vec::new()));
                all.len() - 1
            }
        };
        let ends = &mut all[at].1;
        if ends.len() <= index {
            ends.resize(index + 1, 0);
        }
        ends[index] = ends[index].max(end);
    }

    /// The acknowledged end of `topic`/`partition`; 0 when nothing was written there.
    pub(super) fn get(&self, topic: &str, partition: i32) -> i64 {
        let index = usize::try_from(partition).unwrap_or(usize::MAX);
        self.lock()
            .iter()
            .find(|(name, _)| name == topic)
            .and_then(|(_, ends)| ends.get(index).copied())
            .unwrap_or(0)
    }
}

/// The producer's context: librdkafka's logs through [`Quiet`], delivery reports counted into
/// their batch and into [`DeliveredEnds`].
#[derive(Clone, Default)]
pub(super) struct Acks {
    quiet: Quiet,
    pub(super) delivered: DeliveredEnds,
}

impl ClientContext for Acks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        match result {
            Ok(message) => {
                self.delivered
                    .advance(message.topic(), message.partition(), message.offset() + 1)
            }
            Err((e, message)) => batch.fail(delivery_failure(e, message, &batch)),
        }
        batch.settle(1);
    }
}

/// Why a message of `batch` was not delivered. A broker refuses a whole request for one bad
/// timestamp, and a failed message's report carries no timestamp: a refused timestamp names
/// the latest-dated record of the send, the one a broker refuses first.
fn delivery_failure(
    error: &KafkaError,
    message: &rdkafka::message::BorrowedMessage<'_>,
    batch: &Batch,
) -> String {
    use rdkafka::Message;
    let key = |k: Option<&[u8]>| {
        k.map_or_else(
            || "no key".to_string(),
            |k| format!("key {:?}", String::from_utf8_lossy(k)),
        )
    };
    let mut text = format!("delivery to `{}` failed: {error}", message.topic());
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTimestamp) {
        let latest = batch.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, ms)) = latest.as_ref() {
            text.push_str(&format!(
                "; the latest-dated record of the batch has {} and timestamp {}",
                key(k.as_deref()),
                rfc3339(*ms)
            ));
        }
        text.push_str(" (a broker refuses records dated too far from its clock: Kafka's `log.message.timestamp.after.max.ms` / `before.max.ms`; give records a time that is not in the future)");
    } else {
        text.push_str(&format!(" (the record with {})", key(message.key())));
    }
    text
}

/// Epoch milliseconds as RFC 3339.
fn rfc3339(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        Err(_) => ms.to_string(),
    }
}

/// What a batch's count starts at while `send` hands messages over: more than any batch holds,
/// so reports arriving meanwhile cannot bring it to zero. `send` then takes away this less the
/// messages it handed over, leaving exactly the reports still due.
const HANDING_OVER: usize = usize::MAX / 2;

/// The messages of one `send`, counted down as librdkafka reports them.
pub(super) struct Batch {
    /// Reports still due, plus [`HANDING_OVER`] until `send` has handed every message over.
    unsettled: AtomicUsize,
    /// The first delivery failure.
    error: Mutex<Option<String>>,
    /// The key and timestamp of the latest-dated record handed over, for the message of a
    /// refused timestamp.
    latest: Mutex<Option<(Option<Vec<u8>>, i64)>>,
    done: Mutex<Option<oneshot::Sender<Result<(), TransportError>>>>,
}

impl Batch {
    fn new() -> (Arc<Self>, oneshot::Receiver<Result<(), TransportError>>) {
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            unsettled: AtomicUsize::new(HANDING_OVER),
            error: Mutex::new(None),
            latest: Mutex::new(None),
            done: Mutex::new(Some(tx)),
        };
        (Arc::new(batch), rx)
    }

    fn fail(&self, message: String) {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(message);
    }

    /// Counts `settled` down: one per report, and the sender's share once every message is
    /// handed over. Whoever reaches zero resolves the batch.
    fn settle(&self, settled: usize) {
        if self.unsettled.fetch_sub(settled, Ordering::AcqRel) != settled {
            return;
        }
        let result = match self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(message) => Err(TransportError::fatal(message)),
            None => Ok(()),
        };
        if let Some(done) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = done.send(result); // nobody waits when the sender gave up
        }
    }
}

pub(super) struct KafkaWriter {
    pub(super) producer: Producer,
    /// The producer's `message.max.bytes`, for the message of a refused record.
    pub(super) max_message_bytes: usize,
    /// Partition counts of the topics written, read from the cluster once each: keyless
    /// records with `exactly_once` are placed by their position, not by librdkafka.
    pub(super) partition_counts: PartitionCounts,
}

/// Partition counts by topic, shared by the writers of a transport.
pub(super) type PartitionCounts = Arc<Mutex<Vec<(Arc<str>, i32)>>>;

/// Bytes a message takes against `message.max.bytes`: key, value and headers.
fn message_bytes(record: &Record, payload: Option<&[u8]>) -> usize {
    payload.map_or(0, <[u8]>::len)
        + record.key.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

#[async_trait]
impl TopicWriter for KafkaWriter {
    async fn send_or_refuse(
        &self,
        records: Vec<Record>,
    ) -> Result<(Delivery, Vec<crate::transport::Refused>), TransportError> {
        self.hand_over(records, None).await
    }
}

impl KafkaWriter {
    /// Writes `records` to `partition` and waits until all are acknowledged; a refused record
    /// fails it. Errors say `cannot {what}: …`.
    pub(super) async fn write_acknowledged(
        &self,
        records: Vec<Record>,
        partition: i32,
        what: &str,
    ) -> Result<(), TransportError> {
        let (delivery, refused) = self.hand_over(records, Some(partition)).await?;
        if let Some((_, reason)) = refused.into_iter().next() {
            return Err(TransportError::fatal(format!("cannot {what}: {reason}")));
        }
        delivery
            .await
            .map_err(|e| TransportError::transient(format!("cannot {what}: {}", e.message)))
    }

    /// The partition count of `topic`, asked of the cluster the first time.
    async fn partition_count(&self, topic: &Arc<str>) -> Result<i32, TransportError> {
        let known = self
            .partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, n)| *n);
        if let Some(n) = known {
            return Ok(n);
        }
        let producer = self.producer.clone();
        let name = topic.to_string();
        let n = tokio::task::spawn_blocking(move || super::partition_count(&producer, &name))
            .await
            .map_err(|e| TransportError::fatal(format!("Kafka client task failed: {e}")))??;
        self.partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((topic.clone(), n));
        Ok(n)
    }

    /// [`TopicWriter::send_or_refuse`], every record to `partition` when it is set (else by
    /// key, or for a keyless record with `exactly_once` by its position).
    pub(super) async fn hand_over(
        &self,
        records: Vec<Record>,
        partition: Option<i32>,
    ) -> Result<(Delivery, Vec<crate::transport::Refused>), TransportError> {
        let mut refused = Vec::new();
        let (batch, settled) = Batch::new();
        // Known before any report can arrive: named if the broker refuses a timestamp.
        let latest = records
            .iter()
            .filter_map(|r| Some((r, r.timestamp?)))
            .max_by_key(|(_, ts)| *ts);
        *batch.latest.lock().unwrap_or_else(|e| e.into_inner()) =
            latest.map(|(r, ts)| (r.key.clone(), ts));
        // librdkafka copies the payload, so one buffer serves every record encoded here.
        let mut buffer = Vec::with_capacity(256);
        let mut handed_over = 0;
        for record in &records {
            // Keyless records sent again after a crash must land where they did before.
            let place = match partition {
                None if record.key.is_none()
                    && crate::exactly_once::position_of(record).is_some() =>
                {
                    let n = self.partition_count(&record.topic).await?;
                    crate::transport::fixed_partition(record, n)
                }
                other => other,
            };
            let payload = match (&record.encoded_value, record.is_tombstone()) {
                (Some(text), _) => Some(text.as_slice()),
                (None, true) => None,
                (None, false) => {
                    buffer.clear();
                    serde_json::to_writer(&mut buffer, &record.value)
                        .map_err(|e| TransportError::fatal(format!("cannot encode record: {e}")))?;
                    Some(buffer.as_slice())
                }
            };
            let mut message: BaseRecord<'_, [u8], [u8], Arc<Batch>> =
                BaseRecord::with_opaque_to(&record.topic, batch.clone());
            if let Some(key) = &record.key {
                message = message.key(key.as_slice());
            }
            if let Some(payload) = payload {
                message = message.payload(payload);
            }
            if let Some(ts) = record.timestamp {
                message = message.timestamp(ts);
            }
            if let Some(partition) = place {
                message = message.partition(partition);
            }
            if !record.headers.is_empty() {
                let headers = record
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |h, (k, v)| {
                        h.insert(Header {
                            key: k,
                            value: Some(v),
                        })
                    });
                message = message.headers(headers);
            }
            loop {
                match self.producer.send(message) {
                    Ok(()) => {
                        handed_over += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    // A bad record, not a failure of the pipeline: handed back to be
                    // dead-lettered (it would fail every run again).
                    Err((
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                        back,
                    )) => {
                        let size = message_bytes(record, back.payload);
                        refused.push((
                            record.clone(),
                            format!(
                                "record is {size} bytes, over the producer's `message.max.bytes` ({} bytes)",
                                self.max_message_bytes
                            ),
                        ));
                        break;
                    }
                    Err((e, _)) => {
                        return Err(TransportError::fatal(format!(
                            "cannot produce to `{}`: {e}",
                            record.topic
                        )))
                    }
                }
            }
        }
        batch.settle(HANDING_OVER - handed_over); // every message handed over
        let delivery = async move {
            settled.await.unwrap_or_else(|_| {
                Err(TransportError::fatal(
                    "the Kafka producer shut down before delivery",
                ))
            })
        }
        .boxed();
        Ok((delivery, refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_resolves_once_every_message_is_handed_over_and_reported() {
        let (batch, mut settled) = Batch::new();
        batch.settle(1); // a report arriving while `send` still hands messages over
        batch.settle(HANDING_OVER - 3);
        assert!(
            settled.try_recv().is_err(),
            "two of three reports still due"
        );
        batch.settle(1);
        assert!(settled.try_recv().is_err());
        batch.settle(1);
        assert!(matches!(settled.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn a_failed_delivery_fails_its_batch_and_an_empty_batch_resolves_at_once() {
        let (batch, mut settled) = Batch::new();
        batch.settle(HANDING_OVER - 2);
        batch.fail("delivery to `t` failed".into());
        batch.settle(1);
        batch.settle(1);
        let error = settled.try_recv().unwrap().unwrap_err();
        assert!(
            error.to_string().contains("delivery to `t` failed"),
            "{error}"
        );

        let (empty, mut settled) = Batch::new();
        empty.settle(HANDING_OVER);
        assert!(matches!(settled.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn delivered_ends_keep_the_furthest_end_per_topic_and_partition() {
        let ends = DeliveredEnds::default();
        ends.advance("a", 2, 10);
        ends.advance("a", 2, 7); // reports of one partition may come out of order across batches
        ends.advance("b", 0, 3);
        assert_eq!(ends.get("a", 2), 10);
        assert_eq!(ends.get("a", 0), 0);
        assert_eq!(ends.get("b", 0), 3);
        assert_eq!(ends.get("c", 0), 0);
    }
}
