//! End to end into MySQL: the `sluice` binary against a real MariaDB server and a real
//! Kafka-protocol broker (nisshi), both started privately for each test on loopback.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mysql_pipeline(
    dir: &Path,
    csv: &Path,
    kafka: &str,
    db: &MariaDb,
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = sluice();
    cmd.args([
        "run",
        "pipelines/btc-history-to-mysql.yaml",
        "--kafka",
        kafka,
        "--state-dir",
    ])
    .arg(dir.join("state"))
    .env("BTC_CSV", csv)
    .env("BTC_DLQ_OUT", dir.join("dlq.jsonl"))
    .env("MYSQL_URL", db.url())
    .env("MYSQL_PASSWORD", "pw");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The BTC history CSV into table `eo` with `exactly_once`; `top`, `source` and `sink` add
/// lines to the pipeline, to the source and to the sink.
fn eo_pipeline(csv: &Path, db: &MariaDb, top: &str, source: &str, sink: &str) -> String {
    format!(
        "name: eo
{top}topics: {{ bitcoin: {{ partitions: 10 }} }}
sources:
  yahoo_csv:
    type: csv
    path: {csv}
    topic: bitcoin
    key: Date
    columns: {{ Date: date, Open: float, High: float, Low: float, Close: float, \"Adj Close\": float, Volume: int }}
    null_values: [\"null\"]
    all_null_rows: skip
{source}sinks:
  rows:
    type: mysql
    topics: [bitcoin]
    url: {url}
    password: pw
    table: eo
    exactly_once: true
{sink}",
        csv = csv.display(),
        url = db.url()
    )
}

fn count(db: &MariaDb, sql: &str) -> i64 {
    db.sql(sql).parse().unwrap_or(0)
}

/// Sum of column `i` (1-based after Date) over the non-null rows of the CSV.
fn csv_sum(csv: &Path, i: usize) -> f64 {
    csv_rows(csv)
        .iter()
        .filter_map(|r| r.numbers)
        .map(|n| n[i])
        .sum()
}

fn wait_for_rows(db: &MariaDb, table: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = || {
        db.try_sql(&format!("SELECT COUNT(*) FROM {table}"))
            .and_then(|c| c.parse::<i64>().ok())
            .unwrap_or(0)
    };
    while rows() < n {
        assert!(Instant::now() < deadline, "{table} never reached {n} rows");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_btc_history_lands_once_with_equal_sums_and_an_upsert_replay_adds_nothing() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    assert!(run(&mut mysql_pipeline(
        dir.path(),
        &csv,
        &broker.addr(),
        &db,
        &[]
    ))
    .status
    .success());
    assert_eq!(count(&db, "SELECT COUNT(*) FROM bitcoin_kafka"), 2530);
    assert_eq!(
        count(&db, "SELECT COUNT(DISTINCT Date) FROM bitcoin_kafka"),
        2530
    );
    let sums = db.sql("SELECT SUM(Close), SUM(Volume) FROM bitcoin_kafka");
    let sums: Vec<f64> = sums.split('\t').map(|v| v.parse().unwrap()).collect();
    let (close, volume) = (csv_sum(&csv, 3), csv_sum(&csv, 5));
    assert!(
        (sums[0] - close).abs() < 1e-6 * close,
        "SUM(Close) {} vs CSV {close}",
        sums[0]
    );
    assert_eq!(sums[1], volume, "SUM(Volume)");
    assert_eq!(db.sql("SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_NAME='bitcoin_kafka' AND COLUMN_NAME='Date'"), "date");
    assert_eq!(
        count_lines(&dir.path().join("dlq.jsonl")),
        4,
        "the all-null rows are dead-lettered"
    );
    // The same job again from the start (a new pipeline name: new source offsets, new group).
    let replay = [("SLUICE_NAME", "btc-replay")];
    assert!(run(&mut mysql_pipeline(
        dir.path(),
        &csv,
        &broker.addr(),
        &db,
        &replay
    ))
    .status
    .success());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM bitcoin_kafka"),
        2530,
        "an upsert replay added rows"
    );
}

/// `exactly_once: true` in `insert` mode, without a primary key that would hide duplicates:
/// `kill -9` while the sink is midway, then the same command: every row exactly once.
///
/// The source finishes (and stores its offsets) long before the kill: the sink's exactly-once
/// is about the records in the topic. A source killed between a broker ack and its offset
/// store re-sends those rows as new records (at-least-once), which no sink can tell apart.
#[test]
fn exactly_once_survives_kill_9_in_insert_mode_without_a_duplicate() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let pipeline = dir.path().join("eo.yaml");
    std::fs::write(
        &pipeline,
        eo_pipeline(
            &csv,
            &db,
            "",
            "",
            "    batch: { max_records: 5, linger: 10ms }\n",
        ),
    )
    .unwrap();
    let command = || {
        let mut cmd = sluice();
        cmd.arg("run")
            .arg(&pipeline)
            .args(["--kafka", &broker.addr(), "--state-dir"])
            .arg(dir.path());
        cmd
    };
    let mut child = command().stderr(Stdio::null()).spawn().unwrap();
    wait_for_rows(&db, "eo", 500);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = count(&db, "SELECT COUNT(*) FROM eo");
    assert!(before < 2530, "the run was not interrupted");
    assert!(run(&mut command()).status.success());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM eo"),
        2530,
        "killed at {before} rows"
    );
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT Date) FROM eo"), 2530);
}

