//! A sink's or stream transform's reader: a consumer-group member with manual commits, told of
//! rebalances, measuring its lag.

use super::*;

pub(super) struct KafkaReader {
    pub(super) consumer: Arc<StreamConsumer<Member>>,
    /// Rebalances the group reported and the task has not completed yet.
    pub(super) changes: Arc<group::Changes>,
    /// The partitions this member reads; `None` until the group first assigned it some (or none).
    pub(super) owned: Option<BTreeSet<TopicPartition>>,
    /// Partitions of its topics in all.
    pub(super) partitions: usize,
    /// Next offset per owned partition: where it was assigned, then after what this reader
    /// returned.
    pub(super) positions: HashMap<TopicPartition, i64>,
    pub(super) delivered: DeliveredEnds,
    /// Asks for watermarks on the producer's connections: the consumer's may be held by a
    /// long-polling fetch.
    pub(super) watermarks: Producer,
    /// The topic of the last message read, shared by the records that follow from it.
    pub(super) last_topic: Option<Arc<str>>,
    /// Since when the broker reports a topic unknown, and when it last did (see [`missing_for`]).
    pub(super) missing: Option<(Instant, Instant)>,
    /// Whether its partitions are paused (the sink is paused): it still polls, so that the
    /// group does not evict it after `max.poll.interval.ms`.
    pub(super) paused: bool,
    /// Records fetched before a pause took effect, returned once resumed.
    pub(super) stash: std::collections::VecDeque<Incoming>,
}

/// Dropping the consumer leaves the group: the rebalance that closing reports is completed at
/// once, since the task stored and committed what it read before it let the reader go.
impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.changes.complete_at_once();
    }
}

/// How long a topic may be reported unknown before the sink fails: right after creation a
/// broker may not know it yet; a topic deleted under a running sink stays unknown.
pub(super) const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(10);

/// What a consumer error means for the sink reading.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ConsumerErrorKind {
    /// librdkafka retries by itself; log it.
    Transient,
    /// The topic or partition is unknown: transient for a while, then permanent.
    UnknownTopic,
    /// Retrying cannot help (authorization, authentication, a feature the broker refuses).
    Permanent,
}

pub(super) fn classify(error: &KafkaError) -> ConsumerErrorKind {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::InvalidTopic
            | C::SecurityDisabled
            | C::UnsupportedCompressionType
            | C::UnsupportedFeature,
        ) => ConsumerErrorKind::Permanent,
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            ConsumerErrorKind::UnknownTopic
        }
        _ => ConsumerErrorKind::Transient,
    }
}

/// How long a topic has been reported unknown, given one more report at `now`. A report more
/// than [`UNKNOWN_TOPIC_GRACE`] after the previous one starts a new episode: a topic missing
/// for a moment long ago must not fail the sink at its next moment.
pub(super) fn missing_for(missing: &mut Option<(Instant, Instant)>, now: Instant) -> Duration {
    let since = match *missing {
        Some((since, last)) if now.duration_since(last) < UNKNOWN_TOPIC_GRACE => since,
        _ => now,
    };
    *missing = Some((since, now));
    now.duration_since(since)
}

