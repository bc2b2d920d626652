//! `route`: changes the topic of records (Kafka Connect's `RegexRouter` and `TimestampRouter`,
//! and a template of the record's fields).

use crate::event_time::time_zone;
use crate::path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{ConnectorError, FieldError, Record, Transform, TransformConfig};

/// Sends records to another topic, named by a `template` — `{topic}`, `{field}` for a field of
/// the value (or a path such as `{data.symbol}`), `{time:%Y-%m}` for the record's timestamp
/// in `timezone` — or by `regex` and `replacement` applied to the current topic (`$1` for a
/// group; a topic the regex does not match is left as it is). In a source, the topics it
/// routes to must be declared under `topics:` (or created by the broker).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The new topic's name, e.g. `prices-{symbol}` or `{topic}-{time:%Y%m%d}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A regular expression matched against the whole current topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// What a matching topic becomes, with `$1`… for the regex's groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Time zone of `{time:…}` (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// A piece of a template.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Topic,
    Field(String),
    Time(String),
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("`{{` without `}}` in `{template}`"))?;
        let name = &rest[open + 1..open + close];
        parts.push(match name {
            "topic" => Part::Topic,
            "" => return Err(format!("empty `{{}}` in `{template}`")),
            time if time.starts_with("time:") => Part::Time(time[5..].to_string()),
            field => Part::Field(field.to_string()),
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

enum Router {
    Template(Vec<Part>, jiff::tz::TimeZone),
    Regex(regex::Regex, String),
}

impl RouteConfig {
    fn router(&self) -> Result<Router, FieldError> {
        match (&self.template, &self.regex, &self.replacement) {
            (Some(template), None, None) => {
                let parts = parse_template(template).map_err(|e| FieldError::new("template", e))?;
                let tz = time_zone(&self.timezone).map_err(|e| FieldError::new("timezone", e))?;
                Ok(Router::Template(parts, tz))
            }
            (None, Some(regex), Some(replacement)) => {
                let anchored = format!("^(?:{regex})$");
                let regex = regex::Regex::new(&anchored)
                    .map_err(|e| FieldError::new("regex", e.to_string()))?;
                Ok(Router::Regex(regex, replacement.clone()))
            }
            _ => Err(FieldError::new(
                "template",
                "give either `template`, or `regex` with `replacement`",
            )),
        }
    }
}

#[sluice_api::transform("route")]
impl TransformConfig for RouteConfig {
    fn changes_topics(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.router().map(|_| ()).map_err(|e| vec![e])
    }

    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
        self.router()
            .map(|r| Box::new(r) as Box<dyn Transform>)
            .map_err(|e| ConnectorError::user(e.message).with_field(&e.field))
    }
}

impl Transform for Router {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let topic = match self {
            Router::Regex(regex, replacement) => {
                if !regex.is_match(&record.topic) {
                    out.push(record);
                    return Ok(());
                }
                regex
                    .replace(&record.topic, replacement.as_str())
                    .into_owned()
            }
            Router::Template(parts, tz) => {
                let mut topic = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => topic.push_str(t),
                        Part::Topic => topic.push_str(&record.topic),
                        Part::Field(field) => match path::get(&record.value, field) {
                            Some(v) if !v.is_null() => topic.push_str(&path::text(v)),
                            _ => return Err(format!("no field `{field}` to name the topic")),
                        },
                        Part::Time(format) => {
                            let ms = record
                                .timestamp
                                .ok_or("the record has no timestamp to name the topic")?;
                            let at = jiff::Timestamp::from_millisecond(ms)
                                .map_err(|e| format!("timestamp {ms}: {e}"))?;
                            topic.push_str(&at.to_zoned(tz.clone()).strftime(format).to_string());
                        }
                    }
                }
                topic
            }
        };
        if topic.is_empty() {
            return Err("the new topic's name is empty".into());
        }
        record.topic = topic.as_str().into();
        out.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(config: &str, record: Record) -> Result<String, String> {
        let c: RouteConfig = serde_yaml::from_str(config).unwrap();
        let t = c.build().unwrap();
        let mut out = Vec::new();
        t.apply(record, &mut out)?;
        Ok(out[0].topic.to_string())
    }

    fn record() -> Record {
        let mut r = Record::new(json!({"symbol": "BTC", "data": {"venue": "x"}}));
        r.topic = "prices-raw".into();
        r.timestamp = Some(1_583_971_200_000);
        r
    }

    #[test]
    fn templates_name_topics_from_the_topic_fields_and_time() {
        assert_eq!(
            route("template: '{topic}.{symbol}.{data.venue}'", record()).unwrap(),
            "prices-raw.BTC.x"
        );
        assert_eq!(
            route("template: 'prices-{time:%Y.%m.%d}'", record()).unwrap(),
            "prices-2020.03.12"
        );
        assert_eq!(
            route(
                "template: 'p-{time:%Y-%m-%d %H}'\ntimezone: America/New_York",
                record()
            )
            .unwrap(),
            "p-2020-03-11 20"
        );
        assert_eq!(
            route("template: '{missing}'", record()).unwrap_err(),
            "no field `missing` to name the topic"
        );
    }

    #[test]
    fn a_regex_rewrites_matching_topics_only() {
        let config = "regex: '(.*)-raw'\nreplacement: '$1-clean'";
        assert_eq!(route(config, record()).unwrap(), "prices-clean");
        let mut other = record();
        other.topic = "raw-prices".into();
        assert_eq!(route(config, other).unwrap(), "raw-prices");
    }

    #[test]
    fn configs_name_what_is_wrong() {
        for (config, field) in [
            ("template: '{topic'", "template"),
            ("regex: '('\nreplacement: x", "regex"),
            ("regex: a", "template"),
            ("template: x\ntimezone: Nowhere/Else", "timezone"),
        ] {
            let c: RouteConfig = serde_yaml::from_str(config).unwrap();
            assert_eq!(c.validate().unwrap_err()[0].field, field, "{config}");
        }
    }
}
