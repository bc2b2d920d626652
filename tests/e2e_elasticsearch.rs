//! End to end into Elasticsearch. Elasticsearch cannot be installed on the machines these tests
//! run on, so by default they run against `common::es_mock`, a small in-repo HTTP server that
//! answers like Elasticsearch's documented APIs (index creation with mappings, `_bulk` with
//! per-item results, 429s and mapping errors on demand, `_refresh`, `_count`, `_search`). With
//! `ELASTICSEARCH_URL` set, the same tests run against that real cluster (fault injection is
//! then skipped: the counts are still checked). A real cluster's URL may carry credentials
//! (`https://elastic:…@host:9200`) and `ELASTICSEARCH_CA_FILE` its CA certificate.

mod common;

use common::es_mock::{EsMock, Faults};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The cluster to test against: a real one from `ELASTICSEARCH_URL`, or the in-repo stand-in.
fn cluster(faults: Faults) -> (String, Option<EsMock>) {
    match std::env::var("ELASTICSEARCH_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let mock = EsMock::start(faults);
            (mock.url.clone(), Some(mock))
        }
    }
}

/// A unique index name, so runs against a real cluster don't collide.
fn index_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// One request with a real HTTP client (TLS with `ELASTICSEARCH_CA_FILE`, basic auth from the
/// URL's credentials, chunked answers); the status and the JSON body (null if none).
fn http(method: &str, url: &str, path: &str, body: &str) -> (u16, Value) {
    let mut base = reqwest::Url::parse(url).expect("a URL");
    let user = base.username().to_string();
    let password = base.password().map(str::to_string);
    let _ = base.set_username("");
    let _ = base.set_password(None);
    let mut client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
    if let Ok(ca) = std::env::var("ELASTICSEARCH_CA_FILE") {
        let pem = std::fs::read(&ca).expect("ELASTICSEARCH_CA_FILE is readable");
        client = client
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"));
    }
    let client = client.build().expect("an HTTP client");
    let target = base.join(path.trim_start_matches('/')).expect("a path");
    let mut request = client
        .request(method.parse().expect("a method"), target)
        .header("content-type", "application/json")
        .body(body.to_string());
    if !user.is_empty() {
        request = request.basic_auth(user, password);
    }
    let response = request.send().expect("Elasticsearch answers");
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn doc_count(url: &str, index: &str) -> u64 {
    http("POST", url, &format!("/{index}/_refresh"), "");
    http("GET", url, &format!("/{index}/_count"), "").1["count"]
        .as_u64()
        .unwrap_or(0)
}

fn es_pipeline(dir: &Path, kafka: &str, url: &str, index: &str) -> Command {
    let mut cmd = sluice();
    cmd.args([
        "run",
        "pipelines/btc-history-to-elasticsearch.yaml",
        "--kafka",
        kafka,
        "--state-dir",
    ])
    .arg(dir.join("state"))
    .env("BTC_CSV", fixture("BTC-USD.csv"))
    .env("BTC_DLQ_OUT", dir.join("dlq.jsonl"))
    .env("ELASTICSEARCH_URL", url)
    .env("SLUICE_SINKS__BITCOIN_INDEX__INDEX", index);
    cmd
}

#[test]
fn the_btc_history_is_indexed_once_with_the_seed_mapping() {
    let (url, _mock) = cluster(Faults::default());
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("bitcoin_kafka");
    assert!(
        run(&mut es_pipeline(dir.path(), &broker.addr(), &url, &index))
            .status
            .success()
    );
    assert_eq!(doc_count(&url, &index), 2530);
    let (_, mapping) = http("GET", &url, &format!("/{index}/_mapping"), "");
    assert_eq!(
        mapping[&index]["mappings"]["properties"]["Date"]["type"],
        "date"
    );
    assert_eq!(
        mapping[&index]["mappings"]["properties"]["Adj Close"]["type"],
        "double"
    );
    assert_eq!(count_lines(&dir.path().join("dlq.jsonl")), 4);
    let (_, hits) = http("GET", &url, &format!("/{index}/_search"), "");
    assert_eq!(hits["hits"]["total"]["value"], 2530);
    // Replayed from the start under another name: same ids, so nothing is added.
    let mut replay = es_pipeline(dir.path(), &broker.addr(), &url, &index);
    replay.env("SLUICE_NAME", "btc-es-replay");
    assert!(run(&mut replay).status.success());
    assert_eq!(doc_count(&url, &index), 2530);
}

/// Items answered 429 are retried alone until indexed; items the mapping refuses go to the
/// dead-letter topic with Elasticsearch's reason; indexed + dead-lettered = records in.
#[test]
fn items_answered_429_end_up_indexed_and_mapping_errors_are_dead_lettered() {
    let faults = Faults {
        item_429_every: 3,
        item_429_times: 2,
        busy_requests: 1,
        ..Faults::default()
    };
    let (url, mock) = cluster(faults);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("prices.csv");
    let mut text = String::from("Date,Close,Volume\n");
    let mut bad = 0;
    for day in 1..=28 {
        for month in 1..=12 {
            let close = if (day * month) % 17 == 0 {
                bad += 1;
                "n/a".to_string()
            } else {
                format!("{}.5", day * 10 + month)
            };
            text.push_str(&format!(
                "2020-{month:02}-{day:02},{close},{}\n",
                day * 1000
            ));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let index = index_name("prices");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: es-faults
sources:
  prices: {{ type: csv, path: {csv}, topic: prices, key: Date }}
sinks:
  index:
    type: elasticsearch
    topics: [prices]
    url: {url}
    index: {index}
    document_id: key
    initial_backoff: 10ms
    mappings: {{ properties: {{ Date: {{ type: date }}, Close: {{ type: double }}, Volume: {{ type: double }} }} }}
    batch: {{ max_records: 100 }}
  rejects: {{ type: file, topics: [dlq], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: dlq }}
",
            csv = csv.display(),
            dlq = dir.path().join("dlq.jsonl").display()
        ),
    )
    .unwrap();
    assert!(run(&mut sluice_run(&pipeline, dir.path())).status.success());
    let dead = read_jsonl(&dir.path().join("dlq.jsonl"));
    let indexed = doc_count(&url, &index);
    assert_eq!(dead.len(), bad, "every mapping error is dead-lettered");
    assert_eq!(
        indexed as usize + dead.len(),
        28 * 12,
        "indexed + dead-lettered = records in"
    );
    for d in &dead {
        let reason = d["headers"]["sluice.error.message"].as_str().unwrap();
        assert!(
            reason.contains("Close") && reason.contains("double"),
            "{reason}"
        );
        assert_eq!(d["value"]["Close"], "n/a");
    }
    if let Some(mock) = mock {
        assert!(
            mock.rejected_429() > 50,
            "the stand-in answered only {} items 429",
            mock.rejected_429()
        );
    }
}

#[test]
fn wrong_credentials_or_an_unreachable_cluster_fail_clearly_naming_the_sink() {
    if std::env::var("ELASTICSEARCH_URL").is_ok() {
        return; // needs a cluster that requires the stand-in's credentials
    }
    let mock = EsMock::start(Faults {
        basic_auth: Some("elastic:right".into()),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let write = |url: &str, password: &str| {
        let pipeline = dir.path().join("p.yaml");
        std::fs::write(
            &pipeline,
            format!(
                "name: es-auth
sources:
  rows: {{ type: csv, path: {csv}, topic: t, null_values: [\"null\"] }}
sinks:
  search_index:
    type: elasticsearch
    topics: [t]
    url: {url}
    index: rows
    document_id: none
    auth: {{ basic: {{ username: elastic, password: {password} }} }}
",
                csv = fixture("btc-sample.csv").display()
            ),
        )
        .unwrap();
        run(&mut sluice_run(&pipeline, dir.path()))
    };
    let out = write(&mock.url, "sekrit-wrong");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("search_index") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sekrit-wrong") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(write(&mock.url, "right").status.success());
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = write(&closed, "right");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("search_index"));
}

#[test]
fn an_existing_index_with_a_conflicting_mapping_is_a_startup_error() {
    let (url, _mock) = cluster(Faults::default());
    let index = index_name("conflict");
    let (status, _) = http(
        "PUT",
        &url,
        &format!("/{index}"),
        r#"{"mappings":{"properties":{"Date":{"type":"keyword"}}}}"#,
    );
    assert_eq!(status, 200);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut es_pipeline(dir.path(), &broker.addr(), &url, &index));
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&index) && stderr.contains("`Date`") && stderr.contains("keyword"),
        "{stderr}"
    );
}

/// `csv` (its text) through the embedded transport into an Elasticsearch sink `index` with the
/// settings `sink` (YAML lines at the sink's level), dead letters into `<dir>/dlq.jsonl`.
fn csv_into(dir: &Path, name: &str, csv: &str, url: &str, sink: &str) -> Command {
    let data = dir.join(format!("{name}.csv"));
    std::fs::write(&data, csv).unwrap();
    let pipeline = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &pipeline,
        format!(
            "name: {name}
sources:
  rows: {{ type: csv, path: {data}, topic: rows, key: id, columns: {{ id: string }} }}
sinks:
  index:
    type: elasticsearch
    topics: [rows]
    url: {url}
    initial_backoff: 10ms
{sink}
  rejects: {{ type: file, topics: [dlq], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: dlq }}
",
            data = data.display(),
            dlq = dir.join("dlq.jsonl").display()
        ),
    )
    .unwrap();
    sluice_run(&pipeline, dir.join("state"))
}

fn source_of(url: &str, index: &str, id: &str) -> Value {
    http("GET", url, &format!("/{index}/_doc/{id}"), "").1["_source"].clone()
}

/// With `write_method: create`, a replay meets documents that exist (409): they were written
/// before, so the run succeeds without dead letters (they were all "refused").
#[test]
fn create_replays_are_documents_already_written() {
    let (url, _mock) = cluster(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("create");
    let sink = format!("    index: {index}\n    document_id: key\n    write_method: create");
    let csv = "id,n\na,1\nb,2\nc,3\n";
    assert!(run(&mut csv_into(dir.path(), "first", csv, &url, &sink))
        .status
        .success());
    // Another pipeline name: its own source offsets, so every row is sent again.
    let out = run(&mut csv_into(dir.path(), "replay", csv, &url, &sink));
    assert!(out.status.success());
    assert_eq!(doc_count(&url, &index), 3);
    assert_eq!(count_lines(&dir.path().join("dlq.jsonl")), 0);
}

/// Two writes to one id in one batch: the first is answered 429 and retried. The second must
/// not be applied before it (chunks of a batch go out at once, 429'd items later).
#[test]
fn two_writes_to_one_id_keep_their_order_through_429_retries() {
    if std::env::var("ELASTICSEARCH_URL").is_ok() {
        return; // needs the stand-in's 429s
    }
    let mock = EsMock::start(Faults {
        item_429_every: 1,
        item_429_times: 1,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("order");
    // Tiny requests: each document its own chunk, two in flight.
    let sink = format!(
        "    index: {index}\n    document_id: key\n    max_request_bytes: 1024\n    max_in_flight: 2\n    batch: {{ max_records: 100, linger: 1s }}"
    );
    let mut csv = String::from("id,n\n");
    for n in 0..10 {
        csv.push_str(&format!("k,{n}\n"));
    }
    assert!(
        run(&mut csv_into(dir.path(), "order", &csv, &mock.url, &sink))
            .status
            .success()
    );
    assert_eq!(
        source_of(&mock.url, &index, "k")["n"],
        9,
        "the last write wins"
    );
}

/// Per-item errors about the setup (a read-only index: 403 `cluster_block_exception`) fail the
/// batch with Elasticsearch's message: they are not bad documents to dead-letter.
#[test]
fn setup_errors_fail_the_batch_instead_of_dead_lettering_every_document() {
    if std::env::var("ELASTICSEARCH_URL").is_ok() {
        return; // needs a read-only index
    }
    let index = index_name("readonly");
    let mock = EsMock::start(Faults {
        read_only_indices: vec![index.clone()],
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("    index: {index}\n    document_id: key");
    let out = run(&mut csv_into(
        dir.path(),
        "ro",
        "id,n\na,1\nb,2\n",
        &mock.url,
        &sink,
    ));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster_block_exception") && stderr.contains("setup"),
        "{stderr}"
    );
    assert_eq!(count_lines(&dir.path().join("dlq.jsonl")), 0);
}

/// Elasticsearch validates every item before running any: one `_id` over 512 bytes failed the
/// whole `_bulk`. It is refused alone; the others are indexed.
#[test]
fn an_overlong_id_is_refused_alone() {
    let (url, _mock) = cluster(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("ids");
    let long = "k".repeat(600);
    let csv = format!("id,n\na,1\n{long},2\nb,3\n");
    let sink = format!("    index: {index}\n    document_id: key");
    assert!(run(&mut csv_into(dir.path(), "ids", &csv, &url, &sink))
        .status
        .success());
    assert_eq!(doc_count(&url, &index), 2);
    let dead = read_jsonl(&dir.path().join("dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert!(
        reason.contains("600 bytes") && reason.contains("512"),
        "{reason}"
    );
}

/// A least-privilege writer: no `monitor` (`GET /` is 403) and no `create_index` (`PUT` is 403
/// even for an index that exists). The sink warns, checks the existing index and writes.
#[test]
fn a_writer_without_monitor_or_create_index_privileges_writes_to_an_existing_index() {
    if std::env::var("ELASTICSEARCH_URL").is_ok() {
        return; // needs a restricted user
    }
    let mock = EsMock::start(Faults {
        forbid_monitor: true,
        forbid_create_index: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let sink = "    index: missing\n    document_id: key";
    let out = run(&mut csv_into(
        dir.path(),
        "nocreate",
        "id,n\na,1\n",
        &mock.url,
        sink,
    ));
    assert_eq!(
        out.status.code(),
        Some(1),
        "an index it may not create and that does not exist"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("create_index"), "{stderr}");

    // The index exists (an administrator made it): the writer checks it and writes.
    mock.create_index("existing");
    let sink = "    index: existing\n    document_id: key";
    let out = run(&mut csv_into(
        dir.path(),
        "restricted",
        "id,n\na,1\nb,2\n",
        &mock.url,
        sink,
    ));
    assert!(out.status.success());
    assert_eq!(doc_count(&mock.url, "existing"), 2);
}

/// A document over the cluster's `http.max_content_length` (413): the request is split, and the
/// document that is too large alone is dead-lettered with its size; the rest is indexed.
#[test]
fn a_document_over_the_request_size_limit_is_dead_lettered_alone() {
    if std::env::var("ELASTICSEARCH_URL").is_ok() {
        return; // the real limit is 100 MB
    }
    let mock = EsMock::start(Faults {
        max_content_length: 4096,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,text\n");
    for n in 0..20 {
        csv.push_str(&format!("k{n},short\n"));
    }
    csv.push_str(&format!("big,{}\n", "x".repeat(6000)));
    let sink = "    index: sized\n    document_id: key";
    assert!(
        run(&mut csv_into(dir.path(), "sized", &csv, &mock.url, sink))
            .status
            .success()
    );
    assert_eq!(doc_count(&mock.url, "sized"), 20);
    let dead = read_jsonl(&dir.path().join("dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["key"], "big");
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert!(
        reason.contains("413") && reason.contains("bytes"),
        "{reason}"
    );
}

/// `gzip: true` sends compressed bodies, which Elasticsearch (and the stand-in) decode.
#[test]
fn gzip_bodies_are_indexed() {
    let (url, _mock) = cluster(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("gzip");
    let sink = format!("    index: {index}\n    document_id: key\n    gzip: true");
    let mut csv = String::from("id,n\n");
    for n in 0..500 {
        csv.push_str(&format!("k{n},{n}\n"));
    }
    assert!(run(&mut csv_into(dir.path(), "gzip", &csv, &url, &sink))
        .status
        .success());
    assert_eq!(doc_count(&url, &index), 500);
}

/// What a real cluster accepts and refuses decides what is dead-lettered: dynamic mapping
/// makes `n` a long from its first value, `"12.5"` is coerced into it, `NaN` is refused; `d`
/// becomes a date, and `2020-13-45` is refused.
#[test]
fn dynamic_mapping_coercions_and_refusals_decide_what_is_dead_lettered() {
    let (url, _mock) = cluster(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("dynamic");
    let sink = format!("    index: {index}\n    document_id: key\n    batch: {{ max_records: 1 }}");
    let csv = "id,n,d\na,7,2020-01-01\nb,12.5,2020-01-02\nc,NaN,2020-01-03\nd,8,2020-13-45\n";
    assert!(run(&mut csv_into(dir.path(), "dynamic", csv, &url, &sink))
        .status
        .success());
    assert_eq!(doc_count(&url, &index), 2);
    let dead: Vec<String> = read_jsonl(&dir.path().join("dlq.jsonl"))
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dead, ["c", "d"]);
    for d in read_jsonl(&dir.path().join("dlq.jsonl")) {
        assert_eq!(d["headers"]["sluice.error.stage"], "put", "{d}");
    }
}

/// SIGTERM while Elasticsearch is down: the sink's retries (of requests, and of the batch)
/// stop at the shutdown deadline; the batch stays uncommitted and nothing is lost. Before, this
/// could take an hour.
#[test]
fn sigterm_during_an_outage_exits_within_the_deadline_and_loses_nothing() {
    if std::env::var("ELASTICSEARCH_URL").is_ok() {
        return; // needs an outage on demand
    }
    let mock = EsMock::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,n\n");
    for n in 0..3000 {
        csv.push_str(&format!("k{n},{n}\n"));
    }
    let sink =
        "    index: outage\n    document_id: key\n    batch: { max_records: 200, linger: 50ms }";
    let mut cmd = csv_into(dir.path(), "outage", &csv, &mock.url, sink);
    cmd.env("SLUICE_SOURCES__ROWS__RATE", "500");
    let mut running = Logged::spawn(&mut cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while doc_count(&mock.url, "outage") < 200 {
        assert!(std::time::Instant::now() < deadline, "nothing indexed");
        std::thread::sleep(Duration::from_millis(50));
    }
    mock.set_down(true);
    std::thread::sleep(Duration::from_secs(2));
    let stopped = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (status, _stderr) = running.exit(Duration::from_secs(60));
    let took = stopped.elapsed();
    assert!(status.success(), "exit status {status}");
    // The default drain timeout is 7 s; a last attempt gets 2 s of grace.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    // Back up: the next run completes the index, nothing missing.
    mock.set_down(false);
    let out = run(&mut csv_into(dir.path(), "outage", &csv, &mock.url, sink));
    assert!(out.status.success());
    assert_eq!(doc_count(&mock.url, "outage"), 3000);
}

/// A tombstone deletes the document whose id is its key. With ids from Kafka coordinates (the
/// default) it names no document: it did nothing, silently; it is now a bad record.
#[test]
fn tombstones_delete_by_key_and_are_refused_when_ids_are_not_keys() {
    let (url, _mock) = cluster(Faults::default());
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |name: &str, index: &str, ids: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}
topics: {{ events: {{ partitions: 1 }} }}
sinks:
  index: {{ type: elasticsearch, topics: [events], url: \"{url}\", index: {index}, document_id: {ids} }}
  rejects: {{ type: file, topics: [dlq-{name}], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: dlq-{name} }}
",
                dlq = dir.path().join(format!("{name}-dlq.jsonl")).display()
            ),
        )
        .unwrap();
        let mut cmd = sluice();
        cmd.args(["run", "--once"])
            .arg(&file)
            .args(["--kafka", &broker.addr(), "--state-dir"])
            .arg(dir.path().join("state"));
        cmd
    };
    let by_key = index_name("bykey");
    let by_coordinates = index_name("bycoords");
    assert!(run(&mut pipeline("bykey", &by_key, "key")).status.success());
    produce(
        &broker.addr(),
        "events",
        &[
            (Some("a"), Some(r#"{"n":1}"#)),
            (Some("b"), Some(r#"{"n":2}"#)),
            (Some("a"), None),
        ],
    );
    assert!(run(&mut pipeline("bykey", &by_key, "key")).status.success());
    assert_eq!(doc_count(&url, &by_key), 1, "`a` was deleted");
    assert_eq!(source_of(&url, &by_key, "b")["n"], 2);

    assert!(
        run(&mut pipeline("bycoords", &by_coordinates, "coordinates"))
            .status
            .success()
    );
    assert_eq!(doc_count(&url, &by_coordinates), 2);
    let dead = read_jsonl(&dir.path().join("bycoords-dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["key"], "a");
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert!(reason.contains("document_id: key"), "{reason}");
}
