//! Statements for a batch: the batch's operations grouped into multi-row statements without
//! changing what each key ends as, and split so that no packet exceeds the server's limit.
//!
//! - Per key, operations run in batch order: an operation on a key already touched earlier in
//!   the batch goes into a later *round* of statements (upsert K=v1, delete K, upsert K=v2 runs
//!   as three rounds and ends with K=v2).
//! - Rows are grouped by their column set: a row without a field leaves that column as it is in
//!   `upsert` and `update` (a union of the batch's columns wrote NULL over it).
//! - A row larger than `max_allowed_packet` is refused alone, naming its size and the limit.

use super::config::{InsertMode, MysqlSinkConfig};
use super::schema::{key_column, key_columns, quote, to_sql, Row};
use crate::rounds::Rounds;
use indexmap::IndexMap;
use mysql_async::Value as Sql;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;

impl<'a> FromIterator<(Cow<'a, str>, Cow<'a, Value>)> for Row<'a> {
    /// Later columns of a name already present are left out.
    fn from_iter<I: IntoIterator<Item = (Cow<'a, str>, Cow<'a, Value>)>>(iter: I) -> Self {
        let mut row = Row::default();
        for (column, value) in iter {
            row.push_unless_among(usize::MAX, column, value);
        }
        row
    }
}

/// What a batch does to a table, in batch order.
pub(super) enum Op<'a> {
    /// Writes the row of the batch's record `index`.
    Write { index: usize, row: Row<'a> },
    /// Deletes the row whose key column holds `key` (a tombstone).
    Delete { key: String },
}

/// One step of a batch's transaction.
#[derive(Debug)]
pub(super) enum Step {
    /// A statement: the batch index of the row it writes alone (if so), SQL, parameters.
    Execute(Option<usize>, String, Vec<Sql>),
    /// `LOAD DATA LOCAL INFILE` SQL and the rows it reads, as tab-separated text.
    Load(String, Vec<u8>),
}

/// The steps of one transaction.
pub(super) type Plan = Vec<Step>;

/// Most `?` in one statement.
const MAX_PLACEHOLDERS: usize = 65_535;
/// Keys per `DELETE … IN (…)`.
const MAX_DELETE_KEYS: usize = 1_000;
/// Room left in a packet for the command header, the NULL bitmap and parameter types.
const PACKET_OVERHEAD: usize = 1_024;

/// What the connected server accepts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Server {
    /// MariaDB rather than MySQL.
    pub mariadb: bool,
    /// `INSERT … AS new ON DUPLICATE KEY UPDATE c = new.c` (MySQL 8.0.19 and later), instead of
    /// `VALUES(c)`, which MySQL deprecates since 8.0.20 (MariaDB has only `VALUES()`).
    pub row_alias: bool,
    /// The server's `max_allowed_packet`, in bytes.
    pub max_packet: usize,
}

impl Server {
    /// From `SELECT VERSION()` and `@@max_allowed_packet`.
    pub fn new(version: &str, max_packet: u64) -> Self {
        let numbers: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        let at_least_8_0_19 = numbers.as_slice() >= [8, 0, 19].as_slice();
        let mariadb = version.contains("MariaDB");
        Server {
            mariadb,
            row_alias: !mariadb && at_least_8_0_19,
            max_packet: usize::try_from(max_packet).unwrap_or(usize::MAX),
        }
    }

    /// `column = <the value being inserted>` for `ON DUPLICATE KEY UPDATE`.
    pub fn inserted(&self, column: &str) -> String {
        if self.row_alias {
            format!("{ALIAS}.{column}")
        } else {
            format!("VALUES({column})")
        }
    }

    /// What follows `VALUES (…)` before `ON DUPLICATE KEY UPDATE`.
    pub fn alias_clause(&self) -> &'static str {
        if self.row_alias {
            " AS sluice_new"
        } else {
            ""
        }
    }
}

const ALIAS: &str = "sluice_new";

/// Ops written by one kind of statement: (round, table, columns — `None` for deletes).
type GroupKey<'a> = (usize, &'a str, Option<Vec<&'a str>>);

