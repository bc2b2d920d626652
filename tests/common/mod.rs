//! Helpers for the end-to-end tests: run the `sluice` binary as a user would, start a private
//! Kafka-protocol broker on a free loopback port, and check what arrived, record by record.
#![allow(dead_code)] // each test binary uses a different part

pub mod api_mock;
pub mod es_mock;
pub mod x_mock;

use serde_json::Value;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// `sluice` with logs kept quiet but for warnings, and no REST API (tests run many at once;
/// the API's tests set `SLUICE_LISTEN`).
pub fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(root())
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_LISTEN", "none");
    cmd
}

/// `sluice run PIPELINE --state-dir STATE`.
pub fn sluice_run(
    pipeline: impl AsRef<std::ffi::OsStr>,
    state: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let mut cmd = sluice();
    cmd.arg("run").arg(pipeline).arg("--state-dir").arg(state);
    cmd
}

/// Runs the BTC history example pipeline (`pipelines/btc-history-csv-to-file.yaml`) on `csv`,
/// writing into `dir`; `env` adds overrides such as `SLUICE_SOURCES__YAHOO_CSV__RATE`.
pub fn btc_pipeline(dir: &Path, csv: &Path, kafka: Option<&str>, env: &[(&str, &str)]) -> Command {
    btc_pipeline_file(
        Path::new("pipelines/btc-history-csv-to-file.yaml"),
        dir,
        csv,
        kafka,
        env,
    )
}

/// Like [`btc_pipeline`], with a variant of that pipeline file.
pub fn btc_pipeline_file(
    file: &Path,
    dir: &Path,
    csv: &Path,
    kafka: Option<&str>,
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = sluice();
    cmd.arg("run").arg(file);
    if let Some(kafka) = kafka {
        cmd.args(["--kafka", kafka]);
    }
    cmd.arg("--state-dir")
        .arg(dir.join("state"))
        .env("BTC_CSV", csv)
        .env("BTC_OUT", dir.join("bitcoin.jsonl"))
        .env("BTC_DLQ_OUT", dir.join("bitcoin-dlq.jsonl"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("sluice runs");
    eprintln!("--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "{} holds a line that is not JSON ({e}): {l}",
                    path.display()
                )
            })
        })
        .collect()
}

pub fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits until `path` holds at least `n` lines.
pub fn wait_for_lines(path: &Path, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while count_lines(path) < n {
        assert!(
            Instant::now() < deadline,
            "{} never reached {n} lines",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM and waits for the exit, returning the status and how long it took.
pub fn terminate(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
    let status = wait_exit(child, Duration::from_secs(30));
    (status, started.elapsed())
}

/// Rows of `tests/fixtures/BTC-USD.csv` that are records.
pub const BTC_ROWS: usize = 2530;

/// How [`interrupt_then_rerun`] stops the first run.
pub enum Stop {
    /// `kill -9`: nothing flushed, nothing committed.
    Kill,
    /// SIGTERM: a graceful stop.
    Term,
}

/// What the interrupted first run left behind.
pub struct Interrupted {
    /// Lines in the output file when the first run had exited.
    pub rows_before: usize,
    pub status: std::process::ExitStatus,
    /// From the stop signal to the exit.
    pub took: Duration,
}

/// Runs the BTC pipeline in `dir` slowed by the `slow` overrides, stops it with `stop` once the
/// output file holds `after_rows` lines, checks that it stopped before the end, then runs the
/// same command again, without `slow`, to a successful end.
pub fn interrupt_then_rerun(
    dir: &Path,
    csv: &Path,
    kafka: Option<&str>,
    slow: &[(&str, &str)],
    after_rows: usize,
    stop: Stop,
) -> Interrupted {
    let out = dir.join("bitcoin.jsonl");
    let mut child = btc_pipeline(dir, csv, kafka, slow)
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice starts");
    wait_for_lines(&out, after_rows, Duration::from_secs(60));
    let (status, took) = match stop {
        Stop::Term => terminate(&mut child),
        Stop::Kill => {
            let started = Instant::now();
            child.kill().expect("kill -9 works");
            (child.wait().expect("wait works"), started.elapsed())
        }
    };
    let rows_before = count_lines(&out);
    assert!(
        rows_before < BTC_ROWS,
        "the run was not interrupted ({rows_before} rows)"
    );
    assert!(run(&mut btc_pipeline(dir, csv, kafka, &[]))
        .status
        .success());
    Interrupted {
        rows_before,
        status,
        took,
    }
}

/// Runs `cmd` to its exit, failing the test if that takes longer than `timeout` (a hang);
/// returns the exit status and stderr.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (std::process::ExitStatus, String) {
    let mut running = Logged::spawn(cmd);
    running.exit(timeout)
}

/// A running `sluice` whose stderr is collected as it goes (a full pipe would block it).
pub struct Logged {
    pub child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Logged {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts");
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        });
        Logged {
            child,
            stderr: Some(stderr),
        }
    }

    /// Waits for the exit (failing the test after `timeout`); the status and all of stderr.
    pub fn exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let status = wait_exit(&mut self.child, timeout);
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        eprintln!("--- stderr ---\n{stderr}");
        (status, stderr)
    }
}

