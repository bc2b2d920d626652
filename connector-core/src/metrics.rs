//! Per-component counters and controls, shared by the runtime (writes) and the CLI's progress
//! display and REST API (reads, pause/resume).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Counters of one component.
#[derive(Debug, Default)]
pub struct ComponentMetrics {
    /// `source` or `sink`.
    pub kind: &'static str,
    pub id: String,
    /// Records received (polled from the source, read from the topic).
    pub records_in: AtomicU64,
    /// Records written and acknowledged (to the topic, into the store).
    pub records_out: AtomicU64,
    /// Bad records dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Records dropped on purpose (by a transform or a connector option such as `all_null_rows: skip`).
    pub skipped: AtomicU64,
    /// A stream transform's output records written to its topic (its `records_out` counts
    /// the inputs it took in and stored).
    pub records_written: AtomicU64,
    /// A source that reached the end of its input (not one stopped before it).
    completed: std::sync::atomic::AtomicBool,
    /// How far a source whose end is known has come: (done, total).
    progress: Mutex<Option<(u64, u64)>>,
    /// Waiting out a rate limit now, and how many rate-limit answers there were.
    throttled: std::sync::atomic::AtomicBool,
    throttled_count: AtomicU64,
    /// When the first record came in.
    first_record_at: OnceLock<Instant>,
    /// When the component stopped (cleared by a restart).
    finished_at: Mutex<Option<Instant>>,
    /// When a source's poll last returned records, in milliseconds since the epoch (0: never).
    pub last_poll_ms: AtomicU64,
    /// True while the component is paused (REST API): sources stop polling, sinks stop reading.
    paused: OnceLock<tokio::sync::watch::Sender<bool>>,
    /// Why the component failed, if it did.
    failure: Mutex<Option<Failure>>,
    /// A sink's consumer lag when last measured: (topic, partition, records not read yet).
    lag: Mutex<Vec<(String, i32, i64)>>,
    /// What this process last stored as the component's offsets, in Kafka Connect's shape
    /// (`{partition, offset}`), by partition.
    offsets: Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Whether its last start failed while building (connecting): then the failure is one of
    /// the run's setup, as a failure before any task started is.
    build_failed: std::sync::atomic::AtomicBool,
    /// A source that started from offsets an earlier run stored.
    resumed: std::sync::atomic::AtomicBool,
}

impl sluice_api::SourceStatus for ComponentMetrics {
    fn set_throttled(&self, now: bool) {
        ComponentMetrics::set_throttled(self, now);
    }
}

/// A component's failure as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    /// Also in the log line of the failure, to find it there.
    pub trace_id: String,
}

/// What a component is doing, in Kafka Connect's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Running, and waiting out a rate limit the service it reads answered.
    Throttled,
    Paused,
    Failed,
    /// Finished (a source read its input to the end) or stopped.
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "RUNNING",
            State::Throttled => "THROTTLED",
            State::Paused => "PAUSED",
            State::Failed => "FAILED",
            State::Stopped => "STOPPED",
        }
    }
}

