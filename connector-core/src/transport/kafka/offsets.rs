//! Source offsets and stream-transform checkpoints in a compacted topic: chunked snapshots
//! with alternating generations, read back whole at start.

use super::*;

/// Every component's source offsets of one pipeline: component → source partition → offset.
pub(super) type PipelineOffsets = HashMap<String, HashMap<String, Value>>;

/// Source offsets of a pipeline as snapshots: each store writes every component's offsets as
/// one record keyed `[pipeline]` to the pipeline's own partition of the compacted offsets
/// topic, so its latest record alone is the state (and all compaction keeps of it).
///
/// Start-up does not trust the broker's high watermark (tansu 0.6's stops at the base offset
/// of the last batch, which made restarts read stale offsets): it writes a marker keyed
/// `[pipeline, "start"]` to the same partition, learns the marker's offset from its delivery
/// report, and reads back from there in growing windows until it meets the last snapshot
/// before it. That is the true end, read in time bound by what was written since the last
/// snapshot, not by the pipeline's age. A read that finds no snapshot writes a record keyed
/// `[pipeline, "nothing_before"]` naming its marker's offset, and later reads stop there (or
/// at the partition's start for the chunks of a snapshot found above it), so a store that is
/// opened again and again but never written costs what was written since, too.
///
/// A snapshot larger than a record may be (stream transforms checkpoint their whole state here)
/// is written as chunks keyed `[pipeline, "chunk", parity, i]`, each with its generation in a
/// header, followed by a manifest keyed `[pipeline]` naming the generation and the number of
/// chunks. Generations alternate between two parities, so the chunks of the last complete
/// snapshot are never the ones a torn write (a crash between chunks) replaced: compaction keeps
/// them until the next snapshot's manifest is written.
pub(super) struct KafkaOffsetStore {
    pub(super) config: KafkaConfig,
    pub(super) producer: Producer,
    pub(super) pipeline: String,
    pub(super) writer: KafkaWriter,
    /// Read once, then what the last store wrote. Held through a store's hand-over, so the
    /// snapshots reach the partition in the order they were made.
    pub(super) state: tokio::sync::Mutex<Option<Loaded>>,
}

pub(super) struct Loaded {
    /// The pipeline's partition of the offsets topic.
    pub(super) partition: i32,
    pub(super) offsets: PipelineOffsets,
    /// Generation of the last chunked snapshot (0 if none); `None` while it is not known:
    /// from when a manifest is written until it is acknowledged, and after a manifest whose
    /// acknowledgement was lost (it may be stored or not, so the next snapshot reads back which
    /// is current before it picks a parity: it must not overwrite the chunks of the current one).
    pub(super) generation: Option<u64>,
}

/// The field of a manifest: the snapshot is in chunks.
pub(super) const CHUNKS_FIELD: &str = "sluice.chunks";

/// The header holding a chunk's generation.
pub(super) const GENERATION_HEADER: &str = "sluice.generation";

/// What a chunked snapshot's manifest says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) generation: u64,
    pub(super) count: u32,
}

/// The generation of the next chunked snapshot after the last stored one, `last`: increasing
/// (across restarts too, from the clock) and of the other parity, so that its chunks never
/// replace those of `last`.
pub(super) fn next_generation(last: u64, now_ms: u64) -> u64 {
    let next = (last + 1).max(now_ms);
    if next % 2 == last % 2 {
        next + 1
    } else {
        next
    }
}

/// The field of the record keyed [`nothing_before_key`]: the offset below which `pipeline`
/// has no snapshot (what a read back that found none learnt), so later reads stop there.
pub(super) const NOTHING_BEFORE: &str = "nothing_before";

/// The key of the record saying where `pipeline`'s snapshots start.
pub(super) fn nothing_before_key(pipeline: &str) -> Vec<u8> {
    serde_json::to_vec(&(pipeline, NOTHING_BEFORE)).unwrap_or_default()
}

/// The key of chunk `index` of snapshots of `pipeline` with generation parity `parity`.
pub(super) fn chunk_key(pipeline: &str, parity: u64, index: u32) -> Vec<u8> {
    serde_json::to_vec(&(pipeline, "chunk", parity, index)).unwrap_or_default()
}

