//! Table names, column types inferred from records, and JSON values as MySQL values.

use super::config::{KeyMode, MysqlSinkConfig};
use mysql_async::Value as Sql;
use serde_json::Value;
use sluice_api::Record;
use std::borrow::Cow;

/// `{topic}` filled in, with everything but letters, digits and `_` turned into `_`.
pub fn table_name(template: &str, topic: &str) -> String {
    let safe: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    template.replace("{topic}", &safe)
}

/// A name quoted as a MySQL identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The columns of a record: primary-key columns first (for `record_key`/`kafka`), then fields.
/// `Err` when the record cannot be a row.
pub fn row<'a>(config: &MysqlSinkConfig, record: &'a Record) -> Result<Row<'a>, String> {
    let Value::Object(fields) = &record.value else {
        return Err(format!(
            "the value is not a JSON object: {}",
            truncate(&record.value.to_string())
        ));
    };
    let mut row = Row::with_capacity(fields.len() + 3);
    let mut put = |column: &'static str, value: Value| {
        row.push_unless_among(usize::MAX, Cow::Borrowed(column), Cow::Owned(value));
    };
    match config.primary_key.mode {
        KeyMode::RecordKey => {
            let key = record
                .key_str()
                .ok_or("the record has no UTF-8 key for the primary key")?;
            row.push_unless_among(
                0,
                Cow::Owned(key_column(config)),
                Cow::Owned(Value::String(key.to_string())),
            );
        }
        KeyMode::Kafka => {
            put("_topic", Value::String(record.topic.to_string()));
            put("_partition", Value::from(record.partition));
            put("_offset", Value::from(record.offset));
        }
        KeyMode::RecordValue | KeyMode::None => {}
    }
    // A record's fields have distinct names: only the key columns above can repeat one.
    let key_columns = row.len();
    for (name, value) in fields {
        row.push_unless_among(
            key_columns,
            Cow::Borrowed(name.as_str()),
            Cow::Borrowed(value),
        );
    }
    if config.primary_key.mode == KeyMode::RecordValue {
        if let Some(missing) = config
            .primary_key
            .fields
            .iter()
            .find(|f| row.get(f.as_str()).is_none_or(|v| v.is_null()))
        {
            return Err(format!("primary key field `{missing}` is missing or null"));
        }
    }
    Ok(row)
}

/// Column holding the record key in `record_key` mode.
pub fn key_column(config: &MysqlSinkConfig) -> String {
    config
        .primary_key
        .fields
        .first()
        .cloned()
        .unwrap_or_else(|| "_key".into())
}

/// Names of the primary-key columns.
pub fn key_columns(config: &MysqlSinkConfig) -> Vec<String> {
    match config.primary_key.mode {
        KeyMode::None => Vec::new(),
        KeyMode::RecordKey => vec![key_column(config)],
        KeyMode::RecordValue => config.primary_key.fields.clone(),
        KeyMode::Kafka => vec!["_topic".into(), "_partition".into(), "_offset".into()],
    }
}

