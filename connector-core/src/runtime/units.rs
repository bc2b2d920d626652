//! Sources shared by the workers of a group (Kafka).
//!
//! Each source has a small compacted *control topic* with one partition per work unit slot
//! (one slot per file of a glob; one in all for a source that cannot be split), read by the
//! consumer group `sluice-<pipeline>-<source>-units`. The group coordinator assigns the slots
//! to live workers like any partitions; a worker runs, per slot it holds, an instance of the
//! source reading only that slot's units ([`UnitShare`]). Each slot stores its source offsets
//! under its own key (`<pipeline>/<source>/unit-<slot>`), so a slot that moves — on a join, or
//! from a killed worker once its session timed out — resumes where its last owner stored it.
//! Before a slot is given up its instance stops and stores its offsets.
//!
//! Each slot's latest record in the control topic is its status, `{"finished": bool}`: written
//! unfinished when an instance starts and finished when it reaches the end of its units. A
//! worker whose own slots are finished stays in the group until every slot's status is
//! finished, ready to take over the slots of a worker that dies; it does not leave on a
//! timer, since the group coordinator may hand it a dead worker's slots at any time before.

use super::deadline::Deadline;
use super::{transport_error, DeadLetters, PipelineRun};
use crate::transport::{OffsetStore, Rebalance, TopicPartition, Transport};
use crate::{ConnectorError, SourceOffsets, UnitShare};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The control topic of source `id` of `pipeline`: Kafka's topic-name characters only.
pub(super) fn control_topic(pipeline: &str, id: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("sluice-units.{}.{}", clean(pipeline), clean(id))
}

/// The consumer group whose members share the work units of source `id` of `pipeline`.
pub(super) fn units_group(pipeline: &str, id: &str) -> String {
    format!("sluice-{pipeline}-{id}-units")
}

/// The offsets-store name under which work-unit slot `slot` of source `id` keeps its offsets.
pub(super) fn slot_store(pipeline: &str, id: &str, slot: i32) -> String {
    format!("{pipeline}/{id}/unit-{slot}")
}

/// One source's share of the worker group.
pub(super) struct Units {
    pub run: Arc<PipelineRun>,
    pub id: String,
    pub topic: String,
    /// Slots (partitions of the control topic).
    pub count: i32,
    pub transport: Arc<dyn Transport>,
    /// The pipeline's own offsets, where a single process stored them before the source was
    /// shared: read by a slot that has stored nothing of its own yet.
    pub legacy: Arc<dyn OffsetStore>,
    pub dead_letters: DeadLetters,
}

/// How often a worker whose own slots are finished reads the status of every slot.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// How a slot's instance ended: the slot, whether it was stopped (rather than finished), and
/// its result.
type Ended = (i32, bool, Result<(), ConnectorError>);

