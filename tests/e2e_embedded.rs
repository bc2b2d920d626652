//! End to end on the embedded transport: the `sluice` binary on real pipeline files, checked
//! row by row against the CSV.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn the_btc_history_arrives_whole_with_numbers_as_numbers_and_null_rows_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let out = run(&mut btc_pipeline(dir.path(), &csv, None, &[]));
    assert!(out.status.success());
    assert_eq!(
        check_every_row_arrived(&csv, &dir.path().join("bitcoin.jsonl")),
        0,
        "duplicates"
    );
    let dead = read_jsonl(&dir.path().join("bitcoin-dlq.jsonl"));
    let dates: Vec<&str> = dead
        .iter()
        .map(|d| d["value"].as_str().unwrap().split(',').next().unwrap())
        .collect();
    assert_eq!(
        dates,
        ["2020-04-17", "2020-10-09", "2020-10-12", "2020-10-13"]
    );
    for d in &dead {
        assert_eq!(d["headers"]["sluice.error.component"], "yahoo_csv");
        assert_eq!(d["headers"]["sluice.error.stage"], "source");
        assert!(d["headers"]["sluice.error.location"]
            .as_str()
            .unwrap()
            .contains("line"));
    }
    // The summary counts them.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("yahoo_csv source"))
        .expect("summary line");
    let numbers: Vec<&str> = line.split_whitespace().skip(2).take(4).collect();
    assert_eq!(numbers, ["2534", "2530", "4", "0"], "{line}");
}

#[test]
fn a_second_run_resumes_and_sends_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("btc-sample.csv");
    assert!(run(&mut btc_pipeline(dir.path(), &csv, None, &[]))
        .status
        .success());
    let first = count_lines(&dir.path().join("bitcoin.jsonl"));
    assert!(run(&mut btc_pipeline(dir.path(), &csv, None, &[]))
        .status
        .success());
    assert_eq!(count_lines(&dir.path().join("bitcoin.jsonl")), first);
    // Rows appended to the file are read on the next run, and only they.
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("2030-01-01,1.5,2.5,0.5,2.0,2.0,100\n");
    let grown = dir.path().join("grown.csv");
    std::fs::write(&grown, &text).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    assert!(run(&mut btc_pipeline(dir2.path(), &grown, None, &[]))
        .status
        .success());
    assert_eq!(
        check_every_row_arrived(&grown, &dir2.path().join("bitcoin.jsonl")),
        0
    );
}

/// `kill -9` in the middle of a run, then the same command again: nothing missing, and the
/// duplicates are at most one sink batch (flushed, but not yet committed when killed).
#[test]
fn kill_9_mid_run_then_rerun_loses_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let slow = [
        ("SLUICE_SOURCES__YAHOO_CSV__RATE", "1500"),
        ("SLUICE_SINKS__ARCHIVE__BATCH__MAX_RECORDS", "100"),
        ("SLUICE_SINKS__ARCHIVE__BATCH__LINGER", "50ms"),
    ];
    let first = interrupt_then_rerun(dir.path(), &csv, None, &slow, 600, Stop::Kill);
    let duplicates = check_every_row_arrived(&csv, &dir.path().join("bitcoin.jsonl"));
    eprintln!(
        "killed after {} rows; {duplicates} duplicates",
        first.rows_before
    );
    assert!(
        duplicates <= 100,
        "{duplicates} duplicates exceed one sink batch"
    );
}

#[test]
fn sigterm_exits_0_within_10s_with_everything_flushed_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let slow = [("SLUICE_SOURCES__YAHOO_CSV__RATE", "1000")];
    let first = interrupt_then_rerun(dir.path(), &csv, None, &slow, 300, Stop::Term);
    assert!(first.status.success(), "exit status {}", first.status);
    assert!(
        first.took < Duration::from_secs(10),
        "took {:?}",
        first.took
    );
    assert_eq!(
        check_every_row_arrived(&csv, &dir.path().join("bitcoin.jsonl")),
        0,
        "a graceful stop commits everything it wrote"
    );
}

fn malformed_csv(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("malformed.csv");
    std::fs::write(
        &path,
        "Date,Open,High,Low,Close,Adj Close,Volume\n\
         2014-09-17,465.8,468.1,452.4,457.3,457.3,21056800\n\
         2014-09-18,abc,456.8,413.1,424.4,424.4,34483200\n\
         2014-09-19,424.1,427.8,384.5\n\
         2014-09-20,394.6,423.2,389.8,408.9,408.9,36863600\n",
    )
    .unwrap();
    path
}

#[test]
fn malformed_rows_go_to_the_dead_letter_topic_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let csv = malformed_csv(dir.path());
    assert!(run(&mut btc_pipeline(dir.path(), &csv, None, &[]))
        .status
        .success());
    assert_eq!(count_lines(&dir.path().join("bitcoin.jsonl")), 2);
    let dead = read_jsonl(&dir.path().join("bitcoin-dlq.jsonl"));
    assert_eq!(dead.len(), 2);
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d["headers"]["sluice.error.message"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`Open`") && r.contains("abc")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("4 fields")),
        "{reasons:?}"
    );
    assert!(dead
        .iter()
        .any(|d| d["value"].as_str().unwrap().starts_with("2014-09-18,abc")));
}

#[test]
fn with_tolerance_none_a_malformed_row_fails_the_run_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = malformed_csv(dir.path());
    let out = run(&mut btc_pipeline(
        dir.path(),
        &csv,
        None,
        &[("SLUICE_ERRORS__TOLERANCE", "none")],
    ));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("yahoo_csv") && stderr.contains("line 3") && stderr.contains("`Open`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn the_quickstart_runs_offline() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(sluice()
        .args(["run", "pipelines/quickstart.yaml", "--state-dir"])
        .arg(dir.path())
        .env("SLUICE_SINKS__ARCHIVE__PATH", dir.path().join("q.jsonl")));
    assert!(out.status.success());
    let rows = read_jsonl(&dir.path().join("q.jsonl"));
    assert_eq!(rows.len(), 30_000);
    assert!(rows
        .iter()
        .all(|r| r["Close"].is_f64() && r["Volume"].is_i64()));
}

/// With `all_null_rows: keep`, Yahoo's `null` fields arrive as JSON null (the key still set), and
/// nothing goes to the dead-letter topic.
#[test]
fn kept_null_rows_arrive_with_json_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("btc-sample.csv");
    let keep = [("SLUICE_SOURCES__YAHOO_CSV__ALL_NULL_ROWS", "keep")];
    assert!(run(&mut btc_pipeline(dir.path(), &csv, None, &keep))
        .status
        .success());
    let rows = read_jsonl(&dir.path().join("bitcoin.jsonl"));
    assert_eq!(rows.len(), csv_rows(&csv).len());
    let null_row = rows
        .iter()
        .find(|r| r["Date"] == "2020-04-17")
        .expect("the null row arrived");
    for field in ["Open", "High", "Low", "Close", "Adj Close", "Volume"] {
        assert!(null_row[field].is_null(), "{field} is {}", null_row[field]);
    }
    assert_eq!(count_lines(&dir.path().join("bitcoin-dlq.jsonl")), 0);
}
