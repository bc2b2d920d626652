//! `timestamp_convert`: a time from one representation to another (Kafka Connect's
//! `TimestampConverter`), with the time zone explicit.

use crate::event_time::{time_zone, TimeFormat};
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
