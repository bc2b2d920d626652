//! `type: file` — JSON lines appended to a file; `flush` writes and fsyncs.

use crate::encoding::{write_line, LineFormat};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_core::{
    async_trait, ConnectorError, FieldError, PutOutcome, Record, Sink, SinkBuildContext, SinkConfig,
};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

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
    files: HashMap<PathBuf, (Option<File>, Vec<u8>)>,
}

impl FileSink {
    fn open(path: &PathBuf) -> Result<File, ConnectorError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                ConnectorError::external(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ConnectorError::external(format!("cannot open {}: {e}", path.display())))
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn put(&mut self, batch: &[Record]) -> Result<PutOutcome, ConnectorError> {
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
                None => Self::open(path)?,
            };
            let bytes = std::mem::take(buffer);
            let path_text = path.display().to_string();
            let (result, back, bytes) = tokio::task::spawn_blocking(move || {
                let result = open.write_all(&bytes).and_then(|()| open.sync_data());
                (result, open, bytes)
            })
            .await
            .map_err(|e| ConnectorError::internal(format!("file writer panicked: {e}")))?;
            if let Err(e) = result {
                // Keep the bytes: a retried flush writes them again (at-least-once).
                *buffer = bytes;
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
            assert!(sink.put(&[r.clone(), r]).await.unwrap().rejected.is_empty());
            sink.flush().await.unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("sub/btc.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"round\":0}\n{\"round\":0}\n{\"round\":1}\n{\"round\":1}\n"
        );
    }
}
