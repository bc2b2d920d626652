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

/// A CSV of `rows` days whose every 5th row has no `Open`, so a sink requiring it dead-letters.
fn csv_with_gaps(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
    let path = dir.join("gaps.csv");
    let mut text = String::from("Date,Open,Close\n");
    for i in 0..rows {
        let open = if i % 5 == 0 {
            "null".to_string()
        } else {
            format!("{i}.5")
        };
        text.push_str(&format!("d{i:05},{open},{i}.25\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A pipeline whose sink `archive` writes (and fsyncs) batches of 5, so that it has a backlog
/// to drain when stopped, and dead-letters the rows without `Open` as it goes; `rejects` reads
/// the dead-letter topic. `extra` adds sinks.
fn dead_lettering_pipeline(
    dir: &std::path::Path,
    csv: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("pipeline.yaml");
    std::fs::write(
        &path,
        format!(
            r#"name: drain-dead-letters
sources:
  gaps:
    type: csv
    path: {csv}
    topic: rows
    key: Date
    columns: {{ Date: string, Open: float, Close: float }}
    null_values: ["null"]
    all_null_rows: keep
sinks:
  archive:
    type: file
    topics: [rows]
    path: {out}
    batch: {{ max_records: 5, linger: 10ms }}
    transforms:
      - {{ type: require_fields, fields: [Open], otherwise: reject }}
  rejects:
    type: file
    topics: [rows-dlq]
    format: envelope
    path: {dlq}
{extra}
errors:
  tolerance: all
  dead_letter_topic: rows-dlq
"#,
            csv = csv.display(),
            out = dir.join("out.jsonl").display(),
            dlq = dir.join("dlq.jsonl").display(),
        ),
    )
    .unwrap();
    path
}

/// Dates found in the data file and in the dead-letter file, each once at most.
fn dates_written(dir: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let data = read_jsonl(&dir.join("out.jsonl"))
        .iter()
        .map(|v| v["Date"].as_str().unwrap().to_string())
        .collect();
    let dead = read_jsonl(&dir.join("dlq.jsonl"))
        .iter()
        .map(|v| v["value"]["Date"].as_str().unwrap().to_string())
        .collect();
    (data, dead)
}

/// SIGTERM while a sink still drains a backlog, dead-lettering part of it: the dead-letter sink
/// must outlive it (it stopped once caught up with the others, and the next dead letter waited
/// for its commit forever).
#[test]
fn sigterm_while_a_sink_dead_letters_during_its_drain_exits_0_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 40_000;
    let csv = csv_with_gaps(dir.path(), rows);
    let pipeline = dead_lettering_pipeline(dir.path(), &csv, "");
    let state = dir.path().join("state");
    // One record a batch: the source is done at once and the archive sink still drains its
    // backlog (each batch waiting for its dead letters to be stored) when SIGTERM comes.
    let log = dir.path().join("first-run.log");
    let mut child = sluice_run(&pipeline, &state)
        .env("SLUICE_SINKS__ARCHIVE__BATCH__MAX_RECORDS", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_lines(&dir.path().join("out.jsonl"), 20, Duration::from_secs(20));
    let (status, took) = terminate(&mut child);
    assert!(
        status.success(),
        "exit status {status}; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (data, dead) = dates_written(dir.path());
    assert!(
        data.len() + dead.len() < rows,
        "the run was not interrupted"
    );
    // A second run completes the file: every row in the data file or as a dead letter.
    let out =
        run(sluice_run(&pipeline, &state).env("SLUICE_SINKS__ARCHIVE__BATCH__MAX_RECORDS", "5000"));
    assert!(out.status.success());
    let (data, dead) = dates_written(dir.path());
    assert!(dead
        .iter()
        .all(|d| d[1..].parse::<usize>().unwrap() % 5 == 0));
    let mut all: Vec<String> = data.into_iter().chain(dead).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), rows, "rows lost");
}

/// A sink that fails while another one dead-letters during the drain: exit 1, no hang.
#[test]
fn a_failing_sink_while_another_dead_letters_exits_1_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let csv = csv_with_gaps(dir.path(), 4000);
    // A file where the broken sink wants a folder: its first flush fails for good.
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let broken = format!(
        "  broken:\n    type: file\n    topics: [rows]\n    path: {}\n    batch: {{ linger: 1s }}",
        dir.path().join("not-a-dir/out.jsonl").display()
    );
    let pipeline = dead_lettering_pipeline(dir.path(), &csv, &broken);
    let (status, stderr) = run_bounded(
        &mut sluice_run(&pipeline, dir.path().join("state")),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken"), "{stderr}");
}

/// The dead-letter sink refuses what it reads (a transform requiring a field that dead letters
/// of unparseable rows lack). Routing them back to the dead-letter topic looped (and, on the
/// embedded transport, deadlocked on its own commit); they fail the run instead, or with
/// `dead_letter_refused: log` are logged and dropped.
#[test]
fn a_dead_letter_the_dead_letter_sink_refuses_is_not_routed_back() {
    let dir = tempfile::tempdir().unwrap();
    let csv = malformed_csv(dir.path());
    // The example pipeline with a transform on its dead-letter sink.
    let refusing = |dir: &std::path::Path, extra_errors: &str| {
        let yaml = std::fs::read_to_string(root().join("pipelines/btc-history-csv-to-file.yaml"))
            .unwrap()
            .replace(
                "    format: envelope\n",
                "    format: envelope\n    transforms: [{ type: require_fields, fields: [Open], otherwise: reject }]\n",
            )
            .replace("  tolerance: all\n", &format!("  tolerance: all\n{extra_errors}"));
        let file = dir.join("pipeline.yaml");
        std::fs::write(&file, yaml).unwrap();
        btc_pipeline_file(&file, dir, &csv, None, &[])
    };
    let (status, stderr) = run_bounded(&mut refusing(dir.path(), ""), Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rejects") && stderr.contains("dead_letter_refused"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = run_bounded(
        &mut refusing(dir.path(), "  dead_letter_refused: log\n"),
        Duration::from_secs(20),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("dropping dead letter").count(),
        2,
        "{stderr}"
    );
    assert_eq!(count_lines(&dir.path().join("bitcoin.jsonl")), 2);
}

/// Unmounts on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The disk fills up in the middle of a flush, then space comes back: the retried flush must
/// not leave the part written the first time as a torn line before the whole batch.
/// (Mounts a 1 MiB tmpfs: needs root, as the tests run here and in CI.)
#[test]
fn a_flush_retried_after_a_full_disk_leaves_no_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "cannot mount a tmpfs (the test needs root)"
    );
    let _unmount = Mounted(small.clone());
    let filler = small.join("filler");
    std::fs::write(&filler, vec![0u8; 900 * 1024]).unwrap();
    let out = small.join("bitcoin.jsonl");
    let csv = fixture("BTC-USD.csv");
    let mut child = btc_pipeline(dir.path(), &csv, None, &[])
        .env("BTC_OUT", &out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The first flush (after the sink's 500 ms linger) fills the disk part way and fails; it
    // is retried with backoff, and still failing a while later.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended although the disk was full"
    );
    std::fs::remove_file(&filler).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    assert_eq!(check_every_row_arrived(&csv, &out), 0, "duplicates");
}

/// Two processes on one embedded pipeline and state dir would both resume from the same source
/// offsets and overwrite each other's offsets file: the second one is refused, naming the first.
#[test]
fn a_second_process_on_the_same_state_dir_exits_2_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let mut first = btc_pipeline(
        dir.path(),
        &csv,
        None,
        &[("SLUICE_SOURCES__YAHOO_CSV__RATE", "200")],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    wait_for_lines(
        &dir.path().join("bitcoin.jsonl"),
        1,
        Duration::from_secs(20),
    );
    let second = run(&mut btc_pipeline(dir.path(), &csv, None, &[]));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");
    let _ = terminate(&mut first);
}

/// The offset store starts failing under a source that never ends (a followed CSV): the
/// source must stop and the run fail, not go on producing with nothing stored.
#[test]
fn a_failing_offset_store_fails_a_followed_source() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("growing.csv");
    std::fs::write(&csv, "Date,Close\nd0,1.5\n").unwrap();
    let pipeline = dir.path().join("follow.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: follow\nsources:\n  tail:\n    type: csv\n    path: {}\n    topic: rows\n    follow: true\n    poll_interval: 50ms\n    columns: {{ Close: float }}\nsinks:\n  out:\n    type: file\n    topics: [rows]\n    path: {}\n    batch: {{ linger: 50ms }}\n",
            csv.display(),
            dir.path().join("out.jsonl").display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut child = sluice_run(&pipeline, &state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lines(&dir.path().join("out.jsonl"), 1, Duration::from_secs(20));
    // The pipeline's state folder becomes a file: no offsets file can be written any more.
    std::fs::remove_dir_all(state.join("follow")).unwrap();
    std::fs::write(state.join("follow"), "").unwrap();
    let started = std::time::Instant::now();
    let mut appended = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the source went on for a minute with its offsets not stored"
        );
        appended += 1;
        let mut file = std::fs::OpenOptions::new().append(true).open(&csv).unwrap();
        std::io::Write::write_all(&mut file, format!("d{appended},{appended}.5\n").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot store source offsets"), "{stderr}");
}

/// A bad row's dead letter is the row as it was written, quotes and all, so that a fixed copy
/// can be replayed (it was re-joined from the parsed fields: `x,extra, field,3`).
#[test]
fn a_bad_rows_dead_letter_keeps_its_bytes_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("quoted.csv");
    std::fs::write(
        &csv,
        "Date,Open,High,Low,Close,Adj Close,Volume\r\n\
         2014-09-17,465.8,468.1,452.4,457.3,457.3,21056800\r\n\
         \"x\",\"extra, field\",3\r\n\
         2014-09-20,394.6,423.2,389.8,408.9,408.9,36863600\r\n",
    )
    .unwrap();
    assert!(run(&mut btc_pipeline(dir.path(), &csv, None, &[]))
        .status
        .success());
    let dead = read_jsonl(&dir.path().join("bitcoin-dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["value"], "\"x\",\"extra, field\",3");
}
