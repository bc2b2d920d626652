//! Kafka Connect's single message transforms, in Sluice's terms: `cast`, `include_fields`,
//! `insert_field`, `flatten`, `hoist`, `extract_field`, `value_to_key`, `mask`, `filter`,
//! `insert_header`, `drop_headers`. Field names may be paths into nested objects
//! (`market_data.price_usd`).

use crate::path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_api::{ConnectorError, FieldError, Record, Transform, TransformConfig};
use sluice_jq::JqProgram;
use std::collections::BTreeMap;

/// The config is the transform: `build` clones it.
macro_rules! plain_transform {
    ($config:ty, $name:literal, |$this:ident| $validate:block) => {
        #[sluice_api::transform($name)]
        impl TransformConfig for $config {
            fn validate(&self) -> Result<(), Vec<FieldError>> {
                let $this = self;
                let errors: Vec<FieldError> = $validate;
                FieldError::all(errors)
            }

            fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
                Ok(Box::new(self.clone()))
            }
        }
    };
}

fn need_some<T>(items: &[T], field: &str) -> Vec<FieldError> {
    if items.is_empty() {
        vec![FieldError::new(field, "must name at least one field")]
    } else {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------

/// Changes the type of fields: `int`, `float`, `string`, `bool`. Text is parsed (`"12"` → 12,
/// `"true"` → true); a float cast to `int` must be whole. Null stays null; a missing field is
/// left missing. A value that does not convert makes the record a bad record.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CastConfig {
    /// Field → type, e.g. `{ Volume: int, Close: float }`.
    pub fields: indexmap::IndexMap<String, CastType>,
}

/// A type `cast` converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CastType {
    Int,
    Float,
    String,
    Bool,
}

plain_transform!(CastConfig, "cast", |c| {
    if c.fields.is_empty() {
        vec![FieldError::new("fields", "must name at least one field")]
    } else {
        Vec::new()
    }
});

fn cast(value: &Value, to: CastType) -> Result<Value, String> {
    let fail = || format!("cannot cast {value} to {to:?}").to_lowercase();
    Ok(match (to, value) {
        (_, Value::Null) => Value::Null,
        (CastType::String, Value::String(_)) => value.clone(),
        (CastType::String, other) => Value::String(other.to_string()),
        (CastType::Int, Value::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::from(f as i64),
            _ => return Err(fail()),
        },
        (CastType::Int, Value::String(s)) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => match s.parse::<f64>() {
                    Ok(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::from(f as i64),
                    _ => return Err(fail()),
                },
            }
        }
        (CastType::Int, Value::Bool(b)) => Value::from(i64::from(*b)),
        (CastType::Float, Value::Number(n)) => {
            serde_json::Number::from_f64(n.as_f64().ok_or_else(fail)?)
                .map(Value::Number)
                .ok_or_else(fail)?
        }
        (CastType::Float, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(fail)?,
        (CastType::Float, Value::Bool(b)) => Value::from(if *b { 1.0 } else { 0.0 }),
        (CastType::Bool, Value::Bool(_)) => value.clone(),
        (CastType::Bool, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => return Err(fail()),
        },
        (CastType::Bool, Value::Number(n)) => Value::Bool(n.as_f64() != Some(0.0)),
        (_, Value::Array(_) | Value::Object(_)) => return Err(fail()),
    })
}

impl Transform for CastConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        for (field, to) in &self.fields {
            if let Some(v) = path::get_mut(&mut record.value, field) {
                *v = cast(v, *to).map_err(|e| format!("field `{field}`: {e}"))?;
            }
        }
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Keeps only the listed fields of object values, in the listed order (Kafka Connect's
/// `ReplaceField` with `include`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncludeFieldsConfig {
    /// Fields to keep; the others are dropped.
    pub fields: Vec<String>,
}

plain_transform!(IncludeFieldsConfig, "include_fields", |c| {
    need_some(&c.fields, "fields")
});

