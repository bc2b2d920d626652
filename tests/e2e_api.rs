//! The REST API and `/metrics` of a running `sluice run`, as an operator uses them: status,
//! configs with secrets hidden, pause and resume, validation, Prometheus text whose counters
//! match what arrived, `sluice status`; and no secret anywhere, logs included.

mod common;

use common::api_mock::{ApiFaults, ApiMock};
use common::*;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SENTINEL: &str = "sentinel-Zq8wK3-never-shown";
const TOKEN: &str = "token-4Fv9-for-changes";

/// The Messari example pipeline polling `api_mock` every 100 ms into `dir/prices.jsonl`, its
/// API on `port` with [`TOKEN`], the key [`SENTINEL`]; state in `dir/state`.
fn messari_to_file(dir: &std::path::Path, api_mock: &ApiMock, port: u16) -> std::process::Command {
    let sinks = format!(
        "  prices:\n    type: file\n    topics: [bitcoin]\n    path: {}\n    batch: {{ max_records: 10, linger: 50ms }}\n  rejects:\n    type: file\n    topics: [messari-dlq]\n    format: envelope\n    path: {}\n",
        dir.join("prices.jsonl").display(),
        dir.join("dlq.jsonl").display(),
    );
    let pipeline = with_sinks(
        "pipelines/messari-btc-to-elasticsearch.yaml",
        dir,
        "messari.yaml",
        &sinks,
    );
    let mut command = sluice_run(&pipeline, dir.join("state"));
    command
        .env("MESSARI_URL", &api_mock.url)
        .env("MESSARI_API", "v1")
        .env("MESSARI_API_KEY", SENTINEL)
        .env("MESSARI_INTERVAL", "100ms")
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_API_TOKEN", TOKEN);
    command
}

/// The weekly-candles example, slowed to 50 rows/s, writing into `dir`, its API on `port`
/// (no token unless the caller sets one).
fn slow_weekly(dir: &std::path::Path, state: &str, port: u16) -> std::process::Command {
    let mut command = sluice_run(
        root().join("pipelines/btc-weekly-candles.yaml"),
        dir.join(state),
    );
    command
        .env("CANDLES_OUT", dir.join("candles.jsonl"))
        .env("CANDLES_DLQ_OUT", dir.join("dlq.jsonl"))
        .env("SLUICE_SOURCES__YAHOO_CSV__RATE", "50")
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("SLUICE_API_TOKEN")
        .stdout(Stdio::null());
    command
}

fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_rest_api_reports_pauses_resumes_and_counts_what_arrived_without_showing_secrets() {
    let api_mock = ApiMock::start(ApiFaults {
        required_header: Some(("x-messari-api-key".into(), SENTINEL.into())),
        ..ApiFaults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.jsonl");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("sluice.log");
    let mut child = messari_to_file(dir.path(), &api_mock, port)
        // The embedded log acknowledges once sinks commit: with room for many unacknowledged
        // batches the source keeps polling while the sink is paused.
        .env("SLUICE_SOURCES__MESSARI__MAX_IN_FLIGHT_BATCHES", "10000")
        .env("SLUICE_LOG", "debug,librdkafka=off,hyper=off,reqwest=off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // With a token set, reads of configs and offsets need it too.
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
    };
    let json = |path: &str| -> Value { get(path).unwrap().json().unwrap() };
    eventually("/health answers 200", Duration::from_secs(30), || {
        get("/health").is_ok_and(|r| r.status() == StatusCode::OK)
    });

    // What runs, and its config with the secret hidden.
    let names = json("/connectors");
    for name in [
        "messari-btc.messari",
        "messari-btc.prices",
        "messari-btc.rejects",
    ] {
        assert!(
            names.as_array().unwrap().contains(&Value::from(name)),
            "{names}"
        );
    }
    let source = json("/connectors/messari-btc.messari");
    assert_eq!(source["type"], "source");
    assert_eq!(source["config"]["api_key"], "***", "{source}");
    assert_eq!(source["config"]["type"], "messari");
    let status = json("/connectors/messari-btc.prices/status");
    assert_eq!(status["connector"]["state"], "RUNNING", "{status}");
    assert_eq!(status["tasks"][0]["state"], "RUNNING");
    assert_eq!(
        get("/connectors/nope/status").unwrap().status(),
        StatusCode::NOT_FOUND
    );
    eventually("prices arrive", Duration::from_secs(30), || {
        count_lines(&prices) >= 3
    });

    // Pause: refused without the token; with it, the sink stops within a second while the
    // source goes on (its lag grows); resume continues.
    let pause = || client.put(format!("{base}/connectors/messari-btc.prices/pause"));
    assert_eq!(pause().send().unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        pause().bearer_auth("wrong").send().unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        pause().bearer_auth(TOKEN).send().unwrap().status(),
        StatusCode::ACCEPTED
    );
    let paused_at = Instant::now();
    // Read from the API, not yet acknowledged: the embedded log acknowledges once sinks commit.
    let source_in = || {
        json("/connectors/messari-btc.messari/status")["metrics"]["records_in"]
            .as_u64()
            .unwrap()
    };
    std::thread::sleep(Duration::from_secs(1));
    let status = json("/connectors/messari-btc.prices/status");
    assert_eq!(status["connector"]["state"], "PAUSED", "{status}");
    let (lines, polled) = (count_lines(&prices), source_in());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count_lines(&prices), lines, "nothing written while paused");
    assert!(
        source_in() > polled,
        "the source goes on while the sink is paused"
    );
    eprintln!("paused {:?}: {lines} lines", paused_at.elapsed());

    // While paused the counters stand still: /metrics parses and says what the file holds.
    let text = get("/metrics").unwrap().text().unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample = |name: &str, component: &str| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("component") == Some(component))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} for {component} in:\n{text}"))
    };
    assert_eq!(
        sample("sluice_records_out_total", "prices"),
        lines as f64,
        "{text}"
    );
    assert_eq!(sample("sluice_component_paused", "prices"), 1.0);
    assert!(sample("sluice_records_out_total", "messari") >= lines as f64);
    assert!(sample("sluice_source_last_poll_timestamp_seconds", "messari") > 1.7e9);
    assert!(
        text.contains("sluice_sink_store_seconds") && text.contains("sluice_sink_batch_records"),
        "{text}"
    );

    let resume = client
        .put(format!("{base}/connectors/messari-btc.prices/resume"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(resume.status(), StatusCode::ACCEPTED);
    eventually("the sink writes again", Duration::from_secs(5), || {
        count_lines(&prices) > lines
    });

    // Offsets: the source's per source partition, the sink's per topic partition.
    eventually(
        "offsets are stored and committed",
        Duration::from_secs(10),
        || {
            let source = json("/connectors/messari-btc.messari/offsets");
            let sink = json("/connectors/messari-btc.prices/offsets");
            source["offsets"][0]["partition"]["source_partition"].is_string()
                && sink["offsets"][0]["offset"]["kafka_offset"].as_i64() > Some(0)
        },
    );

    // Plugins, validation, the API's description, `sluice status`.
    let plugins = json("/connector-plugins");
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["class"] == "mysql" && p["type"] == "sink"),
        "{plugins}"
    );
    let validated: Value = client
        .put(format!("{base}/connector-plugins/csv/config/validate"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "path": "", "rate": -1 }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(validated["error_count"], 2, "{validated}");
    let fields: Vec<&str> = validated["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["path", "rate"]);
    let openapi = json("/openapi.json");
    assert!(openapi["paths"]["/connectors/{name}/pause"]["put"].is_object());
    let status_cli = run(sluice().args(["status", "--url", &base]));
    let printed = String::from_utf8_lossy(&status_cli.stdout).into_owned();
    assert!(status_cli.status.success(), "{printed}");
    // Every value ends under its header: IN and OUT are right-aligned at the header's end.
    let lines: Vec<&str> = printed.lines().collect();
    let end_of = |line: &str, column: &str| line.find(column).map(|at| at + column.len());
    let (in_end, out_end) = (
        end_of(lines[0], " IN").unwrap(),
        end_of(lines[0], " OUT").unwrap(),
    );
    for row in &lines[1..] {
        let cell_end = |end: usize| {
            row.as_bytes().get(end - 1).is_some_and(u8::is_ascii_digit)
                && row.as_bytes().get(end).is_some_and(|b| *b == b' ')
        };
        assert!(
            cell_end(in_end) && cell_end(out_end),
            "not aligned:\n{printed}"
        );
    }
    assert!(
        printed.contains("messari-btc.prices") && printed.contains("RUNNING"),
        "{printed}"
    );

    // The status page in headless Chromium: every connector, its state and a rate above zero.
    let page = status_page(&base);
    for name in [
        "messari-btc.messari",
        "messari-btc.prices",
        "messari-btc.rejects",
    ] {
        assert!(
            page.contains(&format!("data-connector=\"{name}\"")),
            "{name} on the page:\n{page}"
        );
    }
    assert!(page.contains(">RUNNING<"), "{page}");
    let source_row = &page[page.find("data-connector=\"messari-btc.messari\"").unwrap()..];
    let rate: f64 = source_row
        .split("class=\"num rate\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {source_row}"));
    assert!(rate > 0.0, "the source's rate on the page: {rate}");
    assert!(page.contains("class=\"spark-max\""), "{page}");

    // Paused, the source's rate on the page is that of the last interval, 0, not its
    // lifetime average.
    let source_pause = || client.put(format!("{base}/connectors/messari-btc.messari/pause"));
    assert_eq!(
        source_pause().bearer_auth(TOKEN).send().unwrap().status(),
        StatusCode::ACCEPTED
    );
    std::thread::sleep(Duration::from_millis(1500));
    let paused_page = status_page(&base);
    let paused_row = &paused_page[paused_page
        .find("data-connector=\"messari-btc.messari\"")
        .unwrap()..];
    let paused_rate = paused_row
        .split("class=\"num rate\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_default();
    assert_eq!(paused_rate, "0.0", "{paused_row}");
    assert_eq!(
        client
            .put(format!("{base}/connectors/messari-btc.messari/resume"))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );

    // Everything an operator sees, none with the secret.
    let mut seen = page;
    for path in [
        "/connectors?expand=status",
        "/connectors/messari-btc.messari",
        "/connectors/messari-btc.prices",
        "/metrics",
        "/health",
        "/",
    ] {
        seen.push_str(&get(path).unwrap().text().unwrap());
    }
    seen.push_str(&printed);
    let (status, _) = terminate(&mut child);
    assert!(status.success(), "{status}");
    seen.push_str(&std::fs::read_to_string(&log).unwrap());
    assert!(
        !seen.contains(SENTINEL),
        "the secret shows somewhere:\n{seen}"
    );
    assert!(
        seen.contains("REST API and /metrics listening"),
        "the log says where the API is"
    );
}

/// The status page after its scripts ran, as headless Chromium (`CHROMIUM`, default Debian's
/// `chromium`, which scripts/test.sh installs) renders it; a screenshot goes to
/// `target/test-output/status-page.png`.
fn status_page(base: &str) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let headless = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,360",
        "--virtual-time-budget=3000",
    ];
    let dom = std::process::Command::new(&chromium)
        .args(headless)
        .arg("--dump-dom")
        .arg(format!("{base}/"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{chromium}` ({e}); scripts/test.sh installs it"));
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let out = root().join("target/test-output");
    std::fs::create_dir_all(&out).unwrap();
    let shot = out.join("status-page.png");
    let screenshot = std::process::Command::new(&chromium)
        .args(headless)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("{base}/ui"))
        .output()
        .unwrap();
    assert!(
        screenshot.status.success() && shot.exists(),
        "no screenshot"
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// A worker as an operator drives it: `(method, path)` answers with its status and JSON body.
struct Operator {
    client: Client,
    base: String,
}

impl Operator {
    fn new(port: u16) -> Self {
        Operator {
            client: Client::builder()
                .timeout(Duration::from_secs(70))
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            // What a client outside a browser sends, and a web page cannot without asking.
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .unwrap();
        let status = response.status();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path).1
    }

    fn state(&self, connector: &str) -> String {
        self.get(&format!("/connectors/{connector}/status"))["connector"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `PUT /connectors/{name}/stop`, then waits for STOPPED and for `out` to stop growing;
    /// returns its lines then.
    fn stop_and_settle(&self, name: &str, out: &std::path::Path) -> usize {
        let (code, body) = self.call(reqwest::Method::PUT, &format!("/connectors/{name}/stop"));
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        eventually(
            "the component shows STOPPED",
            Duration::from_secs(10),
            || self.state(name) == "STOPPED",
        );
        let mut before = count_lines(out);
        eventually("the file settles", Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(500));
            let now = count_lines(out);
            std::mem::replace(&mut before, now) == now
        });
        count_lines(out)
    }

    fn wait_ready(&self) {
        eventually("/health answers 200", Duration::from_secs(30), || {
            self.client
                .get(format!("{}/health", self.base))
                .send()
                .is_ok_and(|r| r.status() == StatusCode::OK)
        });
    }
}

/// With `on_task_failure: wait_for_restart`, a source whose API key is revoked fails alone: it
/// shows FAILED with the error's text while its sink keeps running; once the key works again,
/// `POST …/restart` starts it and prices arrive again.
#[test]
fn a_failed_source_waits_for_a_restart_while_the_rest_runs() {
    let api_mock = ApiMock::start(ApiFaults::default());
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.jsonl");
    let port = free_port();
    let log = dir.path().join("sluice.log");
    let mut child = messari_to_file(dir.path(), &api_mock, port)
        .env("SLUICE_ERRORS__ON_TASK_FAILURE", "wait_for_restart")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let op = Operator::new(port);
    op.wait_ready();
    eventually("prices arrive", Duration::from_secs(30), || {
        count_lines(&prices) >= 3
    });

    api_mock.set_outage(Some(StatusCode::UNAUTHORIZED));
    eventually("the source shows FAILED", Duration::from_secs(20), || {
        op.state("messari-btc.messari") == "FAILED"
    });
    let status = op.get("/connectors/messari-btc.messari/status");
    let trace = status["tasks"][0]["trace"].as_str().unwrap_or_default();
    assert!(trace.contains("401"), "the last error's text: {status}");
    let trace_id = trace
        .split("trace id ")
        .nth(1)
        .map(|t| t.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("a trace id in {trace}"));
    assert_eq!(op.state("messari-btc.prices"), "RUNNING");
    assert!(child.try_wait().unwrap().is_none(), "the worker goes on");
    std::thread::sleep(Duration::from_millis(500));
    let lines = count_lines(&prices);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_lines(&prices), lines, "no prices while failed");

    // Restart needs the token; a running connector restarts too, but this one is failed.
    let unauthorized = reqwest::blocking::Client::new()
        .post(format!(
            "{}/connectors/messari-btc.messari/restart",
            op.base
        ))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .send()
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    api_mock.set_outage(None);
    let (code, body) = op.call(
        reqwest::Method::POST,
        "/connectors/messari-btc.messari/restart",
    );
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    eventually("the source runs again", Duration::from_secs(10), || {
        op.state("messari-btc.messari") == "RUNNING"
    });
    eventually("prices arrive again", Duration::from_secs(20), || {
        count_lines(&prices) > lines
    });
    let status = op.get("/connectors/messari-btc.messari/status");
    assert!(status["tasks"][0]["trace"].is_null(), "{status}");

    let (status, _) = terminate(&mut child);
    assert!(status.success(), "{status}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("waiting for a restart")
            && logged.contains(&trace_id)
            && !logged.contains(SENTINEL),
        "{logged}"
    );
}

/// KIP-875 through the API: a CSV replay is stopped mid-file (STOPPED, its offsets stored,
/// nothing more read); its offsets can be reset only while stopped; after the reset a resume
/// reads the file again from its first row, and the run then ends as usual.
#[test]
fn a_stopped_source_resets_its_offsets_and_reads_its_input_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bitcoin.jsonl");
    let port = free_port();
    let log = dir.path().join("sluice.log");
    let mut child = sluice_run(
        root().join("pipelines/btc-history-csv-to-file.yaml"),
        dir.path().join("state"),
    )
    .env("BTC_OUT", &out)
    .env("BTC_DLQ_OUT", dir.path().join("dlq.jsonl"))
    .env("SLUICE_SOURCES__YAHOO_CSV__RATE", "400")
    .env("SLUICE_LOG", "info")
    .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
    .env("SLUICE_API_TOKEN", TOKEN)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let op = Operator::new(port);
    op.wait_ready();
    eventually("rows arrive", Duration::from_secs(30), || {
        count_lines(&out) >= 200
    });
    let source = "/connectors/btc-history.yahoo_csv";

    // Only a stopped connector's offsets reset.
    let (code, body) = op.call(reqwest::Method::DELETE, &format!("{source}/offsets"));
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    // What it sent before stopping arrives; then nothing more.
    let stopped_at = op.stop_and_settle("btc-history.yahoo_csv", &out);
    assert!(stopped_at < 2_530, "stopped mid-file: {stopped_at}");
    assert_eq!(op.state("btc-history.archive"), "RUNNING", "sinks go on");
    let offsets = op.get(&format!("{source}/offsets"));
    // A CSV file's offset: the byte it resumes at, with the fingerprint of its first bytes.
    assert!(
        offsets["offsets"][0]["offset"]["byte"].as_u64() > Some(0),
        "{offsets}"
    );

    let (code, body) = op.call(reqwest::Method::DELETE, &format!("{source}/offsets"));
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("reset"),
        "{body}"
    );
    let offsets = op.get(&format!("{source}/offsets"));
    assert_eq!(offsets["offsets"], serde_json::json!([]), "{offsets}");
    let (code, body) = op.call(reqwest::Method::PUT, &format!("{source}/resume"));
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");

    // The whole file again after what came before the stop; the run ends once it is read.
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    let rows = read_jsonl(&out);
    let total = 2_534 - 4; // rows of the file, less the four all-null ones (dead-lettered)
    assert_eq!(
        rows.len(),
        stopped_at + total,
        "every row again after the reset"
    );
    let first = &rows[0]["Date"];
    assert_eq!(
        rows.iter().filter(|r| &r["Date"] == first).count(),
        2,
        "the first row read twice: {first}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("source offsets reset"), "{logged}");
}

/// A stream transform reset through the API (Kafka): stopped mid-stream, its offsets deleted
/// (its checkpointed state and its group's offsets), resumed: it reads its input again from the
/// start with no state and writes every weekly candle again, those before the stop the same.
/// The reset finds every checkpoint also when the list of checkpointed partitions lost them (it
/// is one snapshot that the workers of a group overwrite with what each knows): here it is
/// emptied before the reset.
#[test]
fn a_stopped_stream_transform_resets_its_state_and_computes_everything_again() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("candles.jsonl");
    let port = free_port();
    let mut child = sluice_run(
        root().join("pipelines/btc-weekly-candles.yaml"),
        dir.path().join("state"),
    )
    .arg("--kafka")
    .arg(broker.addr())
    .env("CANDLES_OUT", &out)
    .env("CANDLES_DLQ_OUT", dir.path().join("dlq.jsonl"))
    .env("SLUICE_SOURCES__YAHOO_CSV__RATE", "250")
    .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
    .env("SLUICE_API_TOKEN", TOKEN)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let op = Operator::new(port);
    op.wait_ready();
    eventually("candles arrive", Duration::from_secs(60), || {
        count_lines(&out) >= 40
    });
    let transform = "/connectors/btc-weekly.weekly";
    let settled = op.stop_and_settle("btc-weekly.weekly", &out);
    forget_checkpointed_partitions(&broker.addr(), "btc-weekly/weekly");
    let (code, body) = op.call(reqwest::Method::DELETE, &format!("{transform}/offsets"));
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = op.call(reqwest::Method::PUT, &format!("{transform}/resume"));
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    let candles = read_jsonl(&out);
    // The first pass ends where the second starts again from the first week: on Kafka the file
    // sink's last batch of the first pass may linger past the moment the file looked settled.
    let stopped_at = candles
        .iter()
        .skip(1)
        .position(|c| c["start"] == candles[0]["start"])
        .map(|i| i + 1)
        .expect("the second pass starts again from the first week");
    assert!(
        settled <= stopped_at && stopped_at < 363,
        "stopped mid-stream: {settled} settled, {stopped_at} before the second pass"
    );
    // Every week once more after the reset (the last one partial at the end of the input).
    assert_eq!(candles.len(), stopped_at + 363, "every week again");
    assert_eq!(
        candles[..stopped_at],
        candles[stopped_at..2 * stopped_at],
        "the second pass, from no state, makes the same candles"
    );
    assert_eq!(candles[stopped_at]["start"], "2014-09-15T00:00:00Z");
}

/// Writes an empty list of checkpointed partitions as the latest snapshot of the store `index`
/// in the offsets topic, as a worker that knew of none would.
fn forget_checkpointed_partitions(addr: &str, index: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let key = serde_json::to_vec(&[index]).unwrap();
    let partition = sluice_core::transport::partition_for_key(index.as_bytes(), 25);
    producer
        .send(
            BaseRecord::to("sluice-offsets")
                .key(&key)
                .payload(b"{}".as_slice())
                .partition(partition),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The attacks of issue 24 with curl's words: a cross-site `POST` (what any web page can send
/// without asking) and calls with a `Host` that is not the API's (what a DNS-rebinding page
/// sends once its name resolves to 127.0.0.1), against a run without a token. Each is refused
/// and nothing changes: every connector runs on, and the output has each price once.
#[test]
fn a_web_page_cannot_drive_the_api_of_a_run_without_a_token() {
    let api_mock = ApiMock::start(ApiFaults {
        required_header: Some(("x-messari-api-key".into(), SENTINEL.into())),
        ..ApiFaults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.jsonl");
    let port = free_port();
    let mut child = messari_to_file(dir.path(), &api_mock, port)
        .env_remove("SLUICE_API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    eventually("/health answers 200", Duration::from_secs(30), || {
        client
            .get(format!("{base}/health"))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    eventually("prices arrive", Duration::from_secs(30), || {
        count_lines(&prices) >= 5
    });
    let connector = format!("{base}/connectors/messari-btc.messari");
    let attacks = [
        (
            "cross-site POST",
            client
                .post(format!("{connector}/restart"))
                .header("Origin", "http://evil.example")
                .header("Content-Type", "text/plain")
                .body("x"),
            StatusCode::FORBIDDEN,
        ),
        (
            "rebinding PUT stop",
            client
                .put(format!("{connector}/stop"))
                .header("Host", "evil.example"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "rebinding DELETE offsets",
            client
                .delete(format!("{connector}/offsets"))
                .header("Host", "evil.example"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "rebinding POST restart",
            client
                .post(format!("{connector}/restart"))
                .header("Host", "evil.example:8083")
                .header("Content-Type", "application/json"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "simple POST without an Origin (an old browser's form)",
            client.post(format!("{connector}/restart")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "cross-site fetch that says so",
            client
                .put(format!("{connector}/pause"))
                .header("Sec-Fetch-Site", "cross-site"),
            StatusCode::FORBIDDEN,
        ),
        (
            "rebinding read of the config",
            client.get(&connector).header("Host", "evil.example"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
    ];
    for (what, request, refused) in attacks {
        let response = request.send().unwrap();
        assert_eq!(response.status(), refused, "{what}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error_code"], refused.as_u16(), "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
    }
    let states: Value = client
        .get(format!("{base}/connectors?expand=status"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for (name, status) in states.as_object().unwrap() {
        assert_eq!(status["status"]["connector"]["state"], "RUNNING", "{name}");
    }
    // Nothing was read again: each price time once.
    let seen = count_lines(&prices);
    std::thread::sleep(Duration::from_secs(1));
    terminate(&mut child);
    let lines: Vec<String> = std::fs::read_to_string(&prices)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let distinct: std::collections::HashSet<&String> = lines.iter().collect();
    assert!(lines.len() > seen.min(5), "prices kept arriving");
    assert_eq!(lines.len(), distinct.len(), "a price was written twice");
}

/// Malformed bodies, wrong content types, unknown paths and methods answer Kafka Connect's
/// error JSON; a stream transform's config is shown; validation names the field at fault.
#[test]
fn every_error_answer_is_kafka_connects_json_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = slow_weekly(dir.path(), "state", port)
        .env("SLUICE_API_TOKEN", TOKEN)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let op = Operator::new(port);
    op.wait_ready();
    let client = &op.client;
    let base = &op.base;
    let validate = format!("{base}/connector-plugins/csv/config/validate");
    let answers = [
        (
            "malformed JSON",
            client
                .put(&validate)
                .bearer_auth(TOKEN)
                .header("Content-Type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a body that is not JSON",
            client
                .put(&validate)
                .bearer_auth(TOKEN)
                .header("Content-Type", "text/plain")
                .body("path: x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "an unknown path",
            client.get(format!("{base}/nothing-here")),
            StatusCode::NOT_FOUND,
        ),
        (
            "a method the path does not take",
            client
                .delete(format!("{base}/connectors"))
                .bearer_auth(TOKEN),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "a config read without the token",
            client.get(format!("{base}/connectors/btc-weekly.weekly")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "an offsets read without the token",
            client.get(format!("{base}/connectors/btc-weekly.yahoo_csv/offsets")),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (what, request, code) in answers {
        let response = request.send().unwrap();
        assert_eq!(response.status(), code, "{what}");
        let body: Value = response.json().unwrap_or(Value::Null);
        assert_eq!(body["error_code"], code.as_u16(), "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
    }
    // `bearer` in any case is the scheme.
    let shown: Value = client
        .get(format!("{base}/connectors/btc-weekly.weekly"))
        .header("Authorization", format!("bEaReR {TOKEN}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(shown["type"], "transform", "{shown}");
    assert_eq!(shown["config"]["size"], "1w", "{shown}");
    let checked: Value = client
        .put(&validate)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "header": true }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(checked["error_count"], 1, "{checked}");
    assert_eq!(checked["configs"][0]["value"]["name"], "path", "{checked}");
    terminate(&mut child);
}

/// Listening beyond loopback without a token is refused at start, naming the way out.
#[test]
fn a_non_loopback_listen_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = sluice_run(
        root().join("pipelines/quickstart.yaml"),
        dir.path().join("state"),
    )
    .env("SLUICE_LISTEN", format!("0.0.0.0:{}", free_port()))
    .env_remove("SLUICE_API_TOKEN")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without a token") && stderr.contains("SLUICE_API_TOKEN"),
        "{stderr}"
    );
}

/// A key in every place an `http` source can hold one (a free-form header, a query value, the
/// URL's query string, `auth`), read back through every endpoint of the API, with the token: not
/// one of them shows, nor in the log. Configs show `***`; offsets show URLs without their query.
#[test]
fn no_key_of_an_http_source_is_readable_through_any_endpoint() {
    let api_mock = ApiMock::start(ApiFaults {
        records: 300,
        page_size: 100,
        ..ApiFaults::default()
    });
    let keys = [
        "hdr-key-7Yq1",
        "query-key-2Lm8",
        "url-key-9Pw3",
        "auth-key-4Rt6",
    ];
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("keys.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: keys
sources:
  api:
    type: http
    url: {url}/items?apikey={k2}
    headers: {{ X-Api-Key: {k0}, Accept: application/json }}
    query: {{ appid: {k1}, limit: \"100\" }}
    auth: {{ bearer: {k3} }}
    records: /data
    id: /id
    pagination: {{ type: next_token, field: /meta/next, param: cursor }}
    interval: 100ms
    topic: items
sinks:
  out:
    type: file
    topics: [items]
    path: {out}
",
            url = api_mock.url,
            k0 = keys[0],
            k1 = keys[1],
            k2 = keys[2],
            k3 = keys[3],
            out = dir.path().join("items.jsonl").display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("sluice.log");
    let mut child = sluice_run(&pipeline, dir.path().join("state"))
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_API_TOKEN", TOKEN)
        .env("SLUICE_LOG", "debug,librdkafka=off,hyper=off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let op = Operator::new(port);
    op.wait_ready();
    eventually("the items arrive", Duration::from_secs(30), || {
        count_lines(&dir.path().join("items.jsonl")) >= 300
    });
    let mut answers = String::new();
    for path in [
        "/",
        "/ui",
        "/health",
        "/metrics",
        "/openapi.json",
        "/connectors",
        "/connectors?expand=status",
        "/connectors/keys.api",
        "/connectors/keys.api/status",
        "/connectors/keys.api/offsets",
        "/connectors/keys.out",
        "/connectors/keys.out/offsets",
        "/connector-plugins",
    ] {
        let response = op
            .client
            .get(format!("{}{path}", op.base))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{path}");
        answers.push_str(&response.text().unwrap());
    }
    let config = op.get("/connectors/keys.api");
    assert_eq!(config["config"]["headers"]["X-Api-Key"], "***", "{config}");
    assert_eq!(config["config"]["headers"]["Accept"], "application/json");
    assert_eq!(config["config"]["query"]["limit"], "100");
    let offsets = op.get("/connectors/keys.api/offsets").to_string();
    assert!(offsets.contains("/items?…"), "{offsets}");
    terminate(&mut child);
    let logged = std::fs::read_to_string(&log).unwrap();
    for key in keys {
        assert!(!answers.contains(key), "{key} shown by the API");
        assert!(!logged.contains(key), "{key} logged");
    }
}

/// The token from a file (not argv, which every local user reads in `ps`): reads of configs
/// need it; the token given on the command line works but says it is visible.
#[test]
fn the_token_comes_from_a_file_and_argv_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    for (by_file, port) in [(true, free_port()), (false, free_port())] {
        let mut command = slow_weekly(dir.path(), &format!("state-{by_file}"), port);
        if by_file {
            command.arg("--api-token-file").arg(&token_file);
        } else {
            command.args(["--api-token", TOKEN]);
        }
        let mut logged = Logged::spawn(&mut command);
        let op = Operator::new(port);
        op.wait_ready();
        let url = format!("{}/connectors/btc-weekly.weekly", op.base);
        let without = op.client.get(&url).send().unwrap().status();
        let with = op
            .client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .status();
        assert_eq!((without, with), (StatusCode::UNAUTHORIZED, StatusCode::OK));
        terminate(&mut logged.child);
        let (_, stderr) = logged.exit(Duration::from_secs(10));
        assert_eq!(
            stderr.contains("readable by every local user"),
            !by_file,
            "{stderr}"
        );
    }
}

/// A client that opens a connection and never finishes its request's headers (slowloris) is
/// cut off after the header-read timeout, not held for good.
#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = slow_weekly(dir.path(), "state", port)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Operator::new(port).wait_ready();
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = slow.read_to_end(&mut answer);
    let waited = started.elapsed();
    terminate(&mut child);
    assert!(read.is_ok(), "the connection was never closed: {read:?}");
    assert!(
        waited < Duration::from_secs(20),
        "closed after {waited:?}: {}",
        String::from_utf8_lossy(&answer)
    );
}
