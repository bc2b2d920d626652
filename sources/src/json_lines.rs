//! `type: file` — JSON lines: one record per line of one file or a glob of files, resumable at
//! a byte position, following files as they grow like the CSV source (the same reader).
//!
//! **Record**: the line's JSON value as written. **Key**: the value at `key` (a JSON pointer),
//! text as is, other values as JSON. **Record time**: the value at `time` (RFC 3339 text, or
//! epoch seconds or milliseconds), else the time of reading. **Offset**: per file (the source
//! partition is its path), the byte after the last delivered line, with a fingerprint of the
//! file's head in `follow` mode so a replaced or rewritten file is read again from its start.
//! A line that is not JSON is a bad record naming its file and line (dead-letter topic, or fatal
//! per `errors.tolerance`); blank lines are skipped.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{ConnectorError, FieldError, Source, SourceBuildContext, SourceConfig};
use std::time::Duration;

/// Reads JSON-lines files (one file or a glob) and emits one record per line.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// File path or glob (`data/*.jsonl`), relative to the working directory; files are read in
    /// name order.
    pub path: String,
    /// JSON pointer to the value that becomes the record key (`/id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// JSON pointer to the record time (`/created_at`): RFC 3339 text, or epoch seconds or
    /// milliseconds; otherwise the time of reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Most records per second; unset reads as fast as the pipeline takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Keep watching for appended lines and new files after the end, like `tail -f`; a line is
    /// read once its newline is written.
    #[serde(default)]
    pub follow: bool,
    /// How often `follow` looks for new lines and files.
    #[serde(default = "one_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[sluice_api::source("file")]
impl SourceConfig for FileSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = crate::csv::check_files(&self.path, self.rate);
        for (field, pointer) in [("key", &self.key), ("time", &self.time)] {
            if pointer.as_deref().is_some_and(|p| !p.starts_with('/')) {
                errors.push(FieldError::new(
                    field,
                    "must be a JSON pointer, starting with `/` (`/id`)",
                ));
            }
        }
        FieldError::all(errors)
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let component = ctx.component.clone();
        let files = crate::csv::JsonLinesFiles {
            path: self.path.clone(),
            key: self.key.clone(),
            time: self.time.clone(),
            follow: self.follow,
            poll_interval: self.poll_interval,
        };
        let settings = crate::csv::ReaderSettings::json_lines(&files, ctx)?;
        crate::csv::start(settings, &component, self.rate)
    }

    /// Each file of the glob is a work unit.
    fn work_units(&self) -> Option<usize> {
        crate::csv::work_units(&self.path)
    }
}
