//! Per-component counters, shared by the runtime (writes) and the CLI's progress display (reads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    /// When the first record came in.
    first_record_at: OnceLock<Instant>,
    /// When the component stopped.
    finished_at: OnceLock<Instant>,
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
        self.finished_at.get_or_init(Instant::now);
    }

    /// From the first record in to the stop, once stopped: the time a throughput is taken over.
    pub fn active_time(&self) -> Option<Duration> {
        Some(
            self.finished_at
                .get()?
                .duration_since(*self.first_record_at.get()?),
        )
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            finished: self.finished_at.get().is_some(),
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
    pub finished: bool,
}
