//! A batch's transaction: the positions upsert, the fence against a second writer, and the run with its retries.

use super::*;

/// The statement storing `rows` positions (6 parameters each). A stored position only ever
/// grows: of two writers of a partition (one of them about to be fenced), the one behind must
/// not lower what the other stored. Assignments run left to right, so `record_index` is
/// decided on the old pair first; `input_position` then only grows, which is right in both
/// cases (a higher pair has an input at least as high).
pub(super) fn positions_upsert(server: &super::super::plan::Server, rows: usize) -> String {
    let (input, index) = (
        server.inserted("input_position"),
        server.inserted("record_index"),
    );
    format!(
        "INSERT INTO sluice_source_positions (consumer_group, topic, kafka_partition, source, input_position, record_index) VALUES {}{} \
         ON DUPLICATE KEY UPDATE record_index = IF(({input}, {index}) > (input_position, record_index), {index}, record_index), \
         input_position = GREATEST(input_position, {input})",
        vec!["(?,?,?,?,?,?)"; rows].join(","),
        server.alias_clause(),
    )
}

/// Runs `plan` in one transaction, committed unless `leave_open` (then `COMMIT` is the caller's).
/// Statements for one row (`Some(index)`) that the server refuses for the row's content are
/// reported instead of failing the transaction; any other failure rolls it back.
/// Positions an exactly-once transaction expects the store to hold for its partitions.
pub(super) struct Fence {
    pub(super) group: String,
    pub(super) partitions: Vec<TopicPartition>,
    pub(super) expected: HashMap<PositionKey, Position>,
}

/// Why a transaction did not go through.
pub(super) enum Transaction {
    Failed(mysql_async::Error),
    /// Another writer stored positions of these partitions past those the batch was screened
    /// against; nothing was written.
    Overtaken(Vec<TopicPartition>),
}

impl From<mysql_async::Error> for Transaction {
    fn from(e: mysql_async::Error) -> Self {
        Transaction::Failed(e)
    }
}

impl Fence {
    /// Locks the positions of the partitions for the transaction and checks none moved past
    /// what is expected; the partitions that did, if any.
    pub(super) async fn check(
        &self,
        conn: &mut Conn,
    ) -> Result<Vec<TopicPartition>, mysql_async::Error> {
        let sql = format!(
            "SELECT topic, kafka_partition, source, input_position, record_index FROM sluice_source_positions \
             WHERE consumer_group = ? AND ({}) FOR UPDATE",
            vec!["(topic = ? AND kafka_partition = ?)"; self.partitions.len()].join(" OR ")
        );
        let mut params = vec![mysql_async::Value::from(self.group.as_str())];
        for (topic, partition) in &self.partitions {
            params.push(mysql_async::Value::from(&**topic));
            params.push(mysql_async::Value::from(*partition));
        }
        type PositionRow = (Vec<u8>, i32, Vec<u8>, u64, u32);
        let rows: Vec<PositionRow> = conn.exec(sql, params).await?;
        let mut overtaken = Vec::new();
        for (topic, partition, source, input, index) in rows {
            let topic: Arc<str> = String::from_utf8_lossy(&topic).as_ref().into();
            let key = (
                topic.clone(),
                partition,
                String::from_utf8_lossy(&source).into_owned(),
            );
            let stored = Position { input, index };
            let moved = self.expected.get(&key).is_none_or(|known| stored > *known);
            if moved && !overtaken.contains(&(topic.clone(), partition)) {
                overtaken.push((topic, partition));
            }
        }
        Ok(overtaken)
    }
}

pub(super) async fn run_in_transaction(
    conn: &mut Conn,
    fence: Option<Fence>,
    plan: Plan,
    leave_open: bool,
) -> Result<Vec<(usize, String)>, Transaction> {
    let mut rejected = Vec::new();
    conn.query_drop("START TRANSACTION").await?;
    if let Some(fence) = fence {
        let overtaken = match fence.check(conn).await {
            Ok(overtaken) => overtaken,
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                return Err(e.into());
            }
        };
        if !overtaken.is_empty() {
            conn.query_drop("ROLLBACK").await?;
            return Err(Transaction::Overtaken(overtaken));
        }
    }
    for step in plan {
        let (row_index, sql, params) = match step {
            Step::Execute(row_index, sql, params) => (row_index, sql, params),
            Step::Load(sql, data) => {
                let data = bytes::Bytes::from(data);
                conn.set_infile_handler(async move {
                    let chunks = (0..data.len())
                        .step_by(LOAD_CHUNK)
                        .map(move |at| Ok(data.slice(at..data.len().min(at + LOAD_CHUNK))));
                    Ok(futures::stream::iter(chunks).boxed())
                });
                // With LOCAL the server turns what would be errors (a value that does not fit
                // its column, a duplicate key) into warnings and loads the rest: any warning
                // fails the load, so the batch is written again row by row (or fails).
                let loaded = match conn.query_drop(sql).await {
                    Ok(()) if conn.get_warnings() > 0 => Err(first_warning(conn).await),
                    other => other,
                };
                if let Err(e) = loaded {
                    let _ = conn.query_drop("ROLLBACK").await;
                    return Err(e.into());
                }
                continue;
            }
        };
        match conn.exec_drop(sql, params).await {
            Ok(()) => {}
            // In MySQL a failed statement leaves the transaction open.
            Err(mysql_async::Error::Server(e))
                if row_index.is_some() && ROW_ERRORS.contains(&e.code) =>
            {
                rejected.push((
                    row_index.unwrap_or_default(),
                    format!("{} ({})", e.message, e.code),
                ));
            }
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                return Err(e.into());
            }
        }
    }
    if !leave_open {
        conn.query_drop("COMMIT").await?;
    }
    Ok(rejected)
}

/// The first warning of the last statement, as the error it stands for.
pub(super) async fn first_warning(conn: &mut Conn) -> mysql_async::Error {
    let warning: Result<Option<(String, u16, String)>, _> =
        conn.query_first("SHOW WARNINGS LIMIT 1").await;
    match warning {
        Ok(Some((_level, code, message))) => mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message,
            state: "HY000".into(),
        }),
        Ok(None) => {
            mysql_async::Error::Other("LOAD DATA reported warnings it does not list".into())
        }
        Err(e) => e,
    }
}