/// The statements writing `ops` (each naming its table), and the rows refused for their size.
/// With `one_by_one` every row is a statement of its own, tagged with its batch index.
pub(super) fn plan(
    config: &MysqlSinkConfig,
    types: &HashMap<String, IndexMap<String, String>>,
    server: Server,
    ops: &[(String, Op<'_>)],
    one_by_one: bool,
) -> (Plan, Vec<(usize, String)>) {
    let keys = key_columns(config);
    let mut groups: IndexMap<GroupKey, Vec<&Op<'_>>> = IndexMap::new();
    let mut rounds = Rounds::default();
    // The group of the previous op: consecutive rows mostly share table, round and columns.
    let mut last: Option<usize> = None;
    for (table, op) in ops {
        let round = match op {
            Op::Write { row, .. } if !keys.is_empty() => rounds.of((
                table,
                KeyText(keys.iter().map(|k| row.get(k.as_str())).collect()),
            )),
            Op::Write { .. } => 0,
            Op::Delete { key } => {
                rounds.of((table, KeyText(vec![Some(&Value::String(key.clone()))])))
            }
        };
        if let Some(((r, t, columns), list)) = last.and_then(|i| groups.get_index_mut(i)) {
            let same_columns = match (columns, op) {
                (Some(columns), Op::Write { row, .. }) => {
                    columns.len() == row.len()
                        && columns.iter().zip(row.keys()).all(|(a, b)| *a == b)
                }
                (None, Op::Delete { .. }) => true,
                _ => false,
            };
            if *r == round && *t == table.as_str() && same_columns {
                list.push(op);
                continue;
            }
        }
        let columns = match op {
            Op::Write { row, .. } => Some(row.keys().collect()),
            Op::Delete { .. } => None,
        };
        let entry = groups.entry((round, table.as_str(), columns));
        last = Some(entry.index());
        entry.or_default().push(op);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|((round, _, _), _)| *round); // stable: first appearance within a round

    let limit = server.max_packet.saturating_sub(PACKET_OVERHEAD).max(1);
    let mut statements = Plan::new();
    let mut oversized = Vec::new();
    for ((_, table, columns), ops) in groups {
        let Some(columns) = columns else {
            let column = quote(&key_column(config));
            for chunk in ops.chunks(MAX_DELETE_KEYS) {
                let params: Vec<Sql> = chunk
                    .iter()
                    .filter_map(|op| match op {
                        Op::Delete { key } => Some(Sql::Bytes(key.clone().into_bytes())),
                        Op::Write { .. } => None,
                    })
                    .collect();
                let sql = format!(
                    "DELETE FROM {} WHERE {column} IN ({})",
                    quote(table),
                    vec!["?"; params.len()].join(",")
                );
                statements.push(Step::Execute(None, sql, params));
            }
            continue;
        };
        let table_types = types.get(table);
        // Update: key columns go last, into the WHERE clause.
        let ordered: Vec<&str> = if config.insert_mode == InsertMode::Update {
            let (mut sets, wheres): (Vec<&str>, Vec<&str>) =
                columns.iter().partition(|c| !keys.iter().any(|k| k == *c));
            if sets.is_empty() {
                continue; // only key columns: nothing to update
            }
            sets.extend(wheres);
            sets
        } else {
            columns.clone()
        };
        // Every row of the group has `columns` in that order: each of `ordered` is found at
        // its position there, its SQL type looked up once.
        let positions: Vec<(usize, &str)> = ordered
            .iter()
            .map(|c| {
                let position = columns.iter().position(|k| k == c).unwrap_or(usize::MAX);
                let sql_type = table_types
                    .and_then(|t| t.get(*c))
                    .map_or("", String::as_str);
                (position, sql_type)
            })
            .collect();
        // Appends: one LOAD DATA per table and column set, streamed from memory, its text
        // written straight from the records' values.
        if config.load_data && !one_by_one && config.insert_mode == InsertMode::Insert {
            let mut data = Vec::new();
            for op in &ops {
                let Op::Write { index, row } = op else {
                    continue;
                };
                let start = data.len();
                write_load_line(row, &positions, &mut data);
                let bytes = data.len() - start;
                if bytes > limit {
                    data.truncate(start);
                    oversized.push((*index, oversized_reason(bytes, server)));
                }
            }
            if !data.is_empty() {
                statements.push(Step::Load(load_statement(table, &ordered), data));
            }
            continue;
        }
        // The rows' parameters in `ordered` order, with their size; rows too large for a
        // packet are refused here.
        let rows = ops.iter().filter_map(|op| {
            let Op::Write { index, row } = op else {
                return None;
            };
            let params: Vec<Sql> = positions
                .iter()
                .map(|(position, sql_type)| to_sql(row.value_at(*position), sql_type))
                .collect();
            let bytes = params_bytes(&params);
            if bytes > limit {
                oversized.push((*index, oversized_reason(bytes, server)));
                return None;
            }
            Some((*index, params, bytes))
        });
        let per_statement = if one_by_one || config.insert_mode == InsertMode::Update {
            1
        } else {
            (MAX_PLACEHOLDERS / ordered.len().max(1)).max(1)
        };
        let mut chunk: Vec<(usize, Vec<Sql>)> = Vec::new();
        let mut chunk_bytes = 0;
        for (index, params, bytes) in rows {
            if !chunk.is_empty() && (chunk.len() == per_statement || chunk_bytes + bytes > limit) {
                statements.push(statement(
                    config,
                    server,
                    table,
                    &ordered,
                    std::mem::take(&mut chunk),
                    one_by_one,
                ));
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunk.push((index, params));
        }
        if !chunk.is_empty() {
            statements.push(statement(
                config, server, table, &ordered, chunk, one_by_one,
            ));
        }
    }
    (statements, oversized)
}

/// A key's values, hashed as their JSON text (JSON values are not `Hash`): a delete of key
/// `K` and a write of the row whose key column holds `"K"` are the same key.
struct KeyText<'v>(Vec<Option<&'v Value>>);

impl std::hash::Hash for KeyText<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        struct Feed<'h, H>(&'h mut H);
        impl<H: std::hash::Hasher> std::fmt::Write for Feed<'_, H> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        for value in &self.0 {
            if let Some(v) = value {
                let _ = std::fmt::Write::write_fmt(&mut Feed(state), format_args!("{v}"));
            }
            state.write_u8(0x1f);
        }
    }
}

