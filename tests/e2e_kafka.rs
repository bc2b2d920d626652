//! End to end on Kafka: the `sluice` binary against a real Kafka-protocol broker (nisshi, started
//! privately for each test on a free loopback port).

mod common;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn consumer(addr: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "sluice-test-inspector")
        .create()
        .expect("consumer")
}

/// Creates `topic` on the broker at `addr`, as someone would by hand before a pipeline runs.
fn create_topic(addr: &str, topic: NewTopic<'_>) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .unwrap();
}

/// The BTC pipeline on the sample CSV through `broker`, run to its end.
fn run_sample_on(broker: &Broker) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    run(&mut btc_pipeline(
        dir.path(),
        &fixture("btc-sample.csv"),
        Some(&broker.addr()),
        &[],
    ))
}

/// Partition count and number of messages of `topic`, counted by reading them all (some brokers'
/// high watermarks stop at the base offset of the last batch, tansu 0.6's did, so they can't be summed).
fn topic_layout(addr: &str, topic: &str) -> (usize, i64) {
    let c = consumer(addr);
    let metadata = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&assignment).expect("assign");
    let mut messages = 0;
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_millis(1500) {
        if let Some(message) = c.poll(Duration::from_millis(100)) {
            message.expect("readable message");
            messages += 1;
            idle_since = Instant::now();
        }
    }
    (partitions, messages)
}

#[test]
fn the_btc_history_goes_through_a_10_partition_topic_and_arrives_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let out = run(&mut btc_pipeline(
        dir.path(),
        &csv,
        Some(&broker.addr()),
        &[],
    ));
    assert!(out.status.success());
    assert_eq!(
        check_every_row_arrived(&csv, &dir.path().join("bitcoin.jsonl")),
        0,
        "duplicates"
    );
    assert_eq!(count_lines(&dir.path().join("bitcoin-dlq.jsonl")), 4);
    assert_eq!(topic_layout(&broker.addr(), "bitcoin"), (10, 2530));
    assert_eq!(topic_layout(&broker.addr(), "bitcoin-dlq").1, 4);
    // Run again: the source resumes at its stored offset and the sinks at their committed ones.
    assert!(run(&mut btc_pipeline(
        dir.path(),
        &csv,
        Some(&broker.addr()),
        &[]
    ))
    .status
    .success());
    assert_eq!(
        topic_layout(&broker.addr(), "bitcoin").1,
        2530,
        "the source sent rows again"
    );
    assert_eq!(
        count_lines(&dir.path().join("bitcoin.jsonl")),
        2530,
        "the sink wrote rows again"
    );
}

/// `kill -9` mid-run, then the same command: nothing missing; duplicates at most the sink batch
/// flushed but not committed plus what the source sent since it last stored its offsets.
#[test]
fn kill_9_mid_run_then_rerun_loses_no_row() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let slow = [
        ("SLUICE_SOURCES__YAHOO_CSV__RATE", "1000"),
        ("SLUICE_SOURCES__YAHOO_CSV__BATCH_SIZE", "50"),
        ("SLUICE_SOURCES__YAHOO_CSV__MAX_IN_FLIGHT_BATCHES", "8"),
        ("SLUICE_SINKS__ARCHIVE__BATCH__MAX_RECORDS", "100"),
        ("SLUICE_SINKS__ARCHIVE__BATCH__LINGER", "50ms"),
    ];
    let first = interrupt_then_rerun(
        dir.path(),
        &csv,
        Some(&broker.addr()),
        &slow,
        500,
        Stop::Kill,
    );
    let duplicates = check_every_row_arrived(&csv, &dir.path().join("bitcoin.jsonl"));
    let in_topic = topic_layout(&broker.addr(), "bitcoin").1 - BTC_ROWS as i64;
    eprintln!(
        "killed after {} rows; {duplicates} duplicates in the file, {in_topic} in the topic",
        first.rows_before
    );
    // The bound the README states: the batches in flight, plus one second of records (source
    // offsets are stored on Kafka at most once a second).
    assert!(
        in_topic <= 8 * 50 + 1000,
        "{in_topic} source duplicates exceed the in-flight batches and a second of records"
    );
    assert!(
        duplicates as i64 <= 100 + in_topic,
        "{duplicates} duplicates"
    );
}

