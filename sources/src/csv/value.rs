//! Turning CSV field text into typed JSON values.

use super::config::{ColumnSpec, ColumnType};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Number, Value};

/// How one column's text becomes a value.
#[derive(Debug, Clone)]
pub(super) enum Parse {
    Declared(ColumnType, Option<String>),
    Inferred,
    Text,
}

impl Parse {
    pub fn from_spec(spec: Option<&ColumnSpec>, infer: bool) -> Self {
        match spec {
            Some(spec) => Parse::Declared(spec.column_type(), spec.format().map(str::to_string)),
            None if infer => Parse::Inferred,
            None => Parse::Text,
        }
    }

    /// The value of non-null `text`, or why it isn't one.
    pub fn value(&self, text: &str) -> Result<Value, String> {
        match self {
            Parse::Text => Ok(Value::String(text.to_string())),
            Parse::Inferred => Ok(infer(text)),
            Parse::Declared(t, format) => typed(*t, format.as_deref(), text),
        }
    }

    /// Milliseconds since the epoch of a `date`/`timestamp` value this parser produced.
    pub fn millis(&self, value: &Value) -> Option<i64> {
        let text = value.as_str()?;
        match self {
            Parse::Declared(ColumnType::Date, _) => iso_date(text)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|dt| dt.and_utc().timestamp_millis()),
            Parse::Declared(ColumnType::Timestamp, _) => DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|d| d.timestamp_millis()),
            _ => None,
        }
    }
}

fn infer(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(n);
    }
    match text {
        "true" | "TRUE" | "True" => Value::Bool(true),
        "false" | "FALSE" | "False" => Value::Bool(false),
        _ => Value::String(text.to_string()),
    }
}

fn typed(t: ColumnType, format: Option<&str>, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    match t {
        ColumnType::String => Ok(Value::String(text.to_string())),
        ColumnType::Int => trimmed
            .parse::<i64>()
            .map(Value::from)
            // Exports often write whole numbers as `123.0`.
            .or_else(|_| match trimmed.parse::<f64>() {
                Ok(f) if f.fract() == 0.0 && f.abs() < 9.007e15 => Ok(Value::from(f as i64)),
                _ => Err(()),
            })
            .map_err(|_| format!("`{text}` is not an integer")),
        ColumnType::Float => trimmed
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("`{text}` is not a finite number")),
        ColumnType::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Ok(Value::Bool(true)),
            "false" | "f" | "no" | "n" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{text}` is not a boolean")),
        },
        ColumnType::Date if format.is_none() => iso_date(trimmed)
            .map(|_| Value::String(trimmed.to_string()))
            .ok_or_else(|| format!("`{text}` is not a date in format `%Y-%m-%d`")),
        ColumnType::Date => NaiveDate::parse_from_str(trimmed, format.unwrap_or("%Y-%m-%d"))
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            .map_err(|e| {
                format!(
                    "`{text}` is not a date in format `{}`: {e}",
                    format.unwrap_or("%Y-%m-%d")
                )
            }),
        ColumnType::Timestamp => timestamp(trimmed, format)
            .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
            .ok_or_else(|| match format {
                Some(f) => format!("`{text}` is not a timestamp in format `{f}`"),
                None => format!("`{text}` is not an RFC 3339 or `YYYY-MM-DD HH:MM:SS` timestamp"),
            }),
    }
}

/// A `YYYY-MM-DD` date, checked without chrono's format parser (the hot path of dated CSVs).
fn iso_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)
}

fn timestamp(text: &str, format: Option<&str>) -> Option<DateTime<Utc>> {
    match format {
        Some(f) => DateTime::parse_from_str(text, f)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(text, f)
                    .ok()
                    .map(|n| n.and_utc())
            }),
        None => DateTime::parse_from_rfc3339(text)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                    .ok()
                    .map(|n| n.and_utc())
            })
            .or_else(|| {
                NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|n| n.and_utc())
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared(t: ColumnType, f: Option<&str>) -> Parse {
        Parse::Declared(t, f.map(str::to_string))
    }

    #[test]
    fn declared_types_become_json_types() {
        assert_eq!(
            declared(ColumnType::Float, None)
                .value("457.334015")
                .unwrap(),
            json!(457.334015)
        );
        assert_eq!(
            declared(ColumnType::Int, None).value("21056800").unwrap(),
            json!(21056800)
        );
        assert_eq!(
            declared(ColumnType::Int, None).value("5.0").unwrap(),
            json!(5)
        );
        assert_eq!(
            declared(ColumnType::Bool, None).value("Yes").unwrap(),
            json!(true)
        );
        assert_eq!(
            declared(ColumnType::Date, None)
                .value("2014-09-17")
                .unwrap(),
            json!("2014-09-17")
        );
        assert_eq!(
            declared(ColumnType::Date, Some("%d/%m/%Y"))
                .value("17/09/2014")
                .unwrap(),
            json!("2014-09-17")
        );
        assert_eq!(
            declared(ColumnType::Timestamp, None)
                .value("2021-01-02 03:04:05")
                .unwrap(),
            json!("2021-01-02T03:04:05Z")
        );
    }

    #[test]
    fn a_value_that_does_not_fit_its_type_says_so() {
        let err = declared(ColumnType::Float, None).value("abc").unwrap_err();
        assert!(err.contains("abc"), "{err}");
        assert!(declared(ColumnType::Int, None).value("1.5").is_err());
        assert!(declared(ColumnType::Date, None)
            .value("2014-13-45")
            .is_err());
    }

    #[test]
    fn inference_prefers_integers_then_floats_then_bools() {
        assert_eq!(Parse::Inferred.value("42").unwrap(), json!(42));
        assert_eq!(Parse::Inferred.value("4.5").unwrap(), json!(4.5));
        assert_eq!(Parse::Inferred.value("true").unwrap(), json!(true));
        assert_eq!(Parse::Inferred.value("BTC").unwrap(), json!("BTC"));
    }

    #[test]
    fn dates_give_the_record_time() {
        let p = declared(ColumnType::Date, None);
        assert_eq!(p.millis(&json!("1970-01-02")), Some(86_400_000));
    }
}