impl KafkaReader {
    /// Up to `max` records, waiting up to `wait` for the first.
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Incoming>, TransportError> {
        let consumer = self.consumer.clone();
        let mut out = Vec::new();
        let changes = self.changes.clone();
        // A rebalance reported while waiting ends the wait: the group waits for the task.
        let first = tokio::select! {
            first = tokio::time::timeout(wait, consumer.recv()) => match first {
                Err(_) => return Ok(out),
                Ok(first) => first,
            },
            _ = changes.reported() => return Ok(out),
        };
        match first {
            Ok(message) => out.push(self.decode(&message)),
            Err(e) => {
                self.consumer_error(e)?;
                return Ok(out);
            }
        }
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => out.push(self.decode(&message)),
                Some(Err(e)) => {
                    self.consumer_error(e)?;
                    break;
                }
                None => break,
            }
        }
        if !out.is_empty() {
            self.missing = None;
        }
        Ok(out)
    }
    /// Logs a transient consumer error; a permanent one (or a topic unknown for longer than
    /// [`UNKNOWN_TOPIC_GRACE`]) is returned with the broker's message.
    fn consumer_error(&mut self, error: KafkaError) -> Result<(), TransportError> {
        let fatal =
            |e: &KafkaError| TransportError::fatal(format!("the Kafka consumer cannot go on: {e}"));
        match classify(&error) {
            ConsumerErrorKind::Permanent => Err(fatal(&error)),
            ConsumerErrorKind::UnknownTopic => {
                if missing_for(&mut self.missing, Instant::now()) >= UNKNOWN_TOPIC_GRACE {
                    return Err(fatal(&error));
                }
                tracing::warn!(error = %error, "Kafka reports a topic or partition unknown; the sink fails if it stays so");
                Ok(())
            }
            ConsumerErrorKind::Transient => {
                tracing::warn!(error = %error, "Kafka consumer error; librdkafka retries");
                Ok(())
            }
        }
    }

    fn decode(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> Incoming {
        let topic = match &self.last_topic {
            Some(topic) if **topic == *message.topic() => topic.clone(),
            _ => self.last_topic.insert(message.topic().into()).clone(),
        };
        self.positions
            .insert((topic.clone(), message.partition()), message.offset() + 1);
        let envelope = Record {
            encoded_value: None,
            key: message.key().map(<[u8]>::to_vec),
            value: Value::Null,
            headers: message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp: message.timestamp().to_millis(),
            topic,
            partition: message.partition(),
            offset: message.offset(),
        };
        match message.payload() {
            None => Incoming::Record(Arc::new(envelope)),
            Some(bytes) => match crate::record::parse_value(bytes) {
                Ok(value) => Incoming::Record(Arc::new(Record { value, ..envelope })),
                Err(e) => Incoming::Undecodable {
                    envelope: Box::new(envelope),
                    raw: bytes.to_vec(),
                    error: format!("value is not JSON: {e}"),
                },
            },
        }
    }
}

#[async_trait]
impl TopicReader for KafkaReader {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming>, TransportError> {
        if self.paused {
            // Polled only to stay in the group: what comes is kept for the resume.
            let fetched = self.receive(max, wait).await?;
            self.stash.extend(fetched);
            return Ok(Vec::new());
        }
        if !self.stash.is_empty() {
            let n = max.min(self.stash.len());
            return Ok(self.stash.drain(..n).collect());
        }
        self.receive(max, wait).await
    }

    async fn set_paused(&mut self, paused: bool) -> Result<(), TransportError> {
        if paused == self.paused {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition) in self.owned.iter().flatten() {
            list.add_partition(topic, *partition);
        }
        let done = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        done.map_err(|e| {
            TransportError::transient(format!("cannot pause or resume the consumer: {e}"))
        })?;
        self.paused = paused;
        Ok(())
    }

    fn polls_while_paused(&self) -> bool {
        true
    }

