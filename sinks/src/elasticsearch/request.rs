//! Turning a batch into `_bulk` NDJSON: index names, document ids and action lines.

use super::config::{DocumentId, ElasticsearchSinkConfig, Tombstones, WriteMethod};
use serde_json::{json, Value};
use sluice_core::Record;

/// One document's action (and source) lines, with its index in the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkItem {
    pub position: usize,
    pub index: String,
    pub lines: Vec<u8>,
}

/// The bulk items of a batch, and the records that cannot be documents (with why).
pub fn bulk_items(
    config: &ElasticsearchSinkConfig,
    batch: &[Record],
) -> (Vec<BulkItem>, Vec<(usize, String)>) {
    let mut items = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for (position, record) in batch.iter().enumerate() {
        match item(config, position, record) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {}
            Err(reason) => refused.push((position, reason)),
        }
    }
    (items, refused)
}

fn item(
    config: &ElasticsearchSinkConfig,
    position: usize,
    record: &Record,
) -> Result<Option<BulkItem>, String> {
    let index = index_name(&config.index, record);
    let id = document_id(config, record)?;
    let mut meta = json!({ "_index": index });
    if let Some(id) = &id {
        meta["_id"] = Value::String(id.clone());
    }
    let mut lines = Vec::with_capacity(256);
    let mut push = |v: &Value| -> Result<(), String> {
        serde_json::to_writer(&mut lines, v).map_err(|e| format!("cannot encode as JSON: {e}"))?;
        lines.push(b'\n');
        Ok(())
    };
    if record.is_tombstone() {
        // A tombstone deletes the document with the record's id.
        if config.tombstones == Tombstones::Ignore || id.is_none() {
            return Ok(None);
        }
        push(&json!({ "delete": meta }))?;
        return Ok(Some(BulkItem {
            position,
            index,
            lines,
        }));
    }
    match config.write_method {
        WriteMethod::Index => {
            push(&json!({ "index": meta }))?;
            push(&record.value)?;
        }
        WriteMethod::Create => {
            push(&json!({ "create": meta }))?;
            push(&record.value)?;
        }
        WriteMethod::Upsert => {
            push(&json!({ "update": meta }))?;
            push(&json!({ "doc": record.value, "doc_as_upsert": true }))?;
        }
    }
    Ok(Some(BulkItem {
        position,
        index,
        lines,
    }))
}

/// `{topic}`, `{date}` (`YYYY.MM.DD` of the record time) and `{date:FORMAT}` filled in.
pub fn index_name(template: &str, record: &Record) -> String {
    let mut name = template.replace("{topic}", &record.topic.to_lowercase());
    while let Some(start) = name.find("{date") {
        let Some(len) = name[start..].find('}') else {
            break;
        };
        let format = name[start + 5..start + len]
            .strip_prefix(':')
            .unwrap_or("%Y.%m.%d")
            .to_string();
        let time = record
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or_else(chrono::Utc::now);
        name.replace_range(start..=start + len, &time.format(&format).to_string());
    }
    name
}

fn document_id(
    config: &ElasticsearchSinkConfig,
    record: &Record,
) -> Result<Option<String>, String> {
    Ok(match config.document_id {
        DocumentId::None => None,
        DocumentId::Coordinates => Some(format!(
            "{}+{}+{}",
            record.topic, record.partition, record.offset
        )),
        DocumentId::Key => Some(
            record
                .key_str()
                .ok_or("the record has no UTF-8 key for the document id")?
                .to_string(),
        ),
        DocumentId::Fields => {
            let parts: Result<Vec<String>, String> = config
                .id_fields
                .iter()
                .map(|f| match record.value.get(f) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(v) if !v.is_null() => Ok(v.to_string()),
                    _ => Err(format!("id field `{f}` is missing or null")),
                })
                .collect();
            Some(parts?.join("_"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ElasticsearchSinkConfig {
        serde_yaml::from_str(&format!("url: http://127.0.0.1:9200\n{yaml}")).unwrap()
    }

    fn record() -> Record {
        let mut r =
            Record::new(json!({"Date": "2014-09-17", "Close": 457.3})).with_key("2014-09-17");
        r.topic = "Bitcoin".into();
        r.partition = 3;
        r.offset = 42;
        r.timestamp = Some(1_410_912_000_000);
        r
    }

    #[test]
    fn index_names_take_the_topic_and_the_record_date() {
        assert_eq!(index_name("{topic}", &record()), "bitcoin");
        assert_eq!(index_name("btc-{date}", &record()), "btc-2014.09.17");
        assert_eq!(
            index_name("{topic}-{date:%Y-%m}", &record()),
            "bitcoin-2014-09"
        );
    }

    #[test]
    fn ids_come_from_coordinates_key_or_fields() {
        let (items, _) = bulk_items(&config(""), &[record()]);
        let text = String::from_utf8(items[0].lines.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"index":{"_index":"bitcoin","_id":"Bitcoin+3+42"}}"#),
            "{text}"
        );
        let (items, _) = bulk_items(
            &config("document_id: key\nwrite_method: upsert"),
            &[record()],
        );
        let text = String::from_utf8(items[0].lines.clone()).unwrap();
        assert!(
            text.contains(r#""update""#)
                && text.contains(r#""_id":"2014-09-17""#)
                && text.contains("doc_as_upsert"),
            "{text}"
        );
        let (_, refused) = bulk_items(
            &config("document_id: fields\nid_fields: [Nope]"),
            &[record()],
        );
        assert_eq!(refused[0].0, 0);
    }

    #[test]
    fn a_tombstone_deletes_or_is_ignored() {
        let mut t = record();
        t.value = Value::Null;
        let (items, _) = bulk_items(&config("document_id: key"), &[t.clone()]);
        assert_eq!(
            String::from_utf8(items[0].lines.clone()).unwrap(),
            "{\"delete\":{\"_index\":\"bitcoin\",\"_id\":\"2014-09-17\"}}\n"
        );
        let (items, _) = bulk_items(&config("document_id: key\ntombstones: ignore"), &[t]);
        assert!(items.is_empty());
    }
}