/// MariaDB stopped for 30 s mid-run, then started: the sink waits and retries with memory
/// bounded, then completes with nothing lost.
#[test]
fn a_30_second_database_outage_is_waited_out() {
    let (broker, mut db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let slow = [
        ("SLUICE_SOURCES__YAHOO_CSV__RATE", "500"),
        ("SLUICE_SINKS__BITCOIN_TABLE__BATCH__MAX_RECORDS", "100"),
    ];
    let mut child = mysql_pipeline(dir.path(), &csv, &broker.addr(), &db, &slow)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_rows(&db, "bitcoin_kafka", 300);
    db.stop();
    let mut peak_kib = 0;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "sluice gave up during the outage"
        );
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        peak_kib = peak_kib.max(rss.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    db.start_again();
    let status = wait_exit(&mut child, Duration::from_secs(120));
    assert!(status.success(), "exit status {status}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM bitcoin_kafka"), 2530);
    eprintln!("peak RSS during the outage: {} MiB", peak_kib / 1024);
    assert!(
        peak_kib < 150 * 1024,
        "RSS reached {peak_kib} KiB while waiting"
    );
}

#[test]
fn a_wrong_password_or_unreachable_server_fails_clearly_naming_the_sink() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("btc-sample.csv");
    let out = run(&mut mysql_pipeline(
        dir.path(),
        &csv,
        &broker.addr(),
        &db,
        &[("MYSQL_PASSWORD", "wrong")],
    ));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bitcoin_table") && stderr.contains("Access denied"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("wrong"),
        "no stack trace, no password: {stderr}"
    );
    let closed = format!("mysql://sluice@127.0.0.1:{}/sluice", free_port());
    let out = run(&mut mysql_pipeline(
        dir.path(),
        &csv,
        &broker.addr(),
        &db,
        &[("MYSQL_URL", &closed)],
    ));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bitcoin_table") && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
}

/// A row the server refuses (a text into a BIGINT column) goes to the dead-letter topic with the
/// server's message; the rest of its batch lands. Runs on the embedded transport.
#[test]
fn a_row_the_server_refuses_is_dead_lettered_and_the_rest_lands() {
    refused_row_case(None);
}

/// The same with `exactly_once` on Kafka: the refused row reaches the dead-letter topic before
/// the transaction that stores offsets past it commits.
#[test]
fn with_exactly_once_a_refused_row_is_dead_lettered_too() {
    let broker = Broker::start();
    refused_row_case(Some(&broker.addr()));
}

