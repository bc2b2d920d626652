//! The reader thread of the file sources (`csv`, and `file` for JSON lines): files in order,
//! from the stored byte position, parsed into records, sent in batches. Globs, following files
//! as they grow, rotation (a replaced or rewritten file is read again from its start) and the
//! offsets are the same for both formats; only turning a row into a record differs.

use super::config::{CsvSourceConfig, NullRows};
use super::value::{Field, Parse};
use serde_json::{Map, Value};
use sluice_api::record::now_millis;
use sluice_api::{
    BadInput, ConnectorError, Payload, Record, SourceBuildContext, SourceOffsets, SourceRecord,
    UnitShare,
};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Sender;

/// Records per batch handed from the thread to the async side: a source's default
/// `batch_size`, so that a batch polled is one batch sent and the sends in flight hold
/// `max_in_flight_batches` × `batch_size` records, as documented.
const BATCH: usize = 2_000;

/// Everything the reader thread needs, checked at build time.
pub(crate) struct ReaderSettings {
    pattern: String,
    header: bool,
    builder: csv::ReaderBuilder,
    columns: indexmap::IndexMap<String, super::ColumnSpec>,
    infer: bool,
    null_values: Vec<String>,
    key: Option<String>,
    timestamp_column: Option<String>,
    all_null_rows: NullRows,
    follow: bool,
    poll_interval: Duration,
    offsets: SourceOffsets,
    /// Write each record's value as JSON text instead of a `Value` tree.
    encode: bool,
    format: Format,
    /// The files this instance reads when the source is split between workers.
    units: Option<UnitShare>,
}

/// What a row is.
enum Format {
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
    fn check_files(self) -> Result<Self, ConnectorError> {
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
    fn files(&self) -> Result<Vec<String>, ConnectorError> {
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

/// Columns of one file and how to parse each.
struct Layout {
    names: Vec<String>,
    /// Each name as a JSON object key, `"name":`, for encoded values.
    json_keys: Vec<Vec<u8>>,
    parsers: Vec<Parse>,
    key: Option<usize>,
    timestamp: Option<usize>,
}

/// Where a file resumes.
#[derive(Clone, Copy, Default)]
struct FilePosition {
    byte: u64,
    line: u64,
    /// The file's first bytes as they were read, when known: if they differ now, the file was
    /// replaced or truncated and rewritten (copytruncate rotation), and is read from the start.
    head: Option<Head>,
    /// Where the exactly-once positions of this version of the file start: 0 for the first,
    /// and past every position an earlier version could have had for each later one (see
    /// [`next_version_base`]), so that positions keep growing across versions.
    base: u64,
}

/// Bits of an exactly-once position that number bytes within one version of a file (1 TiB).
const VERSION_SHIFT: u32 = 40;

/// The base of the version that replaces one based at `base`: above every position of it.
/// Not the old version's stored offset plus its length: after a crash the stored offset is
/// only what was acknowledged, while rows past it may have been sent and written; the new
/// version's first rows must not look like those (they would be skipped as written).
fn next_version_base(base: u64) -> u64 {
    ((base >> VERSION_SHIFT) + 1) << VERSION_SHIFT
}

/// A fingerprint of a file's first `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    len: u64,
    hash: u64,
}

/// Bytes of a file's head that its fingerprint covers (fewer while the file is shorter).
const HEAD_BYTES: u64 = 4096;

impl Head {
    /// The fingerprint of `input`'s first `min(upto, HEAD_BYTES)` bytes.
    fn of(input: &impl Input, upto: u64) -> io::Result<Head> {
        let len = upto.min(HEAD_BYTES);
        let mut buf = vec![0u8; len as usize];
        input.read_exact_at(&mut buf, 0)?;
        Ok(Head {
            len,
            hash: sluice_api::exactly_once::fnv1a(&buf),
        })
    }

    /// A source offset: the byte position alone, or with the fingerprint and the base of the
    /// file's version.
    fn offset(head: Option<Head>, byte: u64, base: u64) -> Value {
        match head {
            None => Value::from(byte),
            Some(head) if base == 0 => {
                serde_json::json!({ "byte": byte, "head_len": head.len, "head": head.hash })
            }
            Some(head) => serde_json::json!({
                "byte": byte, "head_len": head.len, "head": head.hash, "base": base
            }),
        }
    }
}

/// The position a stored source offset gives: a byte number, or an object with the head's
/// fingerprint and the bytes of earlier versions.
/// The byte of its file an item's offset stands at.
pub(super) fn byte_of(offset: &Value) -> u64 {
    stored_position(offset).0
}

fn stored_position(offset: &Value) -> (u64, Option<Head>, u64) {
    match offset {
        Value::Object(map) => {
            let number = |k: &str| map.get(k).and_then(Value::as_u64);
            let head = match (number("head_len"), number("head")) {
                (Some(len), Some(hash)) => Some(Head { len, hash }),
                _ => None,
            };
            (
                number("byte").unwrap_or(0),
                head,
                number("base").unwrap_or(0),
            )
        }
        other => (other.as_u64().unwrap_or(0), None, 0),
    }
}

/// What the reader reads rows from: a file, or in tests one that fails part way.
pub(super) trait Input: io::Read + io::Seek {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Input for &File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(*self, buf, offset)
    }
}

pub(super) struct CsvReader {
    settings: ReaderSettings,
    positions: HashMap<String, FilePosition>,
    layouts: HashMap<String, Layout>,
}

/// The async side is gone: stop reading.
struct Stopped;

impl CsvReader {
    pub fn new(settings: ReaderSettings) -> Self {
        let positions = settings
            .offsets
            .iter()
            .map(|(file, offset)| {
                let (byte, head, base) = stored_position(offset);
                let line = lines_before(file, byte).unwrap_or(0) + 1;
                (
                    file.clone(),
                    FilePosition {
                        byte,
                        line,
                        head,
                        base,
                    },
                )
            })
            .collect();
        CsvReader {
            settings,
            positions,
            layouts: HashMap::new(),
        }
    }