impl ComponentMetrics {
    pub fn new(kind: &'static str, id: &str) -> Arc<Self> {
        Arc::new(ComponentMetrics {
            kind,
            id: id.to_string(),
            ..Default::default()
        })
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` records in; the first ones start the active time.
    pub fn received(&self, n: usize) {
        if n > 0 {
            self.first_record_at.get_or_init(Instant::now);
        }
        Self::add(&self.records_in, n);
    }

    /// Marks the component stopped; this ends its active time.
    pub fn finish(&self) {
        self.finished_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
    }

    fn finished(&self) -> Option<Instant> {
        *self.finished_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes whether the component's last start failed while building (connecting).
    pub fn set_build_failed(&self, failed: bool) {
        self.build_failed.store(failed, Ordering::Relaxed);
    }

    /// Notes how far a source whose end is known has come: `(done, total)`.
    pub fn set_progress(&self, progress: (u64, u64)) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress);
    }

    /// How far the source has come, `(done, total)`, when its end is known.
    pub fn progress(&self) -> Option<(u64, u64)> {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that the source reached the end of its input.
    pub fn set_completed(&self) {
        self.completed.store(true, Ordering::Relaxed);
    }

    /// Whether the source reached the end of its input.
    pub fn completed(&self) -> bool {
        self.completed.load(Ordering::Relaxed)
    }

    /// Notes that the source started from offsets an earlier run stored.
    pub fn set_resumed(&self) {
        self.resumed.store(true, Ordering::Relaxed);
    }

    /// Whether the source started from offsets an earlier run stored.
    pub fn resumed(&self) -> bool {
        self.resumed.load(Ordering::Relaxed)
    }

    /// Whether the component's last start failed while building (connecting).
    pub fn build_failed(&self) -> bool {
        self.build_failed.load(Ordering::Relaxed)
    }

    /// The component runs again (restarted or resumed after a stop): no failure, not stopped.
    pub fn restarted(&self) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.finished_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// From the first record in to the stop, once stopped: the time a throughput is taken over.
    /// From the first record in to now, while it runs.
    pub fn running_time(&self) -> Option<Duration> {
        Some(self.first_record_at.get()?.elapsed())
    }

    pub fn active_time(&self) -> Option<Duration> {
        Some(
            self.finished()?
                .duration_since(*self.first_record_at.get()?),
        )
    }

    fn paused_flag(&self) -> &tokio::sync::watch::Sender<bool> {
        self.paused
            .get_or_init(|| tokio::sync::watch::Sender::new(false))
    }

    /// Pauses (`true`) or resumes the component.
    pub fn set_paused(&self, paused: bool) {
        self.paused_flag().send_replace(paused);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused_flag().borrow()
    }

    /// Resolves once the component is not paused.
    pub async fn unpaused(&self) {
        let mut paused = self.paused_flag().subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }

    /// Records why the component failed.
    pub fn fail(&self, failure: Failure) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn state(&self) -> State {
        if self.failure().is_some() {
            State::Failed
        } else if self.finished().is_some() {
            State::Stopped
        } else if self.is_paused() {
            State::Paused
        } else if self.throttled.load(Ordering::Relaxed) {
            State::Throttled
        } else {
            State::Running
        }
    }

    /// Notes that the service a source reads answered with a rate limit (`true`, counted) or
    /// answered again (`false`).
    pub fn set_throttled(&self, throttled: bool) {
        if throttled {
            self.throttled_count.fetch_add(1, Ordering::Relaxed);
        }
        self.throttled.store(throttled, Ordering::Relaxed);
    }

    /// How many rate-limit answers the source has had.
    pub fn throttled_count(&self) -> u64 {
        self.throttled_count.load(Ordering::Relaxed)
    }

    /// A sink's consumer lag, as just measured.
    pub fn set_lag(&self, lag: Vec<(String, i32, i64)>) {
        *self.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    /// A sink's consumer lag per partition when last measured (empty for sources).
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A source stored these offsets (source partition → offset).
    pub fn source_offsets_stored(
        &self,
        offsets: &std::collections::HashMap<String, serde_json::Value>,
    ) {
        let mut kept = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        for (partition, offset) in offsets {
            kept.insert(
                partition.clone(),
                serde_json::json!({ "partition": { "source_partition": partition }, "offset": offset }),
            );
        }
    }

    /// A sink committed these consumer offsets (next offset to read).
    pub fn sink_offsets_committed(&self, offsets: &[crate::transport::PartitionOffset]) {
        let mut kept = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        for o in offsets {
            kept.insert(
                format!("{}/{}", o.topic, o.partition),
                serde_json::json!({
                    "partition": { "kafka_topic": o.topic, "kafka_partition": o.partition },
                    "offset": { "kafka_offset": o.offset },
                }),
            );
        }
    }

    /// Forgets the offsets shown, after a reset.
    pub fn clear_offsets(&self) {
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The offsets last stored or committed, in Kafka Connect's `GET …/offsets` shape.
    pub fn offsets(&self) -> Vec<serde_json::Value> {
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Notes that a poll returned records now.
    pub fn polled(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_poll_ms.store(now, Ordering::Relaxed);
    }

    /// Records out per second from the first record in to now (or to the stop).
    pub fn average_rate(&self) -> f64 {
        let Some(first) = self.first_record_at.get() else {
            return 0.0;
        };
        let until = self.finished().unwrap_or_else(Instant::now);
        let secs = until.duration_since(*first).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.records_out.load(Ordering::Relaxed) as f64 / secs
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            written: self.records_written.load(Ordering::Relaxed),
            finished: self.finished().is_some(),
        }
    }
}

/// Counter values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    /// A stream transform's output written.
    pub written: u64,
    pub finished: bool,
}
