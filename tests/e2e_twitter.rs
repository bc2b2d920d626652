//! The `twitter` source end to end, as a user runs `pipelines/election-tweets-to-mysql.yaml`:
//! against a local server answering like X's API v2 (tests/common/x_mock.rs), through Kafka
//! into MariaDB, or through the embedded transport into a file.

mod common;

use common::x_mock::{Connection, Step, XMock, XScript, FIRST_ID};
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "bearer-Zq81x";
const PIPELINE: &str = "pipelines/election-tweets-to-mysql.yaml";
const CANDIDATES: &str =
    "(macron OR \"le pen\" OR lepen OR mélenchon OR zemmour OR pécresse OR jadot) lang:fr -is:retweet";
const ELECTION: &str = "(#presidentielle2022 OR #presidentielle OR #debat2022) -is:retweet";

/// The stream line of post `n` (ids as in the stream fixture, which has posts 0 to 4).
fn post(n: u64) -> Step {
    let id = 1_620_041_380_532_740_100 + n;
    let line = json!({
        "data": {"id": id.to_string(), "text": format!("post {n} #presidentielle2022"),
                 "author_id": format!("{}", 2_244_994_945 + n), "created_at": format!("2023-02-01T19:00:{:02}.000Z", 30 + n)},
        "includes": {"users": [{"id": format!("{}", 2_244_994_945 + n), "name": format!("Sample User {n}"), "username": format!("sample_user_{n}")}]},
        "matching_rules": [{"id": "9001", "tag": "candidates"}]
    });
    Step::Line(line.to_string())
}

fn fixture_stream() -> Vec<Step> {
    let body = std::fs::read_to_string(fixture("api/twitter-v2-filtered-stream.ndjson")).unwrap();
    body.lines()
        .map(|line| Step::Line(line.trim_end_matches('\r').to_string()))
        .collect()
}

/// The pipeline against `x`, with short reconnect waits.
fn pipeline(x: &XMock, path: &Path, state: &Path) -> Command {
    let mut cmd = sluice_run(path, state);
    cmd.env("X_URL", &x.url)
        .env("X_BEARER_TOKEN", TOKEN)
        .env("X_NETWORK_STEP", "300ms")
        .env("X_HTTP_INITIAL", "600ms")
        .env("X_RATE_LIMIT_INITIAL", "500ms")
        .env("X_STALL_TIMEOUT", "400ms")
        .env("X_INTERVAL", "300ms");
    cmd
}

/// The pipeline with its table swapped for a file, `out.jsonl` in `dir`.
fn to_file(dir: &Path) -> std::path::PathBuf {
    let sinks = format!(
        "  posts:\n    type: file\n    topics: [election-tweets]\n    path: {}\n  rejects:\n    type: file\n    topics: [election-tweets-dlq]\n    format: envelope\n    path: {}\n",
        dir.join("out.jsonl").display(),
        dir.join("dlq.jsonl").display(),
    );
    with_sinks(PIPELINE, dir, "tweets-to-file.yaml", &sinks)
}

fn gaps_ms(x: &XMock) -> Vec<u128> {
    x.log(|log| {
        log.connections
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_millis())
            .collect()
    })
}

