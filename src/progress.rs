//! Live progress per component on a terminal; periodic log lines otherwise; a summary at the end.

use sluice_core::metrics::{ComponentMetrics, MetricsSnapshot};
use sluice_core::runtime::PipelineRun;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of the live table on the terminal now, below the log (0: none). Held with
/// [`TERMINAL`], so that a log line and a frame never interleave.
static DRAWN: AtomicUsize = AtomicUsize::new(0);

/// Held while writing to the terminal's stderr.
static TERMINAL: Mutex<()> = Mutex::new(());

/// Erases the live table (the cursor is just below it), so that what is written next takes
/// its place; the next frame is drawn below that.
fn erase_table(err: &mut impl Write) {
    let drawn = DRAWN.swap(0, Ordering::Relaxed);
    if drawn > 0 {
        let _ = write!(err, "\r\x1b[{drawn}A\x1b[J");
    }
}

/// The log's writer: stderr, with the live table erased before each log line (it is drawn
/// again below the line at the next frame), so that log lines and frames never mix.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _held = TERMINAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        erase_table(&mut err);
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

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
            loop {
                tokio::time::sleep(period).await;
                let now = snapshots(&watched);
                let secs = last_at.elapsed().as_secs_f64().max(1e-3);
                let lines = lines(&watched, &now, Some((&last, secs)));
                if terminal {
                    let _held = TERMINAL.lock().unwrap_or_else(|e| e.into_inner());
                    let mut err = std::io::stderr().lock();
                    erase_table(&mut err);
                    for line in &lines {
                        let _ = writeln!(err, "{line}");
                    }
                    DRAWN.store(lines.len(), Ordering::Relaxed);
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
        let _held = TERMINAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        // The summary replaces the live table.
        erase_table(&mut err);
        if !started {
            return;
        }
        let now = snapshots(&self.runs);
        let elapsed = self.started.elapsed();
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
        "  {:<28} {:>12} {:>12} {:>10} {:>9} {:>12}  {:<15} {}",
        "component", "in", "out", "dead-lett.", "skipped", "rate/s", "state", "to"
    )];
    let mut i = 0;
    for run in runs {
        // Sinks and transforms are done only once every source of the pipeline reached its
        // end; stopped before (Ctrl-C), they are stopped.
        let sources_done = run
            .metrics
            .iter()
            .filter(|m| m.kind == "source")
            .all(|m| m.completed());
        for m in &run.metrics {
            let s = now[i];
            // A stream transform's out is what it wrote, not the inputs it took in.
            let shown_out = |s: &MetricsSnapshot| {
                if m.kind == "transform" {
                    s.written
                } else {
                    s.records_out
                }
            };
            let rate = match before {
                Some((b, secs)) => Some((shown_out(&s).saturating_sub(shown_out(&b[i])), secs)),
                None => m
                    .active_time()
                    .map(|t| (shown_out(&s), t.as_secs_f64().max(1e-3))),
            }
            .map(|(records, secs)| format!("{:.0}", records as f64 / secs))
            .unwrap_or_default();
            out.push(format!(
                "  {:<28} {:>12} {:>12} {:>10} {:>9} {:>12}  {:<15} {}",
                format!("{}/{} {}", run.config.name, m.id, m.kind),
                s.records_in,
                shown_out(&s),
                s.dead_lettered,
                s.skipped,
                rate,
                state(m, &s, sources_done),
                destination(run, m),
            ));
            i += 1;
        }
    }
    out
}

/// A component's state in the table: a running source whose end is known shows how far it
/// is and the time left at its pace so far.
fn state(m: &ComponentMetrics, s: &MetricsSnapshot, sources_done: bool) -> String {
    if m.failure().is_some() {
        "failed".into()
    } else if !s.finished {
        if m.is_paused() {
            "paused".into()
        } else if m.state() == sluice_core::metrics::State::Throttled {
            format!("throttled ({})", m.throttled_count())
        } else if let Some((done, total)) = m.progress().filter(|(_, t)| *t > 0) {
            let percent = done as f64 * 100.0 / total as f64;
            let left = m
                .running_time()
                .filter(|_| done > 0)
                .map(|t| t.as_secs_f64() * (total - done) as f64 / done as f64)
                .map(|secs| format!(" {} left", short_duration(secs)))
                .unwrap_or_default();
            format!("{percent:.0}%{left}")
        } else {
            "running".into()
        }
    } else if (m.kind == "source" && m.completed()) || (m.kind != "source" && sources_done) {
        "done".into()
    } else {
        "stopped".into()
    }
}

/// `42s`, `3m04s`, `2h05m`.
fn short_duration(secs: f64) -> String {
    let secs = secs.round() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Where a component's records go: a source's or transform's topic, a sink's store.
fn destination(run: &PipelineRun, m: &ComponentMetrics) -> String {
    let config = &run.config;
    match m.kind {
        "source" => config.sources.get(&m.id).map(|s| s.topic.clone()),
        "transform" => config.transforms.get(&m.id).map(|t| t.topic.clone()),
        _ => config.sinks.get(&m.id).and_then(|s| s.inner.destination()),
    }
    .unwrap_or_default()
}
