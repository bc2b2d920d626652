//! Configuration of the MySQL/MariaDB sink.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_core::{FieldError, Secret};

/// Writes records as rows of MySQL/MariaDB tables, one transaction per batch.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// Server and database: `mysql://user@host:3306/database`. Put the password in `password`.
    pub url: String,
    /// Password of the user in `url` (e.g. `${MYSQL_PASSWORD}`); never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Table to write; `{topic}` becomes the record's topic with every character other than a
    /// letter, digit or `_` turned into `_` (`btc-usd.daily` → `btc_usd_daily`).
    #[serde(default = "topic_template")]
    pub table: String,
    /// Create a missing table from `columns` and the first batch (BIGINT, DOUBLE, BOOLEAN, DATE,
    /// DATETIME(6), JSON for nested values, TEXT; key columns VARCHAR(`key_length`)).
    #[serde(default = "yes")]
    pub auto_create: bool,
    /// Add missing columns (nullable) when records bring new fields; otherwise that is an error.
    #[serde(default)]
    pub auto_evolve: bool,
    /// `insert`, `upsert` (`INSERT … ON DUPLICATE KEY UPDATE`) or `update` (by primary key).
    #[serde(default)]
    pub insert_mode: InsertMode,
    /// Where the primary key comes from.
    #[serde(default)]
    pub primary_key: PrimaryKey,
    /// SQL types of columns for `auto_create`, overriding inference: `{ Date: DATE, Volume: BIGINT }`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub columns: IndexMap<String, String>,
    /// Delete the row whose key is a tombstone's key (needs `primary_key.mode: record_key`);
    /// otherwise tombstones are skipped.
    #[serde(default)]
    pub delete_on_tombstone: bool,
    /// Store the consumer offsets in table `sluice_offsets` in the same transaction as the rows and
    /// resume from them, so a crash neither loses nor duplicates rows (Kafka transport only).
    #[serde(default)]
    pub exactly_once: bool,
    /// Length of VARCHAR primary-key columns created for text keys.
    #[serde(default = "default_key_length")]
    pub key_length: u32,
}

/// How records become rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InsertMode {
    #[default]
    Insert,
    Upsert,
    Update,
}

/// Source of the primary key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrimaryKey {
    /// `none`, `record_key` (the record key in column `fields[0]`, default `_key`),
    /// `record_value` (the value fields named in `fields`) or `kafka` (`_topic`, `_partition`, `_offset`).
    #[serde(default)]
    pub mode: KeyMode,
    /// Key columns: value fields for `record_value`, the column name for `record_key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// Where the primary key comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    #[default]
    None,
    RecordKey,
    RecordValue,
    Kafka,
}

fn topic_template() -> String {
    "{topic}".into()
}
fn yes() -> bool {
    true
}
fn default_key_length() -> u32 {
    255
}

impl MysqlSinkConfig {
    pub(super) fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(e) = mysql_async::Opts::from_url(&self.url) {
            errors.push(FieldError::new(
                "url",
                format!("not a MySQL URL (`mysql://user@host:3306/database`): {e}"),
            ));
        } else if mysql_async::Opts::from_url(&self.url).is_ok_and(|o| o.db_name().is_none()) {
            errors.push(FieldError::new(
                "url",
                "must name the database: `mysql://user@host:3306/database`",
            ));
        }
        if self.table.trim().is_empty() {
            errors.push(FieldError::new("table", "must not be empty"));
        }
        let pk = &self.primary_key;
        match pk.mode {
            KeyMode::RecordValue if pk.fields.is_empty() => errors.push(FieldError::new(
                "primary_key.fields",
                "`record_value` needs the value fields that form the key",
            )),
            KeyMode::RecordKey if pk.fields.len() > 1 => errors.push(FieldError::new(
                "primary_key.fields",
                "`record_key` takes one column name",
            )),
            KeyMode::None | KeyMode::Kafka if !pk.fields.is_empty() => {
                errors.push(FieldError::new(
                    "primary_key.fields",
                    "only `record_key` and `record_value` take fields",
                ))
            }
            _ => {}
        }
        if self.insert_mode != InsertMode::Insert && pk.mode == KeyMode::None {
            errors.push(FieldError::new(
                "insert_mode",
                "`upsert` and `update` need a `primary_key`",
            ));
        }
        if self.delete_on_tombstone && pk.mode != KeyMode::RecordKey {
            errors.push(FieldError::new(
                "delete_on_tombstone",
                "needs `primary_key.mode: record_key`",
            ));
        }
        if self.key_length == 0 || self.key_length > 768 {
            errors.push(FieldError::new("key_length", "must be between 1 and 768"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
