//! Times in records, shared by the transforms that read them: the ways a time is written
//! ([`TimeFormat`]), time zones, and where a stream transform finds a record's event time
//! ([`EventTime`]).

use crate::path;
use serde_json::Value;
use sluice_api::Record;

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
