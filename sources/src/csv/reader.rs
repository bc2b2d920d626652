//! The reader thread of the CSV source: files in order, from the stored byte position, parsed
//! into typed records, sent in batches.

use super::config::{CsvSourceConfig, NullRows};
use super::value::{Field, Parse};
use serde_json::{Map, Value};
use sluice_core::record::now_millis;
use sluice_core::{BadInput, ConnectorError, Payload, Record, SourceOffsets, SourceRecord};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Sender;

/// Records per batch handed from the thread to the async side.
const BATCH: usize = 1024;

/// Everything the reader thread needs, checked at build time.
pub(super) struct ReaderSettings {
    pattern: String,
    header: bool,
    delimiter: u8,
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
}

impl ReaderSettings {
    pub fn new(
        config: &CsvSourceConfig,
        offsets: SourceOffsets,
        encode: bool,
    ) -> Result<Self, ConnectorError> {
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
            delimiter: config.delimiter as u8,
            builder,
            columns: config.columns.clone(),
            infer: config.infer_types,
            null_values: config.null_values.clone(),
            key: config.key.clone(),
            timestamp_column: config.timestamp_column.clone(),
            all_null_rows: config.all_null_rows,
            follow: config.follow,
            poll_interval: config.poll_interval,
            offsets,
            encode,
        };
        if !settings.follow && settings.files()?.is_empty() {
            return Err(
                ConnectorError::user(format!("no file matches `{}`", settings.pattern))
                    .with_field("path"),
            );
        }
        Ok(settings)
    }

    /// Files matching the pattern, in name order.
    fn files(&self) -> Result<Vec<String>, ConnectorError> {
        let paths = glob::glob(&self.pattern).map_err(|e| {
            ConnectorError::user(format!("`{}` is not a valid glob: {e}", self.pattern))
        })?;
        let mut files: Vec<String> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        files.sort();
        Ok(files)
    }
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
                let byte = offset.as_u64().unwrap_or(0);
                let line = lines_before(file, byte).unwrap_or(0) + 1;
                (file.clone(), FilePosition { byte, line })
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
                Ok(true) if self.settings.follow => std::thread::sleep(self.settings.poll_interval),
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
    fn layout(&mut self, path: &str, file: &File) -> io::Result<Option<FilePosition>> {
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
                },
            )
        } else {
            let names = (1..=first.len()).map(|i| format!("column_{i}")).collect();
            (names, FilePosition { byte: 0, line: 1 })
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
        let stored = self.positions.get(path).copied();
        if stored.is_some_and(|p| p.byte == len) {
            return Ok(Ok(())); // nothing new
        }
        if stored.is_some_and(|p| p.byte > len) {
            tracing::warn!(file = %path, stored = stored.map(|p| p.byte), len, "file is shorter than the stored offset (replaced?); reading it from the start");
            self.positions.remove(path);
            self.layouts.remove(path);
        }
        if !self.layouts.contains_key(path) {
            let Some(data_start) = self.layout(path, &file)? else {
                return Ok(Ok(())); // no row yet
            };
            self.positions.entry(path.to_string()).or_insert(data_start);
        }
        let start = self.positions[path];
        let mut reader = self.settings.builder.from_reader(&file);
        let mut position = csv::Position::new();
        position.set_byte(start.byte).set_line(start.line);
        reader.seek_raw(io::SeekFrom::Start(start.byte), position)?;

        let layout = &self.layouts[path];
        let partition: Arc<str> = Arc::from(path);
        let mut reached = start;
        let mut row = csv::ByteRecord::new();
        let mut batch = Vec::with_capacity(BATCH);
        // Record time of rows without a timestamp column: read once per batch, not per row.
        let mut now = now_millis();
        loop {
            let line = reader.position().line();
            let has_row = match reader.read_byte_record(&mut row) {
                Ok(has_row) => has_row,
                Err(e) => {
                    // A syntax error (e.g. invalid quoting): the row is bad, reading goes on.
                    let end = reader.position().clone();
                    batch.push(bad(
                        &partition,
                        line,
                        &end,
                        Vec::new(),
                        format!("unreadable row: {e}"),
                    ));
                    continue;
                }
            };
            if !has_row {
                break;
            }
            let end = reader.position().clone();
            if self.settings.follow && end.byte() >= len && !ends_with_newline(&file, end.byte())? {
                break; // a row still being written; read it once complete
            }
            batch.push(Self::to_record(
                &self.settings,
                layout,
                &partition,
                line,
                &end,
                &row,
                now,
            ));
            reached = FilePosition {
                byte: end.byte(),
                line: end.line(),
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

    fn to_record(
        settings: &ReaderSettings,
        layout: &Layout,
        path: &Arc<str>,
        line: u64,
        end: &csv::Position,
        row: &csv::ByteRecord,
        now: i64,
    ) -> SourceRecord {
        let raw = || {
            row.iter()
                .collect::<Vec<_>>()
                .join(&[settings.delimiter][..])
        };
        if row.len() != layout.names.len() {
            let message = format!(
                "row has {} fields, the header has {}",
                row.len(),
                layout.names.len()
            );
            return bad(path, line, end, raw(), message);
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
                    end,
                    raw(),
                    format!("field `{name}` is not valid UTF-8"),
                );
            };
            let field = if text.is_empty() || settings.null_values.iter().any(|n| n == text) {
                Field::Null
            } else {
                match layout.parsers[i].field(text) {
                    Ok(field) => field,
                    Err(e) => return bad(path, line, end, raw(), format!("field `{name}`: {e}")),
                }
            };
            if Some(i) == layout.key {
                if !field.is_null() {
                    key = Some(text.as_bytes().to_vec());
                }
            } else if !field.is_null() {
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
                    return bad(path, line, end, raw(), format!("field `{name}`: {e}"));
                }
            } else {
                map.insert(name.clone(), field.into_value());
            }
        }
        let offset = Value::from(end.byte());
        let partition = path.clone();
        if all_null {
            match settings.all_null_rows {
                NullRows::Keep => {}
                NullRows::Skip => {
                    return SourceRecord {
                        partition,
                        offset,
                        payload: Payload::Skipped {
                            reason: format!("{path} line {line}: every field is null"),
                        },
                    }
                }
                NullRows::DeadLetter => {
                    return bad(
                        path,
                        line,
                        end,
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
            payload: Payload::Record(record),
        }
    }
}

fn bad(
    path: &Arc<str>,
    line: u64,
    end: &csv::Position,
    raw: Vec<u8>,
    message: String,
) -> SourceRecord {
    SourceRecord {
        partition: path.clone(),
        offset: Value::from(end.byte()),
        payload: Payload::Bad(BadInput {
            raw,
            message,
            location: format!("{path} line {line}"),
        }),
    }
}

fn ends_with_newline(file: &File, end: u64) -> io::Result<bool> {
    if end == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    file.read_at(&mut last, end - 1)?;
    Ok(last[0] == b'\n')
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
        let settings = ReaderSettings::new(&config, SourceOffsets::new(), encode).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        CsvReader::new(settings).run(tx);
        let mut items = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            items.extend(batch.unwrap());
        }
        items
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
