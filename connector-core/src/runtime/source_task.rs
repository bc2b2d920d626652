//! A source task: poll → transforms → send → acknowledge in order → store source offsets.
//!
//! Batches are sent as they come and acknowledged strictly in order by a second task, so a
//! source offset is stored only when everything before it is delivered. Offsets are written by a
//! third task that always stores the latest acknowledged position (coalescing when storage is
//! slower than the source).

use super::dead_letter::{DeadLetters, Failure};
use super::{apply_transforms, transport_error};
use crate::metrics::ComponentMetrics;
use crate::transport::{Delivery, OffsetStore, TopicWriter};
use crate::{ConnectorError, Payload, Record, Source, Transform};
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
    pub dead_letters: DeadLetters,
    pub metrics: Arc<ComponentMetrics>,
}

struct Sent {
    delivery: Delivery,
    /// Source partition → offset after the last item of the batch.
    offsets: HashMap<String, Value>,
    records: usize,
}

impl SourceTask {
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), ConnectorError> {
        // Fires once shutdown has lasted longer than sinks may drain: stop waiting for acks.
        let give_up = CancellationToken::new();
        {
            let (shutdown, give_up) = (shutdown.clone(), give_up.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(drain_timeout + Duration::from_secs(1)).await;
                give_up.cancel();
            });
        }
        let (sent_tx, sent_rx) = mpsc::channel::<Sent>(self.max_in_flight_batches);
        let (acked_tx, acked_rx) = watch::channel(HashMap::new());
        let acker = tokio::spawn(acknowledge(
            sent_rx,
            acked_tx,
            self.metrics.clone(),
            give_up.clone(),
        ));
        let committer = tokio::spawn(store_offsets(
            acked_rx,
            self.offsets.clone(),
            self.id.clone(),
        ));

        let produced = self.produce(&shutdown, &give_up, sent_tx).await;
        let acked = acker
            .await
            .map_err(|e| ConnectorError::internal(format!("acknowledger panicked: {e}")));
        let stored = committer
            .await
            .map_err(|e| ConnectorError::internal(format!("offset writer panicked: {e}")));
        self.metrics.finish();
        produced?;
        acked??;
        stored??;
        Ok(())
    }

    async fn produce(
        &mut self,
        shutdown: &CancellationToken,
        give_up: &CancellationToken,
        sent: mpsc::Sender<Sent>,
    ) -> Result<(), ConnectorError> {
        loop {
            let polled = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                polled = self.source.poll(self.batch_size) => polled.map_err(|e| e.in_component(&self.id))?,
            };
            let Some(items) = polled else {
                tracing::info!(component = %self.id, "source finished");
                return Ok(());
            };
            if items.is_empty() {
                continue;
            }
            self.metrics.received(items.len());
            let mut records = Vec::with_capacity(items.len());
            let mut offsets = HashMap::new();
            // Consecutive items mostly share a partition: one map insert per run of them.
            let mut last: Option<(std::sync::Arc<str>, Value)> = None;
            let mut dead = 0;
            for item in items {
                match item.payload {
                    Payload::Record(mut record) if self.transforms.is_empty() => {
                        record.topic.clone_from(&self.topic);
                        records.push(record);
                    }
                    Payload::Record(mut record) => {
                        record.decode_value().map_err(|e| {
                            ConnectorError::internal(format!(
                                "the source wrote a value that is not JSON: {e}"
                            ))
                            .in_component(&self.id)
                        })?;
                        match apply_transforms(&self.transforms, record.clone()) {
                            Ok(out) if out.is_empty() => {
                                ComponentMetrics::add(&self.metrics.skipped, 1)
                            }
                            Ok(out) => records.extend(out.into_iter().map(|mut r| {
                                r.topic = self.topic.clone();
                                r
                            })),
                            Err(message) => {
                                records.push(self.dead_letters.route(Failure {
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
                    Payload::Bad(bad) => {
                        records.push(self.dead_letters.route(Failure {
                            component: &self.id,
                            stage: "source",
                            message: bad.message,
                            record: Record::new(Value::Null),
                            raw: Some(bad.raw),
                            location: Some(bad.location),
                        })?);
                        dead += 1;
                    }
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
            ComponentMetrics::add(&self.metrics.dead_lettered, dead);
            let count = records.len() - dead;
            let delivery = tokio::select! {
                _ = give_up.cancelled() => return Ok(()),
                d = self.writer.send(records) => d.map_err(|e| transport_error(&self.id, e))?,
            };
            let batch = Sent {
                delivery,
                offsets,
                records: count,
            };
            if sent.send(batch).await.is_err() {
                return Ok(()); // the acknowledger stopped; its error is reported by `run`
            }
        }
    }
}

/// Awaits deliveries in send order and publishes the offsets they make safe to store.
async fn acknowledge(
    mut sent: mpsc::Receiver<Sent>,
    acked: watch::Sender<HashMap<String, Value>>,
    metrics: Arc<ComponentMetrics>,
    give_up: CancellationToken,
) -> Result<(), ConnectorError> {
    let component = metrics.id.clone();
    let mut merged = HashMap::new();
    while let Some(batch) = sent.recv().await {
        tokio::select! {
            _ = give_up.cancelled() => {
                tracing::warn!(component = %component, "shutdown deadline passed with records unacknowledged; they will be read again on restart");
                return Ok(());
            }
            delivered = batch.delivery => delivered.map_err(|e| transport_error(&component, e))?,
        }
        ComponentMetrics::add(&metrics.records_out, batch.records);
        merged.extend(batch.offsets);
        acked.send_replace(merged.clone());
    }
    Ok(())
}

/// Stores the latest acknowledged offsets whenever they change, and once more at the end.
async fn store_offsets(
    mut acked: watch::Receiver<HashMap<String, Value>>,
    store: Arc<dyn OffsetStore>,
    component: String,
) -> Result<(), ConnectorError> {
    while acked.changed().await.is_ok() {
        let offsets = acked.borrow_and_update().clone();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match store.store(&component, &offsets).await {
                Ok(()) => break,
                Err(e) if e.retryable && attempt < 10 => {
                    tracing::warn!(component = %component, error = %e, "cannot store source offsets yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(transport_error(&component, e)),
            }
        }
    }
    Ok(())
}