fn oversized_reason(bytes: usize, server: Server) -> String {
    format!(
        "row is {bytes} bytes, over the server's max_allowed_packet ({} bytes)",
        server.max_packet
    )
}

/// `LOAD DATA LOCAL INFILE` into `columns` of `table`, reading what [`write_load_line`] writes.
fn load_statement(table: &str, columns: &[&str]) -> String {
    format!(
        "LOAD DATA LOCAL INFILE 'sluice-batch' INTO TABLE {} CHARACTER SET utf8mb4 \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        quote(table),
        columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// One row as a line of `LOAD DATA` text: the values at `positions` (each with its column's
/// SQL type), separated by tabs, `\N` for NULL, and backslash, tab, newline, carriage return
/// and NUL escaped. Strings and numbers are written from the JSON value; other values as
/// [`to_sql`] binds them.
fn write_load_line(row: &Row<'_>, positions: &[(usize, &str)], out: &mut Vec<u8>) {
    for (i, (position, sql_type)) in positions.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let value = row.value_at(*position);
        let plain = *sql_type != "json"
            && !sql_type.starts_with("datetime")
            && !sql_type.starts_with("timestamp");
        match value {
            Value::String(text) if plain => write_load_text(text.as_bytes(), out),
            Value::Number(n) if plain => {
                if let Some(v) = n.as_i64() {
                    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
                } else if let Some(v) = n.as_u64() {
                    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
                } else {
                    write_load_param(&to_sql(value, sql_type), out);
                }
            }
            _ => write_load_param(&to_sql(value, sql_type), out),
        }
    }
    out.push(b'\n');
}

/// One bound value as a `LOAD DATA` field.
fn write_load_param(param: &Sql, out: &mut Vec<u8>) {
    match param {
        Sql::NULL => out.extend_from_slice(b"\\N"),
        Sql::Int(v) => out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
        Sql::UInt(v) => out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
        Sql::Double(v) if v.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*v).as_bytes())
        }
        Sql::Bytes(bytes) => write_load_text(bytes, out),
        other => write_load_text(other.as_sql(true).trim_matches('\'').as_bytes(), out),
    }
}

/// Text as a `LOAD DATA` field, escaped.
fn write_load_text(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            b => out.push(b),
        }
    }
}

/// What `params` take in an execute packet: each value with its length prefix and type.
fn params_bytes(params: &[Sql]) -> usize {
    params
        .iter()
        .map(|p| match p {
            Sql::Bytes(b) => b.len() + 9 + 2,
            _ => 8 + 2,
        })
        .sum()
}

