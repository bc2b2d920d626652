//! `type: file` — JSON lines appended to a file; `flush` writes and fsyncs.
//!
//! Only whole lines stay in the file: a write that fails part way is cut back before it is
//! retried, a last line left unfinished by a crash is cut when the file is opened (its records
//! were not committed, so they are written again), and a new file's folder is fsynced with it.

use crate::encoding::{write_line, LineFormat};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_core::{
    async_trait, ConnectorError, FieldError, PutOutcome, Record, Sink, SinkBuildContext, SinkConfig,
};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

sluice_core::register_plugin!(Sink, "file", FileSinkConfig);

/// Appends records to a file as JSON lines.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to; `{topic}` is replaced by the record's topic. Missing folders are created.
    pub path: String,
    /// `value` (the record value per line) or `envelope` (value with key, coordinates and headers).
    #[serde(default)]
    pub format: LineFormat,
}

#[async_trait]
#[typetag::serde(name = "file")]
impl SinkConfig for FileSinkConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if self.path.trim().is_empty() {
            return Err(vec![FieldError::new("path", "must not be empty")]);
        }
        Ok(())
    }

    async fn build(&self, _ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(FileSink {
            config: self.clone(),
            files: HashMap::new(),
        }))
    }
}

struct FileSink {
    config: FileSinkConfig,
    /// Open files by path, with the bytes `put` but not yet written.
    files: HashMap<PathBuf, (Option<Output>, Vec<u8>)>,
}

/// An open output file.
struct Output {
    file: File,
    /// Folders created with the file (the file's own first): fsynced, once, after its first
    /// write, so that a crash cannot lose the file's name after its offsets are committed.
    unsynced_dirs: Vec<PathBuf>,
}

impl Output {
    /// Opens `path` for appending, creating it and its folders; cuts an unfinished last line.
    fn open(path: &Path) -> Result<Output, ConnectorError> {
        let cannot = |what: &str, p: &Path, e: std::io::Error| {
            ConnectorError::external(format!("cannot {what} {}: {e}", p.display()))
        };
        let mut unsynced_dirs = Vec::new();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // The folders to create, deepest first; each new one must be fsynced in its parent.
        let mut missing = dir;
        while !missing.exists() {
            unsynced_dirs.push(missing.parent().unwrap_or(Path::new(".")).to_path_buf());
            match missing.parent() {
                Some(p) if !p.as_os_str().is_empty() => missing = p,
                _ => break,
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| cannot("create", dir, e))?;
        if !path.exists() {
            unsynced_dirs.insert(0, dir.to_path_buf());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| cannot("open", path, e))?;
        cut_unfinished_line(&file).map_err(|e| cannot("repair the last line of", path, e))?;
        Ok(Output {
            file,
            unsynced_dirs,
        })
    }

    /// Appends `bytes` and makes them durable; on failure the file is cut back to where it
    /// was, so a retry does not leave a torn line.
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
        for dir in std::mem::take(&mut self.unsynced_dirs) {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }
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
        let mut output = Output::open(&path).unwrap();
        assert_eq!(
            output.unsynced_dirs,
            [
                dir.path().join("a/b"),
                dir.path().join("a"),
                dir.path().to_path_buf()
            ]
        );
        output.append(b"x\n").unwrap();
        assert!(output.unsynced_dirs.is_empty());
        // An existing file in an existing folder needs nothing synced but its data.
        assert!(Output::open(&path).unwrap().unsynced_dirs.is_empty());
    }
}
