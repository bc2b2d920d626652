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

#[cfg(test)]
mod input_tests;
mod position;
mod rows;
mod settings;
#[cfg(test)]
mod tests;

pub(super) use position::byte_of;
use position::*;
use rows::*;
pub(crate) use settings::*;

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
