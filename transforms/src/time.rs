//! `timestamp_convert`: a time from one representation to another (Kafka Connect's
//! `TimestampConverter`), with the time zone explicit.

use crate::path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_api::{ConnectorError, FieldError, Record, Transform, TransformConfig};

/// The record's own timestamp (milliseconds since the epoch), as a field name.
const RECORD_TIMESTAMP: &str = "$timestamp";

/// Converts a time between text and numbers: `rfc3339` (`2020-03-12T00:00:00Z`), `date`
/// (`2020-03-12`, midnight in `timezone`), `epoch_s`, `epoch_ms`, `epoch_us`, or a strftime
/// pattern such as `%d/%m/%Y %H:%M` (read and written in `timezone`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimestampConvertConfig {
    /// Field (or path) holding the time; `$timestamp` is the record's own timestamp.
    pub field: String,
    /// Where the converted time goes (default: back into `field`); `$timestamp` sets the
    /// record's timestamp (then `to` is ignored: it is in milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How the time is written now (see above). Default `epoch_ms` for `$timestamp`, else
    /// required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// How to write it (see above).
    #[serde(default = "default_to")]
    pub to: String,
    /// Time zone of times without one, and of what is written: `UTC` (default), an IANA name
    /// (`Europe/Paris`) or a fixed offset (`+02:00`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_to() -> String {
    "rfc3339".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A way of writing a time.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeFormat {
    Rfc3339,
    Date,
    EpochSeconds,
    EpochMillis,
    EpochMicros,
    Pattern(String),
}

impl TimeFormat {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "rfc3339" => TimeFormat::Rfc3339,
            "date" => TimeFormat::Date,
            "epoch_s" => TimeFormat::EpochSeconds,
            "epoch_ms" => TimeFormat::EpochMillis,
            "epoch_us" => TimeFormat::EpochMicros,
            pattern if pattern.contains('%') => TimeFormat::Pattern(pattern.to_string()),
            other => {
                return Err(format!(
                    "`{other}` is not a time format: use rfc3339, date, epoch_s, epoch_ms, epoch_us or a strftime pattern with `%`"
                ))
            }
        })
    }

    /// Reads `value` as a time written this way (times without a zone are in `tz`).
    pub fn read(&self, value: &Value, tz: &jiff::tz::TimeZone) -> Result<jiff::Timestamp, String> {
        let number = || -> Result<i64, String> {
            match value {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                    .ok_or_else(|| format!("{value} is not a whole number")),
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{value} is not a whole number")),
                _ => Err(format!("{value} is not a number")),
            }
        };
        let text = || value.as_str().ok_or_else(|| format!("{value} is not text"));
        let out_of_range = |e: jiff::Error| format!("{value} is out of range: {e}");
        match self {
            TimeFormat::EpochSeconds => {
                jiff::Timestamp::from_second(number()?).map_err(out_of_range)
            }
            TimeFormat::EpochMillis => {
                jiff::Timestamp::from_millisecond(number()?).map_err(out_of_range)
            }
            TimeFormat::EpochMicros => {
                jiff::Timestamp::from_microsecond(number()?).map_err(out_of_range)
            }
            TimeFormat::Rfc3339 => text()?
                .parse::<jiff::Timestamp>()
                .map_err(|e| format!("{value} is not an RFC 3339 time: {e}")),
            TimeFormat::Date => {
                let date: jiff::civil::Date = text()?
                    .parse()
                    .map_err(|e| format!("{value} is not a date (YYYY-MM-DD): {e}"))?;
                date.to_zoned(tz.clone())
                    .map(|z| z.timestamp())
                    .map_err(out_of_range)
            }
            TimeFormat::Pattern(pattern) => {
                let parsed = jiff::fmt::strtime::parse(pattern, text()?)
                    .map_err(|e| format!("{value} does not match `{pattern}`: {e}"))?;
                if let Ok(ts) = parsed.to_timestamp() {
                    return Ok(ts);
                }
                let civil = parsed
                    .to_datetime()
                    .or_else(|_| {
                        parsed
                            .to_date()
                            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
                    })
                    .map_err(|e| format!("{value} does not give a time with `{pattern}`: {e}"))?;
                tz.to_zoned(civil)
                    .map(|z| z.timestamp())
                    .map_err(out_of_range)
            }
        }
    }

    /// Writes `at` this way, in `tz`.
    pub fn write(&self, at: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> Value {
        let zoned = at.to_zoned(tz.clone());
        match self {
            TimeFormat::EpochSeconds => Value::from(at.as_second()),
            TimeFormat::EpochMillis => Value::from(at.as_millisecond()),
            TimeFormat::EpochMicros => Value::from(at.as_microsecond()),
            TimeFormat::Rfc3339 => Value::String(if tz == &jiff::tz::TimeZone::UTC {
                at.to_string()
            } else {
                at.display_with_offset(zoned.offset()).to_string()
            }),
            TimeFormat::Date => Value::String(zoned.date().to_string()),
            TimeFormat::Pattern(pattern) => Value::String(zoned.strftime(pattern).to_string()),
        }
    }
}

