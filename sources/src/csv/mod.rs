//! `type: csv` — rows of CSV files as typed JSON records, resumable at a byte position.
//!
//! A reader thread parses the files and hands batches to the async side through a small bounded
//! channel, so parsing and producing run on different cores and a slow topic slows the reader.

mod config;
mod reader;
mod value;

pub(crate) use config::check_files;
pub use config::{ColumnSpec, ColumnType, CsvSourceConfig, NullRows};

use crate::pace::Pace;
use reader::CsvReader;
pub(crate) use reader::{JsonLinesFiles, ReaderSettings};
use sluice_api::{
    async_trait, ConnectorError, FieldError, Source, SourceBuildContext, SourceConfig, SourceRecord,
};
use std::collections::VecDeque;
use tokio::sync::mpsc;

#[sluice_api::source("csv")]
impl SourceConfig for CsvSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.check()
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let component = ctx.component.clone();
        let settings = ReaderSettings::new(self, ctx)?;
        start(settings, &component, self.rate)
    }

    /// Each file of the glob is a work unit.
    fn work_units(&self) -> Option<usize> {
        work_units(&self.path)
    }
}

/// The work units of a file source: its files, as many as match now (at least one slot, for
/// files still to come).
pub(crate) fn work_units(pattern: &str) -> Option<usize> {
    Some(reader::matching_files(pattern).map_or(1, |files| files.len().max(1)))
}

/// Starts the reader thread of a file source (CSV or JSON lines) and returns its async side,
/// paced to `rate` records per second when set.
pub(crate) fn start(
    settings: ReaderSettings,
    component: &str,
    rate: Option<f64>,
) -> Result<Box<dyn Source>, ConnectorError> {
    let total = settings.total_bytes();
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name(format!("file-{component}"))
        .spawn(move || CsvReader::new(settings).run(tx))
        .map_err(|e| ConnectorError::internal(format!("cannot start the reader thread: {e}")))?;
    Ok(Box::new(CsvSource {
        batches: rx,
        buffered: VecDeque::new(),
        pace: rate.map(Pace::new),
        total,
        done: std::collections::HashMap::new(),
    }))
}

/// The async side of a file source.
struct CsvSource {
    batches: mpsc::Receiver<Result<Vec<SourceRecord>, ConnectorError>>,
    buffered: VecDeque<SourceRecord>,
    pace: Option<Pace>,
    /// Bytes of the files to read, when their end is known (not following them).
    total: Option<u64>,
    /// Per file, the bytes read through the last item handed over.
    done: std::collections::HashMap<std::sync::Arc<str>, u64>,
}

impl CsvSource {
    /// Notes how far each file of `batch` was read: from the last item of each run of a
    /// file's items (a batch mostly holds one file), not from every item.
    fn note(&mut self, batch: &[SourceRecord]) {
        if self.total.is_none() {
            return;
        }
        let mut noted: Option<&std::sync::Arc<str>> = None;
        for item in batch.iter().rev() {
            if item.offset.is_null() || noted.is_some_and(|p| p == &item.partition) {
                continue;
            }
            noted = Some(&item.partition);
            let byte = reader::byte_of(&item.offset);
            let at = self.done.entry(item.partition.clone()).or_default();
            *at = (*at).max(byte);
        }
    }
}

#[async_trait]
impl Source for CsvSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if self.buffered.is_empty() {
            match self.batches.recv().await {
                // The reader's batch as it is, when it fits and needs no pacing.
                Some(Ok(batch)) if batch.len() <= max && self.pace.is_none() => {
                    self.note(&batch);
                    return Ok(Some(batch));
                }
                Some(batch) => self.buffered.extend(batch?),
                None => return Ok(None),
            }
        }
        let mut take = max.min(self.buffered.len());
        if let Some(pace) = &mut self.pace {
            take = pace.wait_for(take).await;
        }
        let batch: Vec<SourceRecord> = self.buffered.drain(..take).collect();
        self.note(&batch);
        Ok(Some(batch))
    }

    fn progress(&self) -> Option<(u64, u64)> {
        let total = self.total?;
        Some((self.done.values().sum::<u64>().min(total), total))
    }
}