/// Partitions of an offsets topic Sluice creates.
pub(super) const OFFSETS_TOPIC_PARTITIONS: i32 = 25;

/// Records read back from the marker at first; each further window is 8 times larger.
pub(super) const FIRST_WINDOW: i64 = 64;

/// How long reading the offsets at start may take.
pub(super) const OFFSETS_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl KafkaOffsetStore {
    fn snapshot_key(pipeline: &str) -> Vec<u8> {
        serde_json::to_vec(&[pipeline]).unwrap_or_default()
    }

    async fn state(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Loaded>>, TransportError> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(self.read_latest().await?);
        }
        Ok(state)
    }

    /// Writes the start marker, then reads back from it to the last snapshot.
    async fn read_latest(&self) -> Result<Loaded, TransportError> {
        let topic = self.config.offsets_topic.clone();
        let producer = self.producer.clone();
        let pipeline = self.pipeline.clone();
        let partition = blocking(move || partition_of(&producer, &topic, &pipeline)).await??;

        let topic = self.config.offsets_topic.clone();
        let started = serde_json::json!({
            "started_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "pid": std::process::id(),
        });
        let mut marker = Record::new(started)
            .with_key(serde_json::to_vec(&(&self.pipeline, "start")).unwrap_or_default());
        marker.topic = topic.as_str().into();
        self.writer
            .write_acknowledged(
                vec![marker],
                partition,
                &format!("write the start marker to `{topic}`"),
            )
            .await?;
        // Nothing else of this pipeline is written there before the state is loaded, so the
        // end this producer saw acknowledged is just after the marker.
        let marker_at = self.producer.context().delivered.get(&topic, partition) - 1;
        let (config, producer, pipeline) = (
            self.config.clone(),
            self.producer.clone(),
            self.pipeline.clone(),
        );
        let found =
            blocking(move || read_back(&config, &producer, &pipeline, partition, marker_at))
                .await??;
        let Some((offsets, generation)) = found else {
            // Nothing stored yet, so this read went back to the partition's start. Saying so
            // bounds the next open's read to what is written after the marker, also when
            // nothing is ever stored (a source that never sends, an idle work unit). It is
            // not an empty snapshot: a snapshot another worker stores meanwhile stays current.
            let mut none = Record::new(serde_json::json!({ NOTHING_BEFORE: marker_at }))
                .with_key(nothing_before_key(&self.pipeline));
            none.topic = topic.as_str().into();
            self.writer
                .write_acknowledged(
                    vec![none],
                    partition,
                    &format!("write to `{topic}` that nothing is stored"),
                )
                .await?;
            return Ok(Loaded {
                partition,
                offsets: PipelineOffsets::new(),
                generation: Some(0),
            });
        };
        Ok(Loaded {
            partition,
            offsets,
            generation: Some(generation),
        })
    }
}

/// The partition of the offsets topic that holds `pipeline`'s records.
pub(super) fn partition_of(
    producer: &Producer,
    topic: &str,
    pipeline: &str,
) -> Result<i32, TransportError> {
    Ok(crate::transport::partition_for_key(
        pipeline.as_bytes(),
        partition_count(producer, topic)?,
    ))
}

/// How many partitions `topic` has, as the cluster says (a blocking call).
pub(super) fn partition_count(producer: &Producer, topic: &str) -> Result<i32, TransportError> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| {
            TransportError::transient(format!("cannot read metadata of `{topic}`: {e}"))
        })?;
    let partitions = metadata
        .topics()
        .iter()
        .map(|t| t.partitions().len())
        .sum::<usize>();
    if partitions == 0 {
        return Err(TransportError::transient(format!(
            "topic `{topic}` has no partitions yet"
        )));
    }
    Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
}

/// The low and high watermarks of `partition` of `topic`.
pub(super) fn watermarks(
    producer: &Producer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), TransportError> {
    producer
        .client()
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| TransportError::transient(format!("cannot read watermarks of `{topic}`: {e}")))
}

