//! Turning a batch into `_bulk` NDJSON: index names, document ids and action lines.

use super::config::{DocumentId, ElasticsearchSinkConfig, Tombstones, WriteMethod};
use serde_json::{json, Value};
use sluice_api::Record;
use std::borrow::Borrow;

/// Longest `_id` Elasticsearch accepts, in bytes.
const MAX_ID_BYTES: usize = 512;
/// `retry_on_conflict` of upserts.
const RETRY_ON_CONFLICT: u32 = 3;

/// One document's action (and source) lines, with its index in the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkItem {
    pub position: usize,
    pub index: String,
    /// The document id, when the sink sets one: writes to one id must keep their order.
    pub id: Option<String>,
    pub lines: Vec<u8>,
}

/// The bulk items of a batch, and the records that cannot be documents (with why).
pub fn bulk_items<R: Borrow<Record>>(
    config: &ElasticsearchSinkConfig,
    batch: &[R],
) -> (Vec<BulkItem>, Vec<(usize, String)>) {
    let mut items = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for (position, record) in batch.iter().enumerate() {
        match item(config, position, record.borrow()) {
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
    let tombstone_without_key_id = record.is_tombstone() && config.document_id != DocumentId::Key;
    let id = if tombstone_without_key_id {
        None
    } else {
        document_id(config, record)?
    };
    if let Some(id) = &id {
        // Elasticsearch checks every item before any: one bad id fails the whole `_bulk`.
        if id.is_empty() {
            return Err("the document id is empty".into());
        }
        if id.len() > MAX_ID_BYTES {
            return Err(format!(
                "the document id is {} bytes; Elasticsearch takes at most {MAX_ID_BYTES}",
                id.len()
            ));
        }
    }
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
        // A tombstone deletes the document whose id is its key.
        match config.tombstones() {
            Tombstones::Ignore => return Ok(None),
            Tombstones::Refuse => {
                return Err(
                    "a tombstone (null value) cannot name a document to delete unless `document_id: key`"
                        .into(),
                )
            }
            Tombstones::Delete => {}
        }
        push(&json!({ "delete": meta }))?;
        return Ok(Some(BulkItem {
            position,
            index,
            id,
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
            // Two updates of one id at once may conflict (409); Elasticsearch retries them.
            meta["retry_on_conflict"] = json!(RETRY_ON_CONFLICT);
            push(&json!({ "update": meta }))?;
            push(&json!({ "doc": record.value, "doc_as_upsert": true }))?;
        }
    }
    Ok(Some(BulkItem {
        position,
        index,
        id,
        lines,
    }))
}

/// `{topic}`, `{date}` (`YYYY.MM.DD` of the record time) and `{date:FORMAT}` filled in.
/// The template is checked by the config's `check_index_template` first; a format it would refuse is
/// left as written rather than panicking.
pub fn index_name(template: &str, record: &Record) -> String {
    let mut name = template.replace("{topic}", &record.topic.to_lowercase());
    let mut from = 0;
    while let Some(found) = name[from..].find("{date") {
        let start = from + found;
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
        let mut text = String::new();
        if std::fmt::Write::write_fmt(&mut text, format_args!("{}", time.format(&format))).is_err()
        {
            from = start + len + 1;
            continue;
        }
        name.replace_range(start..=start + len, &text);
        from = start + text.len();
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
        let (items, _) = bulk_items(
            &config("document_id: key\ntombstones: ignore"),
            &[t.clone()],
        );
        assert!(items.is_empty());
        // With ids from coordinates or fields, a tombstone names no document: refused.
        for yaml in ["", "document_id: fields\nid_fields: [Date]"] {
            let (items, refused) = bulk_items(&config(yaml), &[t.clone()]);
            assert!(items.is_empty(), "{yaml}");
            assert!(
                refused[0].1.contains("document_id: key"),
                "{yaml}: {refused:?}"
            );
        }
    }

    #[test]
    fn an_empty_or_too_long_id_refuses_only_its_record() {
        let mut long = record();
        long.key = Some(vec![b'k'; 513]);
        let mut empty = record();
        empty.key = Some(Vec::new());
        let (items, refused) = bulk_items(&config("document_id: key"), &[record(), long, empty]);
        assert_eq!(items.len(), 1);
        assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        assert!(refused[0].1.contains("513 bytes"), "{refused:?}");
    }

    #[test]
    fn upserts_ask_elasticsearch_to_retry_conflicts() {
        let (items, _) = bulk_items(
            &config("document_id: key\nwrite_method: upsert"),
            &[record()],
        );
        let text = String::from_utf8(items[0].lines.clone()).unwrap();
        assert!(text.contains(r#""retry_on_conflict":3"#), "{text}");
    }

    /// Even unchecked by the config, an index with a bad date format is no panic.
    #[test]
    fn a_bad_date_format_in_an_index_is_no_panic() {
        assert_eq!(index_name("x-{date:%Q}", &record()), "x-{date:%Q}");
    }
}
