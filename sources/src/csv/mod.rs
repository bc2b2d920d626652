//! `type: csv` — rows of CSV files as typed JSON records, resumable at a byte position.
//!
//! A reader thread parses the files and hands batches to the async side through a small bounded
//! channel, so parsing and producing run on different cores and a slow topic slows the reader.

mod config;
mod reader;
mod value;

pub use config::{ColumnSpec, ColumnType, CsvSourceConfig, NullRows};

use reader::{CsvReader, ReaderSettings};
use sluice_core::{
    async_trait, ConnectorError, FieldError, Source, SourceBuildContext, SourceConfig, SourceRecord,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

sluice_core::register_plugin!(Source, "csv", CsvSourceConfig);

#[async_trait]
#[typetag::serde(name = "csv")]
impl SourceConfig for CsvSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.check()
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let settings = ReaderSettings::new(self, ctx.offsets)?;
        let (tx, rx) = mpsc::channel(4);
        let component = ctx.component.clone();
        std::thread::Builder::new()
            .name(format!("csv-{component}"))
            .spawn(move || CsvReader::new(settings).run(tx))
            .map_err(|e| {
                ConnectorError::internal(format!("cannot start the reader thread: {e}"))
            })?;
        Ok(Box::new(CsvSource {
            batches: rx,
            buffered: VecDeque::new(),
            pace: self.rate.map(Pace::new),
        }))
    }
}

/// The async side of a CSV source.
struct CsvSource {
    batches: mpsc::Receiver<Result<Vec<SourceRecord>, ConnectorError>>,
    buffered: VecDeque<SourceRecord>,
    pace: Option<Pace>,
}

#[async_trait]
impl Source for CsvSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if self.buffered.is_empty() {
            match self.batches.recv().await {
                Some(batch) => self.buffered.extend(batch?),
                None => return Ok(None),
            }
        }
        let mut take = max.min(self.buffered.len());
        if let Some(pace) = &mut self.pace {
            take = pace.wait_for(take).await;
        }
        Ok(Some(self.buffered.drain(..take).collect()))
    }
}

/// Spreads records evenly at `rate` per second.
struct Pace {
    rate: f64,
    started: Instant,
    sent: u64,
}

impl Pace {
    fn new(rate: f64) -> Self {
        Pace {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until at least one more record may go; returns how many of `wanted` may go now.
    async fn wait_for(&mut self, wanted: usize) -> usize {
        let due_at = Duration::from_secs_f64((self.sent + 1) as f64 / self.rate);
        if let Some(wait) = due_at.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let allowed = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
        let n = (allowed.saturating_sub(self.sent) as usize)
            .clamp(1, wanted.max(1))
            .min(wanted);
        self.sent += n as u64;
        n
    }
}