    /// Reads until the files end (or forever with `follow`), sending batches on `tx`.
    pub fn run(mut self, tx: Sender<Result<Vec<SourceRecord>, ConnectorError>>) {
        loop {
            let result = self.settings.files().and_then(|files| {
                for file in files {
                    match self.read_file(&file, &tx) {
                        Ok(Ok(())) => {}
                        Ok(Err(Stopped)) => return Ok(false),
                        Err(e) => {
                            return Err(ConnectorError::transient(format!(
                                "cannot read `{file}`: {e}"
                            )))
                        }
                    }
                }
                Ok(true)
            });
            match result {
                Ok(true) if self.settings.follow => {
                    // A source dropped (stopped, restarted, its unit moved) ends its reader:
                    // with no new rows nothing is sent, so the closed channel is looked at.
                    if tx.is_closed() {
                        return;
                    }
                    std::thread::sleep(self.settings.poll_interval);
                    if tx.is_closed() {
                        return;
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    }

    /// Reads the column names (the header row, or `column_N` for the width of the first row)
    /// and returns where data rows start; `None` for a file with no row yet.
    fn layout(&mut self, path: &str, file: impl io::Read) -> io::Result<Option<FilePosition>> {
        let mut reader = self.settings.builder.from_reader(file);
        let mut first = csv::StringRecord::new();
        if !reader.read_record(&mut first).map_err(io::Error::other)? {
            return Ok(None);
        }
        let (names, data_start) = if self.settings.header {
            let names = first
                .iter()
                .map(|h| h.trim_start_matches('\u{feff}').to_string())
                .collect();
            let end = reader.position();
            (
                names,
                FilePosition {
                    byte: end.byte(),
                    line: end.line(),
                    head: None,
                    base: 0,
                },
            )
        } else {
            let names = (1..=first.len()).map(|i| format!("column_{i}")).collect();
            (
                names,
                FilePosition {
                    byte: 0,
                    line: 1,
                    head: None,
                    base: 0,
                },
            )
        };
        self.layouts
            .insert(path.to_string(), self.make_layout(names));
        Ok(Some(data_start))
    }

    fn make_layout(&self, names: Vec<String>) -> Layout {
        let s = &self.settings;
        let index = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| names.iter().position(|c| c == n))
        };
        Layout {
            parsers: names
                .iter()
                .map(|n| Parse::from_spec(s.columns.get(n), s.infer))
                .collect(),
            key: index(&s.key),
            timestamp: index(&s.timestamp_column),
            json_keys: names
                .iter()
                .map(|n| format!("{}:", Value::String(n.clone())).into_bytes())
                .collect(),
            names,
        }
    }

    fn read_file(
        &mut self,
        path: &str,
        tx: &Sender<Result<Vec<SourceRecord>, ConnectorError>>,
    ) -> io::Result<Result<(), Stopped>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        self.read_input(path, &file, len, tx)
    }

    /// Reads `input` (the file `path`, `len` bytes long) from its stored position.
    fn read_input(
        &mut self,
        path: &str,
        input: impl Input + Copy,
        len: u64,
        tx: &Sender<Result<Vec<SourceRecord>, ConnectorError>>,
    ) -> io::Result<Result<(), Stopped>> {
        let stored = self.positions.get(path).copied();
        let replaced = match stored {
            Some(p) if p.byte > len => Some("it is shorter than the stored offset"),
            Some(FilePosition {
                head: Some(head), ..
            }) if head.len > len || Head::of(&input, head.len)? != head => {
                Some("its first bytes changed (replaced, or truncated and rewritten)")
            }
            _ => None,
        };
        // Exactly-once positions go on growing past every position of the earlier version.
        let mut base = stored.map_or(0, |p| p.base);
        if let Some(why) = replaced {
            tracing::warn!(file = %path, stored = stored.map(|p| p.byte), len, "{why}; reading it from the start");
            base = next_version_base(base);
            self.positions.remove(path);
            self.layouts.remove(path);
        } else if stored.is_some_and(|p| p.byte == len) {
            return Ok(Ok(())); // nothing new
        }
        if !self.layouts.contains_key(path) {
            let mut first = input;
            first.seek(io::SeekFrom::Start(0))?;
            let Some(data_start) = self.layout(path, first)? else {
                return Ok(Ok(())); // no row yet
            };
            self.positions
                .entry(path.to_string())
                .or_insert(FilePosition { base, ..data_start });
        }
        let start = self.positions[path];
        let mut reader = self.settings.builder.from_reader(input);
        let mut position = csv::Position::new();
        position.set_byte(start.byte).set_line(start.line);
        reader.seek_raw(io::SeekFrom::Start(start.byte), position)?;

        let layout = &self.layouts[path];
        let follow = self.settings.follow;
        let partition: Arc<str> = Arc::from(path);
        let mut reached = start;
        // Offsets carry the head's fingerprint, so that a file replaced while the pipeline was
        // down is noticed at start (with or without `follow`); it is fixed once the head is
        // whole.
        let mut head = start.head.filter(|h| h.len == HEAD_BYTES);
        let mut row = csv::ByteRecord::new();
        let mut batch = Vec::with_capacity(BATCH);
        // Record time of rows without a timestamp column: read once per batch, not per row.
        let mut now = now_millis();
        loop {
            let line = reader.position().line();
            let row_start = reader.position().byte();
            let has_row = match reader.read_byte_record(&mut row) {
                Ok(has_row) => has_row,
                // The rest of the file cannot be read: fail, rather than end it here and
                // skip the rest (the error names the file; a retry reads from the last row).
                Err(e) if e.is_io_error() => return Err(io::Error::other(e)),
                Err(e) => {
                    let end = reader.position().clone();
                    let raw = raw_row(&input, row_start, end.byte())?;
                    let offset = Head::offset(None, end.byte(), start.base);
                    let mut unreadable = bad(
                        &partition,
                        line,
                        offset,
                        raw,
                        format!("unreadable row: {e}"),
                    );
                    unreadable.position = Some(start.base + end.byte());
                    batch.push(unreadable);
                    continue;
                }
            };
            if !has_row {
                break;
            }
            let end = reader.position().clone();
            if follow && end.byte() >= len && !ends_with_newline(&input, end.byte())? {
                break; // a row still being written; read it once complete
            }
            let fingerprint = match head {
                Some(h) => h,
                None => Head::of(&input, end.byte())?,
            };
            if fingerprint.len == HEAD_BYTES {
                head = Some(fingerprint);
            }
            let fingerprint = Some(fingerprint);
            let offset = Head::offset(fingerprint, end.byte(), start.base);
            let mut record =
                Self::to_record(&self.settings, layout, &partition, line, offset, &row, now);
            if let Payload::Bad(bad) = &mut record.payload {
                bad.raw = raw_row(&input, row_start, end.byte())?;
                if bad.key.is_none() && bad.timestamp.is_none() {
                    record = identified(record, layout, &row);
                }
            }
            // The row's end: the same row ends at the same byte on every run (plus the bytes
            // of the file's earlier versions).
            record.position = Some(start.base + end.byte());
            batch.push(record);
            reached = FilePosition {
                byte: end.byte(),
                line: end.line(),
                head: fingerprint,
                base: start.base,
            };
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.blocking_send(Ok(full)).is_err() {
                    return Ok(Err(Stopped));
                }
                now = now_millis();
            }
        }
        self.positions.insert(path.to_string(), reached);
        if !batch.is_empty() && tx.blocking_send(Ok(batch)).is_err() {
            return Ok(Err(Stopped));
        }
        Ok(Ok(()))
    }