/// Waits for `child` to exit, failing the test after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One row of a Yahoo CSV: the date and the six numbers, `None` where Yahoo wrote `null`.
pub struct CsvRow {
    pub date: String,
    pub numbers: Option<[f64; 6]>,
}

pub fn csv_rows(csv: &Path) -> Vec<CsvRow> {
    let text = std::fs::read_to_string(csv).expect("fixture readable");
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let numbers = if fields[1] == "null" {
                None
            } else {
                let mut n = [0.0; 6];
                for (i, f) in fields[1..7].iter().enumerate() {
                    n[i] = f.parse().expect("number");
                }
                Some(n)
            };
            CsvRow {
                date: fields[0].to_string(),
                numbers,
            }
        })
        .collect()
}

/// Checks that every non-null row of `csv` is in `out` with equal values, numbers as JSON
/// numbers, and nothing else; returns how many lines are duplicates.
pub fn check_every_row_arrived(csv: &Path, out: &Path) -> usize {
    let rows = csv_rows(csv);
    let written = read_jsonl(out);
    let mut by_date: HashMap<String, (usize, &Value)> = HashMap::new();
    for value in &written {
        let date = value["Date"]
            .as_str()
            .unwrap_or_else(|| panic!("no Date in {value}"))
            .to_string();
        by_date.entry(date).or_insert((0, value)).0 += 1;
    }
    let names = ["Open", "High", "Low", "Close", "Adj Close", "Volume"];
    let mut expected = 0;
    for row in &rows {
        let Some(numbers) = row.numbers else {
            assert!(
                !by_date.contains_key(&row.date),
                "all-null row {} was written",
                row.date
            );
            continue;
        };
        expected += 1;
        let (_, value) = by_date
            .get(&row.date)
            .unwrap_or_else(|| panic!("row {} is missing", row.date));
        for (name, number) in names.iter().zip(numbers) {
            let field = &value[*name];
            assert!(
                field.is_number(),
                "{name} of {} is not a number: {field}",
                row.date
            );
            assert_eq!(field.as_f64(), Some(number), "{name} of {}", row.date);
        }
        assert!(
            value["Volume"].is_i64(),
            "Volume of {} is not an integer",
            row.date
        );
    }
    assert_eq!(
        by_date.len(),
        expected,
        "rows that are not in the CSV were written"
    );
    written.len() - by_date.len()
}

/// A private Kafka-protocol broker (nisshi, see `scripts/broker.sh`) on a free loopback port,
/// stopped on drop.
///
/// Tests use SQLite storage, which survives a broker restart. (tansu 0.6, the broker before,
/// also lost records from its memory storage for a consumer resuming inside a record batch.)
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    dir: tempfile::TempDir,
}

impl Broker {
    /// SQLite storage in a temporary folder; it also survives a broker restart.
    pub fn start() -> Self {
        Self::start_with_storage("sqlite://nisshi.db")
    }