#[test]
fn sigterm_exits_0_within_10s_with_everything_flushed_and_committed() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let slow = [("SLUICE_SOURCES__YAHOO_CSV__RATE", "800")];
    let first = interrupt_then_rerun(
        dir.path(),
        &csv,
        Some(&broker.addr()),
        &slow,
        200,
        Stop::Term,
    );
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
    assert_eq!(
        topic_layout(&broker.addr(), "bitcoin").1,
        BTC_ROWS as i64,
        "the source resent acknowledged rows"
    );
}

/// The broker (tansu on SQLite storage) is killed mid-run and started again 3 s later:
/// `sluice` reconnects and completes with nothing missing.
#[test]
fn a_broker_restart_mid_run_loses_nothing() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let out = dir.path().join("bitcoin.jsonl");
    let slow = [("SLUICE_SOURCES__YAHOO_CSV__RATE", "500")];
    let mut child = btc_pipeline(dir.path(), &csv, Some(&broker.addr()), &slow)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&out, 300, Duration::from_secs(60));
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    let status = wait_exit(&mut child, Duration::from_secs(120));
    assert!(status.success(), "exit status {status}");
    let duplicates = check_every_row_arrived(&csv, &out);
    eprintln!("{duplicates} duplicates after the broker restart");
}

#[test]
fn an_unreachable_kafka_fails_clearly_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run(&mut btc_pipeline(
        dir.path(),
        &fixture("btc-sample.csv"),
        Some(&format!("127.0.0.1:{port}")),
        &[("SLUICE_KAFKA__CONNECT_TIMEOUT", "3s")],
    ));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach Kafka at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn an_existing_topic_with_other_partitions_is_reported() {
    let broker = Broker::start();
    create_topic(
        &broker.addr(),
        NewTopic::new("bitcoin", 3, TopicReplication::Fixed(1)),
    );
    let out = run_sample_on(&broker);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`bitcoin` exists with 3 partitions, the pipeline declares 10"),
        "{stderr}"
    );
}

/// A record over the producer's `message.max.bytes` is a bad record: dead-lettered with its size
/// and the limit (it failed the run, and every run after it).
#[test]
fn a_record_over_the_message_size_limit_is_dead_lettered_and_the_rest_lands() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wide.csv");
    let wide = "x".repeat(1_500_000);
    std::fs::write(
        &csv,
        format!("Date,Note\n2014-09-17,short\n2014-09-18,{wide}\n2014-09-19,short\n"),
    )
    .unwrap();
    let pipeline = dir.path().join("wide.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: wide
sources:
  rows: {{ type: csv, path: {csv}, topic: t, key: Date }}
sinks:
  out: {{ type: file, topics: [t], path: {out} }}
  rejects: {{ type: file, topics: [dlq], format: envelope, path: {dlq} }}
errors: {{ tolerance: all, dead_letter_topic: dlq }}
",
            csv = csv.display(),
            out = dir.path().join("out.jsonl").display(),
            dlq = dir.path().join("dlq.jsonl").display(),
        ),
    )
    .unwrap();
    let out = run(sluice()
        .arg("run")
        .arg(&pipeline)
        .args(["--kafka", &broker.addr(), "--state-dir"])
        .arg(dir.path()));
    assert!(out.status.success());
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(rows.len(), 2);
    let dead = read_jsonl(&dir.path().join("dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["key"], "2014-09-18");
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert!(
        reason.contains("message.max.bytes") && reason.contains("1000000"),
        "{reason}"
    );
    let kept = dead[0]["value"].as_str().unwrap();
    assert!(
        kept.starts_with(r#"{"Date":"2014-09-18""#) && kept.len() < 2048,
        "{kept:.80}"
    );
}

/// librdkafka with zstd: a topic written zstd-compressed reads back whole (without it, the
/// producer refused `compression.type: zstd` and consumers could not read such a topic).
#[test]
fn a_zstd_compressed_topic_round_trips() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    // Dotted librdkafka keys cannot come through `SLUICE_…` variables (figment reads the dots
    // as nesting): a variant of the example file sets it.
    let yaml = std::fs::read_to_string(root().join("pipelines/btc-history-csv-to-file.yaml"))
        .unwrap()
        .replace(
            "name: btc-history\n",
            "name: btc-history\nkafka:\n  bootstrap_servers: x\n  producer: { compression.type: zstd }\n",
        );
    let file = dir.path().join("zstd.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = run(&mut btc_pipeline_file(
        &file,
        dir.path(),
        &csv,
        Some(&broker.addr()),
        &[],
    ));
    assert!(out.status.success());
    assert_eq!(
        check_every_row_arrived(&csv, &dir.path().join("bitcoin.jsonl")),
        0
    );
}