#[test]
fn the_stream_lands_in_mysql_once_per_post_across_disconnects_and_a_kill_9() {
    let broker = Broker::start();
    let db = MariaDb::start();
    let mut steps_2: Vec<Step> = (5..8).map(post).collect();
    steps_2.push(post(4)); // sent again: skipped
                           // Keep-alives (blank lines) until the kill: a silent connection would stall (400 ms), and
                           // the first run would reconnect and take the next connection's posts, meant for the
                           // second run, which it may not store before the kill (the stream cannot replay them).
    for _ in 0..1200 {
        steps_2.push(Step::Line(String::new()));
        steps_2.push(Step::Pause(100));
    }
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        rules: vec![
            ("1".into(), "bitcoin".into(), Some("stale".into())),
            ("2".into(), ELECTION.into(), Some("election".into())),
        ],
        connections: vec![
            // Five posts, then an operational disconnect: reconnect after the network step.
            Connection::Lines(fixture_stream()),
            // A server error: the next attempt waits the HTTP backoff.
            Connection::Status(503),
            Connection::Lines(steps_2),
            // The run after the kill.
            Connection::Lines(vec![post(7), post(8), post(9), Step::Pause(120_000)]),
        ],
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut cmd = pipeline(&x, &root().join(PIPELINE), &dir.path().join("state"));
        cmd.args(["--kafka", &broker.addr()])
            .env("MYSQL_URL", db.url())
            .env("MYSQL_PASSWORD", "pw")
            .env("X_DLQ_OUT", dir.path().join("dlq.jsonl"));
        Logged::spawn(&mut cmd)
    };
    let rows = |db: &MariaDb| -> i64 {
        db.try_sql("SELECT COUNT(*) FROM election_tweets")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    // Waits for `n` rows; past 60 s, stops the run and fails with its log.
    let wait_rows = |n: i64, running: &mut Logged| {
        let started = std::time::Instant::now();
        while rows(&db) < n {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = running.child.kill();
                running.exit(Duration::from_secs(10));
                panic!(
                    "{} of {n} rows after 60 s (the run's log is above)",
                    rows(&db)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut first = run();
    wait_rows(8, &mut first);
    first.child.kill().unwrap();
    first.exit(Duration::from_secs(10));
    let mut second = run();
    wait_rows(10, &mut second);
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = terminate(&mut second.child);
    let (_, stderr) = second.exit(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains(TOKEN), "the token was printed");

    let table = db.sql(
        "SELECT id, author_username, author_name, JSON_UNQUOTE(JSON_EXTRACT(matching_tags, '$[0]')), created_at \
         FROM election_tweets ORDER BY id",
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 10, "{table}");
    for (n, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            fields[0],
            (1_620_041_380_532_740_100u64 + n as u64).to_string()
        );
        assert_eq!(fields[1], format!("sample_user_{n}"));
        assert_eq!(fields[2], format!("Sample User {n}"));
        assert_eq!(fields[3], "candidates");
        assert_eq!(fields[4], format!("2023-02-01 19:00:{:02}.000", 30 + n));
    }

    // Rules synced once: the stale one deleted, the missing one checked then added.
    let mut rules = x.rules();
    rules.sort();
    let mut wanted = vec![
        (CANDIDATES.to_string(), Some("candidates".to_string())),
        (ELECTION.to_string(), Some("election".to_string())),
    ];
    wanted.sort();
    assert_eq!(rules, wanted);
    let requests: Vec<String> =
        x.log(|log| log.rule_requests.iter().map(|(r, _)| r.clone()).collect());
    assert_eq!(
        requests,
        [
            "GET /2/tweets/search/stream/rules",
            "POST /2/tweets/search/stream/rules?dry_run=true",
            "POST /2/tweets/search/stream/rules",
            "POST /2/tweets/search/stream/rules",
            // The second run finds them as configured.
            "GET /2/tweets/search/stream/rules",
        ]
    );
    let bodies: Vec<Value> =
        x.log(|log| log.rule_requests.iter().map(|(_, b)| b.clone()).collect());
    assert_eq!(bodies[1]["add"][0]["value"], CANDIDATES);
    assert_eq!(bodies[2], json!({"delete": {"ids": ["1"]}}));

    // Waits: 300 ms after the operational disconnect, 600 ms after the 503.
    let gaps = gaps_ms(&x);
    assert!(gaps[0] >= 300 && gaps[0] < 2_000, "{gaps:?}");
    assert!(gaps[1] >= 600 && gaps[1] < 3_000, "{gaps:?}");
}

#[test]
fn a_429_and_a_silent_stream_are_waited_out_as_x_says() {
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        rules: vec![
            ("1".into(), CANDIDATES.into(), Some("candidates".into())),
            ("2".into(), ELECTION.into(), Some("election".into())),
        ],
        connections: vec![
            Connection::Status(429),
            // Silence: taken for dead after `stall_timeout` (400 ms), well before it ends.
            Connection::Lines(vec![Step::Pause(3_000)]),
            Connection::Lines(vec![post(0), Step::Line("{\"data\": 7}".into()), post(1)]),
        ],
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = pipeline(&x, &to_file(dir.path()), &dir.path().join("state"));
    let mut running = Logged::spawn(&mut cmd);
    let out = dir.path().join("out.jsonl");
    wait_for_lines(&out, 2, Duration::from_secs(30));
    wait_for_lines(&dir.path().join("dlq.jsonl"), 1, Duration::from_secs(10));
    terminate(&mut running.child);
    let (_, stderr) = running.exit(Duration::from_secs(10));
    let posts = read_jsonl(&out);
    let ids: Vec<&str> = posts.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["1620041380532740100", "1620041380532740101"]);
    let dead = read_jsonl(&dir.path().join("dlq.jsonl"));
    assert!(
        dead[0].to_string().contains("not a post"),
        "the bad message is explained: {}",
        dead[0]
    );
    let gaps = gaps_ms(&x);
    // After the 429: the rate-limit backoff (500 ms). After the silence: the stall timeout
    // and the first network step (400 + 300 ms), not the 3 s the server stayed silent.
    assert!(gaps[0] >= 500, "{gaps:?}");
    assert!(gaps[1] >= 700 && gaps[1] < 2_500, "{gaps:?}");
    assert!(stderr.contains("stall_timeout"), "{stderr}");
    // No rule changed: they were as configured.
    assert_eq!(x.log(|log| log.rule_requests.len()), 1);
}

#[test]
fn a_refused_rule_or_token_stops_the_run_with_one_clear_error() {
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        refused: Some(ELECTION.into()),
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = to_file(dir.path());
    let mut cmd = pipeline(&x, &path, &dir.path().join("state"));
    cmd.env("SLUICE_LOG", "trace");
    let (status, stderr) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("X refused the stream rule"), "{stderr}");
    assert!(
        stderr.contains("rules[1].value"),
        "the rule is named: {stderr}"
    );
    assert!(
        stderr.contains("non-stopword"),
        "X's reason is given: {stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token was printed");
    assert!(x.rules().is_empty(), "a rule was added despite the refusal");

    let mut cmd = pipeline(&x, &path, &dir.path().join("state"));
    cmd.env("X_BEARER_TOKEN", "wrong-8kD2")
        .env("SLUICE_LOG", "trace");
    let (status, stderr) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("check `bearer_token`"), "{stderr}");
    assert!(!stderr.contains("wrong-8kD2"), "the token was printed");
}

