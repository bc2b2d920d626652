//! `type: file` — JSON lines (or CSV rows under a header) appended to a file; `flush` writes
//! and fsyncs.
//!
//! Only whole lines stay in the file: a write that fails part way is cut back before it is
//! retried, a last line left unfinished by a crash is cut when the file is opened (its records
//! were not committed, so they are written again), and a new file's name and folders are fsynced
//! when it is created, before its first write.

use crate::encoding::{write_csv_line, write_csv_row, write_line, LineFormat};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{
    async_trait, ConnectorError, FieldError, PutOutcome, Record, Sink, SinkBuildContext, SinkConfig,
};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Appends records to a file as JSON lines.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to; `{topic}` is replaced by the record's topic. Missing folders are created.
    pub path: String,
    /// `value` (the record value per line, JSON), `envelope` (value with key, coordinates and
    /// headers) or `csv` (a header line, then one row per record, e.g. to open candles in a
    /// spreadsheet; see `columns`).
    #[serde(default)]
    pub format: LineFormat,
    /// With `format: csv`: the columns, in order (default: the fields of the first record
    /// written to a new file; a file that has lines already keeps its header). Fields not
    /// listed are left out; a missing or null one is an empty cell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

#[sluice_api::sink("file")]
impl SinkConfig for FileSinkConfig {
    fn destination(&self) -> Option<String> {
        Some(self.path.clone())
    }

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if self.path.trim().is_empty() {
            return Err(vec![FieldError::new("path", "must not be empty")]);
        }
        if !self.columns.is_empty() && self.format != LineFormat::Csv {
            return Err(vec![FieldError::new(
                "columns",
                "is for `format: csv`: set it, or remove `columns`",
            )]);
        }
        Ok(())
    }

    async fn build(&self, _ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(FileSink {
            config: self.clone(),
            files: HashMap::new(),
            headers: HashMap::new(),
        }))
    }
}

struct FileSink {
    config: FileSinkConfig,
    /// Open files by path, with the bytes `put` but not yet written.
    files: HashMap<PathBuf, (Option<Output>, Vec<u8>)>,
    /// With `format: csv`: each file's columns, once known.
    headers: HashMap<PathBuf, Vec<String>>,
}

/// The header of the CSV file at `path` if it has lines already.
fn existing_header(path: &Path) -> Option<Vec<String>> {
    let file = File::open(path).ok()?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(std::io::BufReader::new(file));
    let first = reader.records().next()?.ok()?;
    Some(first.iter().map(str::to_string).collect())
}

/// An open output file.
struct Output {
    file: File,
}

/// The folder holding `path`: `.` for a bare file name (whose `parent()` is the empty path).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

impl Output {
    /// Opens `path` for appending, creating it and its folders; cuts an unfinished last line.
    ///
    /// A new file's name and the folders made for it are fsynced in their parents here, before
    /// any record is written: once [`Output::append`] has made a flush's bytes durable, nothing
    /// of that flush is left that could fail and have them written again.
    fn open(path: &Path) -> Result<Output, ConnectorError> {
        let cannot = |what: &str, p: &Path, e: std::io::Error| {
            ConnectorError::external(format!("cannot {what} {}: {e}", p.display()))
        };
        let dir = folder_of(path);
        let unsynced = folders_to_sync(path);
        std::fs::create_dir_all(dir).map_err(|e| cannot("create", dir, e))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| cannot("open", path, e))?;
        for folder in &unsynced {
            File::open(folder)
                .and_then(|f| f.sync_all())
                .map_err(|e| cannot("sync the folder", folder, e))?;
        }
        cut_unfinished_line(&file).map_err(|e| cannot("repair the last line of", path, e))?;
        Ok(Output { file })
    }

    /// Appends `bytes` and makes them durable; on failure the file is cut back to where it
    /// was, so a retry writes them once and leaves no torn line.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let before = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.file.set_len(before)?;
            return Err(e);
        }
        Ok(())
    }
}

/// The folders whose entries change when `path` is created: the file's own folder if the file
/// is new, and the parent of every folder that must be made for it (deepest first). Each is
/// fsynced so that a crash cannot lose the file's name after its offsets are committed.
fn folders_to_sync(path: &Path) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    if !path.exists() {
        folders.push(folder_of(path).to_path_buf());
    }
    let mut missing = folder_of(path);
    while !missing.exists() {
        // Ends at `.` or `/` at the latest, which exist.
        missing = folder_of(missing);
        folders.push(missing.to_path_buf());
    }
    folders
}

