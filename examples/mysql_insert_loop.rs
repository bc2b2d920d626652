//! The Kafka → MySQL sink's writing, by hand on mysql_async and without Kafka: the like-for-like
//! baseline of `bench/sinks.sh`. It reads the Yahoo-layout CSV, types every field as the sink
//! binds it (`Date` text, prices doubles, `Volume` an integer, `null` → NULL), and inserts
//! `ROWS_PER_TRANSACTION` rows per transaction with one multi-row `INSERT` (the sink's batch of
//! `max_records: 5000` and its statements), into a table of the layout the sink creates.
//!
//!   cargo run --release --example mysql_insert_loop -- CSV PORT TABLE [ROWS_PER_TRANSACTION]
//!
//! Prints `rows seconds`; the seconds cover reading the first row to the last commit (connected
//! before the clock starts, as Sluice's active time leaves out start-up).

use mysql_async::prelude::Queryable;
use mysql_async::Value as Sql;
use std::time::Instant;

const COLUMNS: [&str; 7] = [
    "Date",
    "Open",
    "High",
    "Low",
    "Close",
    "Adj Close",
    "Volume",
];

fn typed(i: usize, text: &str) -> Result<Sql, String> {
    if text.is_empty() || text == "null" {
        return Ok(Sql::NULL);
    }
    match i {
        0 => Ok(Sql::Bytes(text.as_bytes().to_vec())),
        6 => text
            .parse::<i64>()
            .map(Sql::Int)
            .map_err(|e| format!("`{text}`: {e}")),
        _ => text
            .parse::<f64>()
            .map(Sql::Double)
            .map_err(|e| format!("`{text}`: {e}")),
    }
}

async fn insert(
    conn: &mut mysql_async::Conn,
    sql_head: &str,
    rows: &mut Vec<Sql>,
) -> Result<(), String> {
    let count = rows.len() / COLUMNS.len();
    let placeholders = format!("({})", vec!["?"; COLUMNS.len()].join(","));
    let sql = format!("{sql_head}{}", vec![placeholders.as_str(); count].join(","));
    conn.query_drop("START TRANSACTION")
        .await
        .map_err(|e| e.to_string())?;
    conn.exec_drop(sql, std::mem::take(rows))
        .await
        .map_err(|e| e.to_string())?;
    conn.query_drop("COMMIT").await.map_err(|e| e.to_string())
}

async fn run(args: &[String]) -> Result<(u64, f64), String> {
    let [csv_path, port, table, rest @ ..] = args else {
        return Err("usage: mysql_insert_loop CSV PORT TABLE [ROWS_PER_TRANSACTION]".into());
    };
    let per_transaction: usize = match rest.first() {
        Some(n) => n
            .parse()
            .map_err(|e| format!("ROWS_PER_TRANSACTION: {e}"))?,
        None => 5000,
    };
    let url = format!("mysql://sluice:sluice@127.0.0.1:{port}/sluice");
    let opts = mysql_async::Opts::from_url(&url).map_err(|e| e.to_string())?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    let quoted: Vec<String> = COLUMNS.iter().map(|c| format!("`{c}`")).collect();
    conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`"))
        .await
        .map_err(|e| e.to_string())?;
    // The sink's auto_create with `columns: { Date: DATE, Volume: BIGINT }`, the rest DOUBLE.
    conn.query_drop(format!(
        "CREATE TABLE `{table}` (`Date` DATE NULL, `Open` DOUBLE NULL, `High` DOUBLE NULL, `Low` DOUBLE NULL, \
         `Close` DOUBLE NULL, `Adj Close` DOUBLE NULL, `Volume` BIGINT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    ))
    .await
    .map_err(|e| e.to_string())?;
    let sql_head = format!("INSERT INTO `{table}` ({}) VALUES ", quoted.join(","));

    let started = Instant::now();
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| e.to_string())?;
    let mut rows: Vec<Sql> = Vec::with_capacity(per_transaction * COLUMNS.len());
    let mut done = 0u64;
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        if record.len() != COLUMNS.len() {
            return Err(format!("a row has {} fields", record.len()));
        }
        for (i, field) in record.iter().enumerate() {
            rows.push(typed(i, field)?);
        }
        done += 1;
        if rows.len() == per_transaction * COLUMNS.len() {
            insert(&mut conn, &sql_head, &mut rows).await?;
        }
    }
    if !rows.is_empty() {
        insert(&mut conn, &sql_head, &mut rows).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    conn.disconnect().await.map_err(|e| e.to_string())?;
    Ok((done, elapsed))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok((rows, seconds)) => println!("{rows} {seconds}"),
        Err(e) => {
            eprintln!("mysql_insert_loop: {e}");
            std::process::exit(1);
        }
    }
}
