//! The running MySQL sink: one connection, reconnected after failures; a transaction per batch.

use super::config::MysqlSinkConfig;
use super::plan::{plan, Op, Plan, Server, Step};
use super::schema::Row;
use super::schema::{infer_type, key_columns, quote, row, table_name};
use futures::StreamExt;
use indexmap::IndexMap;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use serde_json::Value;
use sluice_api::exactly_once::{Position, PositionKey, WrittenPositions};
use sluice_api::topic::{PartitionOffset, TopicPartition};
use sluice_api::{
    async_trait, ConnectorError, PrepareBatch, Prepared, PutOutcome, Record, Sink, SinkBuildContext,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

mod planner;
mod transaction;

use planner::*;
use transaction::*;

/// Server errors caused by one row's content: that row is dead-lettered, the batch goes on.
const ROW_ERRORS: &[u16] = &[
    1048, // column cannot be null
    1264, // out of range
    1265, // data truncated
    1292, // incorrect datetime/date value
    1366, // incorrect value for column
    1406, // data too long
    1452, // foreign key
    3140, // invalid JSON (MySQL)
    3819, // CHECK constraint (MySQL)
    4025, // CHECK constraint (MariaDB JSON)
];
/// Server errors that pass: deadlock, lock wait timeout, too many connections, shutting down.
const TRANSIENT: &[u16] = &[1205, 1213, 1040, 1053, 1927];
/// Errors of `CREATE TABLE` on servers that require a primary key: MySQL's
/// `sql_require_primary_key` (3750), MariaDB's `innodb_force_primary_key` (1173).
const PRIMARY_KEY_REQUIRED: &[u16] = &[3750, 1173];
/// `max_allowed_packet` assumed until the server says (MySQL 8's default is 64 MiB, older
/// servers' 4 MiB).
const DEFAULT_MAX_PACKET: u64 = 4 << 20;
/// Bytes per packet of `LOAD DATA LOCAL INFILE` data.
const LOAD_CHUNK: usize = 64 << 10;
/// The session's SQL mode: strict, so a value that does not fit is an error (dead-lettered),
/// never silently cut or turned into a zero date.
const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// Known tables: table → column → lower-case SQL data type.
type Tables = HashMap<String, IndexMap<String, String>>;

pub(super) struct MysqlSink {
    config: Arc<MysqlSinkConfig>,
    opts: Opts,
    conn: Option<Conn>,
    /// A batch written by `put` and left for `flush` to commit (exactly once).
    open_transaction: bool,
    /// Turns batches into statements, here and ahead of `put` (the runtime's preparer).
    planner: Arc<Planner>,
    group: String,
    target: String,
    /// Exactly once: consumer offsets are stored with the rows and resumed from (Kafka; the
    /// embedded transport's offsets restart with each process).
    store_offsets: bool,
    /// Exactly once: the highest source position written, as committed in
    /// `sluice_source_positions`.
    positions: WrittenPositions,
    /// The positions the open transaction stores; taken into `positions` once committed.
    uncommitted_positions: HashMap<PositionKey, Position>,
}

/// Table of the highest source position written per consumer group, topic partition and source
/// partition (see `sluice_api::exactly_once`). Binary columns keep the key within InnoDB's limit.
const POSITIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sluice_source_positions (\
     consumer_group VARBINARY(255) NOT NULL, topic VARBINARY(255) NOT NULL, \
     kafka_partition INT NOT NULL, source VARBINARY(512) NOT NULL, \
     input_position BIGINT UNSIGNED NOT NULL, record_index INT UNSIGNED NOT NULL, \
     PRIMARY KEY (consumer_group, topic, kafka_partition, source)) ENGINE=InnoDB";

/// A failed statement: the row's fault, or the batch's.
enum Failure {
    Row(String),
    Batch(ConnectorError),
}

impl MysqlSink {
    pub async fn connect(
        config: MysqlSinkConfig,
        ctx: SinkBuildContext,
    ) -> Result<Self, ConnectorError> {
        let url = Opts::from_url(&config.url).map_err(|e| {
            ConnectorError::user(format!(
                "bad `url`: {}",
                sluice_api::redact_url(&e.to_string())
            ))
            .with_field("url")
        })?;
        let target = format!(
            "{}@{}:{}/{}",
            url.user().unwrap_or(""),
            url.ip_or_hostname(),
            url.tcp_port(),
            url.db_name().unwrap_or("")
        );
        // REPEATABLE READ whatever the server's default: the exactly-once fence's locking
        // read of positions not stored yet takes a gap lock only there (under READ COMMITTED
        // two writers of a new partition would both find nothing and both write).
        let mut builder = OptsBuilder::from_opts(url).init(vec![
            format!("SET SESSION sql_mode = '{SQL_MODE}'"),
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ".to_string(),
        ]);
        if let Some(ssl) = config.ssl_opts()? {
            builder = builder.ssl_opts(ssl);
        }
        if let Some(password) = &config.password {
            builder = builder.pass(Some(password.expose()));
        }
        let config = Arc::new(config);
        let mut sink = MysqlSink {
            planner: Arc::new(Planner {
                config: config.clone(),
                server: Server::new("", DEFAULT_MAX_PACKET),
                tables: Arc::default(),
            }),
            config,
            opts: builder.into(),
            conn: None,
            open_transaction: false,
            group: ctx.group,
            target,
            store_offsets: false,
            positions: WrittenPositions::default(),
            uncommitted_positions: HashMap::new(),
        };
        sink.store_offsets = sink.config.exactly_once && ctx.durable_offsets;
        let about: Option<(String, u64)> = {
            let result = sink
                .conn()
                .await?
                .query_first("SELECT VERSION(), @@max_allowed_packet")
                .await;
            result.map_err(|e| sink.error(e))?
        };
        let (version, max_packet) = about.unwrap_or_else(|| ("?".into(), DEFAULT_MAX_PACKET));
        sink.planner = Arc::new(Planner {
            config: sink.config.clone(),
            server: Server::new(&version, max_packet),
            tables: Arc::default(),
        });
        tracing::info!(component = %ctx.component, server = %sink.target, %version, max_packet, "connected to MySQL");
        if sink.config.exactly_once {
            // The positions themselves are read per partition, as the sink opens them.
            sink.execute(POSITIONS_TABLE.into()).await?;
        }
        if sink.store_offsets {
            sink.ensure_offsets_table().await?;
        }
        Ok(sink)
    }

    async fn conn(&mut self) -> Result<&mut Conn, ConnectorError> {
        if self.conn.is_none() {
            let conn = Conn::new(self.opts.clone())
                .await
                .map_err(|e| self.error(e))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ConnectorError::internal("no MySQL connection"))
    }

    /// Turns a driver error into a connector error; drops the connection when it may be broken.
    fn error(&mut self, e: mysql_async::Error) -> ConnectorError {
        match &e {
            mysql_async::Error::Server(s) if TRANSIENT.contains(&s.code) => {
                ConnectorError::transient(format!(
                    "MySQL {}: {} ({})",
                    self.target, s.message, s.code
                ))
            }
            mysql_async::Error::Server(s) if matches!(s.code, 1044 | 1045 | 1049 | 1698) => {
                self.conn = None;
                ConnectorError::external(format!(
                    "MySQL {}: {} ({})",
                    self.target, s.message, s.code
                ))
            }
            mysql_async::Error::Server(s) => ConnectorError::external(format!(
                "MySQL {}: {} ({})",
                self.target, s.message, s.code
            )),
            _ => {
                self.conn = None;
                ConnectorError::transient(format!("MySQL {}: {e}", self.target))
            }
        }
    }

    fn classify(&mut self, e: mysql_async::Error) -> Failure {
        match &e {
            mysql_async::Error::Server(s) if ROW_ERRORS.contains(&s.code) => {
                Failure::Row(format!("{} ({})", s.message, s.code))
            }
            _ => Failure::Batch(self.error(e)),
        }
    }

    /// Columns of `table` as the server has them; empty when it does not exist.
    /// MariaDB's `JSON` is `LONGTEXT` with a `json_valid` check: reported as `json` too.
    async fn describe(&mut self, table: &str) -> Result<IndexMap<String, String>, ConnectorError> {
        let sql = if self.planner.server.mariadb {
            "SELECT c.COLUMN_NAME, IF(EXISTS(SELECT 1 FROM information_schema.CHECK_CONSTRAINTS k \
               WHERE k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME \
               AND k.CHECK_CLAUSE LIKE CONCAT('%json_valid(`', c.COLUMN_NAME, '`)%')), 'json', c.DATA_TYPE) \
             FROM information_schema.COLUMNS c \
             WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = ? ORDER BY c.ORDINAL_POSITION"
        } else {
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"
        };
        let columns: Vec<(String, String)> = {
            let result = self.conn().await?.exec(sql, (table,)).await;
            result.map_err(|e| self.error(e))?
        };
        Ok(columns
            .into_iter()
            .map(|(c, t)| (c, t.to_lowercase()))
            .collect())
    }

    async fn execute(&mut self, sql: String) -> Result<(), ConnectorError> {
        let result = self.conn().await?.query_drop(&sql).await;
        result.map_err(|e| self.error(e))
    }

    /// Creates or evolves `table` so that every column of `rows` exists.
    async fn ensure_table(&mut self, table: &str, rows: &[&Row<'_>]) -> Result<(), ConnectorError> {
        if all_columns_known(&self.planner.tables(), rows.iter().map(|row| (table, *row))) {
            return Ok(());
        }
        let known = self.planner.tables().get(table).cloned();
        let mut known = match known {
            Some(k) => k,
            None => self.describe(table).await?,
        };
        let mut wanted: IndexMap<&str, Vec<&Value>> = IndexMap::new();
        for row in rows {
            for (column, value) in row.iter() {
                wanted.entry(column).or_default().push(value);
            }
        }
        let keys = key_columns(&self.config);
        let (declared, key_length) = (self.config.columns.clone(), self.config.key_length);
        let type_of = |column: &str, values: &[&Value]| {
            declared
                .get(column)
                .cloned()
                .unwrap_or_else(|| infer_type(values, keys.iter().any(|k| k == column), key_length))
        };
        if known.is_empty() {
            if !self.config.auto_create {
                return Err(ConnectorError::user(format!(
                    "table `{table}` does not exist (set `auto_create: true` to create it)"
                ))
                .with_field("auto_create"));
            }
            let mut defs: Vec<String> = wanted
                .iter()
                .map(|(c, values)| {
                    let null = if keys.iter().any(|k| k == c) {
                        " NOT NULL"
                    } else {
                        " NULL"
                    };
                    format!("{} {}{null}", quote(c), type_of(c, values))
                })
                .collect();
            if !keys.is_empty() {
                defs.push(format!(
                    "PRIMARY KEY ({})",
                    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
                ));
            }
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                quote(table),
                defs.join(", ")
            );
            let created = self.conn().await?.query_drop(&sql).await;
            match created {
                Ok(()) => {}
                Err(mysql_async::Error::Server(e)) if PRIMARY_KEY_REQUIRED.contains(&e.code) => {
                    return Err(ConnectorError::user(format!(
                        "cannot create table `{table}`: the server requires a primary key ({}, {}); set `primary_key` (e.g. `mode: record_value` with the fields forming the key), or create the table yourself with one",
                        e.message, e.code
                    ))
                    .with_field("primary_key"))
                }
                Err(e) => return Err(self.error(e)),
            }
            tracing::info!(%table, "created table");
            known = self.describe(table).await?;
        }
        let missing: Vec<(&str, String)> = wanted
            .iter()
            .filter(|(c, _)| !known.contains_key(**c))
            .map(|(c, values)| (*c, type_of(c, values)))
            .collect();
        if !missing.is_empty() {
            if !self.config.auto_evolve {
                return Err(ConnectorError::user(format!(
                    "table `{table}` has no column `{}` (set `auto_evolve: true` to add missing columns)",
                    missing[0].0
                ))
                .with_field("auto_evolve"));
            }
            for (column, sql_type) in missing {
                self.execute(format!(
                    "ALTER TABLE {} ADD COLUMN {} {sql_type} NULL",
                    quote(table),
                    quote(column)
                ))
                .await?;
                tracing::info!(%table, %column, %sql_type, "added column");
            }
            known = self.describe(table).await?;
        }
        self.planner
            .tables
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), known);
        Ok(())
    }

    /// Writes `planned` and (exactly once) the offsets in one transaction. Returns the rows the
    /// server refused (statements of one row: see [`plan`]'s `one_by_one`).
    async fn write(&mut self, planned: PlannedBatch) -> Result<Vec<(usize, String)>, Failure> {
        let PlannedBatch {
            mut plan,
            rejected: refused_before,
            offsets,
        } = planned;
        if !self.uncommitted_positions.is_empty() {
            let sql = positions_upsert(&self.planner.server, self.uncommitted_positions.len());
            let mut params = Vec::with_capacity(6 * self.uncommitted_positions.len());
            for ((topic, partition, source), position) in &self.uncommitted_positions {
                params.extend([
                    mysql_async::Value::from(self.group.as_str()),
                    mysql_async::Value::from(&**topic),
                    mysql_async::Value::from(*partition),
                    mysql_async::Value::from(source.as_str()),
                    mysql_async::Value::from(position.input),
                    mysql_async::Value::from(position.index),
                ]);
            }
            plan.push(Step::Execute(None, sql, params));
        }
        if self.store_offsets && !offsets.is_empty() {
            let sql = format!(
                "INSERT INTO sluice_offsets (consumer_group, topic, kafka_partition, next_offset) VALUES {}{} \
                 ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, {})",
                vec!["(?,?,?,?)"; offsets.len()].join(","),
                self.planner.server.alias_clause(),
                self.planner.server.inserted("next_offset")
            );
            let mut params = Vec::new();
            for ((topic, partition), next) in &offsets {
                params.extend([
                    mysql_async::Value::from(self.group.as_str()),
                    mysql_async::Value::from(&**topic),
                    mysql_async::Value::from(*partition),
                    mysql_async::Value::from(*next),
                ]);
            }
            plan.push(Step::Execute(None, sql, params));
        }

        // Exactly once: the positions this sink screened the batch against must still be the
        // store's, or another worker wrote these partitions meanwhile (a group that assigned a
        // partition twice for a while, a worker paused past its session): checked under lock
        // in the transaction, so two writers of a partition never both write the same record.
        let fence = if self.uncommitted_positions.is_empty() {
            None
        } else {
            let partitions: Vec<TopicPartition> = self
                .uncommitted_positions
                .keys()
                .map(|(topic, partition, _)| (topic.clone(), *partition))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            Some(Fence {
                group: self.group.clone(),
                expected: self.positions.of(&partitions),
                partitions,
            })
        };
        self.conn().await.map_err(Failure::Batch)?;
        let mut conn = self
            .conn
            .take()
            .ok_or_else(|| Failure::Batch(ConnectorError::internal("no MySQL connection")))?;
        // Exactly once: committed in `flush`, after the refused rows are in the dead-letter
        // topic, since the offsets stored with the rows pass them.
        // Its own task: the statements and their round trips go on while the runtime reads
        // and decodes the next batch on this one.
        let leave_open = self.config.exactly_once;
        let transaction = tokio::spawn(async move {
            let result = run_in_transaction(&mut conn, fence, plan, leave_open).await;
            (conn, result)
        });
        let (conn, result) = transaction.await.map_err(|e| {
            Failure::Batch(ConnectorError::internal(format!(
                "the MySQL transaction's task ended: {e}"
            )))
        })?;
        self.open_transaction = self.config.exactly_once && result.is_ok();
        self.conn = Some(conn);
        let result = match result {
            Err(Transaction::Overtaken(partitions)) => {
                // Read what the other writer stored; the retry screens the batch against it.
                self.positions.forget(&partitions);
                self.load_positions(&partitions)
                    .await
                    .map_err(Failure::Batch)?;
                return Err(Failure::Batch(ConnectorError::transient(format!(
                    "another worker wrote partitions {} since this one read them; their positions were read again and the batch is screened anew",
                    partitions
                        .iter()
                        .map(|(t, p)| format!("{t}/{p}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ))));
            }
            Err(Transaction::Failed(e)) => Err(e),
            Ok(rejected) => Ok(rejected),
        };
        let mut rejected = result.map_err(|e| self.classify(e))?;
        rejected.extend(refused_before);
        Ok(rejected)
    }

    /// Reads back the positions committed for `partitions` (by earlier runs, or by the worker
    /// that read them until now).
    async fn load_positions(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<(), ConnectorError> {
        let group = self.group.clone();
        // topic, partition, source, input position, record index
        type PositionRow = (Vec<u8>, i32, Vec<u8>, u64, u32);
        let rows: Vec<PositionRow> = {
            let result = self
                .conn()
                .await?
                .exec(
                    "SELECT topic, kafka_partition, source, input_position, record_index \
                     FROM sluice_source_positions WHERE consumer_group = ?",
                    (group,),
                )
                .await;
            result.map_err(|e| self.error(e))?
        };
        for (topic, partition, source, input, index) in rows {
            let topic = String::from_utf8_lossy(&topic);
            if !partitions
                .iter()
                .any(|(t, p)| **t == *topic && *p == partition)
            {
                continue;
            }
            let source = String::from_utf8_lossy(&source).into_owned();
            self.positions.insert(
                (topic.as_ref().into(), partition, source),
                Position { input, index },
            );
        }
        Ok(())
    }

    async fn ensure_offsets_table(&mut self) -> Result<(), ConnectorError> {
        self.execute(
            "CREATE TABLE IF NOT EXISTS sluice_offsets (consumer_group VARCHAR(255) NOT NULL, \
             topic VARCHAR(255) NOT NULL, kafka_partition INT NOT NULL, next_offset BIGINT NOT NULL, \
             PRIMARY KEY (consumer_group, topic, kafka_partition)) ENGINE=InnoDB"
                .into(),
        )
        .await
    }
}

#[async_trait]
impl Sink for MysqlSink {
    async fn put(&mut self, batch: &[Arc<Record>]) -> Result<PutOutcome, ConnectorError> {
        self.write_batch(batch, None).await
    }

    fn preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        Some(self.planner.clone())
    }

    async fn put_prepared(
        &mut self,
        batch: &[Arc<Record>],
        prepared: Prepared,
    ) -> Result<PutOutcome, ConnectorError> {
        let planned = prepared
            .downcast::<PlannedAhead>()
            .ok()
            .and_then(|ahead| ahead.0);
        self.write_batch(batch, planned).await
    }

    /// Commits the batch `put` left open (exactly once); otherwise `put` committed it already.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if !std::mem::take(&mut self.open_transaction) {
            return Ok(());
        }
        let result = self.conn().await?.query_drop("COMMIT").await;
        if result.is_ok() {
            self.positions
                .commit(std::mem::take(&mut self.uncommitted_positions));
        }
        result.map_err(|e| {
            let e = self.error(e);
            // The transaction is gone with the connection: only a restart, resuming at the
            // offsets last committed with the rows, writes this batch again.
            ConnectorError::external(format!(
                "the batch's transaction could not be committed: {}",
                e.message
            ))
        })
    }

    /// Exactly once: the positions and (on Kafka) the offsets stored with the rows of
    /// `partitions`, as the store has them now — another worker may have written them since
    /// this one last read them.
    async fn open(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<PartitionOffset>, ConnectorError> {
        if !self.config.exactly_once {
            return Ok(Vec::new());
        }
        self.positions.forget(partitions);
        self.load_positions(partitions).await?;
        if !self.store_offsets {
            return Ok(Vec::new());
        }
        let group = self.group.clone();
        let rows: Vec<(String, i32, i64)> = {
            let result = self
                .conn()
                .await?
                .exec("SELECT topic, kafka_partition, next_offset FROM sluice_offsets WHERE consumer_group = ?", (group,))
                .await;
            result.map_err(|e| self.error(e))?
        };
        Ok(rows
            .into_iter()
            .filter(|(topic, partition, _)| {
                partitions
                    .iter()
                    .any(|(t, p)| **t == **topic && p == partition)
            })
            .map(|(topic, partition, offset)| PartitionOffset {
                topic,
                partition,
                offset,
            })
            .collect())
    }

    async fn close(&mut self, partitions: &[TopicPartition]) -> Result<(), ConnectorError> {
        self.positions.forget(partitions);
        Ok(())
    }

    /// Exactly once: deletes the group's positions and offsets, in one transaction.
    async fn reset_offsets(&mut self) -> Result<(), ConnectorError> {
        if !self.config.exactly_once {
            return Ok(());
        }
        let group = self.group.clone();
        let store_offsets = self.store_offsets;
        let conn = self.conn().await?;
        let result = async {
            let mut tx = conn
                .start_transaction(mysql_async::TxOpts::default())
                .await?;
            tx.exec_drop(
                "DELETE FROM sluice_source_positions WHERE consumer_group = ?",
                (&group,),
            )
            .await?;
            if store_offsets {
                tx.exec_drop(
                    "DELETE FROM sluice_offsets WHERE consumer_group = ?",
                    (&group,),
                )
                .await?;
            }
            tx.commit().await
        }
        .await;
        result.map_err(|e: mysql_async::Error| self.error(e))?;
        self.positions = Default::default();
        Ok(())
    }
}

impl MysqlSink {
    /// Writes `batch`, with its statements if they were planned ahead.
    async fn write_batch(
        &mut self,
        batch: &[Arc<Record>],
        planned_ahead: Option<PlannedBatch>,
    ) -> Result<PutOutcome, ConnectorError> {
        let mut outcome = PutOutcome::default();
        // Exactly once: records an earlier run wrote are skipped.
        let fresh = if self.config.exactly_once {
            let screened = self.positions.screen(batch);
            outcome.skipped = screened.duplicates;
            self.uncommitted_positions = screened.advanced;
            Some(screened.fresh)
        } else {
            None
        };
        // Planned ahead, every record was taken as fresh.
        let planned = match planned_ahead.filter(|_| outcome.skipped == 0) {
            Some(planned) => planned,
            None => self.plan(batch, fresh.as_deref(), false).await?,
        };
        match self.write(planned).await {
            Ok(rejected) => outcome.rejected.extend(rejected),
            Err(Failure::Row(reason)) => {
                tracing::debug!(%reason, "a row was refused; writing the batch row by row to find it");
                let planned = self.plan(batch, fresh.as_deref(), true).await?;
                match self.write(planned).await {
                    Ok(rejected) => outcome.rejected.extend(rejected),
                    Err(Failure::Row(reason)) => return Err(ConnectorError::external(reason)),
                    Err(Failure::Batch(e)) => return Err(e),
                }
            }
            Err(Failure::Batch(e)) => return Err(e),
        }
        outcome.rejected.sort_by_key(|(i, _)| *i);
        Ok(outcome)
    }

    /// Plans `batch`, creating or evolving its tables first where needed.
    async fn plan(
        &mut self,
        batch: &[Arc<Record>],
        fresh: Option<&[bool]>,
        one_by_one: bool,
    ) -> Result<PlannedBatch, ConnectorError> {
        let planner = self.planner.clone();
        let read = planner.ops(batch, fresh);
        let mut by_table: IndexMap<&str, Vec<&Row>> = IndexMap::new();
        for (table, op) in &read.ops {
            if let Op::Write { row, .. } = op {
                by_table.entry(table.as_str()).or_default().push(row);
            }
        }
        for (table, rows) in by_table {
            self.ensure_table(table, &rows).await?;
        }
        planner.plan(read, one_by_one).ok_or_else(|| {
            ConnectorError::internal("a table's columns are unknown after creating them")
        })
    }
}