    /// The record of one row; a bad row's `raw` is left empty for the caller, which has the
    /// row's original bytes.
    fn to_record(
        settings: &ReaderSettings,
        layout: &Layout,
        path: &Arc<str>,
        line: u64,
        offset: Value,
        row: &csv::ByteRecord,
        now: i64,
    ) -> SourceRecord {
        if let Format::JsonLines { key, time } = &settings.format {
            let pointers = (key.as_deref(), time.as_deref());
            return json_record(settings.encode, pointers, path, line, offset, row, now);
        }
        let raw = Vec::new;
        if row.len() != layout.names.len() {
            let message = format!(
                "row has {} fields, the header has {}",
                row.len(),
                layout.names.len()
            );
            return bad(path, line, offset, raw(), message);
        }
        // The value is built as one of these two, as `settings.encode` says.
        let (mut map, mut json) = if settings.encode {
            let mut json = Vec::with_capacity(row.as_slice().len() + 16 * row.len());
            json.push(b'{');
            (Map::new(), json)
        } else {
            (Map::with_capacity(row.len()), Vec::new())
        };
        let mut key = None;
        let mut timestamp = None;
        let mut all_null = true;
        // One UTF-8 check for the whole row; a field is then a slice of it (unless a character
        // straddles two fields, which the per-field check below reports).
        let row_text = std::str::from_utf8(row.as_slice()).ok();
        for (i, bytes) in row.iter().enumerate() {
            let name = &layout.names[i];
            let text = row_text.and_then(|whole| row.range(i).and_then(|r| whole.get(r)));
            let Some(text) = text.or_else(|| std::str::from_utf8(bytes).ok()) else {
                return bad(
                    path,
                    line,
                    offset,
                    raw(),
                    format!("field `{name}` is not valid UTF-8"),
                );
            };
            let field = if text.is_empty() || settings.null_values.iter().any(|n| n == text) {
                Field::Null
            } else {
                match layout.parsers[i].field(text) {
                    Ok(field) => field,
                    Err(e) => {
                        return bad(path, line, offset, raw(), format!("field `{name}`: {e}"))
                    }
                }
            };
            if Some(i) == layout.key {
                if !field.is_null() {
                    key = Some(text.as_bytes().to_vec());
                }
            } else if !field.is_null() && Some(i) != layout.timestamp {
                // The key and the time say which row it is, not what it holds.
                all_null = false;
            }
            if Some(i) == layout.timestamp {
                timestamp = layout.parsers[i].millis(&field);
            }
            if settings.encode {
                if i > 0 {
                    json.push(b',');
                }
                json.extend_from_slice(&layout.json_keys[i]);
                if let Err(e) = field.write_json(&mut json) {
                    return bad(path, line, offset, raw(), format!("field `{name}`: {e}"));
                }
            } else {
                map.insert(name.clone(), field.into_value());
            }
        }
        let partition = path.clone();
        if all_null {
            match settings.all_null_rows {
                NullRows::Keep => {}
                NullRows::Skip => {
                    return SourceRecord {
                        partition,
                        offset,
                        position: None,
                        payload: Payload::Skipped {
                            reason: format!("{path} line {line}: every field is null"),
                        },
                    }
                }
                NullRows::DeadLetter => {
                    return bad(
                        path,
                        line,
                        offset,
                        raw(),
                        "every field but the key is null".into(),
                    )
                }
            }
        }
        let mut record = if settings.encode {
            json.push(b'}');
            Record {
                encoded_value: Some(json),
                ..Record::new(Value::Null)
            }
        } else {
            Record::new(Value::Object(map))
        };
        record.key = key;
        record.timestamp = Some(timestamp.unwrap_or(now));
        SourceRecord {
            partition,
            offset,
            position: None,
            payload: Payload::Record(record),
        }
    }
}

/// The record of one JSON line: the value as written, its key and time from the JSON
/// pointers `(key, time)`; a line that is not JSON is a bad record.
fn json_record(
    encode: bool,
    (key, time): (Option<&str>, Option<&str>),
    path: &Arc<str>,
    line: u64,
    offset: Value,
    row: &csv::ByteRecord,
    now: i64,
) -> SourceRecord {
    if row.len() != 1 {
        let message = "the line holds a NUL byte, which JSON text cannot".to_string();
        return bad(path, line, offset, Vec::new(), message);
    }
    let text = row.as_slice();
    let value: Value = match sluice_api::record::parse_value(text) {
        Ok(value) => value,
        Err(e) => {
            return bad(path, line, offset, Vec::new(), format!("not JSON: {e}"));
        }
    };
    let key = key
        .and_then(|at| sluice_api::record::pointer(&value, at))
        .and_then(|k| match k {
            Value::Null => None,
            Value::String(s) => Some(s.as_bytes().to_vec()),
            other => Some(other.to_string().into_bytes()),
        });
    let timestamp = time
        .and_then(|at| sluice_api::record::pointer(&value, at))
        .and_then(crate::shared::time_millis);
    let mut record = if encode {
        Record {
            encoded_value: Some(text.to_vec()),
            ..Record::new(Value::Null)
        }
    } else {
        Record::new(value)
    };
    record.key = key;
    record.timestamp = Some(timestamp.unwrap_or(now));
    SourceRecord {
        partition: path.clone(),
        offset,
        position: None,
        payload: Payload::Record(record),
    }
}

fn bad(path: &Arc<str>, line: u64, offset: Value, raw: Vec<u8>, message: String) -> SourceRecord {
    SourceRecord {
        partition: path.clone(),
        offset,
        position: None,
        payload: Payload::Bad(BadInput {
            raw,
            message,
            location: format!("{path} line {line}"),
            ..BadInput::default()
        }),
    }
}

/// `item` (a bad row) with the key and time of `row` where they can be read: its dead letter
/// is then keyed and dated as the record would have been.
fn identified(mut item: SourceRecord, layout: &Layout, row: &csv::ByteRecord) -> SourceRecord {
    if let Payload::Bad(bad) = &mut item.payload {
        let text = |i: Option<usize>| {
            i.filter(|_| row.len() == layout.names.len())
                .and_then(|i| row.get(i))
                .and_then(|b| std::str::from_utf8(b).ok())
                .filter(|t| !t.is_empty())
        };
        bad.key = text(layout.key).map(|k| k.as_bytes().to_vec());
        bad.timestamp = layout.timestamp.and_then(|i| {
            let field = layout.parsers[i].field(text(Some(i))?).ok()?;
            layout.parsers[i].millis(&field)
        });
    }
    item
}

fn ends_with_newline(input: &impl Input, end: u64) -> io::Result<bool> {
    if end == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    input.read_exact_at(&mut last, end - 1)?;
    Ok(last[0] == b'\n')
}

/// The bytes of the row between `start` and `end` as they are in the file, without the line
/// ending: what a dead letter keeps, so a fixed row can be replayed as it was.
fn raw_row(input: &impl Input, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut raw = vec![0u8; end.saturating_sub(start) as usize];
    input.read_exact_at(&mut raw, start)?;
    let line_end = |b: &u8| *b == b'\n' || *b == b'\r';
    while raw.last().is_some_and(line_end) {
        raw.pop();
    }
    // After a `\r\n` row the reader's position is on the `\n`.
    let start = raw.iter().take_while(|b| line_end(b)).count();
    raw.drain(..start);
    Ok(raw)
}

/// Lines that end before byte `end` of `path`: where a resumed read's line numbers continue.
fn lines_before(path: &str, end: u64) -> io::Result<u64> {
    let mut file = File::open(path)?.take(end);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn context(offsets: SourceOffsets, encode_values: bool) -> SourceBuildContext {
        SourceBuildContext {
            component: "src".into(),
            offsets,
            encode_values,
            units: None,
            exactly_once: false,
            status: None,
        }
    }

    /// Every item the reader makes of `csv`, with values as JSON text (`encode`) or as trees.
    fn read(csv: impl AsRef<[u8]>, encode: bool) -> Vec<SourceRecord> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, csv).unwrap();
        let config: CsvSourceConfig = serde_yaml::from_str(&format!(
            "{{ path: '{}', key: Date, timestamp_column: Date, null_values: ['null'], \
             columns: {{ Date: date, Close: float, Volume: int }} }}",
            path.display()
        ))
        .unwrap();
        let settings = ReaderSettings::new(&config, context(SourceOffsets::new(), encode)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        CsvReader::new(settings).run(tx);
        let mut items = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            items.extend(batch.unwrap());
        }
        items
    }

    /// A row that cannot become a record keeps the key and time it would have had, where
    /// they can be read, so its dead letter is keyed and dated like its neighbours.
    #[test]
    fn a_bad_row_keeps_its_key_and_time_for_its_dead_letter() {
        let items = read(
            "Date,Close,Volume\n2014-09-17,457.3,21056800\n2014-09-18,not-a-number,1\nbad-date,1.0,1\n",
            false,
        );
        let bad: Vec<&BadInput> = items
            .iter()
            .filter_map(|i| match &i.payload {
                Payload::Bad(bad) => Some(bad),
                _ => None,
            })
            .collect();
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].key.as_deref(), Some(b"2014-09-18".as_slice()));
        assert_eq!(bad[0].timestamp, Some(1_410_998_400_000));
        // Its date cannot be read: keyed by the text, not dated.
        assert_eq!(bad[1].key.as_deref(), Some(b"bad-date".as_slice()));
        assert_eq!(bad[1].timestamp, None);
    }

    /// Every item made of the JSON-lines `text`, resuming at `offsets`.
    fn read_json_lines(
        text: &str,
        offsets: SourceOffsets,
        encode: bool,
    ) -> (std::path::PathBuf, Vec<SourceRecord>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        let config = JsonLinesFiles {
            path: path.display().to_string(),
            key: Some("/id".into()),
            time: Some("/at".into()),
            follow: false,
            poll_interval: std::time::Duration::from_secs(1),
        };
        let settings = ReaderSettings::json_lines(&config, context(offsets, encode)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        CsvReader::new(settings).run(tx);
        let mut items = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            items.extend(batch.unwrap());
        }
        (path, items, dir)
    }

    /// Lines as written (quotes, commas, tabs and CRLF endings are not CSV to it), key and time
    /// from pointers, blank lines skipped, a line that is not JSON a bad record with its line
    /// number and bytes; a restart at a delivered line's offset reads what follows it.
    #[test]
    fn json_lines_are_records_as_written_and_resume_after_the_last_delivered() {
        let text = "{\"id\": \"a,1\", \"at\": \"2023-02-01T19:00:30Z\", \"t\": \"say \\\"hi\\\"\\tthere\"}\r\n\
                    \n\
                    {\"id\": 7, \"at\": 1675278031, \"n\": [1, 2]}\n\
                    {\"id\": \"broken\n\
                    \"just text\"\n";
        for encode in [false, true] {
            let (path, items, _dir) = read_json_lines(text, SourceOffsets::new(), encode);
            assert_eq!(items.len(), 4, "{items:?}");
            let record = |i: usize| match &items[i].payload {
                Payload::Record(r) => r.clone(),
                other => panic!("item {i}: {other:?}"),
            };
            let value = |r: &Record| match &r.encoded_value {
                Some(text) => serde_json::from_slice::<Value>(text).unwrap(),
                None => r.value.clone(),
            };
            let first = record(0);
            assert_eq!(value(&first)["t"], "say \"hi\"\tthere");
            assert_eq!(first.key.as_deref(), Some(&b"a,1"[..]));
            assert_eq!(first.timestamp, Some(1_675_278_030_000));
            let second = record(1);
            assert_eq!(value(&second)["n"], serde_json::json!([1, 2]));
            assert_eq!(second.key.as_deref(), Some(&b"7"[..]));
            assert_eq!(second.timestamp, Some(1_675_278_031_000));
            match &items[2].payload {
                Payload::Bad(bad) => {
                    assert!(bad.message.starts_with("not JSON"), "{}", bad.message);
                    assert_eq!(bad.location, format!("{} line 4", path.display()));
                    assert_eq!(bad.raw, b"{\"id\": \"broken");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(value(&record(3)), Value::String("just text".into()));
            // Resuming after the second record reads the rest only.
            let mut offsets = SourceOffsets::new();
            offsets.insert(path.display().to_string(), items[1].offset.clone());
            std::fs::write(&path, text).unwrap();
            let dir = path.parent().unwrap().to_path_buf();
            let config = JsonLinesFiles {
                path: dir.join("in.jsonl").display().to_string(),
                key: None,
                time: None,
                follow: false,
                poll_interval: std::time::Duration::from_secs(1),
            };
            let settings = ReaderSettings::json_lines(&config, context(offsets, encode)).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            CsvReader::new(settings).run(tx);
            let rest: Vec<SourceRecord> = std::iter::from_fn(|| rx.try_recv().ok())
                .flat_map(|b| b.unwrap())
                .collect();
            assert_eq!(rest.len(), 2, "{rest:?}");
            assert!(matches!(rest[0].payload, Payload::Bad(_)));
        }
    }

    /// A row whose only values are its key and its time holds nothing: with a timestamp
    /// column and no key (the date is the time, not the key), Yahoo's `null` days are still
    /// all-null rows.
    #[test]
    fn the_time_column_does_not_make_a_null_row_hold_something() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(
            &path,
            "Date,Close,Volume\n2020-04-16,7116.8,46783242377\n2020-04-17,null,null\n",
        )
        .unwrap();
        let config: CsvSourceConfig = serde_yaml::from_str(&format!(
            "{{ path: '{}', timestamp_column: Date, null_values: ['null'], all_null_rows: skip, \
             columns: {{ Date: date, Close: float, Volume: int }} }}",
            path.display()
        ))
        .unwrap();
        let settings = ReaderSettings::new(&config, context(SourceOffsets::new(), false)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        CsvReader::new(settings).run(tx);
        let items: Vec<SourceRecord> = std::iter::from_fn(|| rx.try_recv().ok())
            .flat_map(|b| b.unwrap())
            .collect();
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(matches!(items[0].payload, Payload::Record(_)));
        assert!(
            matches!(items[1].payload, Payload::Skipped { .. }),
            "{:?}",
            items[1].payload
        );
    }

    #[test]
    fn encoded_values_are_the_json_text_of_the_same_records() {
        let csv = "Date,Close,Volume,Note\n\
                   2014-09-17,457.334015,21056800,\"say \"\"hi\"\"\"\n\
                   2014-09-18,null,null,\n\
                   2014-09-19,abc,1,x\n\
                   2014-09-20,1\n\
                   2014-09-21,408,36863600,\\\\\n";
        let trees = read(csv, false);
        let texts = read(csv, true);
        assert_eq!(trees.len(), 5);
        assert_eq!(texts.len(), trees.len());
        let mut records = 0;
        for (tree, text) in trees.into_iter().zip(texts) {
            assert_eq!(tree.offset, text.offset);
            match (tree.payload, text.payload) {
                (Payload::Record(tree), Payload::Record(mut text)) => {
                    assert!(tree.encoded_value.is_none());
                    assert!(text.encoded_value.is_some() && text.value.is_null());
                    text.decode_value().unwrap();
                    assert_eq!(tree, text);
                    assert!(tree.timestamp.is_some() && tree.key.is_some());
                    records += 1;
                }
                (Payload::Bad(tree), Payload::Bad(text)) => {
                    assert_eq!(tree.message, text.message)
                }
                (tree, text) => panic!("{tree:?} vs {text:?}"),
            }
        }
        assert_eq!(records, 3, "rows 1, 2 and 5 are records; 3 and 4 are bad");
    }

    #[test]
    fn text_that_is_not_utf8_makes_a_bad_row_naming_its_field() {
        let mut csv = b"Date,Close,Volume,Note\n2014-09-17,1.5,2,caf\xc3\xa9\n".to_vec();
        // Bytes invalid in one field; a character split across two fields (valid only joined).
        csv.extend_from_slice(b"2014-09-18,1.5,2,\xff\n2014-09-19,1.5,2\xc3,\xa9\n");
        for encode in [false, true] {
            let items = read(&csv, encode);
            assert_eq!(items.len(), 3);
            let Payload::Record(mut first) = items[0].payload.clone() else {
                panic!("{:?}", items[0]);
            };
            first.decode_value().unwrap();
            assert_eq!(first.value["Note"], "café");
            for (item, field) in items[1..].iter().zip(["Note", "Volume"]) {
                let Payload::Bad(bad) = &item.payload else {
                    panic!("{item:?}");
                };
                assert_eq!(bad.message, format!("field `{field}` is not valid UTF-8"));
                assert!(!bad.raw.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;
    use std::cell::Cell;

    /// A file's bytes that cannot be read past `fail_from` (a disk error, a vanished mount).
    struct Failing {
        data: Vec<u8>,
        fail_from: u64,
        pos: Cell<u64>,
    }

    impl io::Read for &Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let pos = self.pos.get();
            if pos >= self.fail_from {
                return Err(io::Error::other("input/output error"));
            }
            let end = (pos + buf.len() as u64)
                .min(self.fail_from)
                .min(self.data.len() as u64);
            let n = (end - pos) as usize;
            buf[..n].copy_from_slice(&self.data[pos as usize..end as usize]);
            self.pos.set(end);
            Ok(n)
        }
    }

    impl io::Seek for &Failing {
        fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
            let io::SeekFrom::Start(at) = to else {
                return Err(io::Error::other("only absolute seeks"));
            };
            self.pos.set(at);
            Ok(at)
        }
    }

    impl Input for &Failing {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let end = offset as usize + buf.len();
            if end as u64 > self.fail_from {
                return Err(io::Error::other("input/output error"));
            }
            buf.copy_from_slice(&self.data[offset as usize..end]);
            Ok(())
        }
    }

    /// A reader whose input the test hands it (the configured path only has to exist).
    fn reader(follow: bool) -> CsvReader {
        reader_resuming(follow, SourceOffsets::new())
    }

    fn items(
        rx: &mut tokio::sync::mpsc::Receiver<Result<Vec<SourceRecord>, ConnectorError>>,
    ) -> Vec<SourceRecord> {
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.extend(batch.unwrap());
        }
        out
    }

    #[test]
    fn an_io_error_mid_file_is_an_error_not_the_end_of_the_file() {
        let mut data = b"Date,Close\n".to_vec();
        for i in 0..5000 {
            data.extend_from_slice(format!("d{i},{i}.5\n").as_bytes());
        }
        let input = Failing {
            fail_from: data.len() as u64 / 2,
            data,
            pos: Cell::new(0),
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1000);
        let len = input.data.len() as u64;
        let result = reader(false).read_input("in.csv", &input, len, &tx);
        let error = result.err().expect("the read fails");
        assert!(error.to_string().contains("input/output error"), "{error}");
    }

    #[test]
    fn a_bad_row_keeps_its_bytes_as_written() {
        let data = b"Date,Close\nd1,1.5\n\"x\",\"extra, field\",3\r\nd3,abc\n".to_vec();
        let input = Failing {
            fail_from: u64::MAX,
            data,
            pos: Cell::new(0),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let len = input.data.len() as u64;
        assert!(matches!(
            reader(false).read_input("in.csv", &input, len, &tx),
            Ok(Ok(()))
        ));
        let raws: Vec<String> = items(&mut rx)
            .into_iter()
            .filter_map(|i| match i.payload {
                Payload::Bad(bad) => Some(String::from_utf8(bad.raw).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(raws, ["\"x\",\"extra, field\",3", "d3,abc"]);
    }

    /// copytruncate: the file is emptied and written again past the stored position between
    /// two polls of follow mode. Its head changed, so it is read from the start.
    #[test]
    fn a_file_rewritten_past_the_stored_position_is_read_from_the_start() {
        let first = b"Date,Close\nd1,1.5\nd2,2.5\n".to_vec();
        let mut reader = reader(true);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let input = Failing {
            fail_from: u64::MAX,
            data: first.clone(),
            pos: Cell::new(0),
        };
        assert!(matches!(
            reader.read_input("in.csv", &input, first.len() as u64, &tx),
            Ok(Ok(()))
        ));
        assert_eq!(items(&mut rx).len(), 2);
        // Rotated, then longer than before.
        let second = b"Date,Close\nn1,10.5\nn2,20.5\nn3,30.5\nn4,40.5\n".to_vec();
        let input = Failing {
            fail_from: u64::MAX,
            data: second.clone(),
            pos: Cell::new(0),
        };
        assert!(matches!(
            reader.read_input("in.csv", &input, second.len() as u64, &tx),
            Ok(Ok(()))
        ));
        let again = items(&mut rx);
        assert_eq!(again.len(), 4, "the new head was skipped");
        // The offsets carry the fingerprint, so a restart checks it too.
        let (byte, head, base) = stored_position(&again[3].offset);
        assert_eq!(byte, second.len() as u64);
        assert!(head.is_some());
        // Exactly-once positions go on growing past the first version's.
        assert_eq!(base, 1 << VERSION_SHIFT);
        assert_eq!(again[0].position, Some((1 << VERSION_SHIFT) + 19));
        assert!(again.iter().all(|i| i.position > Some(first.len() as u64)));
        // Appending keeps the head: only the new row is read.
        let mut third = second.clone();
        third.extend_from_slice(b"n5,50.5\n");
        let input = Failing {
            fail_from: u64::MAX,
            data: third.clone(),
            pos: Cell::new(0),
        };
        assert!(matches!(
            reader.read_input("in.csv", &input, third.len() as u64, &tx),
            Ok(Ok(()))
        ));
        assert_eq!(items(&mut rx).len(), 1);
    }

    /// What `reader` makes of `data` as file `in.csv`.
    fn read_whole(reader: &mut CsvReader, data: &[u8]) -> Vec<SourceRecord> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let input = Failing {
            fail_from: u64::MAX,
            data: data.to_vec(),
            pos: Cell::new(0),
        };
        let read = reader.read_input("in.csv", &input, data.len() as u64, &tx);
        assert!(matches!(read, Ok(Ok(()))));
        items(&mut rx)
    }

    fn reader_resuming(follow: bool, offsets: SourceOffsets) -> CsvReader {
        let exists = std::env::temp_dir().join("sluice-csv-reader-test.csv");
        std::fs::write(&exists, "Date\n").unwrap();
        let config: CsvSourceConfig = serde_yaml::from_str(&format!(
            "{{ path: '{}', follow: {follow}, columns: {{ Close: float }} }}",
            exists.display()
        ))
        .unwrap();
        CsvReader::new(ReaderSettings::new(&config, super::tests::context(offsets, false)).unwrap())
    }

    /// A crash after rows were sent but before their offsets were stored, then the file is
    /// replaced while the pipeline is down: the new version is read whole, and its positions
    /// lie above every position the old version's rows could have been written with (else
    /// exactly-once sinks skip its first rows as already written). With and without `follow`.
    #[test]
    fn a_file_replaced_while_down_after_a_crash_is_read_whole_and_numbered_above_the_old() {
        let mut first = b"Date,Close\n".to_vec();
        for i in 0..10 {
            first.extend_from_slice(format!("d{i},{i}.5\n").as_bytes());
        }
        let second = b"Date,Close\nn1,10.5\nn2,20.5\nn3,30.5\nn4,40.5\nn5,50.5\n".to_vec();
        assert!(second.len() < first.len() && second.len() > 19 + 8);
        for follow in [false, true] {
            let sent = read_whole(&mut reader(follow), &first);
            let highest_sent = sent.iter().filter_map(|i| i.position).max().unwrap();
            // Only the first row's offset was stored before the crash.
            let acknowledged =
                SourceOffsets::from([("in.csv".to_string(), sent[0].offset.clone())]);
            let read = read_whole(&mut reader_resuming(follow, acknowledged), &second);
            assert_eq!(
                read.len(),
                5,
                "follow: {follow}: the new version read whole"
            );
            assert!(
                read.iter().all(|i| i.position > Some(highest_sent)),
                "follow: {follow}: {:?} not above {highest_sent}",
                read.iter().map(|i| i.position).collect::<Vec<_>>()
            );
        }
    }

    /// In follow mode the reader thread waits for rows forever; once its source is dropped (a
    /// stop, a restart, a work unit moving away) it must end, not poll the files on its own.
    #[test]
    fn a_following_reader_ends_once_its_source_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, "Date,Close\nd1,1.5\n").unwrap();
        let config: CsvSourceConfig = serde_yaml::from_str(&format!(
            "{{ path: '{}', follow: true, poll_interval: 20ms, columns: {{ Close: float }} }}",
            path.display()
        ))
        .unwrap();
        let reader = CsvReader::new(
            ReaderSettings::new(&config, super::tests::context(SourceOffsets::new(), false))
                .unwrap(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(10);
        let thread = std::thread::spawn(move || reader.run(tx));
        let first = rx.blocking_recv().unwrap().unwrap();
        assert_eq!(first.len(), 1);
        drop(rx);
        let started = std::time::Instant::now();
        while !thread.is_finished() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "the reader still runs 2 s after its source was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