    /// A broker on `storage`, e.g. `memory://nisshi/` (the default of `scripts/broker.sh`).
    pub fn start_with_storage(storage: &str) -> Self {
        let port = free_port();
        let mut broker = Broker {
            child: None,
            port,
            storage: storage.into(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        broker.spawn();
        broker
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let bin = std::env::var("BROKER_BIN").unwrap_or_else(|_| "nisshi".into());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("log file");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &self.storage])
            .current_dir(self.dir.path())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the broker (`{bin}`): {e}. Install it with scripts/test.sh, or set BROKER_BIN."));
        self.child = Some(child);
        wait_listening(self.port, "the broker");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private MariaDB server (Debian's `mariadb-server`) with database `sluice` and user
/// `sluice`/`pw` on a free loopback port, its data in a temporary folder; stopped on drop.
pub struct MariaDb {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    options: Vec<String>,
}

impl MariaDb {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with extra `mariadbd` options (TLS certificates, limits…).
    pub fn start_with(options: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Retried: under load it has failed at once (twice in CI runs, at the same place in
        // the suite), and passed when run again.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let data = dir.path().join("data");
            let _ = std::fs::remove_dir_all(&data);
            let out = Command::new("mariadb-install-db")
                .args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
                .arg(format!("--datadir={}", data.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run mariadb-install-db: {e}. Install mariadb-server (scripts/test.sh does).")
                });
            if out.status.success() {
                failures.clear();
                break;
            }
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            eprintln!(
                "mariadb-install-db failed; retrying:\n{}",
                failures.last().unwrap()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            failures.is_empty(),
            "mariadb-install-db failed 3 times:\n{}",
            failures.join("\n---\n")
        );
        let mut db = MariaDb {
            child: None,
            port: free_port(),
            dir,
            options: options.to_vec(),
        };
        db.spawn();
        db.root_sql(
            "CREATE DATABASE sluice; CREATE USER 'sluice'@'127.0.0.1' IDENTIFIED BY 'pw'; \
             GRANT ALL ON *.* TO 'sluice'@'127.0.0.1';",
        );
        db
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let bin = if Path::new("/usr/sbin/mariadbd").exists() {
            "/usr/sbin/mariadbd"
        } else {
            "mariadbd"
        };
        let child = Command::new(bin)
            .arg("--user=root")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            // A starting server deletes every `#sql*` file of its tmpdir: a shared `/tmp`
            // would lose the temporary tables of the servers other tests are running.
            .arg(format!("--tmpdir={}", d.display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mariadbd: {e}"));
        self.child = Some(child);
        wait_listening(self.port, "mariadbd");
    }

    pub fn url(&self) -> String {
        format!("mysql://sluice@127.0.0.1:{}/sluice", self.port)
    }

    /// The server's socket, for the `mariadb` client as root.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("sock")
    }

    fn root_sql(&self, sql: &str) -> String {
        self.try_root_sql(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn try_root_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .expect("mariadb client runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` as root outside any database (server settings).
    pub fn admin_sql(&self, sql: &str) -> String {
        self.root_sql(sql)
    }

    /// Like [`MariaDb::sql`], `None` on an error (a table not created yet).
    pub fn try_sql(&self, sql: &str) -> Option<String> {
        self.try_root_sql(&format!("USE sluice; {sql}")).ok()
    }

    /// Runs `sql` in database `sluice`; returns the tab-separated result.
    pub fn sql(&self, sql: &str) -> String {
        self.root_sql(&format!("USE sluice; {sql}"))
    }

    /// Stops the server cleanly, keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `messages` (key, JSON value; `None` for a tombstone) to `topic` in this order, and
/// waits until the broker has them all.
pub fn produce(kafka: &str, topic: &str, messages: &[(Option<&str>, Option<&str>)]) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .create()
        .expect("a Kafka producer");
    for (key, value) in messages {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer.send(record).map_err(|(e, _)| e).expect("queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("the broker acknowledged every message");
}

/// A copy of example pipeline `pipeline` (a path under `pipelines/`) with its `sinks:` section
/// replaced by `sinks` (YAML, the section's body), written into `dir` as `name`.
pub fn with_sinks(pipeline: &str, dir: &Path, name: &str, sinks: &str) -> PathBuf {
    let yaml = std::fs::read_to_string(root().join(pipeline)).expect("the pipeline file");
    let sinks_at = yaml.find("sinks:").expect("a sinks section");
    let errors_at = yaml
        .find("errors:")
        .expect("an errors section after the sinks");
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("{}sinks:\n{sinks}{}", &yaml[..sinks_at], &yaml[errors_at..]),
    )
    .expect("write the pipeline copy");
    path
}
