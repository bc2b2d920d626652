//! Planning a batch into statements, on the records alone (no store): what `PrepareBatch` runs ahead.

use super::*;

/// Turns a batch's records into the statements of its transaction. Needs nothing from the
/// server but what it knows of the tables, so the runtime runs it on the next batch while the
/// current one is being written.
pub(super) struct Planner {
    pub(super) config: Arc<MysqlSinkConfig>,
    /// What the server accepts, read once connected.
    pub(super) server: Server,
    /// What the sink knows of the tables: it adds to them before writing rows with new columns.
    pub(super) tables: Arc<RwLock<Tables>>,
}

/// A batch's operations as read from its records.
pub(super) struct BatchOps<'a> {
    /// (table, operation), in batch order.
    pub(super) ops: Vec<(String, Op<'a>)>,
    /// (topic, partition) → next offset, of every record of the batch.
    pub(super) offsets: BTreeMap<(Arc<str>, i32), i64>,
    /// Records that make no row: batch index, reason.
    pub(super) rejected: Vec<(usize, String)>,
}

/// A batch's statements, and what else its transaction needs.
pub(super) struct PlannedBatch {
    pub(super) plan: Plan,
    /// Records refused before the server sees them: batch index, reason.
    pub(super) rejected: Vec<(usize, String)>,
    pub(super) offsets: BTreeMap<(Arc<str>, i32), i64>,
}

impl Planner {
    pub(super) fn tables(&self) -> RwLockReadGuard<'_, Tables> {
        // A panic elsewhere while holding the lock leaves the map as it was: still usable.
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The operations of `batch`; with `fresh` (exactly once) only of the records it marks.
    pub(super) fn ops<'a>(&self, batch: &'a [Arc<Record>], fresh: Option<&[bool]>) -> BatchOps<'a> {
        let mut read = BatchOps {
            ops: Vec::with_capacity(batch.len()),
            offsets: BTreeMap::new(),
            rejected: Vec::new(),
        };
        // Records of a batch mostly share a topic: its table name is worked out once.
        let mut last_table: Option<(&Arc<str>, String)> = None;
        for (i, record) in batch.iter().enumerate() {
            let next = read
                .offsets
                .entry((record.topic.clone(), record.partition))
                .or_default();
            *next = (*next).max(record.offset + 1);
            if fresh.is_some_and(|fresh| !fresh[i]) {
                continue;
            }
            let table = match &last_table {
                Some((topic, table)) if **topic == record.topic => table.clone(),
                _ => {
                    let table = table_name(&self.config.table, &record.topic);
                    last_table = Some((&record.topic, table.clone()));
                    table
                }
            };
            if record.is_tombstone() {
                if self.config.delete_on_tombstone {
                    if let Some(key) = record.key_str() {
                        read.ops.push((
                            table,
                            Op::Delete {
                                key: key.to_string(),
                            },
                        ));
                    }
                }
                continue;
            }
            match row(&self.config, record) {
                Ok(row) => read.ops.push((table, Op::Write { index: i, row })),
                Err(reason) => read.rejected.push((i, reason)),
            }
        }
        read
    }

    /// The statements of `read`; `None` when a table or column they write is not known yet.
    pub(super) fn plan(&self, read: BatchOps<'_>, one_by_one: bool) -> Option<PlannedBatch> {
        let tables = self.tables();
        let writes = read.ops.iter().filter_map(|(table, op)| match op {
            Op::Write { row, .. } => Some((table.as_str(), row)),
            Op::Delete { .. } => None,
        });
        if !all_columns_known(&tables, writes) {
            return None;
        }
        let (plan, oversized) = plan(&self.config, &tables, self.server, &read.ops, one_by_one);
        let mut rejected = read.rejected;
        rejected.extend(oversized);
        Some(PlannedBatch {
            plan,
            rejected,
            offsets: read.offsets,
        })
    }
}

/// Whether every (table, row) has its table and columns in `tables`.
pub(super) fn all_columns_known<'r, 'v: 'r>(
    tables: &Tables,
    rows: impl Iterator<Item = (&'r str, &'r Row<'v>)>,
) -> bool {
    // Consecutive rows mostly have the same table and columns: those are checked once.
    let mut last: Option<(&str, &Row<'_>)> = None;
    rows.into_iter().all(|(table, row)| {
        let same = last.is_some_and(|(t, last)| t == table && last.keys().eq(row.keys()));
        last = Some((table, row));
        same || tables
            .get(table)
            .is_some_and(|known| row.keys().all(|c| known.contains_key(c)))
    })
}

/// A batch planned ahead, taking every record as fresh (see [`MysqlSink::put_prepared`]).
pub(super) struct PlannedAhead(pub(super) Option<PlannedBatch>);

impl PrepareBatch for Planner {
    fn prepare(&self, batch: &[Arc<Record>]) -> Prepared {
        Box::new(PlannedAhead(self.plan(self.ops(batch, None), false)))
    }
}
