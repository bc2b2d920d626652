//! End to end into Elasticsearch. Elasticsearch cannot be installed on the machines these tests
//! run on, so by default they run against `common::es_mock`, a small in-repo HTTP server that
//! answers like Elasticsearch's documented APIs (index creation with mappings, `_bulk` with
//! per-item results, 429s and mapping errors on demand, `_refresh`, `_count`, `_search`). With
//! `ELASTICSEARCH_URL` set, the same tests run against that real cluster (fault injection is
//! then skipped: the counts are still checked).

mod common;

use common::es_mock::{EsMock, Faults};
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

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

/// A minimal HTTP/1.1 request (the tests need no client library for three calls).
fn http(method: &str, url: &str, path: &str, body: &str) -> (u16, Value) {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
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
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let index = index_name("bitcoin_kafka");
    assert!(
        run(&mut es_pipeline(dir.path(), &tansu.addr(), &url, &index))
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
    let mut replay = es_pipeline(dir.path(), &tansu.addr(), &url, &index);
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
        basic_auth: None,
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
    assert!(run(sluice()
        .arg("run")
        .arg(&pipeline)
        .arg("--state-dir")
        .arg(dir.path()))
    .status
    .success());
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
  rows: {{ type: csv, path: {csv}, topic: t }}
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
        run(sluice()
            .arg("run")
            .arg(&pipeline)
            .arg("--state-dir")
            .arg(dir.path()))
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
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut es_pipeline(dir.path(), &tansu.addr(), &url, &index));
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&index) && stderr.contains("`Date`") && stderr.contains("keyword"),
        "{stderr}"
    );
}
