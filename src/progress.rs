//! Live progress per component on a terminal; periodic log lines otherwise; a summary at the end.

use sluice_core::metrics::MetricsSnapshot;
use sluice_core::runtime::PipelineRun;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Progress {
    runs: Vec<Arc<PipelineRun>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Progress {
    pub fn start(runs: Vec<Arc<PipelineRun>>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let watched = runs.clone();
        let task = tokio::spawn(async move {
            let period = if terminal {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(10)
            };
            let mut last: Vec<MetricsSnapshot> = snapshots(&watched);
            let mut last_at = Instant::now();
            let mut drawn = 0;
            loop {
                tokio::time::sleep(period).await;
                let now = snapshots(&watched);
                let secs = last_at.elapsed().as_secs_f64().max(1e-3);
                let lines = lines(&watched, &now, Some((&last, secs)));
                if terminal {
                    let mut err = std::io::stderr().lock();
                    if drawn > 0 {
                        let _ = write!(err, "\x1b[{drawn}A");
                    }
                    for line in &lines {
                        let _ = writeln!(err, "\x1b[2K{line}");
                    }
                    drawn = lines.len();
                } else {
                    for line in lines.iter().skip(1) {
                        tracing::info!("{}", line.trim());
                    }
                }
                last = now;
                last_at = Instant::now();
            }
        });
        Progress {
            runs,
            task,
            started: Instant::now(),
        }
    }

    /// Stops the display and prints the summary (unless nothing ever started), with a note
    /// for each source that resumed after an earlier run's offsets and found nothing new (a
    /// second run of an example): how to read its input again.
    pub fn finish(self, started: bool, state_dir: &std::path::Path) {
        self.task.abort();
        if !started {
            return;
        }
        let now = snapshots(&self.runs);
        let elapsed = self.started.elapsed();
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\nsummary after {:.1}s (rate: records out over each component's time from its first record to its end):",
            elapsed.as_secs_f64()
        );
        for line in lines(&self.runs, &now, None) {
            let _ = writeln!(err, "{line}");
        }
        for line in resumed_notes(&self.runs, state_dir) {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// For each source that resumed after stored offsets and read nothing: why, and how to start
/// over.
fn resumed_notes(runs: &[Arc<PipelineRun>], state_dir: &std::path::Path) -> Vec<String> {
    let mut notes = Vec::new();
    for run in runs {
        for m in run.metrics.iter().filter(|m| m.kind == "source") {
            if !m.resumed() || m.snapshot().records_in > 0 {
                continue;
            }
            let name = &run.config.name;
            let again = if run.config.kafka.is_some() {
                format!("stop it (`PUT /connectors/{name}.{}/stop`) and reset its offsets (`DELETE /connectors/{name}.{}/offsets`) through the REST API", m.id, m.id)
            } else {
                format!(
                    "delete `{}` (where the embedded transport keeps this pipeline's offsets)",
                    state_dir.join(name).display()
                )
            };
            notes.push(format!(
                "note: {name}/{} read nothing new: it resumed after the offsets an earlier run stored. To read its input again, {again}.",
                m.id
            ));
        }
    }
    notes
}

fn snapshots(runs: &[Arc<PipelineRun>]) -> Vec<MetricsSnapshot> {
    runs.iter()
        .flat_map(|r| r.metrics.iter().map(|m| m.snapshot()))
        .collect()
}

fn lines(
    runs: &[Arc<PipelineRun>],
    now: &[MetricsSnapshot],
    before: Option<(&[MetricsSnapshot], f64)>,
) -> Vec<String> {
    let mut out = vec![format!(
        "  {:<28} {:>12} {:>12} {:>10} {:>9} {:>12}",
        "component", "in", "out", "dead-lett.", "skipped", "rate/s"
    )];
    let mut i = 0;
    for run in runs {
        for m in &run.metrics {
            let s = now[i];
            let rate = match before {
                Some((b, secs)) => Some((s.records_out.saturating_sub(b[i].records_out), secs)),
                None => m
                    .active_time()
                    .map(|t| (s.records_out, t.as_secs_f64().max(1e-3))),
            }
            .map(|(records, secs)| format!("{:.0}", records as f64 / secs))
            .unwrap_or_default();
            let state = if s.finished { " done" } else { "" };
            out.push(format!(
                "  {:<28} {:>12} {:>12} {:>10} {:>9} {:>12}{state}",
                format!("{}/{} {}", run.config.name, m.id, m.kind),
                s.records_in,
                s.records_out,
                s.dead_lettered,
                s.skipped,
                rate
            ));
            i += 1;
        }
    }
    out
}