/// SQL type for a column, from the first non-null values seen (widening int to double).
pub fn infer_type(values: &[&Value], is_key: bool, key_length: u32) -> String {
    let mut kind: Option<&str> = None;
    for value in values.iter().filter(|v| !v.is_null()) {
        let this = match value {
            Value::Bool(_) => "BOOLEAN",
            Value::Number(n) if n.is_i64() || n.is_u64() => "BIGINT",
            Value::Number(_) => "DOUBLE",
            Value::String(s) if is_date(s) => "DATE",
            Value::String(s) if is_timestamp(s) => "DATETIME(6)",
            Value::String(_) => "TEXT",
            Value::Object(_) | Value::Array(_) => "JSON",
            Value::Null => continue,
        };
        kind = Some(match (kind, this) {
            (None, t) => t,
            (Some(a), b) if a == b => a,
            (Some("BIGINT"), "DOUBLE") | (Some("DOUBLE"), "BIGINT") => "DOUBLE",
            (Some("DATE"), "DATETIME(6)") | (Some("DATETIME(6)"), "DATE") => "DATETIME(6)",
            _ => "TEXT",
        });
    }
    match kind.unwrap_or("TEXT") {
        // Binary collation: keys compare byte for byte, so `BTC` and `btc` stay two rows (the
        // default `utf8mb4_0900_ai_ci` of MySQL 8 and MariaDB's `utf8mb4_general_ci` merge them).
        "TEXT" | "JSON" if is_key => {
            format!("VARCHAR({key_length}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        }
        t => t.to_string(),
    }
}

fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

fn is_timestamp(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// A JSON value as a MySQL parameter for a column of type `sql_type`.
pub fn to_sql(value: &Value, sql_type: &str) -> Sql {
    match value {
        Value::Null => Sql::NULL,
        // A JSON column takes JSON text, whatever the value: MySQL's native JSON refuses a bare
        // number or an unquoted string (MariaDB's alias for LONGTEXT accepted them).
        other if sql_type == "json" => Sql::Bytes(other.to_string().into_bytes()),
        Value::Bool(b) => Sql::Int(i64::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Sql::Int(i),
            (None, Some(u)) => Sql::UInt(u),
            _ => Sql::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s)
            if sql_type.starts_with("datetime") || sql_type.starts_with("timestamp") =>
        {
            match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => Sql::Bytes(
                    t.naive_utc()
                        .format("%Y-%m-%d %H:%M:%S%.6f")
                        .to_string()
                        .into_bytes(),
                ),
                Err(_) => Sql::Bytes(s.clone().into_bytes()),
            }
        }
        Value::String(s) => Sql::Bytes(s.clone().into_bytes()),
        other => Sql::Bytes(other.to_string().into_bytes()),
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// A record's columns in order, each name once, values borrowed from the record where they can
/// be. Found by a scan: a row has a handful of columns, and comparing them costs less than
/// hashing each name (this runs for every value of every record).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Row<'a> {
    columns: Vec<(Cow<'a, str>, Cow<'a, Value>)>,
}

impl<'a> Row<'a> {
    pub fn with_capacity(columns: usize) -> Self {
        Row {
            columns: Vec::with_capacity(columns),
        }
    }

    /// Appends `column` unless one of the first `among` columns has its name already.
    pub fn push_unless_among(&mut self, among: usize, column: Cow<'a, str>, value: Cow<'a, Value>) {
        let among = among.min(self.columns.len());
        if !self.columns[..among].iter().any(|(c, _)| *c == column) {
            self.columns.push((column, value));
        }
    }

    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v.as_ref())
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(c, _)| c.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.columns.iter().map(|(c, v)| (c.as_ref(), v.as_ref()))
    }

    /// The value of the column at `index` (in [`Row::keys`] order).
    pub(super) fn value_at(&self, index: usize) -> &Value {
        self.columns.get(index).map_or(&Value::Null, |(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topic_names_become_legal_table_names() {
        assert_eq!(table_name("{topic}", "btc-usd.daily"), "btc_usd_daily");
        assert_eq!(table_name("raw_{topic}", "bitcoin"), "raw_bitcoin");
        assert_eq!(quote("Adj Close"), "`Adj Close`");
        assert_eq!(quote("a`b"), "`a``b`");
    }

    #[test]
    fn types_are_inferred_sanely_and_key_columns_are_never_text() {
        let v = |j: Value| j;
        assert_eq!(
            infer_type(&[&v(json!(1)), &v(json!(2.5))], false, 255),
            "DOUBLE"
        );
        assert_eq!(
            infer_type(&[&v(json!(null)), &v(json!(7))], false, 255),
            "BIGINT"
        );
        assert_eq!(infer_type(&[&v(json!("2014-09-17"))], false, 255), "DATE");
        assert_eq!(
            infer_type(&[&v(json!("2014-09-17T00:00:00Z"))], false, 255),
            "DATETIME(6)"
        );
        assert_eq!(infer_type(&[&v(json!({"a": 1}))], false, 255), "JSON");
        assert_eq!(infer_type(&[&v(json!("BTC"))], false, 255), "TEXT");
        assert_eq!(
            infer_type(&[&v(json!("BTC"))], true, 100),
            "VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        );
        assert_eq!(infer_type(&[&v(json!(null))], false, 255), "TEXT");
    }

    #[test]
    fn timestamps_are_bound_as_utc_datetimes() {
        assert_eq!(
            to_sql(&json!("2021-01-02T03:04:05+01:00"), "datetime"),
            Sql::Bytes(b"2021-01-02 02:04:05.000000".to_vec())
        );
        assert_eq!(to_sql(&json!(true), "tinyint"), Sql::Int(1));
        assert_eq!(
            to_sql(&json!({"a": [1]}), "json"),
            Sql::Bytes(br#"{"a":[1]}"#.to_vec())
        );
    }

    #[test]
    fn json_columns_receive_json_text_for_every_value() {
        assert_eq!(to_sql(&json!(12), "json"), Sql::Bytes(b"12".to_vec()));
        assert_eq!(
            to_sql(&json!("abc"), "json"),
            Sql::Bytes(br#""abc""#.to_vec())
        );
        assert_eq!(to_sql(&json!(true), "json"), Sql::Bytes(b"true".to_vec()));
        assert_eq!(to_sql(&json!(null), "json"), Sql::NULL);
    }
}