/// How many times each post number arrived.
fn arrivals(out: &Path) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for record in read_jsonl(out) {
        let id: u64 = record["id"].as_str().unwrap().parse().unwrap();
        *seen.entry(id - FIRST_ID).or_default() += 1;
    }
    seen
}

#[test]
fn recent_search_resumes_its_scan_after_a_stop_and_a_kill_9_through_kafka() {
    let broker = Broker::start();
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        posts: 400,
        grow: 40,
        page_size: 20,
        page_delay_ms: 150,
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = to_file(dir.path());
    let out = dir.path().join("out.jsonl");
    let run = || {
        let mut cmd = pipeline(&x, &path, &dir.path().join("state"));
        cmd.args(["--kafka", &broker.addr()])
            .env("X_MODE", "recent_search");
        Logged::spawn(&mut cmd)
    };
    let mut first = run();
    wait_for_lines(&out, 90, Duration::from_secs(60));
    let (status, _) = terminate(&mut first.child);
    first.exit(Duration::from_secs(10));
    assert!(status.success());
    let stopped_at = count_lines(&out);

    let mut second = run();
    wait_for_lines(&out, stopped_at + 150, Duration::from_secs(60));
    second.child.kill().unwrap();
    second.exit(Duration::from_secs(10));

    // The third run finishes the first scan; its next scan brings the 40 new posts.
    let mut third = run();
    let started = std::time::Instant::now();
    while arrivals(&out).len() < 440 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of 440",
            arrivals(&out).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (status, _) = terminate(&mut third.child);
    let (_, stderr) = third.exit(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains(TOKEN));

    let seen = arrivals(&out);
    assert!((0..440).all(|n| seen.contains_key(&n)), "a post is missing");
    assert_eq!(seen.len(), 440, "a post that was never served arrived");
    // The graceful stop repeats nothing; the kill at most what was sent and not yet stored.
    let lines = read_jsonl(&out);
    let first_run: Vec<u64> = lines[..stopped_at]
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse::<u64>().unwrap() - FIRST_ID)
        .collect();
    let repeated: Vec<&u64> = first_run.iter().filter(|n| seen[n] > 1).collect();
    assert!(
        repeated.is_empty(),
        "sent again after a graceful stop: {repeated:?}"
    );
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!("440 posts served; stopped at {stopped_at}; {duplicates} duplicates after the kill");
    assert!(duplicates <= 250, "{duplicates} duplicates");
    // Scans after the first ask only for posts newer than the newest seen.
    let searches = x.log(|log| log.searches.clone());
    assert!(
        searches
            .iter()
            .any(|s| s.contains(&format!("since_id={}", FIRST_ID + 399))),
        "{searches:?}"
    );
}

