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

/// One parsed field: borrowed from the row where the text is kept as is. It becomes either a
/// JSON [`Value`] or JSON text written straight into a record's encoded value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Field<'a> {
    Null,
    Text(&'a str),
    /// Text rewritten while parsing (a reformatted date or timestamp).
    Owned(String),
    Int(i64),
    /// Always finite.
    Float(f64),
    /// A float whose text is already a plain JSON decimal ([`plain_decimal`]): written as is,
    /// parsed only when a `Value` is asked for.
    Decimal(&'a str),
    /// An integer whose text is already canonical JSON ([`plain_integer`]): written as is,
    /// parsed only when a `Value` is asked for.
    Integer(&'a str),
    Bool(bool),
}

impl Field<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self, Field::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Text(text) => Some(text),
            Field::Owned(text) => Some(text),
            _ => None,
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Field::Null => Value::Null,
            Field::Text(text) => Value::String(text.to_string()),
            Field::Owned(text) => Value::String(text),
            Field::Int(i) => Value::from(i),
            Field::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Field::Decimal(text) => text
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Field::Integer(text) => text.parse::<i64>().map_or(Value::Null, Value::from),
            Field::Bool(b) => Value::Bool(b),
        }
    }

    /// Appends the field as JSON text, exactly as `into_value` would serialize.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Field::Null => out.extend_from_slice(b"null"),
            Field::Text(text) => serde_json::to_writer(out, text)?,
            Field::Owned(text) => serde_json::to_writer(out, text)?,
            Field::Int(i) => serde_json::to_writer(out, i)?,
            Field::Float(f) => serde_json::to_writer(out, f)?,
            Field::Decimal(text) | Field::Integer(text) => out.extend_from_slice(text.as_bytes()),
            Field::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
        Ok(())
    }
}

impl Parse {
    pub fn from_spec(spec: Option<&ColumnSpec>, infer: bool) -> Self {
        match spec {
            Some(spec) => Parse::Declared(spec.column_type(), spec.format().map(str::to_string)),
            None if infer => Parse::Inferred,
            None => Parse::Text,
        }
    }

    /// The field of non-null `text`, or why it isn't one.
    pub fn field<'a>(&self, text: &'a str) -> Result<Field<'a>, String> {
        match self {
            Parse::Text => Ok(Field::Text(text)),
            Parse::Inferred => Ok(infer(text)),
            Parse::Declared(t, format) => typed(*t, format.as_deref(), text),
        }
    }

    /// Milliseconds since the epoch of a `date`/`timestamp` field this parser produced.
    pub fn millis(&self, field: &Field<'_>) -> Option<i64> {
        let text = field.as_str()?;
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

fn infer(text: &str) -> Field<'_> {
    if plain_integer(text) {
        return Field::Integer(text);
    }
    if let Ok(i) = text.parse::<i64>() {
        return Field::Int(i);
    }
    if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
        return Field::Float(f);
    }
    match text {
        "true" | "TRUE" | "True" => Field::Bool(true),
        "false" | "FALSE" | "False" => Field::Bool(false),
        _ => Field::Text(text),
    }
}

fn typed<'a>(t: ColumnType, format: Option<&str>, text: &'a str) -> Result<Field<'a>, String> {
    let trimmed = trim(text);
    match t {
        ColumnType::String => Ok(Field::Text(text)),
        ColumnType::Int if plain_integer(trimmed) => Ok(Field::Integer(trimmed)),
        ColumnType::Int => trimmed
            .parse::<i64>()
            .map(Field::Int)
            // Exports often write whole numbers as `123.0`.
            .or_else(|_| match trimmed.parse::<f64>() {
                Ok(f) if f.fract() == 0.0 && f.abs() < 9.007e15 => Ok(Field::Int(f as i64)),
                _ => Err(()),
            })
            .map_err(|_| format!("`{text}` is not an integer")),
        ColumnType::Float if plain_decimal(trimmed) => Ok(Field::Decimal(trimmed)),
        ColumnType::Float => trimmed
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Field::Float)
            .ok_or_else(|| format!("`{text}` is not a finite number")),
        ColumnType::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Ok(Field::Bool(true)),
            "false" | "f" | "no" | "n" | "0" => Ok(Field::Bool(false)),
            _ => Err(format!("`{text}` is not a boolean")),
        },
        ColumnType::Date if format.is_none() => iso_date(trimmed)
            .map(|_| Field::Text(trimmed))
            .ok_or_else(|| format!("`{text}` is not a date in format `%Y-%m-%d`")),
        ColumnType::Date => NaiveDate::parse_from_str(trimmed, format.unwrap_or("%Y-%m-%d"))
            .map(|d| Field::Owned(d.format("%Y-%m-%d").to_string()))
            .map_err(|e| {
                format!(
                    "`{text}` is not a date in format `{}`: {e}",
                    format.unwrap_or("%Y-%m-%d")
                )
            }),
        ColumnType::Timestamp => timestamp(trimmed, format)
            .map(|t| Field::Owned(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
            .ok_or_else(|| match format {
                Some(f) => format!("`{text}` is not a timestamp in format `{f}`"),
                None => format!("`{text}` is not an RFC 3339 or `YYYY-MM-DD HH:MM:SS` timestamp"),
            }),
    }
}

/// `text` without surrounding whitespace; fields that start and end with a visible ASCII
/// character (nearly all) are returned without scanning.
fn trim(text: &str) -> &str {
    let visible = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    let bytes = text.as_bytes();
    if visible(bytes.first()) && visible(bytes.last()) {
        text
    } else {
        text.trim()
    }
}

