//! Records as JSON lines, shared by the file and console sinks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_api::Record;

/// Why a record cannot be a CSV row.
pub(crate) const NOT_AN_OBJECT: &str =
    "`format: csv` writes values that are objects; this one is not";

/// What one line holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The record value only.
    #[default]
    Value,
    /// The value with key, topic, partition, offset, timestamp and headers (useful for dead letters).
    Envelope,
    /// CSV (RFC 4180) with a header line: one column per field of the value (an object), in
    /// the order of `columns` or of the first record's fields; nested values as JSON text,
    /// null as an empty cell. Only for the file sink.
    Csv,
}

/// Appends the CSV line of `record`'s value, one cell per column of `columns`.
pub(crate) fn write_csv_line(
    out: &mut Vec<u8>,
    record: &Record,
    columns: &[String],
) -> Result<(), String> {
    let Value::Object(fields) = &record.value else {
        return Err(NOT_AN_OBJECT.into());
    };
    let cells = columns.iter().map(|c| match fields.get(c) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    });
    write_csv_row(out, cells)
}

/// Appends one CSV row of `cells`.
pub(crate) fn write_csv_row(
    out: &mut Vec<u8>,
    cells: impl IntoIterator<Item = String>,
) -> Result<(), String> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer
        .write_record(cells.into_iter().collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    let line = writer.into_inner().map_err(|e| e.to_string())?;
    out.extend_from_slice(&line);
    Ok(())
}

/// Appends `record` as one line to `out`.
pub(crate) fn write_line(
    out: &mut Vec<u8>,
    record: &Record,
    format: LineFormat,
) -> Result<(), serde_json::Error> {
    match format {
        // Written as JSON where CSV has no header to follow (the console).
        LineFormat::Value | LineFormat::Csv => serde_json::to_writer(&mut *out, &record.value)?,
        LineFormat::Envelope => {
            let headers: Map<String, Value> = record
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value::String(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect();
            let envelope = json!({
                "topic": &*record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": record.key.as_deref().map(String::from_utf8_lossy),
                "timestamp": record.timestamp,
                "headers": headers,
                "value": record.value,
            });
            serde_json::to_writer(&mut *out, &envelope)?
        }
    }
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_carries_coordinates_and_headers() {
        let mut r = Record::new(json!({"a": 1})).with_key("k");
        r.topic = "t".into();
        r.partition = 2;
        r.offset = 7;
        r.headers.push(("h".into(), b"v".to_vec()));
        let mut out = Vec::new();
        write_line(&mut out, &r, LineFormat::Envelope).unwrap();
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["key"], "k");
        assert_eq!(line["offset"], 7);
        assert_eq!(line["headers"]["h"], "v");
        assert_eq!(line["value"]["a"], 1);
        out.clear();
        write_line(&mut out, &r, LineFormat::Value).unwrap();
        assert_eq!(out, b"{\"a\":1}\n");
    }
}
