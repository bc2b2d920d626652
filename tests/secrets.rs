//! No secret in any output: every example pipeline and a set of broken configs run at
//! `SLUICE_LOG=trace` with sentinel secrets (a numeric MySQL password, Elasticsearch credentials
//! in its URL, SASL passwords in librdkafka properties); stdout and stderr never contain them.

mod common;

use common::api_mock::{ApiFaults, ApiMock};
use common::es_mock::{EsMock, Faults};
use common::x_mock::{XMock, XScript};
use common::*;
use std::process::Command;

/// A numeric password, as `MYSQL_PASSWORD=20240917` (it was refused, and printed).
const MYSQL_SENTINEL: &str = "20240917";
const ES_SENTINEL: &str = "es-sentinel-7Kq2";
const SASL_SENTINEL: &str = "sasl-sentinel-9Zx4";
/// The Messari API key and the bearer token of the HTTP sources.
const API_SENTINEL: &str = "api-sentinel-3Wd8";

/// Fails the test if `text` shows any sentinel.
fn shows_no_secret(what: &str, text: &str) {
    for sentinel in [MYSQL_SENTINEL, ES_SENTINEL, SASL_SENTINEL, API_SENTINEL] {
        if let Some(at) = text.find(sentinel) {
            let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("{what}: output shows a secret: {}", &text[from..to]);
        }
    }
    assert!(!text.trim().is_empty(), "{what}: no output at all");
}

/// Runs `cmd` (a pipeline that polls until stopped) at trace level for `running`, stops it with
/// SIGTERM, and fails the test if any sentinel shows in what it printed; the exit status.
fn stopped_without_secrets(
    what: &str,
    cmd: &mut Command,
    running: std::time::Duration,
) -> std::process::ExitStatus {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .env("SLUICE_LOG", "trace")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("sluice runs");
    std::thread::sleep(running);
    let status = match child.try_wait().unwrap() {
        Some(status) => status,
        None => terminate(&mut child).0,
    };
    let text = std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    shows_no_secret(what, &text);
    status
}