    async fn commit(
        &mut self,
        offsets: &[PartitionOffset],
        wait: bool,
    ) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::new();
        for o in offsets {
            list.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.offset))
                .map_err(|e| TransportError::fatal(format!("bad offset {o:?}: {e}")))?;
        }
        let consumer = self.consumer.clone();
        if !wait {
            // Queued behind the fetch on the broker connection; the sink goes on meanwhile.
            return consumer.commit(&list, CommitMode::Async).map_err(|e| {
                TransportError::transient(format!("cannot commit consumer offsets: {e}"))
            });
        }
        blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await?
            .map_err(|e| TransportError::transient(format!("cannot commit consumer offsets: {e}")))
    }

    fn rebalance(&mut self) -> Option<Rebalance> {
        self.changes.next()
    }

    async fn assign(
        &mut self,
        partitions: &[TopicPartition],
        resume: &[PartitionOffset],
    ) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        // Where the group resumes the others, for `caught_up`.
        let (consumer, query) = (self.consumer.clone(), list.clone());
        let committed =
            blocking(move || consumer.committed_offsets(query, Duration::from_secs(10)))
                .await?
                .map_err(|e| {
                    TransportError::transient(format!("cannot read committed offsets: {e}"))
                })?;
        let mut start = TopicPartitionList::new();
        for e in committed.elements() {
            let key: TopicPartition = (e.topic().into(), e.partition());
            let stored = resume
                .iter()
                .find(|o| *o.topic == *key.0 && o.partition == key.1)
                .map(|o| o.offset);
            let at = match (stored, e.offset()) {
                (Some(offset), _) | (None, Offset::Offset(offset)) => Some(offset),
                _ => None,
            };
            let offset = stored.map(Offset::Offset).unwrap_or(Offset::Stored);
            start
                .add_partition_offset(&key.0, key.1, offset)
                .map_err(|err| {
                    TransportError::fatal(format!("cannot assign {}/{}: {err}", key.0, key.1))
                })?;
            if let Some(at) = at {
                self.positions.insert(key.clone(), at);
            }
            self.owned.get_or_insert_default().insert(key);
        }
        self.owned.get_or_insert_default();
        group::complete_assign(&*self.consumer, &start)?;
        if self.paused {
            self.consumer.pause(&start).map_err(|e| {
                TransportError::transient(format!("cannot pause the consumer: {e}"))
            })?;
        }
        Ok(())
    }

    async fn revoke(&mut self, partitions: &[TopicPartition]) -> Result<(), TransportError> {
        let mut list = TopicPartitionList::new();
        for key in partitions {
            list.add_partition(&key.0, key.1);
            if let Some(owned) = &mut self.owned {
                owned.remove(key);
            }
            self.positions.remove(key);
        }
        // Kept while paused, they are read again by the partitions' next owner.
        self.stash.retain(|item| {
            let (topic, partition, _) = item.coordinates();
            !partitions
                .iter()
                .any(|(t, p)| **t == **topic && *p == partition)
        });
        group::complete_revoke(&*self.consumer, &list)
    }

    async fn caught_up(&mut self) -> Result<bool, TransportError> {
        // Before its first assignment a member cannot tell what it has to read.
        if self.owned.is_none() {
            return Ok(false);
        }
        Ok(self.lag().await?.iter().all(|(_, lag)| *lag == 0))
    }

    fn owns_every_partition(&self) -> bool {
        self.owned
            .as_ref()
            .is_some_and(|owned| owned.len() >= self.partitions)
    }

    fn lag(&mut self) -> crate::transport::LagMeasure {
        let client = self.watermarks.clone();
        let partitions: Vec<TopicPartition> = self.owned.iter().flatten().cloned().collect();
        let positions = self.positions.clone();
        let delivered = self.delivered.clone();
        Box::pin(
            blocking(move || {
                let mut lag = Vec::with_capacity(partitions.len());
                for key in partitions {
                    let (low, high) = client
                        .client()
                        .fetch_watermarks(&key.0, key.1, Duration::from_secs(5))
                        .map_err(|e| {
                            TransportError::transient(format!(
                                "cannot read watermarks of {}/{}: {e}",
                                key.0, key.1
                            ))
                        })?;
                    let high = high.max(delivered.get(&key.0, key.1));
                    let behind = high - positions.get(&key).copied().unwrap_or(low);
                    lag.push((key, behind.max(0)));
                }
                Ok(lag)
            })
            .map(|r| r.and_then(|lag| lag)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_failures_are_permanent_and_network_errors_are_not() {
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageConsumption(code)),
                ConsumerErrorKind::Permanent,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(&KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition
            )),
            ConsumerErrorKind::UnknownTopic
        );
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageConsumption(code)),
                ConsumerErrorKind::Transient,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_topic_is_missing_for_as_long_as_the_reports_keep_coming() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut missing = None;
        assert_eq!(missing_for(&mut missing, at(0)), Duration::ZERO);
        assert_eq!(missing_for(&mut missing, at(4)), Duration::from_secs(4));
        assert_eq!(missing_for(&mut missing, at(8)), Duration::from_secs(8));
        assert!(missing_for(&mut missing, at(12)) >= UNKNOWN_TOPIC_GRACE);
        // A report long after the last one is a new episode.
        assert_eq!(missing_for(&mut missing, at(100)), Duration::ZERO);
    }
}
