//! The record: what flows from sources through topics into sinks.

use serde_json::Value;
use std::sync::Arc;

/// Headers in arrival order; a name may repeat, as in Kafka.
pub type Headers = Vec<(String, Vec<u8>)>;

/// One record. Sources fill `key`, `value`, `headers` and `timestamp`; the transport fills the
/// coordinates (`topic`, `partition`, `offset`) of records read from a topic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// Partitioning key; records with the same key land in the same partition, in order.
    pub key: Option<Vec<u8>>,
    /// The payload as JSON. A tombstone is `Value::Null` with a key.
    pub value: Value,
    /// The payload already written as JSON text, by a source asked to
    /// ([`SourceBuildContext::encode_values`](crate::SourceBuildContext)): records bound for
    /// Kafka then skip building and encoding a `Value` tree. While it is `Some`, `value` is
    /// `Null` and means nothing; [`Record::decode_value`] turns the text back into `value`.
    /// Only writers and the source task see such records; readers always fill `value`.
    pub encoded_value: Option<Vec<u8>>,
    /// Headers in arrival order.
    pub headers: Headers,
    /// Milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// Topic the record was read from, or is written to (shared by the records of a topic).
    pub topic: Arc<str>,
    /// Partition the record was read from (-1 before it is written).
    pub partition: i32,
    /// Offset in that partition (-1 before it is written).
    pub offset: i64,
}

impl Record {
    /// A record holding `value`, not yet written anywhere.
    pub fn new(value: Value) -> Self {
        Record {
            value,
            partition: -1,
            offset: -1,
            ..Record::default()
        }
    }

    /// A record holding `value`, with this one's key, headers, timestamp and coordinates.
    pub fn with_value(&self, value: Value) -> Record {
        Record {
            key: self.key.clone(),
            value,
            encoded_value: None,
            headers: self.headers.clone(),
            timestamp: self.timestamp,
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Moves `encoded_value`, if any, into `value`; fails on text that is not JSON.
    pub fn decode_value(&mut self) -> Result<(), serde_json::Error> {
        if let Some(text) = self.encoded_value.take() {
            self.value = serde_json::from_slice(&text)?;
        }
        Ok(())
    }

    /// True for a tombstone: a record without a value.
    pub fn is_tombstone(&self) -> bool {
        self.encoded_value.is_none() && self.value.is_null()
    }

    /// The key as text, if it is valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// `topic/partition@offset`, for messages.
    pub fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Field `name` of an object: compared in order in a small object (a record's few fields),
/// which is cheaper than hashing the name, and looked up by hash in a large one.
pub fn field<'v>(object: &'v serde_json::Map<String, Value>, name: &str) -> Option<&'v Value> {
    if object.len() <= 16 {
        object.iter().find(|(key, _)| *key == name).map(|(_, v)| v)
    } else {
        object.get(name)
    }
}

/// The value at JSON pointer `pointer` (`/a/0/b`): as [`Value::pointer`], without copying
/// each segment when none is escaped (`~0`, `~1`), and finding fields as [`field`] does.
pub fn pointer<'v>(value: &'v Value, pointer: &str) -> Option<&'v Value> {
    if pointer.contains('~') {
        return value.pointer(pointer);
    }
    if pointer.is_empty() {
        return Some(value);
    }
    let mut at = value;
    for segment in pointer.strip_prefix('/')?.split('/') {
        at = match at {
            Value::Object(object) => field(object, segment)?,
            Value::Array(items) => items.get(array_index(segment)?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// An array index of a JSON pointer: digits, without a leading zero.
fn array_index(segment: &str) -> Option<usize> {
    let digits = segment.bytes().all(|b| b.is_ascii_digit());
    if !digits || segment.is_empty() || (segment.len() > 1 && segment.starts_with('0')) {
        return None;
    }
    segment.parse().ok()
}

/// JSON text as a [`Value`], as `serde_json::from_slice` makes it, with each object made at
/// its size rather than grown field by field (records are mostly small objects).
pub fn parse_value(text: &[u8]) -> serde_json::Result<Value> {
    use serde::de::DeserializeSeed;
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value = ValueSeed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Builds [`Value`]s the way serde_json's own `Deserialize` does, but objects at their size.
#[derive(Clone, Copy)]
struct ValueSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields: smallvec::SmallVec<[(String, Value); 16]> = smallvec::SmallVec::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            fields.push((name, value));
        }
        let mut object = serde_json::Map::with_capacity(fields.len());
        // A repeated name keeps its first place and its last value, as serde_json does.
        object.extend(fields);
        Ok(Value::Object(object))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser makes exactly what serde_json makes, and refuses what it refuses.
    #[test]
    fn parse_value_agrees_with_serde_json() {
        let texts = [
            r#"{"Date":"2015-01-05","symbol":"S0","Open":465.864014,"Volume":21056800,"n":null}"#,
            r#"{"b":1,"a":{"c":[1,-2,3.5e10,"x",true,null,{"d":{}}]},"b":2}"#,
            r#"[0.1, 18446744073709551615, -9223372036854775808, 1e-7, "\u00e9\n"]"#,
            r#""text""#,
            "12",
            r#"{"wide":{"f0":0,"f1":1,"f2":2,"f3":3,"f4":4,"f5":5,"f6":6,"f7":7,"f8":8,"f9":9,"f10":10,"f11":11,"f12":12,"f13":13,"f14":14,"f15":15,"f16":16,"f17":17}}"#,
        ];
        for text in texts {
            let ours = parse_value(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_slice(text.as_bytes()).unwrap();
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(ours.to_string(), theirs.to_string(), "order of {text}");
        }
        for bad in [r#"{"a":1"#, "1e400", r#"{"a":1} x"#, "", "[1,]"] {
            assert!(parse_value(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                serde_json::from_slice::<Value>(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    /// Pointers find what `Value::pointer` finds, escaped segments included.
    #[test]
    fn pointer_agrees_with_serde_json() {
        let value: Value =
            serde_json::from_str(r#"{"a":{"b":[10,{"c":1}]},"x/y":2,"m~n":3,"":4,"0":{"01":5}}"#)
                .unwrap();
        for p in [
            "", "/a", "/a/b", "/a/b/0", "/a/b/1/c", "/a/b/2", "/a/b/01", "/a/b/-", "/x~1y",
            "/m~0n", "/", "/0/01", "/nope", "a", "/a/b/0/c",
        ] {
            assert_eq!(pointer(&value, p), value.pointer(p), "{p}");
        }
    }
}
