//! Configuration of the MySQL/MariaDB sink.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{FieldError, Secret};

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
    /// `insert_mode: insert` only: append each batch with `LOAD DATA LOCAL INFILE`, streamed
    /// from memory — the server's fastest way in, in the same transaction (and with the same
    /// exactly-once bookkeeping) as statements. The server must allow it (`local_infile`: on by
    /// default in MariaDB, off in MySQL 8). A batch the server refuses for a row's content is
    /// written again row by row, so that only the bad row is dead-lettered.
    #[serde(default)]
    pub load_data: bool,
    /// Length of VARCHAR primary-key columns created for text keys.
    #[serde(default = "default_key_length")]
    pub key_length: u32,
    /// TLS to the server (managed MySQL services require it): `disabled` (default, unless the
    /// URL says `?require_ssl=true`), `required` (encrypted, the certificate not checked),
    /// `verify_ca` (signed by `ca_file` or a public root) or `verify_identity` (also issued
    /// for the host name in `url`).
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// PEM file of the certificate authority that signed the server's certificate, for
    /// `verify_ca` and `verify_identity` (e.g. the bundle a cloud provider publishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// How the connection to the server is encrypted and checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SslMode {
    /// No TLS (unless the URL asks for it with `require_ssl=true`).
    #[default]
    Disabled,
    /// TLS, without checking the server's certificate.
    Required,
    /// TLS, with a certificate signed by `ca_file` (or a public root), for any host name.
    VerifyCa,
    /// TLS, with a certificate signed by `ca_file` (or a public root) for the host in `url`.
    VerifyIdentity,
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
    /// The TLS options of `ssl_mode`; `None` leaves the URL's own.
    pub(super) fn ssl_opts(
        &self,
    ) -> Result<Option<mysql_async::SslOpts>, sluice_api::ConnectorError> {
        let base = mysql_async::SslOpts::default();
        let with_ca = |opts: mysql_async::SslOpts| -> Result<_, sluice_api::ConnectorError> {
            let Some(ca) = &self.ca_file else {
                return Ok(opts);
            };
            let pem = std::fs::read(ca).map_err(|e| {
                sluice_api::ConnectorError::user(format!("cannot read `{ca}`: {e}"))
                    .with_field("ca_file")
            })?;
            Ok(opts.with_root_certs(vec![pem.into()]))
        };
        Ok(match self.ssl_mode {
            SslMode::Disabled => None,
            SslMode::Required => Some(
                base.with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            SslMode::VerifyCa => Some(with_ca(base.with_danger_skip_domain_validation(true))?),
            SslMode::VerifyIdentity => Some(with_ca(base)?),
        })
    }

    pub(super) fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(e) = mysql_async::Opts::from_url(&self.url) {
            errors.push(FieldError::new(
                "url",
                format!(
                    "not a MySQL URL (`mysql://user@host:3306/database`): {}",
                    sluice_api::redact_url(&e.to_string())
                ),
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
        // A replay (the normal way of recovering after a crash) sends rows already written; in
        // plain `insert` mode their key is a duplicate (1062) on every restart.
        if self.insert_mode == InsertMode::Insert && pk.mode != KeyMode::None && !self.exactly_once
        {
            errors.push(FieldError::new(
                "insert_mode",
                "`insert` with a `primary_key` fails on rows written again after a restart (duplicate key); use `insert_mode: upsert`, or `exactly_once: true`",
            ));
        }
        if self.load_data && self.insert_mode != InsertMode::Insert {
            errors.push(FieldError::new(
                "load_data",
                "appends rows, so it goes with `insert_mode: insert` only",
            ));
        }
        if self.ca_file.is_some() && self.ssl_mode == SslMode::Disabled {
            errors.push(FieldError::new(
                "ca_file",
                "is used with `ssl_mode: verify_ca` or `verify_identity`",
            ));
        }
        if self.key_length == 0 || self.key_length > 768 {
            errors.push(FieldError::new("key_length", "must be between 1 and 768"));
        }
        FieldError::all(errors)
    }
}
