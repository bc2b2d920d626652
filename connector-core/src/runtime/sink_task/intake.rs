//! Taking records in: what a read hands the task, and reading ahead while a batch is stored.

use super::*;

impl Intake<'_> {
    /// Decodes, transforms and queues what was read; bad records become dead letters.
    pub(super) fn take(
        &self,
        incoming: Vec<Incoming>,
        pending: &mut Pending,
    ) -> Result<(), ConnectorError> {
        if incoming.is_empty() {
            return Ok(());
        }
        self.metrics.received(incoming.len());
        pending.since.get_or_insert_with(Instant::now);
        pending.prepared = None;
        for item in incoming {
            let (topic, partition, offset) = item.coordinates();
            pending
                .offsets
                .insert((topic.clone(), partition), offset + 1);
            match item {
                Incoming::Record(record) if self.transforms.is_empty() => {
                    pending.records.push(record)
                }
                Incoming::Record(record) => match apply_transforms(self.transforms, &record) {
                    Ok(out) => {
                        if out.is_empty() {
                            ComponentMetrics::add(&self.metrics.skipped, 1);
                        }
                        pending.records.extend(out.into_iter().map(Arc::new));
                    }
                    Err(message) => pending.dead.extend(self.dead_letters.route(Failure {
                        component: self.id,
                        stage: "transform",
                        message,
                        record: Arc::unwrap_or_clone(record),
                        raw: None,
                        location: None,
                    })?),
                },
                Incoming::Undecodable {
                    envelope,
                    raw,
                    error,
                } => pending.dead.extend(self.dead_letters.route(Failure {
                    component: self.id,
                    stage: "deserialize",
                    message: error,
                    record: *envelope,
                    raw: Some(raw),
                    location: None,
                })?),
            }
        }
        Ok(())
    }
}

/// Whether [`SinkTask::flush`] reads the next batch while it stores one.
pub(super) enum ReadAheadMode<'a> {
    /// Nothing more is read meanwhile (the partitions are about to be given up, or the
    /// deadline has passed).
    Off,
    /// Read ahead, and prepare what was read with the sink's preparer if it has one.
    On(Option<&'a dyn PrepareBatch>),
}

/// `topic/partition` list for logs.
pub(super) fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(|(topic, partition)| format!("{topic}/{partition}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reading the next batch while the current one is being stored.
pub(super) struct ReadAhead<'a> {
    pub(super) intake: &'a Intake<'a>,
    pub(super) reader: &'a mut dyn TopicReader,
    /// Records to read at most: a batch.
    pub(super) max: usize,
    pub(super) preparer: Option<&'a dyn PrepareBatch>,
}

impl ReadAhead<'_> {
    /// Runs `work` while reading into `next`, up to `max` records, and preparing them once
    /// that many were read; stops reading at the first poll that finds nothing, or at a
    /// failure, returned with `work`'s result.
    pub(super) async fn run<T>(
        self,
        next: &mut Pending,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Option<ConnectorError>) {
        tokio::pin!(work);
        let mut read = 0;
        loop {
            // In small polls: the store's task resumes between them.
            let room = self.max.saturating_sub(read).min(READ_AHEAD_POLL);
            if room == 0 {
                if let Some(preparer) = self.preparer.filter(|_| !next.records.is_empty()) {
                    next.prepared = Some(preparer.prepare(&next.records));
                }
                return (work.await, None);
            }
            tokio::select! {
                biased;
                done = &mut work => return (done, None),
                polled = self.reader.poll(room, Duration::from_millis(500)) => match polled {
                    Ok(items) if items.is_empty() => return (work.await, None),
                    Ok(items) => {
                        read += items.len();
                        if let Err(e) = self.intake.take(items, next) {
                            return (work.await, Some(e));
                        }
                        // A poll that finds records waiting never suspends: let tasks the
                        // store spawned onto this worker run.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => return (work.await, Some(transport_error(self.intake.id, e))),
                }
            }
        }
    }
}