/// Cuts `file` after its last newline: what follows is a line a crash left unfinished.
fn cut_unfinished_line(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(at) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(cut = len - end, "the output file ended with an unfinished line (a crash while writing); cut it, its records are written again");
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(())
}

#[async_trait]
impl Sink for FileSink {
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
        let templated = self.config.path.contains("{topic}");
        let mut outcome = PutOutcome::default();
        for (i, record) in batch.iter().enumerate() {
            let path = if templated {
                PathBuf::from(self.config.path.replace("{topic}", &record.topic))
            } else {
                PathBuf::from(&self.config.path)
            };
            if self.config.format == LineFormat::Csv {
                let (_, buffer) = self
                    .files
                    .entry(path.clone())
                    .or_insert_with(|| (None, Vec::new()));
                let columns = match self.headers.entry(path) {
                    std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                    std::collections::hash_map::Entry::Vacant(new) => {
                        // A file with lines keeps its header; a new one gets one.
                        let columns = match existing_header(new.key()) {
                            Some(columns) => columns,
                            None => {
                                let columns = match (&record.value, self.config.columns.is_empty())
                                {
                                    (_, false) => self.config.columns.clone(),
                                    (serde_json::Value::Object(fields), true) => {
                                        fields.keys().cloned().collect()
                                    }
                                    _ => {
                                        outcome
                                            .rejected
                                            .push((i, crate::encoding::NOT_AN_OBJECT.into()));
                                        continue;
                                    }
                                };
                                write_csv_row(buffer, columns.iter().cloned()).map_err(|e| {
                                    ConnectorError::internal(format!(
                                        "cannot write the CSV header: {e}"
                                    ))
                                })?;
                                columns
                            }
                        };
                        new.insert(columns)
                    }
                };
                let before = buffer.len();
                if let Err(e) = write_csv_line(buffer, record, columns) {
                    buffer.truncate(before);
                    outcome.rejected.push((i, e));
                }
                continue;
            }
            let (_, buffer) = self.files.entry(path).or_insert_with(|| (None, Vec::new()));
            let before = buffer.len();
            if let Err(e) = write_line(buffer, record, self.config.format) {
                buffer.truncate(before);
                outcome
                    .rejected
                    .push((i, format!("cannot encode as JSON: {e}")));
            }
        }
        Ok(outcome)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        for (path, (file, buffer)) in self.files.iter_mut() {
            if buffer.is_empty() {
                continue;
            }
            let mut open = match file.take() {
                Some(f) => f,
                None => Output::open(path)?,
            };
            let bytes = std::mem::take(buffer);
            let path_text = path.display().to_string();
            let (result, back, bytes) = tokio::task::spawn_blocking(move || {
                let result = open.append(&bytes);
                (result, open, bytes)
            })
            .await
            .map_err(|e| ConnectorError::internal(format!("file writer panicked: {e}")))?;
            if let Err(e) = result {
                // Keep the bytes: a retried flush writes them again (at-least-once), over
                // whatever part of them had reached the file (cut back by `append`).
                *buffer = bytes;
                *file = Some(back);
                return Err(ConnectorError::transient(format!(
                    "cannot write {path_text}: {e}"
                )));
            }
            *file = Some(back);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `format: csv`: a header from the first record's fields in their order, one row per
    /// record (quoted where needed, null empty, nested values as JSON); a later run appending to
    /// the file keeps its header and writes no second one.
    #[tokio::test]
    async fn csv_rows_follow_one_header_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weeks.csv");
        let config: FileSinkConfig =
            serde_yaml::from_str(&format!("{{ path: '{}', format: csv }}", path.display()))
                .unwrap();
        let week = |start: &str, close: f64| {
            Arc::new(Record::new(json!({
                "start": start, "close": close, "note": "a, \"quoted\" note", "tags": ["x"], "gap": null
            })))
        };
        for batch in [
            vec![week("2020-03-09", 5392.3), week("2020-03-16", 6000.0)],
            vec![week("2020-03-23", 6500.5)],
        ] {
            let mut sink = config.build(SinkBuildContext::default()).await.unwrap();
            let outcome = sink.put(&batch).await.unwrap();
            assert!(outcome.rejected.is_empty());
            sink.flush().await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "start,close,note,tags,gap\n\
             2020-03-09,5392.3,\"a, \"\"quoted\"\" note\",\"[\"\"x\"\"]\",\n\
             2020-03-16,6000.0,\"a, \"\"quoted\"\" note\",\"[\"\"x\"\"]\",\n\
             2020-03-23,6500.5,\"a, \"\"quoted\"\" note\",\"[\"\"x\"\"]\",\n"
        );
    }

