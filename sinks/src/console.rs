//! `type: console` — JSON lines on standard output.

use crate::encoding::{write_line, LineFormat};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{
    async_trait, ConnectorError, FieldError, PutOutcome, Record, Sink, SinkBuildContext, SinkConfig,
};
use std::io::Write;
use std::sync::Arc;

/// Prints records to standard output, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    /// `value` (the record value per line) or `envelope` (value with key, coordinates and headers).
    #[serde(default)]
    pub format: LineFormat,
}

#[sluice_api::sink("console")]
impl SinkConfig for ConsoleSinkConfig {
    fn destination(&self) -> Option<String> {
        Some("standard output".into())
    }

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    async fn build(&self, _ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(ConsoleSink {
            format: self.format,
            buffer: Vec::new(),
        }))
    }
}

struct ConsoleSink {
    format: LineFormat,
    buffer: Vec<u8>,
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
        let mut outcome = PutOutcome::default();
        for (i, record) in batch.iter().enumerate() {
            let before = self.buffer.len();
            if let Err(e) = write_line(&mut self.buffer, record, self.format) {
                self.buffer.truncate(before);
                outcome
                    .rejected
                    .push((i, format!("cannot encode as JSON: {e}")));
            }
        }
        Ok(outcome)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buffer)
            .and_then(|()| out.flush())
            .map_err(|e| {
                ConnectorError::external(format!("cannot write to standard output: {e}"))
            })?;
        self.buffer.clear();
        Ok(())
    }
}