/// A time zone by name (`UTC`, `Europe/Paris`) or fixed offset (`+02:00`).
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") || name == "Z" {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    if let Some(sign) = name.chars().next().filter(|c| *c == '+' || *c == '-') {
        let (h, m) = name[1..].split_once(':').unwrap_or((&name[1..], "0"));
        let (h, m): (i32, i32) = h
            .parse()
            .ok()
            .zip(m.parse().ok())
            .ok_or_else(|| format!("`{name}` is not an offset like +02:00"))?;
        let seconds = (h * 3600 + m * 60) * if sign == '-' { -1 } else { 1 };
        return jiff::tz::Offset::from_seconds(seconds)
            .map(jiff::tz::TimeZone::fixed)
            .map_err(|e| format!("`{name}`: {e}"));
    }
    jiff::tz::TimeZone::get(name).map_err(|e| format!("unknown time zone `{name}`: {e}"))
}

/// Where a stream transform reads a record's event time: a field written in some format, or
/// the record's own timestamp.
#[derive(Debug, Clone)]
pub struct EventTime {
    field: Option<String>,
    format: TimeFormat,
    tz: jiff::tz::TimeZone,
}

impl EventTime {
    /// From a config's `time_field`, `time_format` and `timezone`; errors name those fields.
    pub fn new(
        field: Option<&str>,
        format: &str,
        timezone: &str,
    ) -> Result<Self, Vec<sluice_api::FieldError>> {
        let format = TimeFormat::parse(format);
        let tz = time_zone(timezone);
        match (format, tz) {
            (Ok(format), Ok(tz)) => Ok(EventTime {
                field: field.map(str::to_string),
                format,
                tz,
            }),
            (format, tz) => Err([("time_format", format.err()), ("timezone", tz.err())]
                .into_iter()
                .filter_map(|(f, e)| e.map(|e| sluice_api::FieldError::new(f, e)))
                .collect()),
        }
    }

    /// The time zone of calendar units and of times written.
    pub fn zone(&self) -> &jiff::tz::TimeZone {
        &self.tz
    }

    /// The event time of `record`, in milliseconds since the epoch.
    pub fn of(&self, record: &Record) -> Result<i64, String> {
        match &self.field {
            None => record
                .timestamp
                .ok_or_else(|| "the record has no timestamp".to_string()),
            Some(field) => {
                let value = path::get(&record.value, field)
                    .filter(|v| !v.is_null())
                    .ok_or_else(|| format!("no time in field `{field}`"))?;
                self.format
                    .read(value, &self.tz)
                    .map(|t| t.as_millisecond())
                    .map_err(|e| format!("field `{field}`: {e}"))
            }
        }
    }

    /// `ms` as RFC 3339 in the time zone.
    pub fn write(&self, ms: i64) -> Value {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| TimeFormat::Rfc3339.write(t, &self.tz))
            .unwrap_or(Value::Null)
    }
}

struct Converter {
    field: String,
    target: String,
    from: TimeFormat,
    to: TimeFormat,
    tz: jiff::tz::TimeZone,
}

impl TimestampConvertConfig {
    fn converter(&self) -> Result<Converter, Vec<FieldError>> {
        let mut errors = Vec::new();
        let from = match (&self.from, self.field == RECORD_TIMESTAMP) {
            (Some(f), _) => TimeFormat::parse(f)
                .map_err(|e| errors.push(FieldError::new("from", e)))
                .ok(),
            (None, true) => Some(TimeFormat::EpochMillis),
            (None, false) => {
                errors.push(FieldError::new(
                    "from",
                    "required: how the time is written now",
                ));
                None
            }
        };
        let to = TimeFormat::parse(&self.to)
            .map_err(|e| errors.push(FieldError::new("to", e)))
            .ok();
        let tz = time_zone(&self.timezone)
            .map_err(|e| errors.push(FieldError::new("timezone", e)))
            .ok();
        match (from, to, tz) {
            (Some(from), Some(to), Some(tz)) if errors.is_empty() => Ok(Converter {
                field: self.field.clone(),
                target: self.target.clone().unwrap_or_else(|| self.field.clone()),
                from,
                to,
                tz,
            }),
            _ => Err(errors),
        }
    }
}

#[sluice_api::transform("timestamp_convert")]
impl TransformConfig for TimestampConvertConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.converter().map(|_| ())
    }

    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
        let converter = self.converter().map_err(|errors| {
            let first = &errors[0];
            ConnectorError::user(first.message.clone()).with_field(&first.field)
        })?;
        Ok(Box::new(converter))
    }
}

