//! Several `sluice run` processes of one pipeline form a worker group on Kafka: they
//! share the sink's partitions, hand them over when a worker joins, and take over a killed
//! worker's partitions once the group's session timeout passes.

mod common;

use common::*;
use std::collections::{BTreeSet, HashMap};
use std::ops::Not;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Worker settings of the tests: a killed worker is taken as dead after 4 s.
const WORKER: &str = "worker: { session_timeout: 4s, heartbeat_interval: 500ms }\n";
const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// Rows of the BTC-USD file (the four all-null rows skipped).
const ROWS: usize = 2530;

/// The feeder: the BTC-USD history, paced, into a 10-partition topic.
fn feeder(dir: &Path, kafka: &str, exactly_once: bool) -> PathBuf {
    let path = dir.join("feed.yaml");
    std::fs::write(
        &path,
        format!(
            "name: feed
kafka: {{ bootstrap_servers: \"{kafka}\" }}
exactly_once: {exactly_once}
topics: {{ bitcoin: {{ partitions: 10 }} }}
sources:
  yahoo_csv:
    type: csv
    path: {csv}
    topic: bitcoin
    key: Date
    columns: {{ Date: date, Open: float, High: float, Low: float, Close: float, \"Adj Close\": float, Volume: int }}
    null_values: [\"null\"]
    all_null_rows: skip
    rate: 60
    batch_size: 20
",
            csv = fixture("BTC-USD.csv").display()
        ),
    )
    .unwrap();
    path
}

/// A worker process whose log goes to a file, read while it runs.
struct Worker {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(name: &'static str, pipeline: &Path, dir: &Path, env: &[(&str, String)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = sluice_run(pipeline, dir.join(format!("state-{name}")));
        cmd.env("SLUICE_LOG", "info,librdkafka=off")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Worker {
            name,
            child: cmd.spawn().expect("sluice starts"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The partitions the worker reads now, from its log of taking and giving up partitions.
    fn owned(&self) -> BTreeSet<String> {
        owned_by(&self.log())
    }
}

/// Whether `shares` split `count` things: each held by exactly one, every share non-empty.
fn split_disjointly(shares: &[BTreeSet<String>], count: usize) -> bool {
    let held: usize = shares.iter().map(BTreeSet::len).sum();
    let all: BTreeSet<&String> = shares.iter().flatten().collect();
    all.len() == count && held == count && shares.iter().all(|s| !s.is_empty())
}

/// Partitions named by `reading partitions` lines minus those of `gave up partitions` lines.
fn owned_by(log: &str) -> BTreeSet<String> {
    let mut owned = BTreeSet::new();
    for line in log.lines() {
        let Some(list) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("partitions="))
        else {
            continue;
        };
        let partitions = list.split(',').map(str::to_string);
        if line.contains("reading partitions") {
            owned.extend(partitions);
        } else if line.contains("gave up partitions") {
            for p in partitions {
                owned.remove(&p);
            }
        }
    }
    owned
}

/// A worker outlives no test: a failed one would leave it running.
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Two workers, then a third joining, then one of them killed with SIGKILL while the feeder
/// still writes: the partitions spread over the live workers, the killed worker's partitions
/// go to the others within the session timeout, and `check` sees what reached the store.
/// Returns how many rows the killed worker had stored.
fn two_then_three_workers_and_a_kill(
    dir: &Path,
    kafka: &str,
    pipeline: &Path,
    env: impl Fn(&str) -> Vec<(&'static str, String)>,
    progress: impl Fn() -> usize,
    feed_during_joins: bool,
) -> Vec<Worker> {
    let feed = feeder(dir, kafka, true);
    let start_feeding = || {
        sluice_run(&feed, dir.join("state-feed"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut feeding = feed_during_joins.then(start_feeding);
    let mut workers = vec![
        Worker::start("a", pipeline, dir, &env("a")),
        Worker::start("b", pipeline, dir, &env("b")),
    ];
    // Every partition read by exactly one worker, and every worker reads some.
    let spread = |workers: &[Worker]| {
        let owned: Vec<BTreeSet<String>> = workers.iter().map(Worker::owned).collect();
        split_disjointly(&owned, 10)
    };
    let took = wait_until(
        "two workers share the 10 partitions",
        Duration::from_secs(60),
        || spread(&workers),
    );
    eprintln!("two workers share the partitions after {took:?}");
    workers.push(Worker::start("c", pipeline, dir, &env("c")));
    let took = wait_until(
        "three workers share the 10 partitions",
        Duration::from_secs(60),
        || spread(&workers),
    );
    eprintln!(
        "three workers share the partitions after {took:?}: {:?}",
        workers.iter().map(Worker::owned).collect::<Vec<_>>()
    );
    let mut feeding = feeding.take().unwrap_or_else(start_feeding);
    let before = progress();
    wait_until("rows keep arriving", Duration::from_secs(30), || {
        progress() >= before + 100
    });
    assert!(
        progress() < ROWS - 300,
        "the feeder is still writing when the worker is killed"
    );

    // Kill the worker with the most partitions.
    let victim = (0..3).max_by_key(|i| workers[*i].owned().len()).unwrap();
    let orphaned = workers[victim].owned();
    workers[victim].child.kill().unwrap();
    workers[victim].child.wait().unwrap();
    let killed_at = Instant::now();
    eprintln!(
        "killed worker {} holding {orphaned:?} at {} rows",
        workers[victim].name,
        progress()
    );
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let taken_over = || {
        let taken: BTreeSet<String> = survivors.iter().flat_map(|i| workers[*i].owned()).collect();
        orphaned.is_subset(&taken)
    };
    while !taken_over() {
        if killed_at.elapsed() > Duration::from_secs(30) {
            for i in &survivors {
                eprintln!("--- worker {} ---\n{}", workers[*i].name, workers[*i].log());
            }
            panic!("the survivors did not take over {orphaned:?} in 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed_at.elapsed();
    eprintln!("partitions taken over {took:?} after the kill");
    // A dead worker is noticed when its session times out; one rebalance round follows
    // (measured: 4.1-4.5 s in all with the 4 s session timeout).
    assert!(
        took <= SESSION_TIMEOUT + Duration::from_secs(2),
        "taken over after {took:?}, session timeout {SESSION_TIMEOUT:?}"
    );

    let fed = wait_exit(&mut feeding, Duration::from_secs(60));
    assert!(fed.success(), "feeder: {fed}");
    wait_until("every row arrives", Duration::from_secs(60), || {
        progress() >= ROWS
    });
    for i in survivors {
        let (status, _) = terminate(&mut workers[i].child);
        assert!(status.success(), "worker {}: {status}", workers[i].name);
    }
    workers
}

fn pipeline_file(dir: &Path, kafka: &str, sink: &str) -> PathBuf {
    let path = dir.join("store.yaml");
    std::fs::write(
        &path,
        format!(
            "name: store
kafka: {{ bootstrap_servers: \"{kafka}\" }}
{WORKER}topics: {{ bitcoin: {{ partitions: 10 }} }}
sinks:
  rows:
    topics: [bitcoin]
    batch: {{ max_records: 50, linger: 20ms }}
{sink}"
        ),
    )
    .unwrap();
    path
}

/// Into MySQL with `exactly_once`: every row once, across the hand-overs and the kill.
#[test]
fn workers_share_partitions_into_mysql_exactly_once_across_joins_and_a_kill() {
    let (broker, db) = (Broker::start(), MariaDb::start());
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(
        dir.path(),
        &broker.addr(),
        &format!(
            "    type: mysql\n    url: {}\n    password: pw\n    table: eo\n    exactly_once: true\n",
            db.url()
        ),
    );
    let rows = || {
        db.try_sql("SELECT COUNT(*) FROM eo")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    let workers = two_then_three_workers_and_a_kill(
        dir.path(),
        &broker.addr(),
        &pipeline,
        |_| vec![],
        rows,
        true,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows(), ROWS, "rows");
    assert_eq!(
        db.sql("SELECT COUNT(DISTINCT Date) FROM eo"),
        ROWS.to_string(),
        "distinct dates"
    );
    for w in &workers {
        assert!(!w.log().contains("ERROR"), "worker {}: {}", w.name, w.log());
    }
}

/// Into files (at least once, one file per worker): every row at least once. Rows are written
/// again only where the killed worker wrote a batch whose offsets the kill kept it from
/// committing: at most one batch (50 rows) of it. Live workers never write the same row: a
/// worker commits what it wrote before it lets a partition go, and the coordinator gives the
/// partition to another only after that (tansu 0.6, the broker before, did not wait for
/// members to rejoin, and two live workers could read one partition for a round).
#[test]
fn workers_share_partitions_into_files_at_least_once_across_joins_and_a_kill() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(format!("out-{name}.jsonl"));
    let pipeline = pipeline_file(
        dir.path(),
        &broker.addr(),
        "    type: file\n    path: unused.jsonl\n",
    );
    // Date → how many times each worker wrote it.
    let dates = || -> HashMap<String, [usize; 3]> {
        let mut seen: HashMap<String, [usize; 3]> = HashMap::new();
        for (w, name) in ["a", "b", "c"].into_iter().enumerate() {
            for line in std::fs::read_to_string(out(name))
                .unwrap_or_default()
                .lines()
            {
                // A line being written when read is skipped; it is complete at the end.
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                seen.entry(value["Date"].to_string()).or_default()[w] += 1;
            }
        }
        seen
    };
    let env = |name: &str| vec![("SLUICE_SINKS__ROWS__PATH", out(name).display().to_string())];
    let workers = two_then_three_workers_and_a_kill(
        dir.path(),
        &broker.addr(),
        &pipeline,
        env,
        || dates().len(),
        true,
    );
    let killed = workers
        .iter()
        .position(|w| w.log().contains("summary after").not())
        .expect("one worker was killed");
    let seen = dates();
    assert_eq!(seen.len(), ROWS, "every row at least once");
    let (mut again_after_kill, mut again_by_live) = (0, 0);
    for counts in seen.values() {
        let survivors: usize = (0..3).filter(|w| *w != killed).map(|w| counts[w]).sum();
        if counts[killed] > 0 && survivors > 0 {
            again_after_kill += counts[killed] + survivors - 1;
        } else {
            again_by_live += counts.iter().sum::<usize>() - 1;
        }
    }
    eprintln!(
        "rows written again: {again_after_kill} of the killed worker's (a batch is 50), {again_by_live} by two live workers"
    );
    assert_eq!(again_by_live, 0, "rows written by two live workers");
    assert!(
        again_after_kill <= 50,
        "{again_after_kill} rows of the killed worker written again: more than its last batch"
    );
}

/// A CSV glob of files (name, rows; `file,row` columns, `file` its index) and a pipeline
/// reading it at `rate` rows per second per file into per-worker files (`out-<worker>.jsonl`).
struct Glob {
    pipeline: PathBuf,
    dir: PathBuf,
    kafka: String,
}

impl Glob {
    fn new(dir: &Path, kafka: &str, files: &[(String, usize)], rate: u32) -> Self {
        let input = Self::input(dir);
        std::fs::create_dir(&input).unwrap();
        for (f, (name, rows)) in files.iter().enumerate() {
            let mut text = String::from("file,row\n");
            for r in 0..*rows {
                text.push_str(&format!("{f},{r}\n"));
            }
            std::fs::write(input.join(name), text).unwrap();
        }
        let pipeline = dir.join("split.yaml");
        std::fs::write(
            &pipeline,
            format!(
                "name: split
kafka: {{ bootstrap_servers: \"{kafka}\" }}
{WORKER}topics: {{ parts: {{ partitions: 4 }} }}
sources:
  parts:
    type: csv
    path: {glob}
    topic: parts
    columns: {{ file: int, row: int }}
    rate: {rate}
    batch_size: 10
sinks:
  rows:
    type: file
    topics: [parts]
    path: unused.jsonl
    batch: {{ max_records: 50, linger: 20ms }}
",
                glob = input.join("*.csv").display()
            ),
        )
        .unwrap();
        Glob {
            pipeline,
            dir: dir.to_path_buf(),
            kafka: kafka.to_string(),
        }
    }

    fn input(dir: &Path) -> PathBuf {
        dir.join("in")
    }

    fn out(&self, worker: &str) -> PathBuf {
        self.dir.join(format!("out-{worker}.jsonl"))
    }

    fn start(&self, worker: &'static str) -> Worker {
        let env = [(
            "SLUICE_SINKS__ROWS__PATH",
            self.out(worker).display().to_string(),
        )];
        Worker::start(worker, &self.pipeline, &self.dir, &env)
    }

    /// (file, row) → times in the topic: read whole by a pipeline of its own, not a worker.
    fn rows_in_topic(&self) -> HashMap<(i64, i64), usize> {
        let path = self.dir.join("verify.yaml");
        std::fs::write(
            &path,
            format!(
                "name: verify
kafka: {{ bootstrap_servers: \"{}\" }}
topics: {{ parts: {{ partitions: 4 }} }}
sinks:
  all: {{ type: file, topics: [parts], path: {} }}
",
                self.kafka,
                self.out("verify").display()
            ),
        )
        .unwrap();
        let mut cmd = sluice_run(&path, self.dir.join("state-verify"));
        cmd.arg("--once");
        let (status, log) = run_bounded(&mut cmd, Duration::from_secs(120));
        assert!(status.success(), "{log}");
        self.rows(&["verify"])
    }

    /// (file, row) → times written by the sinks of `workers`.
    fn rows(&self, workers: &[&str]) -> HashMap<(i64, i64), usize> {
        let mut seen = HashMap::new();
        for name in workers {
            for line in std::fs::read_to_string(self.out(name))
                .unwrap_or_default()
                .lines()
            {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let key = (
                    v["file"].as_i64().unwrap_or(-1),
                    v["row"].as_i64().unwrap_or(-1),
                );
                *seen.entry(key).or_default() += 1;
            }
        }
        seen
    }
}

/// The work units a worker runs now, from its log of taking and giving up units.
fn units_of(worker: &Worker) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for line in worker.log().lines() {
        let Some(list) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("units="))
        else {
            continue;
        };
        if line.contains("running work units") {
            held.extend(list.split(',').map(str::to_string));
        } else if line.contains("gave up work units") {
            for u in list.split(',') {
                held.remove(u);
            }
        }
    }
    held
}

/// A CSV glob of 10 files read by two workers: the files (work units) are split between them,
/// and when one is killed the other finishes its files from their stored offsets: every row of
/// every file reaches the topic, none missing (read back whole afterwards). The workers' sinks
/// are only reported.
#[test]
fn two_workers_split_a_csv_glob_and_the_survivor_finishes_a_killed_workers_files() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    const FILES: usize = 10;
    const ROWS_PER_FILE: usize = 200;
    let files: Vec<(String, usize)> = (0..FILES)
        .map(|f| (format!("part-{f}.csv"), ROWS_PER_FILE))
        .collect();
    let glob = Glob::new(dir.path(), &broker.addr(), &files, 20);
    let mut workers = [glob.start("a"), glob.start("b")];
    // Each file is read by exactly one worker, and both read some.
    wait_until(
        "the workers split the units",
        Duration::from_secs(60),
        || {
            let shares: Vec<BTreeSet<String>> = workers.iter().map(units_of).collect();
            split_disjointly(&shares, FILES)
        },
    );
    let shares: Vec<BTreeSet<String>> = workers.iter().map(units_of).collect();
    eprintln!("units: {shares:?}");
    std::thread::sleep(Duration::from_secs(2));
    workers[1].child.kill().unwrap();
    workers[1].child.wait().unwrap();
    let killed_at = Instant::now();
    while units_of(&workers[0]).len() < FILES {
        if killed_at.elapsed() > Duration::from_secs(45) {
            panic!(
                "the survivor does not run every unit 45 s after the kill:\n{}",
                workers[0].log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "the survivor runs every unit {:?} after the kill",
        killed_at.elapsed()
    );
    let (status, log) = wait_exit_logged(&mut workers[0], Duration::from_secs(120));
    assert!(status.success(), "survivor: {status}");
    let seen = glob.rows_in_topic();
    assert_eq!(
        seen.len(),
        FILES * ROWS_PER_FILE,
        "every row of every file in the topic; the survivor's log:\n{log}"
    );
    let again: usize = seen.values().map(|n| n - 1).sum();
    let by_sinks = glob.rows(&["a", "b"]).len();
    eprintln!("{again} rows sent twice; the workers' sinks wrote {by_sinks} distinct rows");
}

/// A worker whose own files are done stays in the group while another worker still reads a
/// file, ready to take it over: three session timeouts after its file was done, the other
/// worker is stopped (SIGTERM, as in a rolling update) mid-file, and the first finishes that
/// file from its stored offsets. Workers used to leave on a timer (twice the session timeout)
/// whatever the others still had to read. (Taking over from a killed worker is the test above.)
#[test]
fn a_worker_whose_files_are_done_stays_to_finish_a_file_of_a_stopped_worker() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // The short file takes half a second at 20 rows/s; the long one 25 seconds. Their names are
    // picked so that they are different units (a unit is a file's path, hashed over 2 slots).
    let slot = |name: &str| {
        let path = Glob::input(dir.path()).join(name);
        sluice_core::transport::partition_for_key(path.display().to_string().as_bytes(), 2)
    };
    let long = (0..)
        .map(|k| format!("long-{k}.csv"))
        .find(|name| slot(name) != slot("short.csv"))
        .unwrap();
    let glob = Glob::new(
        dir.path(),
        &broker.addr(),
        &[("short.csv".into(), 10), (long, 500)],
        20,
    );
    let mut workers = [glob.start("a"), glob.start("b")];
    wait_until("each worker runs one unit", Duration::from_secs(60), || {
        workers.iter().all(|w| units_of(w).len() == 1)
    });
    // The worker of the short file is the one whose source instance finished.
    let finished = |w: &Worker| w.log().contains("source finished");
    wait_until("the short file is read", Duration::from_secs(30), || {
        workers.iter().any(finished)
    });
    let short = usize::from(finished(&workers[1]));
    let long = 1 - short;
    std::thread::sleep(SESSION_TIMEOUT * 3);
    let (status, _) = terminate(&mut workers[long].child);
    assert!(
        status.success(),
        "stopped worker: {status}\n{}",
        workers[long].log()
    );
    let (status, log) = wait_exit_logged(&mut workers[short], Duration::from_secs(120));
    assert!(status.success(), "the other worker: {status}\n{log}");
    assert_eq!(
        glob.rows_in_topic().len(),
        510,
        "every row of both files in the topic; the log of the worker that stayed:\n{log}"
    );
}

fn wait_exit_logged(worker: &mut Worker, timeout: Duration) -> (std::process::ExitStatus, String) {
    let status = wait_exit(&mut worker.child, timeout);
    (status, worker.log())
}

/// Daily bars of 8 symbols over 20 weeks (from Monday 2021-01-04), in date order.
fn symbols_csv(dir: &Path) -> PathBuf {
    let path = dir.join("symbols.csv");
    let mut text = String::from("Date,symbol,Close,Volume\n");
    let monday = chrono::NaiveDate::from_ymd_opt(2021, 1, 4).unwrap();
    for day in 0..140i64 {
        for s in 0..8i64 {
            let close = 100.0 * (s + 1) as f64 * (1.0 + 0.05 * ((day * 7 + s * 3) as f64).sin());
            let date = monday + chrono::Duration::days(day);
            text.push_str(&format!("{date},S{s},{close:.4},{}\n", 1000 + day * 10 + s));
        }
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A pipeline computing weekly candles of `daily` into `weekly_topic` and a file; the
/// feeder (`feed: true`) writes the bars into `daily`, keyed by symbol.
fn candles_pipeline(dir: &Path, kafka: &str, name: &str, weekly_topic: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {name}
kafka: {{ bootstrap_servers: \"{kafka}\" }}
{WORKER}exactly_once: true
topics: {{ daily: {{ partitions: 4 }}, {weekly_topic}: {{ partitions: 4 }} }}
transforms:
  weekly:
    type: window
    inputs: [daily]
    topic: {weekly_topic}
    size: 1w
    batch: {{ max_records: 20, linger: 20ms }}
    aggregates: {{ open: first(Close), high: max(Close), low: min(Close), close: last(Close), volume: sum(Volume), days: count }}
sinks:
  candles:
    type: file
    topics: [{weekly_topic}]
    path: ${{CANDLES_OUT}}
"
        ),
    )
    .unwrap();
    path
}

/// The candles of every file `paths`, by key and start; a candle written twice (at least
/// once delivery across a hand-over) must be the same candle.
fn candles_of(paths: &[PathBuf]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut all = std::collections::BTreeMap::new();
    for path in paths.iter().filter(|p| p.exists()) {
        for candle in read_jsonl(path) {
            let id = format!("{}/{}", candle["key"], candle["start"]);
            if let Some(before) = all.insert(id.clone(), candle.clone()) {
                assert_eq!(before, candle, "{id} written twice, differently");
            }
        }
    }
    all
}

/// A `window` split over two workers (the second joining mid-stream, so that the first
/// hands over partitions with their window state) makes the same candles as one worker.
#[test]
fn a_window_split_over_two_workers_makes_the_candles_of_one() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = symbols_csv(dir.path());
    // 8 symbols × 19 closed weeks (the 20th stays open: nothing after it closes it).
    const CLOSED: usize = 8 * 19;
    let feed = dir.path().join("feed.yaml");
    std::fs::write(
        &feed,
        format!(
            "name: feed
kafka: {{ bootstrap_servers: \"{kafka}\" }}
exactly_once: true
topics: {{ daily: {{ partitions: 4 }} }}
sources:
  bars:
    type: csv
    path: {csv}
    topic: daily
    key: symbol
    timestamp_column: Date
    columns: {{ Date: date, symbol: string, Close: float, Volume: int }}
    rate: 150
    batch_size: 8
",
            kafka = broker.addr(),
            csv = csv.display()
        ),
    )
    .unwrap();
    let kafka = broker.addr();
    let finals = |paths: &[PathBuf]| {
        candles_of(paths)
            .into_values()
            .filter(|c| c["final"] == true)
            .count()
    };

    // Two workers: a starts, the feeder starts, b joins once a has candles out.
    let two = candles_pipeline(dir.path(), &kafka, "two", "weekly2");
    let outs = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    let out_env = |i: usize| vec![("CANDLES_OUT", outs[i].display().to_string())];
    let mut a = Worker::start("a", &two, dir.path(), &out_env(0));
    wait_until("worker a reads", Duration::from_secs(60), || {
        !a.owned().is_empty()
    });
    let mut feeding = sluice_run(&feed, dir.path().join("state-feed"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a writes candles", Duration::from_secs(60), || {
        outs[0].exists() && count_lines(&outs[0]) >= 8
    });
    let mut b = Worker::start("b", &two, dir.path(), &out_env(1));
    wait_until("b takes input partitions", Duration::from_secs(60), || {
        b.owned().iter().any(|p| p.starts_with("daily/"))
    });
    assert!(
        finals(&outs) < CLOSED / 2,
        "b joined with most candles already out"
    );
    let fed = wait_exit(&mut feeding, Duration::from_secs(120));
    assert!(fed.success(), "feeder: {fed}");
    wait_until("every closed week is out", Duration::from_secs(60), || {
        finals(&outs) >= CLOSED
    });
    for worker in [&mut a, &mut b] {
        let (status, _) = terminate(&mut worker.child);
        assert!(
            status.success(),
            "worker {}: {status}\n{}",
            worker.name,
            worker.log()
        );
    }
    let b_wrote = count_lines(&outs[1]);
    assert!(b_wrote > 0, "b wrote no candle");

    // One worker, reading the same topic from the start as another pipeline.
    let one = candles_pipeline(dir.path(), &kafka, "one", "weekly1");
    let single = [dir.path().join("one.jsonl")];
    let mut only = Worker::start(
        "one",
        &one,
        dir.path(),
        &[("CANDLES_OUT", single[0].display().to_string())],
    );
    wait_until(
        "one worker writes every closed week",
        Duration::from_secs(60),
        || finals(&single) >= CLOSED,
    );
    terminate(&mut only.child);

    let (split, whole) = (candles_of(&outs), candles_of(&single));
    let closed = |m: &std::collections::BTreeMap<String, serde_json::Value>| {
        m.iter()
            .filter(|(_, c)| c["final"] == true)
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(closed(&whole).len(), CLOSED);
    assert_eq!(
        closed(&split),
        closed(&whole),
        "two workers made other candles"
    );
    eprintln!("b wrote {b_wrote} of {CLOSED} candles");
}

/// Without a `worker:` section, a second `sluice run` of the same pipeline on Kafka is a
/// second worker of its group, not a second reader: the two split the partitions, and every
/// row fed afterwards is written once, by one of them.
#[test]
fn a_second_copy_of_a_pipeline_is_a_second_worker_without_a_worker_section() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(
        dir.path(),
        &broker.addr(),
        "    type: file\n    path: unused.jsonl\n",
    );
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, text.replace(WORKER, "")).unwrap();
    let out = |name: &str| dir.path().join(format!("out-{name}.jsonl"));
    let env = |name: &str| vec![("SLUICE_SINKS__ROWS__PATH", out(name).display().to_string())];
    let mut workers = [
        Worker::start("a", &pipeline, dir.path(), &env("a")),
        Worker::start("b", &pipeline, dir.path(), &env("b")),
    ];
    wait_until(
        "two copies split the 10 partitions",
        Duration::from_secs(60),
        || {
            let owned: Vec<BTreeSet<String>> = workers.iter().map(Worker::owned).collect();
            split_disjointly(&owned, 10)
        },
    );
    let mut feeding = sluice_run(
        feeder(dir.path(), &broker.addr(), false),
        dir.path().join("state-feed"),
    )
    .env("SLUICE_SOURCES__YAHOO_CSV__RATE", "5000")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    assert!(wait_exit(&mut feeding, Duration::from_secs(60)).success());
    let lines = || -> Vec<String> {
        ["a", "b"]
            .iter()
            .flat_map(|w| {
                std::fs::read_to_string(out(w))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.ends_with('}'))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_until("every row arrives", Duration::from_secs(60), || {
        lines().len() >= ROWS
    });
    for w in &mut workers {
        let (status, _) = terminate(&mut w.child);
        assert!(status.success(), "worker {}: {status}", w.name);
    }
    let written = lines();
    let distinct: BTreeSet<&String> = written.iter().collect();
    assert_eq!(distinct.len(), ROWS, "every row written");
    assert_eq!(written.len(), ROWS, "no row written by both copies");
}

/// A source's offsets reset while another worker still runs the source would be undone
/// within a second (that worker stores its offsets again): refused, as a sink's reset is,
/// naming the reason; once the other worker stopped too, the reset goes through.
#[test]
fn a_source_reset_is_refused_while_another_worker_runs_the_source() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, usize)> = (0..4).map(|f| (format!("part-{f}.csv"), 2000)).collect();
    let glob = Glob::new(dir.path(), &broker.addr(), &files, 20);
    let port = free_port();
    let mut a = Worker::start(
        "a",
        &glob.pipeline,
        dir.path(),
        &[
            (
                "SLUICE_SINKS__ROWS__PATH",
                glob.out("a").display().to_string(),
            ),
            ("SLUICE_LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let mut b = glob.start("b");
    wait_until(
        "the workers split the units",
        Duration::from_secs(60),
        || split_disjointly(&[units_of(&a), units_of(&b)], 4),
    );
    let api = |method: reqwest::Method, path: &str| {
        let response = reqwest::blocking::Client::new()
            .request(
                method,
                format!("http://127.0.0.1:{port}/connectors/split.parts{path}"),
            )
            .send()
            .unwrap();
        let status = response.status();
        (status, response.text().unwrap_or_default())
    };
    let (code, body) = api(reqwest::Method::PUT, "/stop");
    assert!(code.is_success(), "{code} {body}");
    wait_until("the source shows STOPPED", Duration::from_secs(20), || {
        api(reqwest::Method::GET, "/status").1.contains("STOPPED")
    });
    let (code, body) = api(reqwest::Method::DELETE, "/offsets");
    assert!(
        !code.is_success(),
        "reset answered {code} while b runs the source: {body}"
    );
    assert!(body.contains("another worker"), "{body}");
    let (status, _) = terminate(&mut b.child);
    assert!(status.success(), "{status}");
    wait_until("the reset goes through", Duration::from_secs(30), || {
        api(reqwest::Method::DELETE, "/offsets").0.is_success()
    });
    let (status, _) = terminate(&mut a.child);
    assert!(status.success(), "{status}\n{}", a.log());
}

/// A paused sink keeps its partitions: a Kafka consumer that stops polling for
/// `max.poll.interval.ms` is evicted from its group (its partitions revoked, read again on the
/// resume), so a paused sink pauses its partitions and polls on. Paused for twice that
/// interval, then resumed: no partition changed hands, and every row is written once.
#[test]
fn a_sink_paused_past_the_max_poll_interval_keeps_its_partitions() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("paused.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: paused
kafka: {{ bootstrap_servers: \"{kafka}\", consumer: {{ max.poll.interval.ms: \"5000\" }} }}
worker: {{ session_timeout: 3s, heartbeat_interval: 500ms }}
topics: {{ bitcoin: {{ partitions: 2, config: {{ retention.ms: \"-1\" }} }} }}
sources:
  rows:
    type: csv
    path: {csv}
    topic: bitcoin
    key: Date
    columns: {{ Date: date, Close: float }}
    null_values: [\"null\"]
    all_null_rows: skip
    rate: 150
sinks:
  archive:
    type: file
    topics: [bitcoin]
    path: {out}
    batch: {{ max_records: 20, linger: 20ms }}
",
            kafka = broker.addr(),
            csv = fixture("BTC-USD.csv").display(),
            out = out.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut worker = Worker::start(
        "w",
        &pipeline,
        dir.path(),
        &[("SLUICE_LISTEN", format!("127.0.0.1:{port}"))],
    );
    wait_until("rows arrive", Duration::from_secs(60), || {
        count_lines(&out) >= 100
    });
    let call = |what: &str| {
        reqwest::blocking::Client::new()
            .put(format!(
                "http://127.0.0.1:{port}/connectors/paused.archive/{what}"
            ))
            .send()
            .unwrap()
            .status()
    };
    assert!(call("pause").is_success());
    std::thread::sleep(Duration::from_secs(1));
    let at_pause = count_lines(&out);
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(count_lines(&out), at_pause, "nothing written while paused");
    assert!(call("resume").is_success());
    let (status, log) = wait_exit_logged(&mut worker, Duration::from_secs(120));
    assert!(status.success(), "{status}\n{log}");
    let text = std::fs::read_to_string(&out).unwrap();
    let distinct: BTreeSet<&str> = text.lines().collect();
    assert_eq!(text.lines().count(), ROWS, "{log}");
    assert_eq!(distinct.len(), ROWS);
    let assignments = log
        .lines()
        .filter(|l| l.contains("archive") && l.contains("reading partitions"))
        .count();
    assert!(
        assignments == 1 && !log.contains("gave up partitions"),
        "the paused sink's partitions changed hands:\n{log}"
    );
}
