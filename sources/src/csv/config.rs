//! Configuration of the CSV source.

pub use crate::shared::NullRows;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::FieldError;
use std::time::Duration;

/// Reads CSV files (one file or a glob) and emits one JSON record per row.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceConfig {
    /// File path or glob (`data/*.csv`), relative to the working directory; files are read in name order.
    pub path: String,
    /// Whether the first row names the columns; without it columns are `column_1`, `column_2`, …
    #[serde(default = "yes")]
    pub header: bool,
    /// Field delimiter.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Quote character.
    #[serde(default = "double_quote")]
    pub quote: char,
    /// Escape character inside quotes (e.g. `\`); without it a quote is escaped by doubling it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escape: Option<char>,
    /// Types of columns by name: `string`, `int`, `float`, `bool`, `date`, `timestamp`, or
    /// `{ type: date, format: "%d/%m/%Y" }`. Undeclared columns are inferred (see `infer_types`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub columns: IndexMap<String, ColumnSpec>,
    /// Infer the type of undeclared columns value by value (int, then float, then bool, else
    /// string). When false they stay strings.
    #[serde(default = "yes")]
    pub infer_types: bool,
    /// Field values that mean null, e.g. `["null", "NA"]`. An empty field is always null.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub null_values: Vec<String>,
    /// Column whose text becomes the record key (records with one key stay in order in one partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Column (declared `date` or `timestamp`) that gives the record time; otherwise the time of reading.
    /// On Kafka the record time is the message timestamp, and brokers delete messages older
    /// than the topic's `retention.ms` (7 days by default): give a topic fed with history
    /// `config: { retention.ms: "-1" }` (see `pipelines/btc-history-csv-to-file.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_column: Option<String>,
    /// Rows whose every column but `key` and `timestamp_column` is null (Yahoo's `null` days):
    /// `keep` them, `skip` them (counted), or send them to the dead-letter topic (`dead_letter`).
    #[serde(default)]
    pub all_null_rows: NullRows,
    /// Most records per second; unset reads as fast as the pipeline takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Keep watching for appended rows and new files after the end, like `tail -f`.
    #[serde(default)]
    pub follow: bool,
    /// How often `follow` looks for new rows and files.
    #[serde(default = "one_second", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
}

/// Type of one column, with an optional parse format.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ColumnSpec {
    /// Just the type.
    Type(ColumnType),
    /// The type with a chrono format for `date`/`timestamp` (e.g. `%d/%m/%Y %H:%M`).
    WithFormat {
        #[serde(rename = "type")]
        column_type: ColumnType,
        format: String,
    },
}

/// `columns` entries as written, before their type name is checked.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawColumnSpec {
    Name(String),
    WithFormat {
        #[serde(rename = "type")]
        column_type: String,
        format: String,
    },
}

/// By hand, so that a wrong type name says which types exist rather than that the value "did
/// not match any variant of untagged enum".
impl<'de> Deserialize<'de> for ColumnSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawColumnSpec::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(format!(
                "a column is a type name ({}) or `{{ type: date, format: \"%d/%m/%Y\" }}`",
                ColumnType::NAMES.join(", ")
            ))
        })?;
        let parse = |name: &str| {
            ColumnType::from_name(name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown column type `{name}`: expected one of {}",
                    ColumnType::NAMES.join(", ")
                ))
            })
        };
        Ok(match raw {
            RawColumnSpec::Name(name) => ColumnSpec::Type(parse(&name)?),
            RawColumnSpec::WithFormat {
                column_type,
                format,
            } => ColumnSpec::WithFormat {
                column_type: parse(&column_type)?,
                format,
            },
        })
    }
}

impl ColumnSpec {
    pub fn column_type(&self) -> ColumnType {
        match self {
            ColumnSpec::Type(t) | ColumnSpec::WithFormat { column_type: t, .. } => *t,
        }
    }

    pub fn format(&self) -> Option<&str> {
        match self {
            ColumnSpec::Type(_) => None,
            ColumnSpec::WithFormat { format, .. } => Some(format),
        }
    }
}

/// A column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Int,
    Float,
    Bool,
    /// A calendar date, emitted as `YYYY-MM-DD`.
    Date,
    /// A point in time, emitted as RFC 3339 in UTC.
    Timestamp,
}

impl ColumnType {
    /// Every type's name, as written in `columns`.
    pub const NAMES: [&'static str; 6] = ["string", "int", "float", "bool", "date", "timestamp"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => ColumnType::String,
            "int" => ColumnType::Int,
            "float" => ColumnType::Float,
            "bool" => ColumnType::Bool,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            _ => return None,
        })
    }
}

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}
fn double_quote() -> char {
    '"'
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}

impl CsvSourceConfig {
    pub(super) fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = check_files(&self.path, self.rate);
        for (field, c) in [
            ("delimiter", Some(self.delimiter)),
            ("quote", Some(self.quote)),
            ("escape", self.escape),
        ] {
            if c.is_some_and(|c| !c.is_ascii()) {
                errors.push(FieldError::new(field, "must be a single ASCII character"));
            }
        }
        for (name, spec) in &self.columns {
            if spec.format().is_some()
                && !matches!(spec.column_type(), ColumnType::Date | ColumnType::Timestamp)
            {
                errors.push(FieldError::new(
                    format!("columns.{name}"),
                    "`format` applies to `date` and `timestamp` columns only",
                ));
            }
        }
        if let Some(ts) = &self.timestamp_column {
            let typed = self.columns.get(ts).map(ColumnSpec::column_type);
            if !matches!(typed, Some(ColumnType::Date | ColumnType::Timestamp)) {
                errors.push(FieldError::new(
                    "timestamp_column",
                    format!("`{ts}` must be declared in `columns` as `date` or `timestamp`"),
                ));
            }
        }
        if !self.header {
            for name in self.columns.keys() {
                let valid = name
                    .strip_prefix("column_")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n > 0);
                if !valid {
                    errors.push(FieldError::new(
                        format!("columns.{name}"),
                        "without a header row, columns are named `column_1`, `column_2`, …",
                    ));
                }
            }
        }
        FieldError::all(errors)
    }
}

/// The `path` (a glob) and `rate` of a file source (CSV or JSON lines), checked.
pub(crate) fn check_files(path: &str, rate: Option<f64>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if path.trim().is_empty() {
        errors.push(FieldError::new("path", "must not be empty"));
    } else if let Err(e) = glob::Pattern::new(path) {
        errors.push(FieldError::new("path", format!("not a valid glob: {e}")));
    }
    if rate.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
        errors.push(FieldError::new(
            "rate",
            "must be a positive number of records per second",
        ));
    }
    errors
}