impl Transform for Converter {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let current = if self.field == RECORD_TIMESTAMP {
            record.timestamp.map(Value::from)
        } else {
            path::get(&record.value, &self.field).cloned()
        };
        match current {
            None | Some(Value::Null) => {}
            Some(value) => {
                let at = self
                    .from
                    .read(&value, &self.tz)
                    .map_err(|e| format!("field `{}`: {e}", self.field))?;
                if self.target == RECORD_TIMESTAMP {
                    record.timestamp = Some(at.as_millisecond());
                } else {
                    path::set(&mut record.value, &self.target, self.to.write(at, &self.tz))?;
                }
            }
        }
        out.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(config: &str, record: Record) -> Result<Record, String> {
        let c: TimestampConvertConfig = serde_yaml::from_str(config).unwrap();
        let t = c.build().unwrap();
        let mut out = Vec::new();
        t.apply(record, &mut out)?;
        Ok(out.remove(0))
    }

    fn value(config: &str, v: Value) -> Value {
        convert(config, Record::new(v)).unwrap().value
    }

    #[test]
    fn dates_epochs_and_rfc3339_convert_both_ways() {
        assert_eq!(
            value(
                "field: Date\nfrom: date\nto: epoch_ms",
                json!({"Date": "2020-03-12"})
            ),
            json!({"Date": 1_583_971_200_000_i64})
        );
        assert_eq!(
            value(
                "field: t\nfrom: epoch_s\nto: rfc3339",
                json!({"t": 1_583_971_200})
            ),
            json!({"t": "2020-03-12T00:00:00Z"})
        );
        assert_eq!(
            value(
                "field: t\nfrom: epoch_us\nto: date",
                json!({"t": 1_583_971_200_000_000_i64})
            ),
            json!({"t": "2020-03-12"})
        );
        assert_eq!(
            value(
                "field: t\nfrom: rfc3339\nto: epoch_s\ntarget: secs",
                json!({"t": "2020-03-12T01:00:00+01:00"})
            ),
            json!({"t": "2020-03-12T01:00:00+01:00", "secs": 1_583_971_200})
        );
    }

    #[test]
    fn the_time_zone_is_explicit_for_dates_patterns_and_output() {
        // Midnight in Paris is 23:00 UTC the day before (winter time).
        assert_eq!(
            value(
                "field: d\nfrom: date\nto: rfc3339\ntimezone: Europe/Paris",
                json!({"d": "2020-03-12"})
            ),
            json!({"d": "2020-03-12T00:00:00+01:00"})
        );
        assert_eq!(
            value(
                "field: d\nfrom: date\nto: epoch_s\ntimezone: Europe/Paris",
                json!({"d": "2020-03-12"})
            ),
            json!({"d": 1_583_967_600})
        );
        assert_eq!(
            value(
                "field: d\nfrom: '%d/%m/%Y %H:%M'\nto: '%Y-%m-%dT%H:%M'\ntimezone: '-05:00'",
                json!({"d": "12/03/2020 09:30"})
            ),
            json!({"d": "2020-03-12T09:30"})
        );
        assert_eq!(
            value(
                "field: d\nfrom: '%d/%m/%Y %H:%M'\nto: rfc3339\ntimezone: '-05:00'",
                json!({"d": "12/03/2020 09:30"})
            ),
            json!({"d": "2020-03-12T09:30:00-05:00"})
        );
    }

    #[test]
    fn the_record_timestamp_is_a_field_too() {
        let r = convert(
            "field: Date\nfrom: date\ntarget: $timestamp",
            Record::new(json!({"Date": "2020-03-12"})),
        )
        .unwrap();
        assert_eq!(r.timestamp, Some(1_583_971_200_000));
        let mut r = Record::new(json!({}));
        r.timestamp = Some(1_583_971_200_000);
        let r = convert("field: $timestamp\ntarget: day\nto: date", r).unwrap();
        assert_eq!(r.value, json!({"day": "2020-03-12"}));
    }

    #[test]
    fn bad_times_and_configs_are_reported() {
        let e = convert(
            "field: Date\nfrom: date\nto: epoch_ms",
            Record::new(json!({"Date": "12/03/2020"})),
        )
        .unwrap_err();
        assert!(
            e.starts_with("field `Date`: \"12/03/2020\" is not a date"),
            "{e}"
        );
        let c: TimestampConvertConfig =
            serde_yaml::from_str("field: d\nfrom: yyyy\nto: x\ntimezone: Mars/Olympus").unwrap();
        let fields: Vec<String> = c
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["from", "to", "timezone"]);
        assert_eq!(
            value("field: d\nfrom: date\nto: epoch_ms", json!({"d": null})),
            json!({"d": null}),
            "null stays null"
        );
    }
}