/// One statement writing `rows` (each its batch index and parameters in `columns` order).
fn statement(
    config: &MysqlSinkConfig,
    server: Server,
    table: &str,
    columns: &[&str],
    rows: Vec<(usize, Vec<Sql>)>,
    one_by_one: bool,
) -> Step {
    let index = one_by_one.then(|| rows[0].0);
    let keys = key_columns(config);
    let is_key = |c: &str| keys.iter().any(|k| k == c);
    if config.insert_mode == InsertMode::Update {
        let (sets, wheres): (Vec<&str>, Vec<&str>) = columns.iter().partition(|c| !is_key(c));
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            quote(table),
            sets.iter()
                .map(|c| format!("{} = ?", quote(c)))
                .collect::<Vec<_>>()
                .join(", "),
            wheres
                .iter()
                .map(|c| format!("{} = ?", quote(c)))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let params = rows.into_iter().flat_map(|(_, p)| p).collect();
        return Step::Execute(index, sql, params);
    }
    let placeholders = format!("({})", vec!["?"; columns.len()].join(","));
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        quote(table),
        columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(","),
        vec![placeholders.as_str(); rows.len()].join(",")
    );
    if config.insert_mode == InsertMode::Upsert {
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !is_key(c))
            .map(|c| format!("{} = {}", quote(c), server.inserted(&quote(c))))
            .collect();
        let first_key = quote(keys.first().map(String::as_str).unwrap_or_default());
        sql.push_str(server.alias_clause());
        sql.push_str(" ON DUPLICATE KEY UPDATE ");
        sql.push_str(&if updates.is_empty() {
            format!("{first_key} = {first_key}")
        } else {
            updates.join(", ")
        });
    }
    let params = rows.into_iter().flat_map(|(_, p)| p).collect();
    Step::Execute(index, sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(yaml: &str) -> MysqlSinkConfig {
        serde_yaml::from_str(&format!("url: mysql://u@h/db\n{yaml}")).unwrap()
    }

    fn row(value: Value) -> Row<'static> {
        let Value::Object(map) = value else { panic!() };
        map.into_iter()
            .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))
            .collect()
    }

    const MARIADB: Server = Server {
        mariadb: true,
        row_alias: false,
        max_packet: 16 << 20,
    };

    fn params(step: &Step) -> &[Sql] {
        match step {
            Step::Execute(_, _, params) => params,
            Step::Load(..) => &[],
        }
    }

    fn sqls(plan: &Plan) -> Vec<String> {
        plan.iter()
            .map(|step| match step {
                Step::Execute(_, sql, _) | Step::Load(sql, _) => sql.clone(),
            })
            .collect()
    }

    #[test]
    fn a_key_touched_again_in_the_batch_goes_to_a_later_round() {
        let config = config("insert_mode: upsert\nprimary_key: { mode: record_key, fields: [k] }\ndelete_on_tombstone: true");
        let ops = vec![
            (
                "t".to_string(),
                Op::Write {
                    index: 0,
                    row: row(json!({"k": "K", "v": 1})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 1,
                    row: row(json!({"k": "J", "v": 1})),
                },
            ),
            ("t".to_string(), Op::Delete { key: "K".into() }),
            (
                "t".to_string(),
                Op::Write {
                    index: 3,
                    row: row(json!({"k": "K", "v": 2})),
                },
            ),
        ];
        let (plan, oversized) = plan(&config, &HashMap::new(), MARIADB, &ops, false);
        assert!(oversized.is_empty());
        assert_eq!(
            sqls(&plan),
            [
                "INSERT INTO `t` (`k`,`v`) VALUES (?,?),(?,?) ON DUPLICATE KEY UPDATE `v` = VALUES(`v`)",
                "DELETE FROM `t` WHERE `k` IN (?)",
                "INSERT INTO `t` (`k`,`v`) VALUES (?,?) ON DUPLICATE KEY UPDATE `v` = VALUES(`v`)",
            ]
        );
        assert_eq!(params(&plan[2]), [Sql::Bytes(b"K".to_vec()), Sql::Int(2)]);
    }

    #[test]
    fn rows_with_other_columns_get_their_own_statement_and_leave_the_rest_alone() {
        let config =
            config("insert_mode: upsert\nprimary_key: { mode: record_value, fields: [id] }");
        let ops = vec![
            (
                "t".to_string(),
                Op::Write {
                    index: 0,
                    row: row(json!({"id": 1, "a": 1, "b": 1})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 1,
                    row: row(json!({"id": 2, "a": 2})),
                },
            ),
        ];
        let (plan, _) = plan(&config, &HashMap::new(), MARIADB, &ops, false);
        assert_eq!(
            sqls(&plan),
            [
                "INSERT INTO `t` (`id`,`a`,`b`) VALUES (?,?,?) ON DUPLICATE KEY UPDATE `a` = VALUES(`a`), `b` = VALUES(`b`)",
                "INSERT INTO `t` (`id`,`a`) VALUES (?,?) ON DUPLICATE KEY UPDATE `a` = VALUES(`a`)",
            ]
        );
    }

    #[test]
    fn updates_set_only_the_fields_a_record_has_and_skip_key_only_records() {
        let config =
            config("insert_mode: update\nprimary_key: { mode: record_value, fields: [id] }");
        let ops = vec![
            (
                "t".to_string(),
                Op::Write {
                    index: 0,
                    row: row(json!({"id": 1, "a": 5})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 1,
                    row: row(json!({"id": 2})),
                },
            ),
        ];
        let (plan, _) = plan(&config, &HashMap::new(), MARIADB, &ops, false);
        assert_eq!(sqls(&plan), ["UPDATE `t` SET `a` = ? WHERE `id` = ?"]);
        assert_eq!(params(&plan[0]), [Sql::Int(5), Sql::Int(1)]);
    }

    #[test]
    fn mysql_8_0_19_and_later_get_the_row_alias_form() {
        let mysql = Server::new("8.0.36", 64 << 20);
        assert!(mysql.row_alias);
        assert!(!Server::new("8.0.18", 1).row_alias);
        assert!(!Server::new("10.11.6-MariaDB-0+deb12u1", 1).row_alias);
        assert!(!Server::new("5.7.44-log", 1).row_alias);
        let config =
            config("insert_mode: upsert\nprimary_key: { mode: record_value, fields: [id] }");
        let ops = vec![(
            "t".to_string(),
            Op::Write {
                index: 0,
                row: row(json!({"id": 1, "a": 1})),
            },
        )];
        let (plan, _) = plan(&config, &HashMap::new(), mysql, &ops, false);
        assert_eq!(
            sqls(&plan),
            ["INSERT INTO `t` (`id`,`a`) VALUES (?,?) AS sluice_new ON DUPLICATE KEY UPDATE `a` = sluice_new.`a`"]
        );
    }

    #[test]
    fn a_row_over_the_packet_limit_is_refused_alone_and_statements_stay_under_it() {
        let config = config("");
        let small = Server {
            mariadb: true,
            row_alias: false,
            max_packet: 8 * 1024,
        };
        let big = "x".repeat(10_000);
        let medium = "y".repeat(3_000);
        let ops = vec![
            (
                "t".to_string(),
                Op::Write {
                    index: 0,
                    row: row(json!({"s": medium})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 1,
                    row: row(json!({"s": big})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 2,
                    row: row(json!({"s": medium})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 3,
                    row: row(json!({"s": medium})),
                },
            ),
        ];
        let (plan, oversized) = plan(&config, &HashMap::new(), small, &ops, false);
        assert_eq!(oversized.len(), 1);
        assert_eq!(oversized[0].0, 1);
        assert!(
            oversized[0].1.contains("10011 bytes") && oversized[0].1.contains("8192"),
            "{}",
            oversized[0].1
        );
        assert_eq!(plan.len(), 2, "{:?}", sqls(&plan));
        for step in &plan {
            let params = params(step);
            assert!(params_bytes(params) <= 8 * 1024 - PACKET_OVERHEAD);
        }
    }

    #[test]
    fn load_data_lines_escape_what_the_format_reserves() {
        let mut out = Vec::new();
        let values = row(json!({
            "i": -3, "u": u64::MAX, "f": 1.5, "n": null, "s": "a\tb\nc\\d\re\u{0}f\\N",
            "b": true, "big": 1e20, "j": {"k": "v\tw"}, "t": "2021-01-02T03:04:05Z"
        }));
        let positions: Vec<(usize, &str)> = ["", "", "", "", "", "", "", "json", "datetime(6)"]
            .into_iter()
            .enumerate()
            .collect();
        write_load_line(&values, &positions, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "-3\t18446744073709551615\t1.5\t\\N\ta\\tb\\nc\\\\d\\re\\0f\\\\N\t1\t1e20\t\
             {\"k\":\"v\\\\tw\"}\t2021-01-02 03:04:05.000000\n"
        );
        let config = config("load_data: true");
        let ops = vec![
            (
                "t".to_string(),
                Op::Write {
                    index: 0,
                    row: row(json!({"a": 1, "b": "x"})),
                },
            ),
            (
                "t".to_string(),
                Op::Write {
                    index: 1,
                    row: row(json!({"a": 2, "b": null})),
                },
            ),
        ];
        let (loads, oversized) = plan(&config, &HashMap::new(), MARIADB, &ops, false);
        assert!(oversized.is_empty());
        match &loads[..] {
            [Step::Load(sql, data)] => {
                assert!(
                    sql.starts_with("LOAD DATA LOCAL INFILE") && sql.ends_with("(`a`,`b`)"),
                    "{sql}"
                );
                assert_eq!(data, b"1\tx\n2\t\\N\n");
            }
            other => panic!("{other:?}"),
        }
        // Row by row (to find a refused row) it writes statements.
        let (statements, _) = plan(&config, &HashMap::new(), MARIADB, &ops, true);
        assert!(sqls(&statements).iter().all(|s| s.starts_with("INSERT")));
    }
}