impl Units {
    pub async fn run(
        self,
        shutdown: CancellationToken,
        deadline: Deadline,
    ) -> Result<(), ConnectorError> {
        let pipeline = self.run.config.name.clone();
        let group = units_group(&pipeline, &self.id);
        let mut reader = self
            .transport
            .reader(&group, std::slice::from_ref(&self.topic))
            .await
            .map_err(|e| transport_error(&self.id, e))?;
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Ended>();
        // The slots' instances: each reports how it ended, a panic too (as a failure); any
        // still running when this ends are aborted with the set, never left detached.
        let mut instances = tokio::task::JoinSet::new();
        // Slot → what stops its instance.
        let mut running: BTreeMap<i32, CancellationToken> = BTreeMap::new();
        let mut held: BTreeSet<i32> = BTreeSet::new();
        let mut finished: BTreeSet<i32> = BTreeSet::new();
        let mut joined = false;
        let mut statuses_read: Option<Instant> = None;
        let this = &self;
        let result = loop {
            let mut failed = None;
            while let Some(change) = reader.rebalance() {
                match change {
                    Rebalance::Assign(slots) => {
                        if let Err(e) = reader.assign(&slots, &[]).await {
                            failed = Some(transport_error(&self.id, e));
                            break;
                        }
                        joined = true;
                        // Each slot's offsets are read from a store of its own: read them
                        // side by side, so a rebalance of many slots takes a few reads' time.
                        let numbers: Vec<i32> = slots.iter().map(|(_, s)| *s).collect();
                        let prepared: Vec<_> = futures::stream::iter(numbers)
                            .map(|slot| async move { (slot, this.prepare(slot).await) })
                            .buffered(super::STORE_OPENS_AT_ONCE)
                            .collect()
                            .await;
                        for (slot, task) in prepared {
                            held.insert(slot);
                            match task {
                                Ok(task) => {
                                    let stop = self.launch(
                                        slot,
                                        task,
                                        &ended_tx,
                                        &shutdown,
                                        &deadline,
                                        &mut instances,
                                    );
                                    running.insert(slot, stop);
                                }
                                Err(e) => failed = Some(e),
                            }
                        }
                        if !slots.is_empty() {
                            tracing::info!(component = %self.id, units = %slots_list(&slots), of = self.count, "running work units");
                        }
                    }
                    Rebalance::Revoke(slots) => {
                        let mut stopping = BTreeSet::new();
                        for (_, slot) in &slots {
                            held.remove(slot);
                            finished.remove(slot);
                            if let Some(stop) = running.remove(slot) {
                                stop.cancel();
                                stopping.insert(*slot);
                            }
                        }
                        // Each stopped instance stores its offsets before the slot moves.
                        while !stopping.is_empty() {
                            let Some((slot, stopped, result)) = ended_rx.recv().await else {
                                break;
                            };
                            // Another slot that ended meanwhile.
                            if !stopping.remove(&slot)
                                && running.remove(&slot).is_some()
                                && !stopped
                            {
                                finished.insert(slot);
                                if let Err(e) = self.set_status(slot, true).await {
                                    failed = Some(e);
                                }
                            }
                            if let Err(e) = result {
                                failed = Some(e);
                            }
                        }
                        if let Err(e) = reader.revoke(&slots).await {
                            failed = Some(transport_error(&self.id, e));
                        }
                        tracing::info!(component = %self.id, units = %slots_list(&slots), "gave up work units to another worker, their offsets stored");
                    }
                }
            }
            metrics::gauge!("sluice_source_work_units", "pipeline" => pipeline.clone(), "component" => self.id.clone())
                .set(held.len() as f64);
            if let Some(e) = failed {
                break Err(e);
            }
            if shutdown.is_cancelled() {
                break Ok(());
            }
            if joined && running.is_empty() && held.is_subset(&finished) {
                if held.len() as i32 == self.count {
                    tracing::info!(component = %self.id, "every work unit finished");
                    break Ok(());
                }
                if statuses_read.is_none_or(|at| at.elapsed() >= STATUS_INTERVAL) {
                    statuses_read = Some(Instant::now());
                    match self.every_slot_finished().await {
                        Ok(true) => {
                            tracing::info!(component = %self.id, "every work unit finished, some by other workers");
                            break Ok(());
                        }
                        Ok(false) => {}
                        // Read again at the next interval; this worker has nothing else to do.
                        Err(e) => {
                            tracing::warn!(component = %self.id, error = %e, "cannot read the status of the work units; trying again")
                        }
                    }
                }
            }
            tokio::select! {
                ended = ended_rx.recv() => {
                    if let Some((slot, stopped, result)) = ended {
                        running.remove(&slot);
                        if let Err(e) = result {
                            break Err(e);
                        }
                        if !stopped {
                            finished.insert(slot);
                            if let Err(e) = self.set_status(slot, true).await {
                                break Err(e);
                            }
                        }
                    }
                }
                // Only for the group's rebalances: nothing is written to the control topic.
                polled = reader.poll(1, Duration::from_millis(250)) => {
                    if let Err(e) = polled {
                        break Err(transport_error(&self.id, e));
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        };
        // Whatever still runs stops (on shutdown it does by itself) and stores its offsets.
        for stop in running.values() {
            stop.cancel();
        }
        drop(ended_tx);
        let mut result = result;
        while !running.is_empty() {
            let Some((slot, _, ended)) = ended_rx.recv().await else {
                break;
            };
            running.remove(&slot);
            if let (Ok(()), Err(e)) = (&result, ended) {
                result = Err(e);
            }
        }
        result
    }

    /// Records whether `slot`'s units are `finished` as its status in the control topic.
    async fn set_status(&self, slot: i32, finished: bool) -> Result<(), ConnectorError> {
        self.transport
            .set_control_status(&self.topic, slot, slot_status(finished))
            .await
            .map_err(|e| transport_error(&self.id, e))
    }

    /// Whether the status of every slot in the control topic says finished.
    async fn every_slot_finished(&self) -> Result<bool, ConnectorError> {
        let statuses = self
            .transport
            .control_statuses(&self.topic, self.count)
            .await
            .map_err(|e| transport_error(&self.id, e))?;
        Ok(statuses.iter().all(|status| {
            status
                .as_ref()
                .and_then(|s| s.get("finished"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        }))
    }

    /// The instance of the source for `slot`, built from the offsets its store holds.
    async fn prepare(&self, slot: i32) -> Result<super::source_task::SourceTask, ConnectorError> {
        let share = UnitShare {
            count: self.count,
            holds: vec![slot],
        };
        let name = slot_store(&self.run.config.name, &self.id, slot);
        let store: Arc<dyn OffsetStore> = Arc::from(
            self.transport
                .offset_store(&name)
                .await
                .map_err(|e| transport_error(&self.id, e))?,
        );
        let mut stored = store
            .load(&self.id)
            .await
            .map_err(|e| transport_error(&self.id, e))?;
        if stored.is_empty() {
            stored = self.legacy_offsets(&share).await?;
        }
        let task = self
            .run
            .source_task(
                &self.id,
                &self.transport,
                store,
                stored,
                Some(share),
                &self.dead_letters,
            )
            .await?;
        self.set_status(slot, false).await?;
        Ok(task)
    }

    /// Starts `task`, the instance of the source for `slot`; returns what stops it.
    fn launch(
        &self,
        slot: i32,
        task: super::source_task::SourceTask,
        ended: &mpsc::UnboundedSender<Ended>,
        shutdown: &CancellationToken,
        deadline: &Deadline,
        instances: &mut tokio::task::JoinSet<()>,
    ) -> CancellationToken {
        let stop = shutdown.child_token();
        let (ended, token, deadline) = (ended.clone(), stop.clone(), deadline.clone());
        let owner = self.id.clone();
        instances.spawn(async move {
            let result = super::panic_as_error(task.run(token.clone(), deadline), &owner).await;
            let _ = ended.send((slot, token.is_cancelled(), result));
        });
        stop
    }

    /// The offsets a single process stored for the source before it was shared, of the units
    /// in `share`.
    async fn legacy_offsets(&self, share: &UnitShare) -> Result<SourceOffsets, ConnectorError> {
        let mut offsets = self
            .legacy
            .load(&self.id)
            .await
            .map_err(|e| transport_error(&self.id, e))?;
        offsets.retain(|unit, _| share.owns(unit));
        Ok(offsets)
    }
}

/// A slot's status record.
pub(super) fn slot_status(finished: bool) -> Value {
    serde_json::json!({ "finished": finished })
}

/// Slots for logs.
fn slots_list(slots: &[TopicPartition]) -> String {
    slots
        .iter()
        .map(|(_, slot)| slot.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_topics_are_named_with_kafka_topic_characters_only() {
        assert_eq!(
            control_topic("btc history", "yahoo/csv"),
            "sluice-units.btc_history.yahoo_csv"
        );
    }

    #[test]
    fn each_unit_belongs_to_exactly_one_slot() {
        let files: Vec<String> = (0..10).map(|i| format!("data/part-{i}.csv")).collect();
        let shares: Vec<UnitShare> = (0..4)
            .map(|slot| UnitShare {
                count: 4,
                holds: vec![slot],
            })
            .collect();
        for file in &files {
            assert_eq!(shares.iter().filter(|s| s.owns(file)).count(), 1, "{file}");
        }
    }
}

#[cfg(test)]
mod panics {
    use crate::config::{load_pipeline, LoadOptions};
    use crate::runtime::{PipelineRun, RunError, RunOptions};
    use crate::{
        ConnectorError, FieldError, Source, SourceBuildContext, SourceConfig, SourceRecord,
    };
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;
    use std::time::Duration;

    /// A source split into two work units whose instances panic on their first poll (a bug).
    #[derive(Debug, Serialize, Deserialize)]
    struct PanicsConfig {}

    #[async_trait::async_trait]
    #[typetag::serde(name = "test_panics")]
    impl SourceConfig for PanicsConfig {
        fn validate(&self) -> Result<(), Vec<FieldError>> {
            Ok(())
        }
        async fn build(&self, _: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
            Ok(Box::new(Panics))
        }
        fn work_units(&self) -> Option<usize> {
            Some(2)
        }
    }

    struct Panics;

    #[async_trait::async_trait]
    impl Source for Panics {
        async fn poll(&mut self, _: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
            panic!("a bug in the source");
        }
    }

    /// A private nisshi broker on a free loopback port (as `tests/common` starts one), killed
    /// on drop; its working folder goes with it.
    struct Broker(
        std::process::Child,
        String,
        #[allow(dead_code)] tempfile::TempDir,
    );

    impl Broker {
        fn start() -> Broker {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let url = format!("tcp://127.0.0.1:{port}");
            let dir = tempfile::tempdir().unwrap();
            let bin = std::env::var("BROKER_BIN").unwrap_or_else(|_| "nisshi".into());
            let child = std::process::Command::new(&bin)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://nisshi/"])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start the broker (`{bin}`): {e}. Install it with scripts/test.sh, or set BROKER_BIN."));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the broker did not listen"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Broker(child, format!("127.0.0.1:{port}"), dir)
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A work unit's instance that panics ends the run with that failure: it is not left
    /// detached while the source looks healthy and its slot waits for it forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_work_unit_that_panics_fails_its_source() {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "name: p\ntopics: { t: { partitions: 1 } }\nsources:\n  bug:\n    type: test_panics\n    topic: t\n",
        )
        .unwrap();
        let options = LoadOptions {
            kafka_bootstrap: Some(broker.1.clone()),
        };
        let run = Arc::new(PipelineRun::new(load_pipeline(&file, &options).unwrap()));
        let ran = tokio::time::timeout(
            Duration::from_secs(60),
            run.run(RunOptions {
                state_dir: dir.path().join("state"),
                shutdown: tokio_util::sync::CancellationToken::new(),
                drain_timeout: Duration::from_secs(2),
                once: false,
            }),
        )
        .await
        .expect("the run ends");
        match ran {
            Err(RunError::Run(e)) => assert!(e.message.contains("panicked"), "{e}"),
            other => panic!("the run ended with {other:?}"),
        }
    }
}