impl Transform for IncludeFieldsConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        if record.value.is_object() {
            let mut kept = Value::Object(Map::new());
            for field in &self.fields {
                if let Some(v) = path::remove(&mut record.value, field) {
                    path::set(&mut kept, field, v)?;
                }
            }
            record.value = kept;
        }
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Adds a field to object values: a static value, or something about the record.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InsertFieldConfig {
    /// Name (or path) of the field to set.
    pub field: String,
    /// A static value (any JSON). Exactly one of `value` and `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Where the value comes from: `processing_time` (now, RFC 3339 in UTC), `topic`,
    /// `partition`, `offset`, `key` (as text), `timestamp` (the record's, in ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<InsertFrom>,
}

/// What `insert_field` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InsertFrom {
    ProcessingTime,
    Topic,
    Partition,
    Offset,
    Key,
    Timestamp,
}

plain_transform!(InsertFieldConfig, "insert_field", |c| {
    match (&c.value, &c.from) {
        (Some(_), None) | (None, Some(_)) => Vec::new(),
        _ => vec![FieldError::new(
            "value",
            "give exactly one of `value` and `from`",
        )],
    }
});

impl Transform for InsertFieldConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let value = match (&self.value, self.from) {
            (Some(v), _) => v.clone(),
            (None, Some(InsertFrom::ProcessingTime)) => {
                Value::String(jiff::Timestamp::now().to_string())
            }
            (None, Some(InsertFrom::Topic)) => Value::String(record.topic.to_string()),
            (None, Some(InsertFrom::Partition)) => Value::from(record.partition),
            (None, Some(InsertFrom::Offset)) => Value::from(record.offset),
            (None, Some(InsertFrom::Key)) => record.key.as_deref().map_or(Value::Null, |k| {
                Value::String(String::from_utf8_lossy(k).into_owned())
            }),
            (None, Some(InsertFrom::Timestamp)) => {
                record.timestamp.map_or(Value::Null, Value::from)
            }
            (None, None) => Value::Null,
        };
        if record.value.is_object() {
            path::set(&mut record.value, &self.field, value)?;
        }
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Flattens nested objects into one level: `{"a": {"b": 1}}` → `{"a.b": 1}`. Arrays stay.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlattenConfig {
    /// Put between the names of the levels (default `.`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
}

fn default_delimiter() -> String {
    ".".into()
}

plain_transform!(FlattenConfig, "flatten", |_c| { Vec::new() });

fn flatten_into(
    prefix: &str,
    delimiter: &str,
    value: Map<String, Value>,
    out: &mut Map<String, Value>,
) {
    for (k, v) in value {
        let name = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}{delimiter}{k}")
        };
        match v {
            Value::Object(inner) if !inner.is_empty() => flatten_into(&name, delimiter, inner, out),
            other => {
                out.insert(name, other);
            }
        }
    }
}

impl Transform for FlattenConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        if let Value::Object(map) = &mut record.value {
            let mut flat = Map::new();
            flatten_into("", &self.delimiter, std::mem::take(map), &mut flat);
            *map = flat;
        }
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Wraps the whole value in an object under `field` (Kafka Connect's `HoistField`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoistConfig {
    /// Name of the field that holds the value.
    pub field: String,
}

plain_transform!(HoistConfig, "hoist", |c| {
    if c.field.is_empty() {
        vec![FieldError::new("field", "must not be empty")]
    } else {
        Vec::new()
    }
});

impl Transform for HoistConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let value = std::mem::take(&mut record.value);
        record.value = Value::Object(Map::from_iter([(self.field.clone(), value)]));
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Replaces the value by one of its fields (Kafka Connect's `ExtractField`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractFieldConfig {
    /// Field (or path) whose value becomes the record's value.
    pub field: String,
    /// What a record without the field becomes: `null` (default, as Kafka Connect) or
    /// `reject` (a bad record).
    #[serde(default)]
    pub missing: Missing,
}

/// What to do when a field is not there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    #[default]
    Null,
    Reject,
}

plain_transform!(ExtractFieldConfig, "extract_field", |_c| { Vec::new() });