/// A finished source run again sends nothing: start-up reads the source offsets stored last,
/// although a broker's high watermark may stop (tansu 0.6's did) at the base offset of the last batch (reading up to it
/// missed the offsets stored after the first record of the last batch: with the files of a
/// glob stored together in an order that varies, the last file was mostly read again, and
/// every restart re-sent what runs before had stored past).
#[test]
fn a_rerun_resumes_at_the_source_offsets_stored_last() {
    for storage in ["memory://nisshi/", "sqlite://nisshi.db"] {
        rerun_case(&Broker::start_with_storage(storage), storage);
    }
}

fn rerun_case(broker: &Broker, storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for file in 0..8 {
        let mut text = String::from("id,value\n");
        for row in 0..1000 {
            text.push_str(&format!("{file}-{row},{row}\n"));
        }
        std::fs::write(input.join(format!("{file}.csv")), text).unwrap();
    }
    let out = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: rerun
kafka: {{ bootstrap_servers: \"{}\" }}
topics:
  rows: {{ partitions: 3 }}
sources:
  files:
    type: csv
    path: {}/*.csv
    key: id
    topic: rows
    batch_size: 100
sinks:
  out:
    type: file
    topics: [rows]
    path: {}
",
            broker.addr(),
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    for run_number in 1..=3 {
        let output = run(sluice_run(&pipeline, dir.path().join("state")).arg("--once"));
        assert!(output.status.success(), "{storage}: run {run_number}");
        assert_eq!(
            count_lines(&out),
            8000,
            "{storage}: lines after run {run_number}"
        );
    }
}

/// KIP-875 for a sink on Kafka: stopped mid-replay through the REST API, its consumer group's
/// offsets deleted (`DELETE …/offsets`), then resumed: it reads the topic again from the
/// start, so the file ends with what came before the stop plus every row once more.
#[test]
fn a_stopped_sink_resets_its_group_and_reads_the_topic_again() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("BTC-USD.csv");
    let port = free_port();
    let mut child = btc_pipeline(
        dir.path(),
        &csv,
        Some(&broker.addr()),
        &[
            ("SLUICE_SOURCES__YAHOO_CSV__RATE", "500"),
            ("SLUICE_LISTEN", &format!("127.0.0.1:{port}")),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let out = dir.path().join("bitcoin.jsonl");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(70))
        .build()
        .unwrap();
    let sink = format!("http://127.0.0.1:{port}/connectors/btc-history.archive");
    let state = || -> String {
        client
            .get(format!("{sink}/status"))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .map(|s| s["connector"]["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let within = |what: &str, timeout: Duration, done: &mut dyn FnMut() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < timeout, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    within("rows arrive", Duration::from_secs(60), &mut || {
        count_lines(&out) >= 300
    });
    let stop = client.put(format!("{sink}/stop")).send().unwrap();
    assert_eq!(stop.status(), reqwest::StatusCode::ACCEPTED);
    within(
        "the sink shows STOPPED",
        Duration::from_secs(30),
        &mut || state() == "STOPPED",
    );
    let stopped_at = count_lines(&out);
    assert!(stopped_at < 2_530, "stopped mid-replay: {stopped_at}");
    let reset = client.delete(format!("{sink}/offsets")).send().unwrap();
    let code = reset.status();
    assert_eq!(code, reqwest::StatusCode::OK, "{}", reset.text().unwrap());
    let resume = client.put(format!("{sink}/resume")).send().unwrap();
    assert_eq!(resume.status(), reqwest::StatusCode::ACCEPTED);
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(status.success(), "{status}");
    assert_eq!(
        count_lines(&out),
        stopped_at + 2_530,
        "every row again after the reset"
    );
}

/// A broker refuses records dated far ahead of its clock (Kafka's
/// `log.message.timestamp.after.max.ms`): the run fails naming the record (its key and
/// timestamp) and why, not with a bare `InvalidTimestamp`.
#[test]
fn a_record_dated_in_the_future_is_refused_naming_the_record_and_why() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("future.csv");
    std::fs::write(&csv, "Date,Close\n2020-01-01,1.5\n2099-01-01,2.5\n").unwrap();
    let pipeline = dir.path().join("future.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: future
kafka: {{ bootstrap_servers: \"{kafka}\" }}
topics: {{ prices: {{ partitions: 1 }} }}
sources:
  rows:
    type: csv
    path: {csv}
    topic: prices
    key: Date
    timestamp_column: Date
    columns: {{ Date: date, Close: float }}
sinks:
  out: {{ type: file, topics: [prices], path: {out} }}
",
            kafka = broker.addr(),
            csv = csv.display(),
            out = dir.path().join("out.jsonl").display()
        ),
    )
    .unwrap();
    let mut cmd = sluice_run(&pipeline, dir.path().join("state"));
    cmd.arg("--once");
    let (status, log) = run_bounded(&mut cmd, Duration::from_secs(120));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("2099-01-01") && log.contains("key \"2099-01-01\""),
        "names the record: {log}"
    );
    assert!(log.contains("timestamp 2099-01-01"), "{log}");
    assert!(log.contains("not in the future"), "says why: {log}");
}

/// The offsets topic holds each pipeline's latest snapshot as a keyed record: only compaction
/// keeps it. An existing offsets topic that deletes by age (someone created it by hand) would
/// lose every source's offsets after `retention.ms`: refused at start, naming it.
#[test]
fn an_existing_offsets_topic_that_is_not_compacted_is_refused() {
    let broker = Broker::start();
    create_topic(
        &broker.addr(),
        NewTopic::new("sluice-offsets", 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "delete"),
    );
    let out = run_sample_on(&broker);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`sluice-offsets`") && stderr.contains("cleanup.policy=delete"),
        "{stderr}"
    );
}

/// A store whose read back found nothing says where that read ended, so the next open of a
/// store nothing is ever written to (an idle work unit, a source that never sends) reads back
/// only what came after, not the partition from its start; and what is stored after that
/// record, by this worker or another one opened meanwhile, is still what the next open finds.
#[test]
fn a_store_that_found_nothing_says_so_and_what_is_stored_later_is_still_found() {
    use sluice_core::transport::Transport;
    let broker = Broker::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config: sluice_core::config::KafkaConfig =
        serde_json::from_value(serde_json::json!({ "bootstrap_servers": broker.addr() })).unwrap();
    let transport = rt
        .block_on(sluice_core::transport::kafka::KafkaTransport::connect(
            &config,
            &Default::default(),
            false,
        ))
        .unwrap();
    rt.block_on(transport.ensure_topics(&Default::default()))
        .unwrap();
    // Two workers open the same empty store side by side; one of them stores afterwards.
    let (first, second) = rt.block_on(async {
        let first = transport.offset_store("lonely").await.unwrap();
        let second = transport.offset_store("lonely").await.unwrap();
        assert!(first.load("src").await.unwrap().is_empty());
        assert!(second.load("src").await.unwrap().is_empty());
        (first, second)
    });
    let stored = std::collections::HashMap::from([("f".to_string(), serde_json::json!(7))]);
    rt.block_on(first.store("src", stored)).unwrap();
    drop((first, second));
    let reopened = rt.block_on(async {
        let store = transport.offset_store("lonely").await.unwrap();
        store.load("src").await.unwrap()
    });
    assert_eq!(reopened.get("f"), Some(&serde_json::json!(7)));

    // The offsets topic holds the record that bounds later reads, naming the marker's offset.
    let partition = sluice_core::transport::partition_for_key(b"lonely", 25);
    let consumer = consumer(&broker.addr());
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("sluice-offsets", partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    let (_, high) = consumer
        .fetch_watermarks("sluice-offsets", partition, Duration::from_secs(10))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bounds = Vec::new();
    let mut read = 0;
    while read < high && Instant::now() < deadline {
        use rdkafka::Message;
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        read = message.offset() + 1;
        if message.key() == Some(br#"["lonely","nothing_before"]"#.as_slice()) {
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            bounds.push(value["nothing_before"].as_i64().unwrap());
        }
    }
    assert!(!bounds.is_empty(), "no record bounds the read back");
}