/// Runs `cmd` at trace level; fails the test if any sentinel shows in what it printed.
fn runs_without_secrets(what: &str, cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .env("SLUICE_LOG", "trace")
        .output()
        .expect("sluice runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    shows_no_secret(what, &text);
    out
}

#[test]
fn no_pipeline_and_no_broken_config_prints_a_secret() {
    let broker = Broker::start();
    let db = MariaDb::start();
    db.admin_sql(&format!(
        "ALTER USER 'sluice'@'127.0.0.1' IDENTIFIED BY '{MYSQL_SENTINEL}'"
    ));
    let es = EsMock::start(Faults {
        basic_auth: Some(format!("elastic:{ES_SENTINEL}")),
        ..Faults::default()
    });
    let es_url = es
        .url
        .replace("http://", &format!("http://elastic:{ES_SENTINEL}@"));
    let messari = ApiMock::start(ApiFaults {
        required_header: Some(("x-messari-api-key".into(), API_SENTINEL.into())),
        ..ApiFaults::default()
    });
    let x = XMock::start(XScript {
        token: API_SENTINEL.into(),
        ..XScript::default()
    });
    let items = ApiMock::start(ApiFaults {
        records: 250,
        page_size: 100,
        required_header: Some(("authorization".into(), format!("Bearer {API_SENTINEL}"))),
        ..ApiFaults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let base = |file: &str| {
        let mut cmd = sluice();
        cmd.arg("run")
            .arg(file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("BTC_OUT", dir.path().join("out.jsonl"))
            .env("BTC_DLQ_OUT", dir.path().join("dlq.jsonl"))
            .env("JSONL_OUT", dir.path().join("lines.jsonl"))
            .env("JSONL_DLQ_OUT", dir.path().join("lines-dlq.jsonl"))
            .env("KAFKA_BOOTSTRAP", broker.addr())
            .env("MYSQL_URL", db.url())
            .env("MYSQL_PASSWORD", MYSQL_SENTINEL)
            .env("ELASTICSEARCH_URL", &es_url);
        cmd
    };

    // Every example pipeline, working.
    for file in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let file = file.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut cmd = base(&format!("pipelines/{name}"));
        if name == "quickstart.yaml" {
            cmd.env("SLUICE_SINKS__ARCHIVE__PATH", dir.path().join("q.jsonl"));
        }
        // HTTP sources poll until stopped: their pipelines run against the local API stand-in
        // for a few seconds, then get SIGTERM.
        let polls = ["messari", "http-", "yahoo", "election-tweets"];
        if polls.iter().any(|p| name.starts_with(p)) {
            cmd.env("MESSARI_URL", &messari.url)
                .env("X_URL", &x.url)
                .env("X_BEARER_TOKEN", API_SENTINEL)
                .env("X_DLQ_OUT", dir.path().join("x-dlq.jsonl"))
                .env("YAHOO_URL", &items.url)
                .env("YAHOO_CONSENT_URL", format!("{}/consent", items.url))
                .env("YAHOO_POLL", "100ms")
                .env("YAHOO_TABLE", "yahoo_bars")
                .env("YAHOO_DLQ_OUT", dir.path().join("yahoo-dlq.jsonl"))
                .env("MESSARI_API_KEY", API_SENTINEL)
                .env("MESSARI_INTERVAL", "100ms")
                .env("MESSARI_DLQ_OUT", dir.path().join("messari-dlq.jsonl"))
                .env("API_URL", &items.url)
                .env("API_TOKEN", API_SENTINEL)
                .env("API_INTERVAL", "100ms")
                .env("ITEMS_OUT", dir.path().join("items.jsonl"))
                .env("ITEMS_DLQ_OUT", dir.path().join("items-dlq.jsonl"));
            let status =
                stopped_without_secrets(&name, &mut cmd, std::time::Duration::from_secs(4));
            assert!(status.success(), "{name}: {status}");
            if name.starts_with("yahoo") {
                continue; // Yahoo takes no credentials
            }
            // The same with credentials the API refuses (another sentinel-bearing value).
            let mut cmd = base(&format!("pipelines/{name}"));
            cmd.env("SLUICE_NAME", format!("refused-{}", name.len()))
                .env("MESSARI_URL", &messari.url)
                .env("MESSARI_API_KEY", format!("x{API_SENTINEL}"))
                .env("X_URL", &x.url)
                .env("X_BEARER_TOKEN", format!("x{API_SENTINEL}"))
                .env("X_DLQ_OUT", dir.path().join("x-dlq-refused.jsonl"))
                .env("API_URL", &items.url)
                .env("API_TOKEN", format!("x{API_SENTINEL}"))
                .env("ITEMS_OUT", dir.path().join("items-refused.jsonl"))
                .env("ITEMS_DLQ_OUT", dir.path().join("items-dlq-refused.jsonl"))
                .env(
                    "MESSARI_DLQ_OUT",
                    dir.path().join("messari-dlq-refused.jsonl"),
                );
            let status =
                stopped_without_secrets(&name, &mut cmd, std::time::Duration::from_secs(4));
            assert_eq!(status.code(), Some(1), "{name} with refused credentials");
            continue;
        }
        let out = runs_without_secrets(&name, &mut cmd);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(db.sql("SELECT COUNT(*) FROM bitcoin_kafka"), "2530");
    // yahoo-btc-to-mysql.yaml upserted the stand-in's 30 daily bars.
    assert_eq!(
        db.sql("SELECT COUNT(*), MIN(`Date`), MAX(`Date`) FROM yahoo_bars"),
        "30\t2014-09-17\t2014-10-16"
    );

    // The numeric password through a `SLUICE_…` override too.
    let mut cmd = base("pipelines/btc-history-to-mysql.yaml");
    cmd.env("SLUICE_NAME", "override")
        .env("MYSQL_PASSWORD", "")
        .env("SLUICE_SINKS__BITCOIN_TABLE__PASSWORD", MYSQL_SENTINEL);
    assert!(runs_without_secrets("password override", &mut cmd)
        .status
        .success());

    // Broken: the password is wrong (it is another sentinel-bearing value).
    let mut cmd = base("pipelines/btc-history-to-mysql.yaml");
    cmd.env("SLUICE_NAME", "wrong")
        .env("MYSQL_PASSWORD", format!("{MYSQL_SENTINEL}0"));
    assert_eq!(
        runs_without_secrets("wrong password", &mut cmd)
            .status
            .code(),
        Some(1)
    );

    // Broken: the password has a shape no secret has.
    let bad = dir.path().join("bad-password.yaml");
    let yaml = std::fs::read_to_string(root().join("pipelines/btc-history-to-mysql.yaml"))
        .unwrap()
        .replace(
            "password: \"${MYSQL_PASSWORD:-}\"",
            &format!("password: [{MYSQL_SENTINEL}]"),
        );
    std::fs::write(&bad, yaml).unwrap();
    let out = runs_without_secrets("password as a list", &mut base(bad.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(2));

    // Broken: Elasticsearch unreachable with credentials in the URL; and the wrong ones.
    let mut cmd = base("pipelines/btc-history-to-elasticsearch.yaml");
    cmd.env("SLUICE_NAME", "unreachable").env(
        "ELASTICSEARCH_URL",
        format!("http://elastic:{ES_SENTINEL}@127.0.0.1:{}", free_port()),
    );
    assert_eq!(
        runs_without_secrets("closed ES port", &mut cmd)
            .status
            .code(),
        Some(1)
    );
    let mut cmd = base("pipelines/btc-history-to-elasticsearch.yaml");
    cmd.env("SLUICE_NAME", "wrong-es").env(
        "ELASTICSEARCH_URL",
        es_url.replace(ES_SENTINEL, &format!("x{ES_SENTINEL}")),
    );
    assert_eq!(
        runs_without_secrets("wrong ES password", &mut cmd)
            .status
            .code(),
        Some(1)
    );

    // Broken: SASL against a broker that does not speak it, and a bad librdkafka value next to
    // a SASL password.
    for (what, client) in [
        (
            "SASL handshake",
            format!("{{ security.protocol: SASL_PLAINTEXT, sasl.mechanism: PLAIN, sasl.username: u, sasl.password: {SASL_SENTINEL} }}"),
        ),
        (
            "invalid property",
            format!("{{ security.protocol: SASL_SSL, sasl.mechanism: NOPE, sasl.password: {SASL_SENTINEL} }}"),
        ),
    ] {
        let file = dir.path().join("sasl.yaml");
        let yaml = std::fs::read_to_string(root().join("pipelines/btc-history-csv-to-file.yaml"))
            .unwrap()
            .replace(
                "name: btc-history\n",
                &format!(
                    "name: btc-sasl\nkafka:\n  bootstrap_servers: {}\n  connect_timeout: 3s\n  client: {client}\n",
                    broker.addr()
                ),
            );
        std::fs::write(&file, yaml).unwrap();
        let out = runs_without_secrets(what, &mut base(file.to_str().unwrap()));
        assert_ne!(out.status.code(), Some(0), "{what}");
    }
}