fn refused_row_case(kafka: Option<&str>) {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("mixed.csv");
    std::fs::write(&csv, "Date,Close,Volume\n2014-09-17,457.3,21056800\n2014-09-18,424.4,lots\n2014-09-19,394.7,37919700\n").unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: refused
sources:
  rows: {{ type: csv, path: {csv}, topic: t }}
sinks:
  table: {{ type: mysql, topics: [t], url: {url}, password: pw, table: mixed, columns: {{ Volume: BIGINT }}, exactly_once: {eo} }}
  rejects: {{ type: file, topics: [dlq], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: dlq }}
",
            csv = csv.display(),
            url = db.url(),
            dlq = dir.path().join("dlq.jsonl").display(),
            eo = kafka.is_some()
        ),
    )
    .unwrap();
    let mut cmd = sluice_run(&pipeline, dir.path());
    if let Some(kafka) = kafka {
        cmd.args(["--kafka", kafka]);
    }
    let out = run(&mut cmd);
    assert!(out.status.success());
    assert_eq!(
        db.sql("SELECT GROUP_CONCAT(Date ORDER BY Date) FROM mixed"),
        "2014-09-17,2014-09-19"
    );
    let dead = read_jsonl(&dir.path().join("dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["value"]["Volume"], "lots");
    assert_eq!(dead[0]["headers"]["sluice.error.stage"], "put");
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert!(
        reason.contains("Volume") && reason.contains("1366"),
        "{reason}"
    );
    if kafka.is_some() {
        let stored = db.sql("SELECT SUM(next_offset) FROM sluice_offsets");
        assert_eq!(
            stored, "3",
            "the offsets stored with the rows pass all three records"
        );
    }
}

/// A pipeline reading topic `topic` (made by the test) into MySQL with the sink settings
/// `sink`, dead letters into `<dir>/<name>-dlq.jsonl`; run with `--once`.
fn sink_only(
    dir: &Path,
    name: &str,
    kafka: &str,
    db: &MariaDb,
    topic: &str,
    sink: &str,
) -> Command {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "name: {name}
kafka: {{ bootstrap_servers: \"{kafka}\" }}
topics: {{ {topic}: {{ partitions: 1 }} }}
sinks:
  table:
    type: mysql
    topics: [{topic}]
    url: {url}
    password: pw
{sink}
    batch: {{ max_records: 1000, linger: 300ms }}
  rejects: {{ type: file, topics: [{name}-dlq], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: {name}-dlq }}
",
            url = db.url(),
            dlq = dir.join(format!("{name}-dlq.jsonl")).display(),
        ),
    )
    .unwrap();
    let mut cmd = sluice_run(&file, dir.join("state"));
    cmd.arg("--once");
    cmd
}

/// One batch holding an upsert, a tombstone and an upsert of the same key ends with the last
/// upsert (tombstones ran after every upsert of the batch); keys differing only in case stay
/// two rows (binary collation).
#[test]
fn one_batch_keeps_the_order_of_each_keys_upserts_and_deletes() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let sink = "    table: kv
    insert_mode: upsert
    primary_key: { mode: record_key, fields: [k] }
    delete_on_tombstone: true";
    // Topics first: the pipeline creates them.
    let mut first = sink_only(dir.path(), "order", &broker.addr(), &db, "kv", sink);
    assert!(run(&mut first).status.success());
    produce(
        &broker.addr(),
        "kv",
        &[
            (Some("K"), Some(r#"{"v":1,"w":"a"}"#)),
            (Some("K"), None),
            (Some("K"), Some(r#"{"v":2}"#)),
            (Some("J"), Some(r#"{"v":1}"#)),
            (Some("J"), None),
            (Some("btc"), Some(r#"{"v":10}"#)),
            (Some("BTC"), Some(r#"{"v":20}"#)),
        ],
    );
    let out = run(&mut sink_only(
        dir.path(),
        "order",
        &broker.addr(),
        &db,
        "kv",
        sink,
    ));
    assert!(out.status.success());
    assert_eq!(
        db.sql(
            "SELECT GROUP_CONCAT(CONCAT(k, '=', v, '/', IFNULL(w, '-')) ORDER BY BINARY k) FROM kv"
        ),
        "BTC=20/-,K=2/-,btc=10/-"
    );
}

/// A record without a field leaves that column as it is, whatever shares its batch; an update
/// of a record with only its key changes nothing (it generated `SET  WHERE`).
#[test]
fn upserts_and_updates_leave_the_columns_a_record_lacks_untouched() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let upsert = "    table: partial
    insert_mode: upsert
    primary_key: { mode: record_value, fields: [id] }";
    assert!(run(&mut sink_only(
        dir.path(),
        "partial",
        &broker.addr(),
        &db,
        "p",
        upsert
    ))
    .status
    .success());
    produce(
        &broker.addr(),
        "p",
        &[(None, Some(r#"{"id":1,"a":1,"b":1}"#))],
    );
    assert!(run(&mut sink_only(
        dir.path(),
        "partial",
        &broker.addr(),
        &db,
        "p",
        upsert
    ))
    .status
    .success());
    produce(
        &broker.addr(),
        "p",
        &[
            (None, Some(r#"{"id":1,"a":2}"#)),
            (None, Some(r#"{"id":2,"a":2,"b":2}"#)),
        ],
    );
    assert!(run(&mut sink_only(
        dir.path(),
        "partial",
        &broker.addr(),
        &db,
        "p",
        upsert
    ))
    .status
    .success());
    assert_eq!(
        db.sql(
            "SELECT GROUP_CONCAT(CONCAT(id, ':', a, ',', IFNULL(b, '-')) ORDER BY id SEPARATOR ';') FROM partial"
        ),
        "1:2,1;2:2,2"
    );

    let update = "    table: partial
    insert_mode: update
    primary_key: { mode: record_value, fields: [id] }";
    assert!(run(&mut sink_only(
        dir.path(),
        "update",
        &broker.addr(),
        &db,
        "u",
        update
    ))
    .status
    .success());
    produce(
        &broker.addr(),
        "u",
        &[
            (None, Some(r#"{"id":1,"b":7}"#)),
            (None, Some(r#"{"id":2}"#)),
        ],
    );
    let out = run(&mut sink_only(
        dir.path(),
        "update",
        &broker.addr(),
        &db,
        "u",
        update,
    ));
    assert!(out.status.success());
    assert_eq!(
        db.sql(
            "SELECT GROUP_CONCAT(CONCAT(id, ':', a, ',', IFNULL(b, '-')) ORDER BY id SEPARATOR ';') FROM partial"
        ),
        "1:2,7;2:2,2"
    );
}

/// JSON columns receive JSON text whatever the value (a bare string was refused by MariaDB's
/// `json_valid` check, a bare number by MySQL's JSON type); a zero date is refused
/// (`NO_ZERO_DATE` in the session's strict mode) and dead-lettered.
#[test]
fn json_columns_get_json_text_and_zero_dates_are_refused() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let sink = "    table: docs
    columns: { d: DATE, doc: JSON }";
    assert!(run(&mut sink_only(
        dir.path(),
        "docs",
        &broker.addr(),
        &db,
        "docs",
        sink
    ))
    .status
    .success());
    produce(
        &broker.addr(),
        "docs",
        &[
            (None, Some(r#"{"n":1,"doc":{"a":1},"d":"2020-01-01"}"#)),
            (None, Some(r#"{"n":2,"doc":"text","d":"2020-01-02"}"#)),
            (None, Some(r#"{"n":3,"doc":12,"d":"0000-00-00"}"#)),
            (None, Some(r#"{"n":4,"doc":12,"d":"2020-01-04"}"#)),
        ],
    );
    let out = run(&mut sink_only(
        dir.path(),
        "docs",
        &broker.addr(),
        &db,
        "docs",
        sink,
    ));
    assert!(out.status.success());
    assert_eq!(
        db.sql("SELECT GROUP_CONCAT(CONCAT(n, '=', doc) ORDER BY n SEPARATOR ' ') FROM docs"),
        r#"1={"a":1} 2="text" 4=12"#
    );
    let dead = read_jsonl(&dir.path().join("docs-dlq.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"]["n"], 3);
}

/// A server that requires primary keys (MariaDB's `innodb_force_primary_key`, MySQL's
/// `sql_require_primary_key`) refuses a table created without one: the error says what to set.
/// A row larger than the server's `max_allowed_packet` is a bad record, dead-lettered with its
/// size and the limit, not a batch failing on every restart.
#[test]
fn a_server_requiring_keys_and_a_row_over_the_packet_limit_are_explained() {
    let db = MariaDb::start_with(&[
        "--innodb-force-primary-key=1".into(),
        "--max-allowed-packet=65536".into(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wide.csv");
    let wide = "x".repeat(100_000);
    std::fs::write(
        &csv,
        format!("Date,Note\n2014-09-17,short\n2014-09-18,{wide}\n2014-09-19,short\n"),
    )
    .unwrap();
    let pipeline = |name: &str, key: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}
sources:
  rows: {{ type: csv, path: {csv}, topic: t }}
sinks:
  table: {{ type: mysql, topics: [t], url: {url}, password: pw, table: {name}{key} }}
  rejects: {{ type: file, topics: [dlq], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: dlq }}
",
                csv = csv.display(),
                url = db.url(),
                dlq = dir.path().join(format!("{name}-dlq.jsonl")).display(),
            ),
        )
        .unwrap();
        sluice_run(&file, dir.path().join("state"))
    };
    let out = run(&mut pipeline("nokey", ""));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("requires a primary key") && stderr.contains("primary_key"),
        "{stderr}"
    );

    let keyed = ", insert_mode: upsert, primary_key: { mode: record_value, fields: [Date] }";
    let out = run(&mut pipeline("keyed", keyed));
    assert!(out.status.success());
    assert_eq!(
        db.sql("SELECT GROUP_CONCAT(Date ORDER BY Date) FROM keyed"),
        "2014-09-17,2014-09-19"
    );
    let dead = read_jsonl(&dir.path().join("keyed-dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert!(
        reason.contains("max_allowed_packet") && reason.contains("65536"),
        "{reason}"
    );
}

/// Managed MySQL services require TLS: `ssl_mode: required` connects to a server that refuses
/// plain connections; `verify_ca` with a CA that did not sign the server's certificate fails
/// clearly (before: `?require_ssl=true` panicked, "TLS support is disabled").
#[test]
fn tls_required_connects_and_a_wrong_ca_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(&certs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    for ca in ["ca", "other-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ]);
    }
    std::fs::write(certs.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    ]);
    let cert = |f: &str| certs.join(f).display().to_string();
    let db = MariaDb::start_with(&[
        format!("--ssl-ca={}", cert("ca.pem")),
        format!("--ssl-cert={}", cert("server.pem")),
        format!("--ssl-key={}", cert("server.key")),
        "--require-secure-transport=ON".into(),
    ]);
    let csv = fixture("btc-sample.csv");
    let pipeline = |name: &str, url: &str, tls: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}
sources:
  rows: {{ type: csv, path: {csv}, topic: t }}
sinks:
  table: {{ type: mysql, topics: [t], url: {url}, password: pw, table: {name}{tls} }}
",
                csv = csv.display(),
            ),
        )
        .unwrap();
        sluice_run(&file, dir.path().join("state"))
    };
    let url = db.url();
    let plain = run(&mut pipeline("plain", &url, ""));
    assert_eq!(
        plain.status.code(),
        Some(1),
        "the server refuses plain connections"
    );

    let out = run(&mut pipeline("tls", &url, ", ssl_mode: required"));
    assert!(out.status.success());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM tls"),
        csv_rows(&csv).len() as i64
    );

    // The URL's own switch (it passed validation, then panicked: "TLS support is disabled").
    let in_url = format!("\"{url}?require_ssl=true&verify_ca=false\"");
    let out = run(&mut pipeline("inurl", &in_url, ""));
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let verified = format!(", ssl_mode: verify_identity, ca_file: {}", cert("ca.pem"));
    assert!(run(&mut pipeline("verified", &url, &verified))
        .status
        .success());

    let wrong = format!(", ssl_mode: verify_ca, ca_file: {}", cert("other-ca.pem"));
    let out = run(&mut pipeline("wrong", &url, &wrong));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`table`") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every test server keeps its temporary files to itself: a server starting deletes every
/// `#sql*` file of its `tmpdir`, so with a shared `/tmp` it removed the on-disk temporary tables
/// of servers already running in other tests (seen in CI as "Error on delete of
/// '/tmp/#sql-temptable-….MAI'" failing a sink's statement).
#[test]
fn a_server_starting_leaves_the_temporary_tables_of_running_servers_alone() {
    use std::io::{BufRead, BufReader, Read, Write};
    let db = MariaDb::start();
    let mut session = Command::new("mariadb")
        .arg(format!("--socket={}", db.socket().display()))
        .args(["-uroot", "-N", "-B", "--unbuffered", "sluice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mariadb client");
    let mut input = session.stdin.take().expect("stdin");
    let mut output = BufReader::new(session.stdout.take().expect("stdout"));
    writeln!(
        input,
        "CREATE TEMPORARY TABLE held (a INT) ENGINE=Aria; INSERT INTO held VALUES (1); SELECT 'ready';"
    )
    .expect("write to the session");
    input.flush().expect("flush the session");
    let mut line = String::new();
    output.read_line(&mut line).expect("read from the session");
    assert_eq!(line.trim(), "ready");

    let _other = MariaDb::start();

    // Its open files still read after the other server unlinked them: dropping the table is
    // what fails.
    writeln!(
        input,
        "SELECT COUNT(*) FROM held; DROP TEMPORARY TABLE held;"
    )
    .expect("write to the session");
    drop(input);
    let out = session.wait_with_output().expect("session ends");
    let mut rest = String::new();
    output.read_to_string(&mut rest).expect("read the session");
    assert!(
        out.status.success() && rest.trim() == "1",
        "the temporary table of the first server is gone: {rest} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With `exactly_once` on the pipeline, kill -9 while the source is still sending (so restarts
/// send again what runs before had sent since their offsets were last stored), three times,
/// then a run to the end: every CSV row is in the table once, on Kafka and on the embedded
/// transport (where the in-process topics are lost with each kill).
#[test]
fn exactly_once_sources_and_sink_survive_kills_mid_source_without_a_duplicate() {
    let broker = Broker::start();
    kills_mid_source_case(Some(&broker.addr()), true);
    kills_mid_source_case(None, true);
}

/// The same with records without a key: a record sent again after a kill must land in the
/// partition it landed in before (round-robin or random placement put it where the stored
/// position of its source is already higher: lost, or lower: written twice).
#[test]
fn keyless_exactly_once_records_survive_kills_mid_source_without_a_loss_or_duplicate() {
    let broker = Broker::start();
    kills_mid_source_case(Some(&broker.addr()), false);
    kills_mid_source_case(None, false);
}

fn kills_mid_source_case(kafka: Option<&str>, keyed: bool) {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let pipeline = dir.path().join("eo.yaml");
    let transport = kafka.map_or(String::new(), |k| {
        format!("kafka: {{ bootstrap_servers: \"{k}\" }}\n")
    });
    // Slow enough that each run is killed while the source still sends (the embedded
    // transport starts at once, Kafka's takes most of a second).
    let rate = if kafka.is_some() { 1500 } else { 500 };
    let yaml = eo_pipeline(
        &csv,
        &db,
        &format!("{transport}exactly_once: true\n"),
        &format!("    rate: {rate}\n    batch_size: 50\n"),
        "    batch: { max_records: 20, linger: 10ms }\n",
    );
    let yaml = if keyed {
        yaml
    } else {
        yaml.replace("    key: Date\n", "")
    };
    std::fs::write(&pipeline, yaml).unwrap();
    let command = || {
        let mut cmd = sluice_run(&pipeline, dir.path().join("state"));
        cmd.arg("--once");
        cmd
    };
    let label = match (kafka.is_some(), keyed) {
        (true, true) => "kafka",
        (true, false) => "kafka, no key",
        (false, true) => "embedded",
        (false, false) => "embedded, no key",
    };
    let rows_now = || {
        db.try_sql("SELECT COUNT(*) FROM eo")
            .and_then(|c| c.parse::<i64>().ok())
            .unwrap_or(0)
    };
    for kill in 1..=3 {
        // Killed once 300 more rows are in, so that every run is killed while the source still
        // sends, however fast the run starts (a fixed 1.3 s let a quick second run finish).
        let before = rows_now();
        let mut child = command().stderr(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while rows_now() < before + 300 {
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: no progress in run {kill}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let rows = rows_now();
        eprintln!("{label}: {rows} rows after kill {kill}");
        assert!(
            rows < 2530,
            "{label}: the source finished before kill {kill}"
        );
    }
    assert!(run(&mut command()).status.success(), "{label}: final run");
    // `all_null_rows: skip` skips Yahoo's 4 null days only where `Date` is the key (their
    // other columns are all null); without a key they are rows with null prices.
    let expected = if keyed { 2530 } else { 2534 };
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM eo"),
        expected,
        "{label}: rows in the table"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(DISTINCT Date) FROM eo"),
        expected,
        "{label}: distinct dates"
    );
}

/// `load_data: true` appends through `LOAD DATA LOCAL INFILE` streamed from memory: text with
/// tabs, newlines, backslashes and `\N`, nulls, JSON and dates arrive exactly as written; a row
/// the server refuses is dead-lettered alone; with `exactly_once` the offsets are stored with
/// the rows, so a second run adds nothing.
#[test]
fn load_data_appends_every_value_as_written_and_dead_letters_only_the_bad_row() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    db.sql(
        "CREATE TABLE loads (id BIGINT NOT NULL, note TEXT NULL, n DOUBLE NULL, tags JSON NULL, day DATE NULL)",
    );
    let sink = "    table: loads
    exactly_once: true
    load_data: true";
    // Creates the topic.
    assert!(run(&mut sink_only(
        dir.path(),
        "loads",
        &broker.addr(),
        &db,
        "loads",
        sink
    ))
    .status
    .success());
    produce(
        &broker.addr(),
        "loads",
        &[
            (
                None,
                Some(
                    r#"{"id":1,"note":"tab\there\nnew line \\ back \\N","n":1.5,"tags":["a"],"day":"2014-09-17"}"#,
                ),
            ),
            (
                None,
                Some(r#"{"id":2,"note":null,"n":-2,"tags":{"k":"v"},"day":"2014-09-18"}"#),
            ),
            (
                None,
                Some(r#"{"id":"three","note":"bad id","n":3,"tags":[],"day":"2014-09-19"}"#),
            ),
            (
                None,
                Some(r#"{"id":4,"note":"été ✓","n":4,"tags":null,"day":"2014-09-20"}"#),
            ),
        ],
    );
    for round in 1..=2 {
        let out = run(&mut sink_only(
            dir.path(),
            "loads",
            &broker.addr(),
            &db,
            "loads",
            sink,
        ));
        assert!(out.status.success(), "round {round}");
        assert_eq!(
            db.sql("SELECT COUNT(*) FROM loads"),
            "3",
            "rows after round {round}"
        );
    }
    assert_eq!(
        db.sql("SELECT HEX(note) FROM loads WHERE id = 1"),
        db.sql("SELECT HEX('tab\\there\\nnew line \\\\ back \\\\N')")
    );
    assert_eq!(
        db.sql("SELECT CONCAT_WS('|', id, IFNULL(note, 'NULL'), n, IFNULL(tags, 'NULL'), day) FROM loads ORDER BY id"),
        "1|tab\\there\\nnew line \\\\ back \\\\N|1.5|[\"a\"]|2014-09-17\n2|NULL|-2|{\"k\": \"v\"}|2014-09-18\n4|été ✓|4|NULL|2014-09-20"
            .replace("{\"k\": \"v\"}", &db.sql("SELECT JSON_COMPACT('{\"k\":\"v\"}')"))
    );
    let dead = read_jsonl(&dir.path().join("loads-dlq.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"]["id"], "three");
}

/// An `exactly_once` sink's offsets reset through the REST API (stopped first): its consumer
/// group and the positions and offsets it stores with the rows are gone, so once resumed it
/// writes the whole topic again after what it wrote before the stop.
#[test]
fn resetting_an_exactly_once_sink_forgets_its_stored_positions() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let pipeline = dir.path().join("eo.yaml");
    std::fs::write(
        &pipeline,
        eo_pipeline(
            &csv,
            &db,
            "",
            "    rate: 500\n",
            "    batch: { max_records: 20, linger: 10ms }\n",
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = sluice()
        .arg("run")
        .arg(&pipeline)
        .args(["--kafka", &broker.addr(), "--state-dir"])
        .arg(dir.path())
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_rows(&db, "eo", 300);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(70))
        .build()
        .unwrap();
    let sink = format!("http://127.0.0.1:{port}/connectors/eo.rows");
    let stop = client.put(format!("{sink}/stop")).send().unwrap();
    assert_eq!(stop.status(), reqwest::StatusCode::ACCEPTED);
    let reset = client.delete(format!("{sink}/offsets")).send().unwrap();
    let code = reset.status();
    assert_eq!(code, reqwest::StatusCode::OK, "{}", reset.text().unwrap());
    let written = count(&db, "SELECT COUNT(*) FROM eo");
    assert!(written < 2530, "stopped mid-replay: {written}");
    for table in ["sluice_source_positions", "sluice_offsets"] {
        assert_eq!(
            count(&db, &format!("SELECT COUNT(*) FROM {table}")),
            0,
            "{table} after the reset"
        );
    }
    let resume = client.put(format!("{sink}/resume")).send().unwrap();
    assert_eq!(resume.status(), reqwest::StatusCode::ACCEPTED);
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(status.success(), "{status}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM eo"), written + 2530);
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT Date) FROM eo"), 2530);
}

/// Two writers of the same new partitions at once (a partition assigned twice for a while),
/// on a server whose default isolation is READ COMMITTED: the exactly-once fence's locking read
/// finds no stored position in both, and only a gap lock (REPEATABLE READ, which the sink sets
/// for its sessions) makes the second wait for the first and see what it stored. Every round
/// ends with each row once.
#[test]
fn two_writers_of_a_new_partition_write_each_row_once_on_a_read_committed_server() {
    let db = MariaDb::start_with(&["--transaction-isolation=READ-COMMITTED".to_string()]);
    assert_eq!(db.sql("SELECT @@GLOBAL.tx_isolation"), "READ-COMMITTED");
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let pipeline = dir.path().join("eo.yaml");
    std::fs::write(
        &pipeline,
        eo_pipeline(
            &csv,
            &db,
            "exactly_once: true\n",
            "",
            "    batch: { max_records: 5000, linger: 2s }\n",
        ),
    )
    .unwrap();
    for round in 0..4 {
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let mut cmd = sluice();
                cmd.arg("run")
                    .arg(&pipeline)
                    .arg("--state-dir")
                    .arg(dir.path().join(format!("state-{round}-{w}")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                cmd
            })
            .map(|mut cmd| cmd.spawn().unwrap())
            .collect();
        for writer in writers {
            let out = writer.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rows = count(&db, "SELECT COUNT(*) FROM eo");
        let distinct = count(&db, "SELECT COUNT(DISTINCT Date) FROM eo");
        assert_eq!((rows, distinct), (2530, 2530), "round {round}");
        db.sql("DROP TABLE eo; DROP TABLE sluice_source_positions");
    }
}

/// An API page that changes between a `kill -9` and the restart (records inserted before,
/// among and after those sent), read with `exactly_once` into MySQL: every record ends in the
/// table once, the new ones too. The source stores how it numbers a page before sending it,
/// and numbers the page read again after the restart by it.
#[test]
fn an_api_page_changed_between_a_kill_and_the_restart_lands_each_record_once() {
    use std::sync::{Arc, Mutex};
    let db = MariaDb::start();
    let page: Arc<Mutex<Vec<serde_json::Value>>> = Arc::new(Mutex::new(
        (0..2000).map(|n| serde_json::json!({ "n": n })).collect(),
    ));
    let served = page.clone();
    let app = axum::Router::new().route(
        "/page",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(serde_json::Value::Array(served.lock().unwrap().clone())) }
        }),
    );
    let url = common::es_mock::serve(app);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("web.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: web
exactly_once: true
topics: {{ items: {{ partitions: 1 }} }}
sources:
  page:
    type: http
    url: {url}/page
    interval: 100ms
    stop_after_last_page: true
    batch_size: 5
    topic: items
sinks:
  rows:
    type: mysql
    topics: [items]
    url: {db}
    password: pw
    table: web
    exactly_once: true
    batch: {{ max_records: 5, linger: 5ms }}
",
            db = db.url()
        ),
    )
    .unwrap();
    let command = || {
        let mut cmd = sluice();
        cmd.arg("run")
            .arg(&pipeline)
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        cmd
    };
    let mut child = command().stderr(Stdio::null()).spawn().unwrap();
    wait_for_rows(&db, "web", 300);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = count(&db, "SELECT COUNT(*) FROM web");
    assert!(before < 2000, "the run was not interrupted");
    {
        let mut records = page.lock().unwrap();
        for (at, n) in [
            (1999, 10_003),
            (before as usize + 50, 10_002),
            (150, 10_001),
            (0, 10_000),
        ] {
            records.insert(at, serde_json::json!({ "n": n }));
        }
    }
    let out = run(&mut command());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = count(&db, "SELECT COUNT(*) FROM web");
    let distinct = count(&db, "SELECT COUNT(DISTINCT n) FROM web");
    assert_eq!((rows, distinct), (2004, 2004), "killed at {before} rows");
}
