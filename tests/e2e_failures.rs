//! Failure paths at start-up: a store that never answers, a store that refuses, and what a
//! stop or `on_task_failure: wait_for_restart` does with them.

mod common;

use common::*;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A CSV source into topic `t`, read by a file sink and by a MySQL sink at `mysql_port`.
fn csv_to_file_and_mysql(dir: &std::path::Path, mysql_port: u16) -> std::path::PathBuf {
    let file = dir.join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "name: failures
topics:
  t: {{ partitions: 2 }}
sources:
  src:
    type: csv
    path: {csv}
    topic: t
    columns: {{ Open: float }}
    null_values: [\"null\"]
sinks:
  archive:
    type: file
    topics: [t]
    path: {out}
  store:
    type: mysql
    topics: [t]
    url: mysql://sluice@127.0.0.1:{mysql_port}/sluice
    table: prices
",
            csv = fixture("btc-sample.csv").display(),
            out = dir.join("out.jsonl").display(),
        ),
    )
    .unwrap();
    file
}

/// A TCP server that accepts connections and never says a word: a MySQL server hung at start.
fn silent_server() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in held.incoming().flatten() {
            open.push(stream);
        }
    });
    (listener, port)
}

/// A store whose server accepts the connection and never answers must not keep a stopped run
/// alive: SIGTERM ends it within the drain timeout (measured before: alive 91 s later).
#[test]
fn sigterm_while_a_sink_connects_to_a_store_that_never_answers_exits_within_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = silent_server();
    let pipeline = csv_to_file_and_mysql(dir.path(), port);
    let mut child = sluice_run(&pipeline, dir.path().join("state"))
        .args(["--drain-timeout", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still connecting after 2 s"
    );
    let (status, took) = terminate(&mut child);
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM"
    );
    assert!(status.code().is_some(), "{status}");
}

/// With `on_task_failure: wait_for_restart`, a store that refuses the connection at start fails
/// its sink alone, as a failure later would: the other sink writes every record, the sink shows
/// FAILED with the reason, and the run goes on until it is stopped.
#[test]
fn a_store_refused_at_start_fails_only_its_sink_when_failures_wait_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let pipeline = csv_to_file_and_mysql(dir.path(), closed);
    let api = free_port();
    let log = dir.path().join("sluice.log");
    let mut child = sluice_run(&pipeline, dir.path().join("state"))
        .env("SLUICE_ERRORS__ON_TASK_FAILURE", "wait_for_restart")
        .env("SLUICE_LISTEN", format!("127.0.0.1:{api}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = dir.path().join("out.jsonl");
    let rows = std::fs::read_to_string(fixture("btc-sample.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    let started = Instant::now();
    while count_lines(&out) < rows {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "the run ended ({exited:?}) instead of waiting:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the file sink wrote {} of {rows} rows",
            count_lines(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status: serde_json::Value = reqwest::blocking::get(format!(
        "http://127.0.0.1:{api}/connectors/failures.store/status"
    ))
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(status["connector"]["state"], "FAILED", "{status}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the run goes on");
    let (status, _) = terminate(&mut child);
    assert!(
        !status.success(),
        "a component that failed fails the run at exit"
    );
}

/// Without `wait_for_restart`, a store refused at start stops the run, and the error reported
/// is the store's: not that of a source whose records the failed sink will never store (which
/// may fail first, now that sinks connect inside their tasks). Five runs, each must name it.
#[test]
fn a_store_refused_at_start_is_the_error_reported_not_what_fails_after_it() {
    let dir = tempfile::tempdir().unwrap();
    // A server that hangs up 300 ms into each connection: the source has sent by then.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                drop(stream);
            });
        }
    });
    let pipeline = csv_to_file_and_mysql(dir.path(), port);
    for attempt in 0..5 {
        let out = run(&mut sluice_run(&pipeline, dir.path().join("state")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reported = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert_eq!(out.status.code(), Some(1), "run {attempt}: {stderr}");
        assert!(
            reported.contains("component `store`"),
            "run {attempt} reported: {reported}"
        );
    }
}