impl Transform for ExtractFieldConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        record.value = match (path::remove(&mut record.value, &self.field), self.missing) {
            (Some(v), _) => v,
            (None, Missing::Null) => Value::Null,
            (None, Missing::Reject) => return Err(format!("no field `{}`", self.field)),
        };
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Sets the record's key from fields of its value (Kafka Connect's `ValueToKey`): one field
/// gives its text (`"BTC"`), several give a JSON object of them (`{"symbol":"BTC","day":…}`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueToKeyConfig {
    /// Fields that make the key.
    pub fields: Vec<String>,
}

plain_transform!(ValueToKeyConfig, "value_to_key", |c| {
    need_some(&c.fields, "fields")
});

impl Transform for ValueToKeyConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let key = if let [field] = self.fields.as_slice() {
            let v = path::get(&record.value, field)
                .ok_or_else(|| format!("no field `{field}` for the key"))?;
            path::text(v)
        } else {
            let mut parts = Map::new();
            for field in &self.fields {
                let v = path::get(&record.value, field)
                    .ok_or_else(|| format!("no field `{field}` for the key"))?;
                parts.insert(field.clone(), v.clone());
            }
            Value::Object(parts).to_string()
        };
        record.key = Some(key.into_bytes());
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Hides the values of fields (Kafka Connect's `MaskField`): by default with the empty value of
/// their type (`0`, `""`, `false`, `[]`, `{}`), or with `replacement`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Fields to hide.
    pub fields: Vec<String>,
    /// What replaces every masked value (any JSON), e.g. `"***"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<Value>,
}

plain_transform!(MaskConfig, "mask", |c| { need_some(&c.fields, "fields") });

impl Transform for MaskConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        for field in &self.fields {
            if let Some(v) = path::get_mut(&mut record.value, field) {
                *v = match (&self.replacement, &*v) {
                    (Some(r), _) => r.clone(),
                    (None, Value::Null) => Value::Null,
                    (None, Value::Bool(_)) => Value::Bool(false),
                    (None, Value::Number(_)) => Value::from(0),
                    (None, Value::String(_)) => Value::String(String::new()),
                    (None, Value::Array(_)) => Value::Array(Vec::new()),
                    (None, Value::Object(_)) => Value::Object(Map::new()),
                };
            }
        }
        out.push(record);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Keeps or drops records by a jq condition (Kafka Connect's `Filter` with a predicate).
/// Dropped records are counted as skipped.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Keep only records for which this jq condition is true, e.g. `.Volume > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    /// Drop records for which this jq condition is true. Exactly one of `keep` and `drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<String>,
}

#[sluice_api::transform("filter")]
impl TransformConfig for FilterConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        match (&self.keep, &self.drop) {
            (Some(code), None) => JqProgram::compile(code)
                .map(|_| ())
                .map_err(|e| vec![FieldError::new("keep", e)]),
            (None, Some(code)) => JqProgram::compile(code)
                .map(|_| ())
                .map_err(|e| vec![FieldError::new("drop", e)]),
            _ => Err(vec![FieldError::new(
                "keep",
                "give exactly one of `keep` and `drop`",
            )]),
        }
    }

    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
        let (code, keep) = match (&self.keep, &self.drop) {
            (Some(code), None) => (code, true),
            (None, Some(code)) => (code, false),
            _ => {
                return Err(
                    ConnectorError::user("give exactly one of `keep` and `drop`")
                        .with_field("keep"),
                )
            }
        };
        let condition = JqProgram::compile(code).map_err(ConnectorError::user)?;
        Ok(Box::new(Filter { condition, keep }))
    }
}

struct Filter {
    condition: JqProgram,
    keep: bool,
}

impl Transform for Filter {
    fn apply(&self, record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        if self.condition.matches(&record)? == self.keep {
            out.push(record);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Adds headers with static values (Kafka Connect's `InsertHeader`); an existing header of
/// the same name is replaced.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InsertHeaderConfig {
    /// Header name → value (text).
    pub headers: BTreeMap<String, String>,
}

plain_transform!(InsertHeaderConfig, "insert_header", |c| {
    if c.headers.is_empty() {
        vec![FieldError::new("headers", "must name at least one header")]
    } else {
        Vec::new()
    }
});

impl Transform for InsertHeaderConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        record
            .headers
            .retain(|(name, _)| !self.headers.contains_key(name));
        for (name, value) in &self.headers {
            record
                .headers
                .push((name.clone(), value.as_bytes().to_vec()));
        }
        out.push(record);
        Ok(())
    }
}

/// Removes headers by name (Kafka Connect's `DropHeaders`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropHeadersConfig {
    /// Names of the headers to remove.
    pub headers: Vec<String>,
}