    #[tokio::test]
    async fn flushed_records_are_in_the_file_one_per_line_and_appended_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/{topic}.jsonl");
        let config: FileSinkConfig =
            serde_yaml::from_str(&format!("path: {}", path.display())).unwrap();
        for round in 0..2 {
            let mut sink = config.build(SinkBuildContext::default()).await.unwrap();
            let mut r = Record::new(json!({ "round": round }));
            r.topic = "btc".into();
            assert!(sink
                .put(&[Arc::new(r.clone()), Arc::new(r)])
                .await
                .unwrap()
                .rejected
                .is_empty());
            sink.flush().await.unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("sub/btc.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"round\":0}\n{\"round\":0}\n{\"round\":1}\n{\"round\":1}\n"
        );
    }

    #[test]
    fn a_line_left_unfinished_by_a_crash_is_cut_when_the_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\"").unwrap();
        let mut output = Output::open(&path).unwrap();
        output.append(b"{\"a\":3}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[test]
    fn a_new_file_and_the_folders_created_for_it_are_synced_in_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/out.jsonl");
        assert_eq!(
            folders_to_sync(&path),
            [
                dir.path().join("a/b"),
                dir.path().join("a"),
                dir.path().to_path_buf()
            ]
        );
        let mut output = Output::open(&path).unwrap();
        output.append(b"x\n").unwrap();
        // An existing file in an existing folder needs nothing synced but its data.
        assert!(folders_to_sync(&path).is_empty());
    }

    /// A fresh clone has no `out/`: `out/quickstart.jsonl` is a file in a new folder whose
    /// parent is the working directory, written as a relative path.
    #[test]
    fn a_relative_path_in_a_new_folder_syncs_the_working_directory_not_an_empty_path() {
        assert_eq!(
            folders_to_sync(Path::new("no-such-folder-here/x.jsonl")),
            [PathBuf::from("no-such-folder-here"), PathBuf::from(".")]
        );
        assert_eq!(
            folders_to_sync(Path::new("no-such-a/no-such-b/x.jsonl")),
            [
                PathBuf::from("no-such-a/no-such-b"),
                PathBuf::from("no-such-a"),
                PathBuf::from(".")
            ]
        );
        assert_eq!(
            folders_to_sync(Path::new("no-such-file.jsonl")),
            [PathBuf::from(".")]
        );
    }

    /// Written from a relative path in a new folder, each flush's lines are in the file once:
    /// nothing after the write fails the flush and has them written again.
    #[tokio::test]
    async fn the_first_flush_into_a_new_relative_folder_succeeds_and_writes_once() {
        let dir = tempfile::tempdir().unwrap();
        let _cwd = CurrentDir::enter(dir.path());
        let config: FileSinkConfig = serde_yaml::from_str("path: out/q.jsonl").unwrap();
        let mut sink = config.build(SinkBuildContext::default()).await.unwrap();
        let record = Arc::new(Record::new(json!({ "n": 1 })));
        sink.put(&[record]).await.unwrap();
        sink.flush().await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/q.jsonl")).unwrap(),
            "{\"n\":1}\n"
        );
    }

    /// Changes the process's working directory while alive (tests of relative paths).
    struct CurrentDir(PathBuf);

    impl CurrentDir {
        fn enter(dir: &Path) -> CurrentDir {
            let before = std::env::current_dir().unwrap();
            std::env::set_current_dir(dir).unwrap();
            CurrentDir(before)
        }
    }

    impl Drop for CurrentDir {
        fn drop(&mut self) {
            let _ = std::env::set_current_dir(&self.0);
        }
    }

    /// The compliance check every sink runs: a value that is not an object is refused by
    /// `format: csv`, the rest written once each and durable after `flush`.
    #[tokio::test]
    async fn the_file_sink_passes_the_sink_compliance_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/rows.csv");
        let yaml = format!(
            "type: file\npath: {}\nformat: csv\ncolumns: [id, n]\n",
            path.display()
        );
        sluice_test_support::sink_compliance(
            &yaml,
            Some(serde_json::json!("not an object")),
            &sluice_test_support::CsvFile(path),
        )
        .await;
    }
}