/// True for `0` and `-?[1-9]digits` with at most 18 digits: JSON's own spelling of an integer
/// that fits an `i64`, so copying the text gives what parsing and reformatting it would.
fn plain_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    match digits.first() {
        Some(b'0') => text == "0",
        Some(_) => digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit),
        None => false,
    }
}

/// True for `-?(0|[1-9]digits).digits` with at most 15 integer digits: a JSON number with a
/// fraction, so a float, and finite. Most CSV floats look like this; copying their text saves
/// parsing and reformatting them, and JSON readers get the same double either way.
fn plain_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    let Some(dot) = digits.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (int, frac) = (&digits[..dot], &digits[dot + 1..]);
    (1..=15).contains(&int.len())
        && (int[0] != b'0' || int.len() == 1)
        && !frac.is_empty()
        && int.iter().chain(frac).all(u8::is_ascii_digit)
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

    /// The field's value, checking on the way that its JSON text is that value's encoding.
    fn value(parse: &Parse, text: &str) -> Result<Value, String> {
        let field = parse.field(text)?;
        let mut json = Vec::new();
        field.write_json(&mut json).map_err(|e| e.to_string())?;
        let value = field.into_value();
        assert_eq!(json, serde_json::to_vec(&value).unwrap());
        Ok(value)
    }

    #[test]
    fn declared_types_become_json_types() {
        assert_eq!(
            value(&declared(ColumnType::Float, None), "457.334015").unwrap(),
            json!(457.334015)
        );
        assert_eq!(
            value(&declared(ColumnType::Int, None), "21056800").unwrap(),
            json!(21056800)
        );
        assert_eq!(
            value(&declared(ColumnType::Int, None), "5.0").unwrap(),
            json!(5)
        );
        assert_eq!(
            value(&declared(ColumnType::Bool, None), "Yes").unwrap(),
            json!(true)
        );
        assert_eq!(
            value(&declared(ColumnType::Date, None), "2014-09-17").unwrap(),
            json!("2014-09-17")
        );
        assert_eq!(
            value(&declared(ColumnType::Date, Some("%d/%m/%Y")), "17/09/2014").unwrap(),
            json!("2014-09-17")
        );
        assert_eq!(
            value(
                &declared(ColumnType::Timestamp, None),
                "2021-01-02 03:04:05"
            )
            .unwrap(),
            json!("2021-01-02T03:04:05Z")
        );
    }

    #[test]
    fn whole_floats_keep_their_json_type() {
        assert_eq!(
            value(&declared(ColumnType::Float, None), "21056800").unwrap(),
            json!(21056800.0)
        );
        assert_eq!(
            value(&Parse::Text, "a \"quoted\" \\ text").unwrap(),
            json!("a \"quoted\" \\ text")
        );
    }

    #[test]
    fn only_plain_decimals_are_copied_as_written() {
        for text in ["457.334015", "-0.5", "0.0", "123456789012345.5"] {
            assert!(plain_decimal(text), "{text}");
        }
        for text in [
            "21056800", "1e5", "1.5e3", ".5", "5.", "01.5", "+1.5", "-", "1.2.3", "NaN",
        ] {
            assert!(!plain_decimal(text), "{text}");
        }
        assert!(!plain_decimal(&format!("{}.5", "9".repeat(400))));
        assert_eq!(
            value(&declared(ColumnType::Float, None), " -0.25 ").unwrap(),
            json!(-0.25)
        );
    }

    #[test]
    fn only_canonical_integers_are_copied_as_written() {
        for text in ["0", "21056800", "-7", "999999999999999999"] {
            assert!(plain_integer(text), "{text}");
            let parsed: i64 = text.parse().unwrap();
            assert_eq!(
                value(&declared(ColumnType::Int, None), text).unwrap(),
                json!(parsed)
            );
        }
        for text in [
            "-0",
            "007",
            "+5",
            "1.0",
            "1e3",
            "-",
            "",
            "9999999999999999999",
        ] {
            assert!(!plain_integer(text), "{text}");
        }
        // Not copied, still read: whole floats, padding, and the longest i64s.
        for (text, expected) in [
            ("123.0", 123),
            (" 42 ", 42),
            ("-0", 0),
            ("9223372036854775807", i64::MAX),
        ] {
            assert_eq!(
                value(&declared(ColumnType::Int, None), text).unwrap(),
                json!(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn fields_are_trimmed_of_any_whitespace() {
        for (text, trimmed) in [
            ("abc", "abc"),
            (" abc\t", "abc"),
            ("\u{a0}abc", "abc"),
            ("abc\u{2003}", "abc"),
            ("\u{b}1", "1"),
            ("é", "é"),
            ("", ""),
        ] {
            assert_eq!(trim(text), trimmed, "{text:?}");
        }
    }

    #[test]
    fn a_value_that_does_not_fit_its_type_says_so() {
        let err = value(&declared(ColumnType::Float, None), "abc").unwrap_err();
        assert!(err.contains("abc"), "{err}");
        assert!(value(&declared(ColumnType::Int, None), "1.5").is_err());
        assert!(value(&declared(ColumnType::Date, None), "2014-13-45").is_err());
    }

    #[test]
    fn inference_prefers_integers_then_floats_then_bools() {
        assert_eq!(value(&Parse::Inferred, "42").unwrap(), json!(42));
        assert_eq!(value(&Parse::Inferred, "4.5").unwrap(), json!(4.5));
        assert_eq!(value(&Parse::Inferred, "true").unwrap(), json!(true));
        assert_eq!(value(&Parse::Inferred, "BTC").unwrap(), json!("BTC"));
    }

    #[test]
    fn dates_give_the_record_time() {
        let p = declared(ColumnType::Date, None);
        assert_eq!(p.millis(&Field::Text("1970-01-02")), Some(86_400_000));
    }
}