plain_transform!(DropHeadersConfig, "drop_headers", |c| {
    need_some(&c.headers, "headers")
});

impl Transform for DropHeadersConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        record
            .headers
            .retain(|(name, _)| !self.headers.contains(name));
        out.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one<T: TransformConfig + ?Sized>(config: &T, record: Record) -> Result<Record, String> {
        let t = config.build().unwrap();
        let mut out = Vec::new();
        t.apply(record, &mut out)?;
        assert_eq!(out.len(), 1);
        Ok(out.remove(0))
    }

    fn value<T: TransformConfig + ?Sized>(config: &T, v: Value) -> Value {
        one(config, Record::new(v)).unwrap().value
    }

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn cast_converts_text_and_numbers_and_refuses_what_does_not_fit() {
        let c: CastConfig =
            yaml("fields: { a: int, b: float, c: string, d: bool, e: int, f: int }");
        assert_eq!(
            value(
                &c,
                json!({"a": "12", "b": "1.5", "c": 7, "d": "yes", "e": 3.0, "f": null})
            ),
            json!({"a": 12, "b": 1.5, "c": "7", "d": true, "e": 3, "f": null})
        );
        let bad = one(&c, Record::new(json!({"a": "twelve"}))).unwrap_err();
        assert_eq!(bad, "field `a`: cannot cast \"twelve\" to int");
        assert!(one(&c, Record::new(json!({"e": 2.5}))).is_err());
    }

    #[test]
    fn include_fields_keeps_only_those_in_their_order() {
        let c: IncludeFieldsConfig = yaml("fields: [c, a, m.x]");
        assert_eq!(
            serde_json::to_string(&value(
                &c,
                json!({"a": 1, "b": 2, "c": 3, "m": {"x": 1, "y": 2}})
            ))
            .unwrap(),
            r#"{"c":3,"a":1,"m":{"x":1}}"#
        );
    }

    #[test]
    fn insert_field_sets_a_static_value_or_the_record_s_coordinates() {
        let c: InsertFieldConfig = yaml("field: source\nvalue: yahoo");
        assert_eq!(
            value(&c, json!({"a": 1})),
            json!({"a": 1, "source": "yahoo"})
        );
        let mut r = Record::new(json!({})).with_key("BTC");
        r.topic = "bitcoin".into();
        r.partition = 3;
        r.offset = 42;
        r.timestamp = Some(1_600_000_000_000);
        for (from, expected) in [
            ("topic", json!("bitcoin")),
            ("partition", json!(3)),
            ("offset", json!(42)),
            ("key", json!("BTC")),
            ("timestamp", json!(1_600_000_000_000_i64)),
        ] {
            let c: InsertFieldConfig = yaml(&format!("field: meta.x\nfrom: {from}"));
            assert_eq!(
                one(&c, r.clone()).unwrap().value,
                json!({"meta": {"x": expected}}),
                "{from}"
            );
        }
        let c: InsertFieldConfig = yaml("field: at\nfrom: processing_time");
        let at = value(&c, json!({}))["at"].as_str().unwrap().to_string();
        assert!(at.parse::<jiff::Timestamp>().is_ok(), "{at}");
        let both: InsertFieldConfig = yaml("field: a\nvalue: 1\nfrom: topic");
        assert!(both.validate().is_err());
    }

    #[test]
    fn flatten_joins_levels_with_the_delimiter() {
        let c: FlattenConfig = yaml("delimiter: _");
        assert_eq!(
            serde_json::to_string(&value(
                &c,
                json!({"a": {"b": 1, "c": {"d": [1]}}, "e": {}, "f": 2})
            ))
            .unwrap(),
            r#"{"a_b":1,"a_c_d":[1],"e":{},"f":2}"#
        );
    }

    #[test]
    fn hoist_and_extract_field_wrap_and_unwrap() {
        let h: HoistConfig = yaml("field: data");
        assert_eq!(value(&h, json!(5)), json!({"data": 5}));
        let x: ExtractFieldConfig = yaml("field: data.market_data");
        assert_eq!(
            value(&x, json!({"data": {"market_data": {"p": 1}}})),
            json!({"p": 1})
        );
        assert_eq!(value(&x, json!({"other": 1})), Value::Null);
        let strict: ExtractFieldConfig = yaml("field: data\nmissing: reject");
        assert_eq!(
            one(&strict, Record::new(json!({}))).unwrap_err(),
            "no field `data`"
        );
    }

    #[test]
    fn value_to_key_takes_one_field_s_text_or_an_object_of_several() {
        let one_field: ValueToKeyConfig = yaml("fields: [symbol]");
        let r = one(&one_field, Record::new(json!({"symbol": "BTC", "n": 1}))).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"BTC"[..]));
        let two: ValueToKeyConfig = yaml("fields: [symbol, n]");
        let r = one(&two, Record::new(json!({"symbol": "BTC", "n": 1}))).unwrap();
        assert_eq!(r.key.as_deref(), Some(&br#"{"symbol":"BTC","n":1}"#[..]));
        assert_eq!(
            one(&two, Record::new(json!({"n": 1}))).unwrap_err(),
            "no field `symbol` for the key"
        );
    }

    #[test]
    fn mask_empties_by_type_or_replaces() {
        let c: MaskConfig = yaml("fields: [s, n, b, o, missing]");
        assert_eq!(
            value(
                &c,
                json!({"s": "secret", "n": 5, "b": true, "o": {"x": 1}, "k": 1})
            ),
            json!({"s": "", "n": 0, "b": false, "o": {}, "k": 1})
        );
        let c: MaskConfig = yaml("fields: [user.email]\nreplacement: '***'");
        assert_eq!(
            value(&c, json!({"user": {"email": "a@b"}})),
            json!({"user": {"email": "***"}})
        );
    }

    #[test]
    fn filter_keeps_or_drops_by_condition() {
        let keep: FilterConfig = yaml("keep: .Volume > 0");
        let t = keep.build().unwrap();
        let mut out = Vec::new();
        for v in [json!({"Volume": 0}), json!({"Volume": 3}), json!({})] {
            t.apply(Record::new(v), &mut out).unwrap();
        }
        assert_eq!(
            out.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
            [json!({"Volume": 3})]
        );
        let drop: FilterConfig = yaml("drop: '$topic == \"noise\"'");
        let t = drop.build().unwrap();
        let mut noisy = Record::new(json!(1));
        noisy.topic = "noise".into();
        let mut out = Vec::new();
        t.apply(noisy, &mut out).unwrap();
        t.apply(Record::new(json!(2)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let neither: FilterConfig = yaml("{}");
        assert!(neither.validate().is_err());
        let broken: FilterConfig = yaml("keep: '.a >'");
        assert_eq!(broken.validate().unwrap_err()[0].field, "keep");
    }

    #[test]
    fn headers_are_inserted_replaced_and_dropped() {
        let mut r = Record::new(json!(1));
        r.headers.push(("origin".into(), b"old".to_vec()));
        r.headers.push(("trace".into(), b"t".to_vec()));
        let ins: InsertHeaderConfig = yaml("headers: { origin: messari, pipeline: btc }");
        let r = one(&ins, r).unwrap();
        assert_eq!(
            r.headers,
            [
                ("trace".to_string(), b"t".to_vec()),
                ("origin".to_string(), b"messari".to_vec()),
                ("pipeline".to_string(), b"btc".to_vec()),
            ]
        );
        let drop: DropHeadersConfig = yaml("headers: [trace, pipeline]");
        let r = one(&drop, r).unwrap();
        assert_eq!(r.headers, [("origin".to_string(), b"messari".to_vec())]);
    }
}