/// The latest record's value of each of the first `partitions` partitions of `topic`, read by
/// a consumer of no group; `None` where the partition is empty.
pub(super) fn latest_records(
    config: &KafkaConfig,
    producer: &Producer,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<Value>>, TransportError> {
    let mut latest = vec![None; usize::try_from(partitions).unwrap_or(0)];
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in 0..partitions {
        let (low, high) = watermarks(producer, topic, partition)?;
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(high - 1))
                .map_err(|e| TransportError::fatal(e.to_string()))?;
            ends.insert(partition, high);
        }
    }
    if ends.is_empty() {
        return Ok(latest);
    }
    let mut client = base_config(config);
    // librdkafka assigns partitions only to a consumer with a group; this one never joins it
    // nor commits.
    client
        .set("group.id", format!("sluice-status-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<Quiet> = client
        .create_with_context(Quiet::default())
        .map_err(|e| TransportError::fatal(format!("cannot create a reader of `{topic}`: {e}")))?;
    consumer
        .assign(&list)
        .map_err(|e| TransportError::fatal(format!("cannot read `{topic}`: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ends.is_empty() {
        let message = next_message(&consumer, topic, deadline, "the latest records")?;
        let partition = message.partition();
        if ends.get(&partition) != Some(&(message.offset() + 1)) {
            continue;
        }
        ends.remove(&partition);
        let value = match message.payload() {
            Some(payload) => Some(serde_json::from_slice(payload).map_err(|e| {
                TransportError::fatal(format!("a record of `{topic}` is not JSON: {e}"))
            })?),
            None => None,
        };
        if let Some(slot) = usize::try_from(partition)
            .ok()
            .and_then(|p| latest.get_mut(p))
        {
            *slot = value;
        }
    }
    Ok(latest)
}

/// The last snapshot of `pipeline` before offset `upto` of `partition`, read back in windows
/// of growing size, with its generation (when chunked); `None` when there is none.
pub(super) fn read_back(
    config: &KafkaConfig,
    producer: &Producer,
    pipeline: &str,
    partition: i32,
    mut upto: i64,
) -> Result<Option<(PipelineOffsets, u64)>, TransportError> {
    let topic = &config.offsets_topic;
    let (low, _) = watermarks(producer, topic, partition)?;
    if upto <= low {
        return Ok(None);
    }
    let nothing_before = nothing_before_key(pipeline);
    // Below this no snapshot of the pipeline starts (chunks of one may still lie below it).
    let mut floor = low;
    let mut client = base_config(config);
    client
        .set("group.id", format!("sluice-offsets-reader-{pipeline}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<Quiet> = client
        .create_with_context(Quiet::default())
        .map_err(|e| TransportError::fatal(format!("cannot create offsets reader: {e}")))?;
    let key = KafkaOffsetStore::snapshot_key(pipeline);
    let unreadable = |e: serde_json::Error| {
        TransportError::fatal(format!(
            "the stored source offsets of pipeline `{pipeline}` in `{topic}` are not readable: {e}"
        ))
    };
    let deadline = Instant::now() + OFFSETS_READ_TIMEOUT;
    let mut window = FIRST_WINDOW;
    // Once the last snapshot is found to be chunked: its manifest, offset, and the chunks
    // found so far (index → bytes), the newest of each index before the manifest.
    let mut chunked: Option<(Manifest, i64, BTreeMap<u32, Vec<u8>>)> = None;
    loop {
        let bottom = if chunked.is_some() { low } else { floor };
        if upto <= bottom {
            break;
        }
        let from = upto.saturating_sub(window).max(bottom);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| TransportError::fatal(e.to_string()))?;
        consumer
            .assign(&list)
            .map_err(|e| TransportError::fatal(format!("cannot read `{topic}`: {e}")))?;
        // The window's last snapshot and its offset: `None` payload for a tombstone (offsets
        // deleted); and every chunk of this pipeline in it, in offset order.
        let mut latest: Option<(i64, Option<Vec<u8>>)> = None;
        let mut chunks: Vec<(i64, u64, u32, Vec<u8>)> = Vec::new();
        loop {
            let message = next_message(&consumer, topic, deadline, "source offsets")?;
            // Past the window: what was left of it is compacted away.
            if message.offset() >= upto {
                break;
            }
            if message.key() == Some(key.as_slice()) {
                latest = Some((message.offset(), message.payload().map(<[u8]>::to_vec)));
            } else if message.key() == Some(nothing_before.as_slice()) {
                // No snapshot lies below that offset: the read need not go further.
                let below = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                    .and_then(|v| v.get(NOTHING_BEFORE)?.as_i64());
                if let Some(below) = below {
                    floor = floor.max(below);
                }
            } else if let Some(index) = message.key().and_then(|k| chunk_index(k, pipeline)) {
                let generation = message
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == GENERATION_HEADER)
                            .and_then(|h| h.value)
                    })
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                if let (Some(generation), Some(payload)) = (generation, message.payload()) {
                    chunks.push((message.offset(), generation, index, payload.to_vec()));
                }
            }
            if message.offset() + 1 >= upto {
                break;
            }
        }
        if chunked.is_none() {
            match latest {
                Some((_, None)) => return Ok(Some((PipelineOffsets::new(), 0))),
                Some((at, Some(payload))) => match manifest_of(&payload).map_err(unreadable)? {
                    None => {
                        return Ok(Some((
                            serde_json::from_slice(&payload).map_err(unreadable)?,
                            0,
                        )))
                    }
                    Some(manifest) => chunked = Some((manifest, at, BTreeMap::new())),
                },
                None => {}
            }
        }
        if let Some((manifest, at, found)) = &mut chunked {
            // Newest first: the first of an index met is the one the manifest follows.
            for (offset, generation, index, payload) in chunks.into_iter().rev() {
                if offset < *at && generation == manifest.generation && index < manifest.count {
                    found.entry(index).or_insert(payload);
                }
            }
            if found.len() == manifest.count as usize {
                let bytes: Vec<u8> = std::mem::take(found).into_values().flatten().collect();
                let offsets = serde_json::from_slice(&bytes).map_err(unreadable)?;
                return Ok(Some((offsets, manifest.generation)));
            }
        }
        upto = from;
        window = window.saturating_mul(8);
    }
    match chunked {
        Some((manifest, _, found)) => Err(TransportError::fatal(format!(
            "the stored source offsets of pipeline `{pipeline}` in `{topic}` are incomplete: {} of the {} chunks of generation {} are left",
            found.len(),
            manifest.count,
            manifest.generation
        ))),
        None => Ok(None),
    }
}

/// The next message `consumer` reads of `topic`, unless `deadline` passes first (`what` it
/// reads, for the message).
pub(super) fn next_message<'c>(
    consumer: &'c BaseConsumer<Quiet>,
    topic: &str,
    deadline: Instant,
    what: &str,
) -> Result<rdkafka::message::BorrowedMessage<'c>, TransportError> {
    loop {
        if Instant::now() > deadline {
            return Err(TransportError::transient(format!(
                "timed out reading {what} from `{topic}`"
            )));
        }
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            return message
                .map_err(|e| TransportError::transient(format!("cannot read `{topic}`: {e}")));
        }
    }
}

