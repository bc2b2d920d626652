//! `type: unix_socket_lines`: lines written to a Unix socket, acknowledged once stored.

use sluice_api::{
    async_trait, ConnectorError, FieldError, Payload, Record, Source, SourceBuildContext,
    SourceConfig, SourceRecord,
};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

/// Reads lines written to a Unix socket, one writer at a time, and answers `ok <n>` when the
/// first `n` lines it sent are stored.
#[sluice_api::config]
#[serde(deny_unknown_fields)]
pub struct UnixSocketLinesConfig {
    /// Path of the socket to listen on; a socket file left by an earlier run is replaced.
    pub path: String,
    /// Longest wait for more lines before a poll returns those it has, in milliseconds.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

fn default_linger_ms() -> u64 {
    50
}

/// The source partition: the socket's lines are one sequence.
const PARTITION: &str = "socket";

#[sluice_api::source("unix_socket_lines")]
impl SourceConfig for UnixSocketLinesConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.path.trim().is_empty() {
            errors.push(FieldError::new("path", "must name the socket's path"));
        }
        if self.linger_ms == 0 {
            errors.push(FieldError::new("linger_ms", "must be at least 1"));
        }
        FieldError::all(errors)
    }

    async fn build(&self, _: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        if std::path::Path::new(&self.path).exists() {
            std::fs::remove_file(&self.path).map_err(|e| {
                ConnectorError::user(format!("cannot replace {}: {e}", self.path))
                    .with_field("path")
            })?;
        }
        let listener = UnixListener::bind(&self.path).map_err(|e| {
            ConnectorError::user(format!("cannot listen on {}: {e}", self.path)).with_field("path")
        })?;
        Ok(Box::new(UnixSocketLines {
            listener,
            writer: None,
            linger: Duration::from_millis(self.linger_ms),
            held: VecDeque::new(),
            read: 0,
        }))
    }
}

struct Writer {
    lines: Lines<BufReader<OwnedReadHalf>>,
    answer: OwnedWriteHalf,
    /// Lines of this writer handed to the runtime before it (its first line's number - 1).
    first: u64,
    /// Lines read from it so far (numbered from 1 across writers).
    read_through: u64,
    /// It closed its side: the next poll waits for another writer once nothing is held.
    done: bool,
}

struct UnixSocketLines {
    listener: UnixListener,
    writer: Option<Writer>,
    linger: Duration,
    /// Lines read and not yet returned by a poll: kept across a dropped poll, drained at a stop.
    held: VecDeque<SourceRecord>,
    /// Lines read in all: the offset of the last one.
    read: u64,
}

#[async_trait]
impl Source for UnixSocketLines {
    /// Cancel-safe: a line is moved into `held` as soon as it is read (`next_line` is
    /// cancel-safe itself), so a dropped poll loses nothing.
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if self.writer.as_ref().is_none_or(|w| w.done) && self.held.is_empty() {
            let (stream, _) =
                self.listener.accept().await.map_err(|e| {
                    ConnectorError::transient(format!("cannot accept a writer: {e}"))
                })?;
            let (read, answer) = stream.into_split();
            self.writer = Some(Writer {
                lines: BufReader::new(read).lines(),
                answer,
                first: self.read,
                read_through: self.read,
                done: false,
            });
        }
        let deadline = tokio::time::Instant::now() + self.linger;
        while self.held.len() < max {
            let Some(writer) = self.writer.as_mut().filter(|w| !w.done) else {
                break;
            };
            // Nothing held: wait for a line as long as it takes; else at most the linger.
            let next = if self.held.is_empty() {
                Ok(writer.lines.next_line().await)
            } else {
                tokio::time::timeout_at(deadline, writer.lines.next_line()).await
            };
            match next {
                Err(_) => break,
                Ok(Ok(Some(line))) => {
                    self.read += 1;
                    writer.read_through = self.read;
                    self.held.push_back(SourceRecord {
                        partition: PARTITION.into(),
                        offset: self.read.into(),
                        position: Some(self.read),
                        payload: Payload::Record(Record::new(
                            sluice_api::serde_json::json!({ "line": line }),
                        )),
                    });
                }
                Ok(Ok(None)) => {
                    writer.done = true;
                    break;
                }
                Ok(Err(e)) => {
                    return Err(ConnectorError::transient(format!(
                        "reading the socket failed: {e}"
                    )))
                }
            }
        }
        let take = max.min(self.held.len());
        Ok(Some(self.held.drain(..take).collect()))
    }

    /// The writer waits for `ok <n>`: told as soon as lines are stored.
    fn acknowledges_producers(&self) -> bool {
        true
    }

    async fn drain(&mut self) -> Result<Vec<SourceRecord>, ConnectorError> {
        Ok(self.held.drain(..).collect())
    }

    /// Tells the writer how many of its lines are stored: `ok <n>`.
    async fn commit(
        &mut self,
        offsets: &HashMap<String, sluice_api::serde_json::Value>,
    ) -> Result<(), ConnectorError> {
        let (Some(stored), Some(writer)) = (
            offsets
                .get(PARTITION)
                .and_then(sluice_api::serde_json::Value::as_u64),
            self.writer.as_mut(),
        ) else {
            return Ok(());
        };
        let of_writer = stored.min(writer.read_through).saturating_sub(writer.first);
        // A writer that went away needs no answer.
        if writer
            .answer
            .write_all(format!("ok {of_writer}\n").as_bytes())
            .await
            .is_err()
        {
            self.writer = None;
        }
        Ok(())
    }
}
