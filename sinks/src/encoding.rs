//! Records as JSON lines, shared by the file and console sinks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_core::Record;

/// What one line holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The record value only.
    #[default]
    Value,
    /// The value with key, topic, partition, offset, timestamp and headers (useful for dead letters).
    Envelope,
}

/// Appends `record` as one line to `out`.
pub(crate) fn write_line(
    out: &mut Vec<u8>,
    record: &Record,
    format: LineFormat,
) -> Result<(), serde_json::Error> {
    match format {
        LineFormat::Value => serde_json::to_writer(&mut *out, &record.value)?,
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
