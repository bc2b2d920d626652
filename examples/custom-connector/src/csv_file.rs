//! `type: csv_file`: records as rows of a CSV file.

use sluice_api::serde_json::Value;
use sluice_api::{
    async_trait, ConnectorError, FieldError, PutOutcome, Record, Sink, SinkBuildContext, SinkConfig,
};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Appends each record as a CSV row of `columns` (a header first, in a new file).
#[sluice_api::config]
#[serde(deny_unknown_fields)]
pub struct CsvFileConfig {
    /// The file; its folder is created if missing.
    pub path: String,
    /// Fields of the record, in column order; a missing field is an empty cell.
    pub columns: Vec<String>,
}

#[sluice_api::sink("csv_file")]
impl SinkConfig for CsvFileConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.path.trim().is_empty() {
            errors.push(FieldError::new("path", "must name the file"));
        }
        if self.columns.is_empty() {
            errors.push(FieldError::new("columns", "must name at least one field"));
        }
        FieldError::all(errors)
    }

    async fn build(&self, _: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        let path = std::path::Path::new(&self.path);
        let refused = |e: std::io::Error| {
            ConnectorError::user(format!("cannot write {}: {e}", self.path)).with_field("path")
        };
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(folder).await.map_err(refused)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(refused)?;
        if file.metadata().await.map_err(refused)?.len() == 0 {
            file.write_all(row(self.columns.iter().map(|c| c.as_str())).as_bytes())
                .await
                .map_err(refused)?;
        }
        Ok(Box::new(CsvFile {
            columns: self.columns.clone(),
            file,
            pending: String::new(),
        }))
    }

    fn destination(&self) -> Option<String> {
        Some(self.path.clone())
    }
}

struct CsvFile {
    columns: Vec<String>,
    file: tokio::fs::File,
    /// Rows put and not yet written.
    pending: String,
}

/// One CSV line: fields quoted when they hold a comma, a quote or a line break.
fn row<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let cells: Vec<String> = fields
        .map(|field| {
            if field.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field.to_string()
            }
        })
        .collect();
    cells.join(",") + "\n"
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

#[async_trait]
impl Sink for CsvFile {
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
        let mut outcome = PutOutcome::default();
        for (index, record) in batch.iter().enumerate() {
            let Some(object) = record.value.as_object() else {
                outcome
                    .rejected
                    .push((index, "the record is not an object: no columns".into()));
                continue;
            };
            let cells: Vec<String> = self.columns.iter().map(|c| cell(object.get(c))).collect();
            self.pending
                .push_str(&row(cells.iter().map(String::as_str)));
        }
        Ok(outcome)
    }

    /// Writes the rows put so far and syncs the file: then their offsets may be committed.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let failed = |e: std::io::Error| {
            ConnectorError::transient(format!("cannot write the CSV file: {e}"))
        };
        if !self.pending.is_empty() {
            self.file
                .write_all(self.pending.as_bytes())
                .await
                .map_err(failed)?;
            self.pending.clear();
        }
        self.file.sync_data().await.map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_with_commas_quotes_or_breaks_are_quoted() {
        assert_eq!(
            row(["a", "b,c", "say \"hi\""].into_iter()),
            "a,\"b,c\",\"say \"\"hi\"\"\"\n"
        );
        assert_eq!(cell(Some(&Value::from(1.5))), "1.5");
        assert_eq!(cell(None), "");
    }

    /// The check every sink runs: a value that is not an object is refused, the rest
    /// written once each and durable after `flush`.
    #[tokio::test]
    async fn passes_the_sink_compliance_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        let yaml = format!(
            "type: csv_file\npath: {}\ncolumns: [id, n]\n",
            path.display()
        );
        sluice_test_support::sink_compliance(
            &yaml,
            Some(Value::from("text")),
            &sluice_test_support::CsvFile(path),
        )
        .await;
    }
}
