//! The seeds' three live jobs, each the example pipeline as written (only its environment
//! variables set, as a user sets them), through Kafka into the real stores here (MariaDB) or the
//! Elasticsearch stand-in, against API stand-ins in their strictest modes: Yahoo refusing
//! non-browser agents, wanting a crumb, behind the EU consent form; Messari wanting its key and
//! at most 20 assets a request; X dropping the stream and holding posts only recent search has.

mod common;

use common::api_mock::{ApiFaults, ApiMock};
use common::es_mock::{EsMock, Faults};
use common::x_mock::{Connection, Step, XMock, XScript};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Waits until `done`; past `timeout`, stops `run` and fails with what it printed.
fn eventually(run: &mut Logged, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        let ended = run.child.try_wait().ok().flatten().is_some();
        if ended || started.elapsed() > timeout {
            terminate(&mut run.child);
            let (_, stderr) = run.exit(Duration::from_secs(10));
            panic!("not {what} within {timeout:?}:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sluice run pipelines/{name} --kafka …` with its state and dead letters in `dir`.
fn example(name: &str, broker: &Broker, dir: &std::path::Path) -> std::process::Command {
    let mut cmd = sluice();
    cmd.arg("run")
        .arg(format!("pipelines/{name}"))
        .args(["--kafka", &broker.addr()])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("YAHOO_DLQ_OUT", dir.join("yahoo-dlq.jsonl"))
        .env("MESSARI_DLQ_OUT", dir.join("messari-dlq.jsonl"))
        .env("X_DLQ_OUT", dir.join("x-dlq.jsonl"));
    cmd
}

#[test]
fn yahoo_btc_to_mysql_behind_the_consent_form_with_a_crumb() {
    let broker = Broker::start();
    let db = MariaDb::start();
    let yahoo = ApiMock::start(ApiFaults {
        crumb_required: true,
        crumb_lasts: 2,
        consent_wall: true,
        ..ApiFaults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = example("yahoo-btc-to-mysql.yaml", &broker, dir.path());
    cmd.env("YAHOO_URL", &yahoo.url)
        .env("YAHOO_CONSENT_URL", format!("{}/consent", yahoo.url))
        .env("YAHOO_POLL", "200ms")
        .env("MYSQL_URL", db.url())
        .env("MYSQL_PASSWORD", "pw");
    let mut run = Logged::spawn(&mut cmd);
    eventually(
        &mut run,
        "the 30 daily bars in MySQL",
        Duration::from_secs(60),
        || db.try_sql("SELECT COUNT(*) FROM bitcoin_kafka").as_deref() == Some("30"),
    );
    std::thread::sleep(Duration::from_secs(1));
    terminate(&mut run.child);
    let (status, stderr) = run.exit(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        db.sql("SELECT COUNT(*), COUNT(DISTINCT `Date`), MIN(`Date`), MAX(`Date`), SUM(`final`) FROM bitcoin_kafka"),
        "30\t30\t2014-09-17\t2014-10-16\t30"
    );
    assert_eq!(
        db.sql("SELECT `Open`, `Volume` FROM bitcoin_kafka WHERE `Date` = '2014-09-17'"),
        "465.864014\t21056800"
    );
    let paths: Vec<String> = yahoo.requests().into_iter().map(|r| r.2).collect();
    assert!(
        paths.iter().any(|p| p == "POST /v2/collectConsent"),
        "{paths:?}"
    );
}

#[test]
fn messari_btc_to_elasticsearch_with_its_key_polled_every_100ms() {
    let broker = Broker::start();
    let es = EsMock::start(Faults::default());
    let messari = ApiMock::start(ApiFaults {
        required_header: Some(("x-messari-api-key".into(), "key-live-3Jd".into())),
        price_every: 2,
        ..ApiFaults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = example("messari-btc-to-elasticsearch.yaml", &broker, dir.path());
    cmd.env("MESSARI_URL", &messari.url)
        .env("MESSARI_API_KEY", "key-live-3Jd")
        .env("MESSARI_INTERVAL", "100ms")
        .env("ELASTICSEARCH_URL", &es.url);
    let mut run = Logged::spawn(&mut cmd);
    eventually(
        &mut run,
        "10 prices indexed",
        Duration::from_secs(60),
        || es.documents("bitcoin_kafka").len() >= 10,
    );
    terminate(&mut run.child);
    let (status, stderr) = run.exit(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("key-live-3Jd"));
    let docs = es.documents("bitcoin_kafka");
    let mut times: Vec<String> = docs
        .iter()
        .map(|d| d["time"].as_str().unwrap().to_string())
        .collect();
    let all = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), all, "a price time was indexed twice");
    assert!(docs
        .iter()
        .all(|d| d["symbol"] == "BTC" && d["price_usd"].is_f64()));
    // Messari v2 sends no percent changes: computed from the day's candle.
    assert!(docs[0]["percent_change_usd_24h"].is_f64(), "{}", docs[0]);
    let statuses: Vec<u16> = messari.requests().iter().map(|r| r.1.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[test]
fn election_tweets_to_mysql_across_a_disconnect_with_the_gap_backfilled() {
    let broker = Broker::start();
    let db = MariaDb::start();
    let first_id = 1_620_041_380_532_740_100u64;
    let post = |n: u64| {
        let id = first_id + n;
        Step::Line(
            json!({
                "data": {"id": id.to_string(), "text": format!("post {n} #presidentielle2022"),
                         "author_id": "2244994945", "created_at": "2022-04-10T19:00:00.000Z"},
                "includes": {"users": [{"id": "2244994945", "name": "Sample User", "username": "sample_user"}]},
                "matching_rules": [{"id": "9001", "tag": "election"}]
            })
            .to_string(),
        )
    };
    let x = XMock::start(XScript {
        token: "bearer-live-Pq2".into(),
        connections: vec![
            Connection::Lines((0..5).map(post).collect()),
            Connection::Status(429),
            Connection::Lines(vec![post(8), post(9), Step::Pause(120_000)]),
        ],
        first_id,
        posts: 10,
        page_size: 3,
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = example("election-tweets-to-mysql.yaml", &broker, dir.path());
    cmd.env("X_URL", &x.url)
        .env("X_BEARER_TOKEN", "bearer-live-Pq2")
        .env("X_RATE_LIMIT_INITIAL", "500ms")
        .env("X_NETWORK_STEP", "200ms")
        .env("MYSQL_URL", db.url())
        .env("MYSQL_PASSWORD", "pw");
    let mut run = Logged::spawn(&mut cmd);
    eventually(
        &mut run,
        "the 10 posts in MySQL",
        Duration::from_secs(60),
        || {
            db.try_sql("SELECT COUNT(*) FROM election_tweets")
                .as_deref()
                == Some("10")
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    terminate(&mut run.child);
    let (status, stderr) = run.exit(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("bearer-live-Pq2"));
    assert_eq!(
        db.sql("SELECT COUNT(*), COUNT(DISTINCT id) FROM election_tweets"),
        "10\t10"
    );
    // The rules were put on the stream, and the gap (posts 5–7) came from recent search.
    assert_eq!(x.rules().len(), 2);
    let searches = x.log(|log| log.searches.clone());
    assert!(
        searches
            .iter()
            .any(|s| s.contains(&format!("since_id={}", first_id + 4))),
        "{searches:?}"
    );
}