/// The index of a chunk of `pipeline`'s snapshots, if `key` is one's key.
pub(super) fn chunk_index(key: &[u8], pipeline: &str) -> Option<u32> {
    let (name, kind, _parity, index): (String, String, u64, u32) =
        serde_json::from_slice(key).ok()?;
    (name == pipeline && kind == "chunk").then_some(index)
}

/// The manifest in a snapshot's payload, if it is one (rather than the offsets themselves).
pub(super) fn manifest_of(payload: &[u8]) -> Result<Option<Manifest>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "sluice.chunks")]
        chunks: Option<Manifest>,
    }
    // Only a manifest is this small; a large payload is read once, as the offsets.
    if payload.len() > 256 {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Probe>(payload)?.chunks)
}

#[async_trait]
impl OffsetStore for KafkaOffsetStore {
    async fn load(&self, component: &str) -> Result<HashMap<String, Value>, TransportError> {
        let state = self.state().await?;
        Ok(state
            .as_ref()
            .and_then(|s| s.offsets.get(component).cloned())
            .unwrap_or_default())
    }

    async fn store(
        &self,
        component: &str,
        offsets: HashMap<String, Value>,
    ) -> Result<(), TransportError> {
        let mut state = self.state().await?;
        let Some(loaded) = state.as_mut() else {
            return Err(TransportError::fatal("source offsets were not loaded"));
        };
        loaded
            .offsets
            .entry(component.to_string())
            .or_default()
            .extend(offsets);
        self.publish(state).await
    }

