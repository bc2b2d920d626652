//! What a reader is told: the files, their format, the columns and the offsets to resume at.

use super::*;

/// Records per batch handed from the thread to the async side: a source's default
/// `batch_size`, so that a batch polled is one batch sent and the sends in flight hold
/// `max_in_flight_batches` × `batch_size` records, as documented.
pub(super) const BATCH: usize = 2_000;

/// Everything the reader thread needs, checked at build time.
pub(crate) struct ReaderSettings {
    pub(super) pattern: String,
    pub(super) header: bool,
    pub(super) builder: csv::ReaderBuilder,
    pub(super) columns: indexmap::IndexMap<String, super::super::ColumnSpec>,
    pub(super) infer: bool,
    pub(super) null_values: Vec<String>,
    pub(super) key: Option<String>,
    pub(super) timestamp_column: Option<String>,
    pub(super) all_null_rows: NullRows,
    pub(super) follow: bool,
    pub(super) poll_interval: Duration,
    pub(super) offsets: SourceOffsets,
    /// Write each record's value as JSON text instead of a `Value` tree.
    pub(super) encode: bool,
    pub(super) format: Format,
    /// The files this instance reads when the source is split between workers.
    pub(super) units: Option<UnitShare>,
}

/// What a row is.
pub(super) enum Format {
    Csv,
    /// One JSON value per line; the record key and time from JSON pointers into it.
    JsonLines {
        key: Option<String>,
        time: Option<String>,
    },
}

/// What the reader needs of a JSON-lines source's config.
pub struct JsonLinesFiles {
    /// File path or glob.
    pub path: String,
    /// JSON pointer of the key, if any.
    pub key: Option<String>,
    /// JSON pointer of the record time, if any.
    pub time: Option<String>,
    pub follow: bool,
    pub poll_interval: std::time::Duration,
}

impl ReaderSettings {
    pub fn new(config: &CsvSourceConfig, ctx: SourceBuildContext) -> Result<Self, ConnectorError> {
        let mut builder = csv::ReaderBuilder::new();
        builder
            .has_headers(false)
            .flexible(true)
            .delimiter(config.delimiter as u8)
            .quote(config.quote as u8)
            .double_quote(config.escape.is_none())
            .escape(config.escape.map(|c| c as u8));
        let settings = ReaderSettings {
            pattern: config.path.clone(),
            header: config.header,
            builder,
            columns: config.columns.clone(),
            infer: config.infer_types,
            null_values: config.null_values.clone(),
            key: config.key.clone(),
            timestamp_column: config.timestamp_column.clone(),
            all_null_rows: config.all_null_rows,
            follow: config.follow,
            poll_interval: config.poll_interval,
            offsets: ctx.offsets,
            encode: ctx.encode_values,
            format: Format::Csv,
            units: ctx.units,
        };
        settings.check_files()
    }

    /// Settings for JSON-lines files: each line one row of one field, as the CSV reader splits
    /// lines (`\n`, `\r\n`; blank lines skipped) with no delimiter or quote that JSON text can
    /// hold raw.
    pub fn json_lines(
        config: &JsonLinesFiles,
        ctx: SourceBuildContext,
    ) -> Result<Self, ConnectorError> {
        let mut builder = csv::ReaderBuilder::new();
        builder
            .has_headers(false)
            .flexible(true)
            .delimiter(b'\0')
            .quoting(false)
            .escape(None)
            .comment(None);
        ReaderSettings {
            pattern: config.path.clone(),
            header: false,
            builder,
            columns: indexmap::IndexMap::new(),
            infer: false,
            null_values: Vec::new(),
            key: None,
            timestamp_column: None,
            all_null_rows: NullRows::Keep,
            follow: config.follow,
            poll_interval: config.poll_interval,
            offsets: ctx.offsets,
            encode: ctx.encode_values,
            format: Format::JsonLines {
                key: config.key.clone(),
                time: config.time.clone(),
            },
            units: ctx.units,
        }
        .check_files()
    }

    /// Fails when no file matches and none will (without `follow`); an instance of a split
    /// source may have none of them.
    pub(super) fn check_files(self) -> Result<Self, ConnectorError> {
        let settings = self;
        if !settings.follow && matching_files(&settings.pattern)?.is_empty() {
            return Err(
                ConnectorError::user(format!("no file matches `{}`", settings.pattern))
                    .with_field("path"),
            );
        }
        Ok(settings)
    }

    /// Files this instance reads, in name order: those matching the pattern, of its share of
    /// them when the source is split.
    pub(super) fn files(&self) -> Result<Vec<String>, ConnectorError> {
        let mut files = matching_files(&self.pattern)?;
        if let Some(units) = &self.units {
            files.retain(|file| units.owns(file));
        }
        Ok(files)
    }
}

/// Files matching `pattern`, in name order.
impl ReaderSettings {
    /// The bytes of the files this reader reads, when their end is known (not following
    /// them, and no earlier version read before: then positions count those bytes too).
    pub(crate) fn total_bytes(&self) -> Option<u64> {
        if self.follow {
            return None;
        }
        let files = matching_files(&self.pattern).ok()?;
        let mut total = 0;
        for file in files {
            if self.units.as_ref().is_some_and(|share| !share.owns(&file)) {
                continue;
            }
            total += std::fs::metadata(&file).ok()?.len();
        }
        Some(total)
    }
}

pub(crate) fn matching_files(pattern: &str) -> Result<Vec<String>, ConnectorError> {
    let paths = glob::glob(pattern)
        .map_err(|e| ConnectorError::user(format!("`{pattern}` is not a valid glob: {e}")))?;
    let mut files: Vec<String> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    Ok(files)
}