/// `backfill: recent_search` (the example's default): posts made while the stream was
/// reconnecting (4–6 here, which no stream connection carries) and while sluice was stopped
/// (10–12) are read through recent search once connected again, oldest first; posts both
/// carry arrive once. Without it those six posts are lost.
#[test]
fn posts_made_while_the_stream_reconnects_or_sluice_is_down_are_backfilled_once_each() {
    let first_id = 1_620_041_380_532_740_100;
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        rules: vec![
            ("1".into(), CANDIDATES.into(), Some("candidates".into())),
            ("2".into(), ELECTION.into(), Some("election".into())),
        ],
        connections: vec![
            Connection::Lines((0..4).map(post).collect()),
            // A 429 while reconnecting: THROTTLED in the status until connected again.
            Connection::Status(429),
            // 7–9, then keep-alives for 10 s: the run is stopped while this one is open.
            Connection::Lines(
                [post(7), post(8), post(9)]
                    .into_iter()
                    .chain((0..100).flat_map(|_| [Step::Pause(100), Step::Line(String::new())]))
                    .collect(),
            ),
        ],
        // Recent search has posts 0–9, and 10–12 from its second scan on.
        first_id,
        posts: 10,
        grow: 3,
        page_size: 2,
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let path = to_file(dir.path());
    let run = || Logged::spawn(&mut pipeline(&x, &path, &dir.path().join("state")));
    let ids = || -> HashMap<u64, usize> {
        let mut seen = HashMap::new();
        for post in read_jsonl(&out) {
            let id: u64 = post["id"].as_str().unwrap().parse().unwrap();
            *seen.entry(id - first_id).or_default() += 1;
        }
        seen
    };
    // Runs the pipeline until `posts` distinct posts arrived (and half a second more, for
    // any duplicate to show), then stops it; each of them arrived once.
    let run_until = |posts: usize| {
        let mut running = run();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ids().len() < posts {
            assert!(std::time::Instant::now() < deadline, "{:?}", ids());
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        terminate(&mut running.child);
        running.exit(Duration::from_secs(10));
        let seen = ids();
        assert!(seen.values().all(|c| *c == 1), "{seen:?}");
        assert_eq!(seen.len(), posts, "{seen:?}");
    };
    run_until(10);
    // Posts from the stream carry the rules they matched; backfilled ones cannot.
    let lines = read_jsonl(&out);
    let tagged = |n: u64| {
        let id = (first_id + n).to_string();
        let post = lines.iter().find(|p| p["id"] == id.as_str()).unwrap();
        post.get("matching_tags").is_some()
    };
    assert!(tagged(0) && !tagged(5), "{lines:?}");
    let searches = x.log(|log| log.searches.clone());
    assert!(
        searches
            .iter()
            .any(|s| s.contains(&format!("since_id={}", first_id + 3))),
        "{searches:?}"
    );

    // A restart: what was posted while sluice was down (10–12) is read first.
    run_until(13);
}

/// Recent search refuses (400) a `since_id` older than its 7 days, which is where a restart
/// after a week's downtime starts: the source asks from the window's edge (`start_time`)
/// instead and says what may be missing, rather than failing every restart.
#[test]
fn a_since_id_older_than_seven_days_reads_from_the_window_edge_with_a_warning() {
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        posts: 30,
        grow: 5,
        page_size: 10,
        // Every post the source will have seen is "older than 7 days" by the time it asks.
        oldest_since_id: Some(FIRST_ID + 1_000),
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut cmd = pipeline(&x, &to_file(dir.path()), &dir.path().join("state"));
    cmd.env("X_MODE", "recent_search");
    let mut running = Logged::spawn(&mut cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while arrivals(&out).len() < 35 {
        assert!(
            std::time::Instant::now() < deadline && running.child.try_wait().unwrap().is_none(),
            "{} of 35",
            arrivals(&out).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&mut running.child);
    let (status, stderr) = running.exit(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("older than recent search's 7 days"),
        "{stderr}"
    );
    let seen = arrivals(&out);
    assert!(seen.values().all(|c| *c == 1), "{seen:?}");
    let searches = x.log(|log| log.searches.clone());
    assert!(
        searches.iter().any(|s| s.contains("start_time=")),
        "{searches:?}"
    );
}

/// The stream's own reconnects after a 429 show as the HTTP client's waits do: `THROTTLED`
/// with the count in the status, `RUNNING` again once connected.
#[test]
fn a_stream_refused_with_429_shows_throttled_until_it_connects() {
    let x = XMock::start(XScript {
        token: TOKEN.into(),
        rules: vec![
            ("1".into(), CANDIDATES.into(), Some("candidates".into())),
            ("2".into(), ELECTION.into(), Some("election".into())),
        ],
        // Waits of 0.5, 1 and 2 s (`X_RATE_LIMIT_INITIAL` 500 ms, doubling).
        connections: vec![
            Connection::Status(429),
            Connection::Status(429),
            Connection::Status(429),
            Connection::Lines(vec![post(0)]),
        ],
        ..XScript::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = pipeline(&x, &to_file(dir.path()), &dir.path().join("state"));
    cmd.env("SLUICE_LISTEN", format!("127.0.0.1:{port}"));
    let mut running = Logged::spawn(&mut cmd);
    let client = reqwest::blocking::Client::new();
    let status = || -> Value {
        client
            .get(format!(
                "http://127.0.0.1:{port}/connectors/election-tweets.x/status"
            ))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    };
    let started = std::time::Instant::now();
    loop {
        let now = status();
        if now["connector"]["state"] == "THROTTLED" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never THROTTLED: {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_lines(&dir.path().join("out.jsonl"), 1, Duration::from_secs(20));
    let after = status();
    assert_eq!(after["connector"]["state"], "RUNNING", "{after}");
    assert_eq!(after["metrics"]["throttled"], 3, "{after}");
    terminate(&mut running.child);
    running.exit(Duration::from_secs(10));
}