    async fn remove(&self, component: &str) -> Result<(), TransportError> {
        let mut state = self.state().await?;
        let Some(loaded) = state.as_mut() else {
            return Err(TransportError::fatal("source offsets were not loaded"));
        };
        if loaded.offsets.remove(component).is_none() {
            return Ok(());
        }
        self.publish(state).await
    }
}

impl KafkaOffsetStore {
    /// Writes the pipeline's offsets as `state` holds them now, as one snapshot record, and
    /// waits for it to be acknowledged.
    async fn publish(
        &self,
        mut state: tokio::sync::MutexGuard<'_, Option<Loaded>>,
    ) -> Result<(), TransportError> {
        let Some(loaded) = state.as_mut() else {
            return Err(TransportError::fatal("source offsets were not loaded"));
        };
        let snapshot = serde_json::to_vec(&loaded.offsets)
            .map_err(|e| TransportError::fatal(format!("cannot encode source offsets: {e}")))?;
        let topic: Arc<str> = self.config.offsets_topic.as_str().into();
        let record = |key: Vec<u8>, payload: Vec<u8>| {
            let mut record = Record::new(Value::Null).with_key(key);
            record.encoded_value = Some(payload);
            record.topic = topic.clone();
            record
        };
        let chunk_bytes = self
            .writer
            .max_message_bytes
            .saturating_sub(CHUNK_MARGIN)
            .max(CHUNK_MARGIN);
        let records = if snapshot.len() <= chunk_bytes {
            vec![record(Self::snapshot_key(&self.pipeline), snapshot)]
        } else {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let last = match loaded.generation {
                Some(last) => last,
                None => {
                    let current = self.read_latest().await?.generation;
                    loaded.generation = current;
                    current.unwrap_or_default()
                }
            };
            let generation = next_generation(last, now_ms);
            let mut records = Vec::new();
            for (index, chunk) in snapshot.chunks(chunk_bytes).enumerate() {
                let mut chunk = record(
                    chunk_key(&self.pipeline, generation % 2, index as u32),
                    chunk.to_vec(),
                );
                chunk.headers.push((
                    GENERATION_HEADER.into(),
                    generation.to_string().into_bytes(),
                ));
                records.push(chunk);
            }
            let manifest = Manifest {
                generation,
                count: records.len() as u32,
            };
            // The chunks are all stored before the manifest that makes them the snapshot.
            let what = format!("store the source offsets of pipeline `{}`", self.pipeline);
            self.writer
                .write_acknowledged(records, loaded.partition, &what)
                .await?;
            let manifest = serde_json::to_vec(&serde_json::json!({ CHUNKS_FIELD: manifest }))
                .map_err(|e| TransportError::fatal(format!("cannot encode source offsets: {e}")))?;
            let manifest = vec![record(Self::snapshot_key(&self.pipeline), manifest)];
            // Until the manifest is acknowledged, either generation may be the current one.
            loaded.generation = None;
            self.writer
                .write_acknowledged(manifest, loaded.partition, &what)
                .await?;
            // Only a generation whose manifest is stored decides the next one's parity.
            loaded.generation = Some(generation);
            return Ok(());
        };
        let (delivery, refused) = self
            .writer
            .hand_over(records, Some(loaded.partition))
            .await?;
        drop(state);
        if let Some((_, reason)) = refused.into_iter().next() {
            return Err(TransportError::fatal(format!(
                "cannot store the source offsets of pipeline `{}`: {reason}",
                self.pipeline
            )));
        }
        // Storing offsets again is harmless (the latest wins), so a failed delivery is one
        // more retryable failure: a broker answering an error while it stops must not end
        // the source.
        delivery
            .await
            .map_err(|e| TransportError::transient(e.message))
    }
}

/// Room left in a chunk's record for its key, headers and framing.
pub(super) const CHUNK_MARGIN: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_snapshot_generations_increase_and_alternate_parity() {
        let mut last = 0;
        for now_ms in [
            1_700_000_000_000,
            1_700_000_000_000,
            1_700_000_000_002,
            5,
            1_800_000_000_001,
        ] {
            let next = next_generation(last, now_ms);
            assert!(next > last && next >= now_ms, "{last} → {next} at {now_ms}");
            assert_ne!(next % 2, last % 2, "{last} → {next} at {now_ms}");
            last = next;
        }
    }
}
