//! The seeds' analytics as stream transforms, on the real BTC-USD daily file, run as a user
//! runs them (`sluice run --once pipelines/…`): weekly candles checked against an independent
//! computation, and the anomaly detector against the seed's Kibana anomaly table.

mod common;

use chrono::{Datelike, NaiveDate};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// One week of daily bars, computed here without Sluice.
#[derive(Debug, Default)]
struct Week {
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: i64,
    days: u64,
}

fn weeks_of(csv: &std::path::Path) -> BTreeMap<NaiveDate, Week> {
    let mut weeks: BTreeMap<NaiveDate, Week> = BTreeMap::new();
    for row in csv_rows(csv) {
        let Some([open, high, low, close, _, volume]) = row.numbers else {
            continue; // Yahoo's all-null days are skipped, not zero.
        };
        let date: NaiveDate = row.date.parse().expect("a date");
        let monday = date - chrono::Duration::days(date.weekday().num_days_from_monday() as i64);
        let week = weeks.entry(monday).or_insert(Week {
            open,
            high,
            low,
            ..Week::default()
        });
        week.high = week.high.max(high);
        week.low = week.low.min(low);
        week.close = close;
        week.volume += volume as i64;
        week.days += 1;
    }
    weeks
}

#[test]
fn weekly_candles_equal_an_independent_computation_on_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("candles.jsonl");
    let dlq = dir.path().join("dlq.jsonl");
    let (status, log) = run_bounded(
        sluice_run(
            "pipelines/btc-weekly-candles.yaml",
            dir.path().join("state"),
        )
        .arg("--once")
        .env("CANDLES_OUT", &out)
        .env("CANDLES_DLQ_OUT", &dlq),
        std::time::Duration::from_secs(120),
    );
    assert!(status.success(), "{log}");
    let expected = weeks_of(&fixture("BTC-USD.csv"));
    let candles = read_jsonl(&out);
    assert_eq!(candles.len(), expected.len(), "one candle per week");
    assert_eq!(candles.len(), 363);
    let (first_week, last_week) = (
        *expected.keys().next().unwrap(),
        *expected.keys().last().unwrap(),
    );
    for (candle, (monday, week)) in candles.iter().zip(&expected) {
        let start = format!("{monday}T00:00:00Z");
        assert_eq!(candle["start"], start.as_str(), "candles in week order");
        let end = format!("{}T00:00:00Z", *monday + chrono::Duration::days(7));
        assert_eq!(candle["end"], end.as_str());
        assert_eq!(candle["key"], "BTC-USD");
        for (field, value) in [
            ("open", week.open),
            ("high", week.high),
            ("low", week.low),
            ("close", week.close),
        ] {
            assert_eq!(candle[field].as_f64(), Some(value), "{field} of {start}");
        }
        assert_eq!(
            candle["volume"].as_i64(),
            Some(week.volume),
            "volume of {start}"
        );
        assert_eq!(candle["days"].as_u64(), Some(week.days), "days of {start}");
        // Only the last week is still open at the end of the file.
        assert_eq!(candle["final"], *monday != last_week, "final of {start}");
    }
    // The partial first week (the file starts on a Wednesday) and the weeks of the null days.
    let days = |monday: &str| expected[&monday.parse::<NaiveDate>().unwrap()].days;
    assert_eq!(first_week.to_string(), "2014-09-15");
    assert_eq!(days("2014-09-15"), 5);
    assert_eq!(days("2020-04-13"), 6, "2020-W16 lost 2020-04-17");
    assert_eq!(days("2020-10-05"), 6, "2020-W41 lost 2020-10-09");
    assert_eq!(days("2020-10-12"), 5, "2020-W42 lost 2020-10-12 and 13");
    // The null days are dead letters, not zeros.
    assert_eq!(count_lines(&dlq), 4);
}

/// The seed's Kibana anomaly table (seed 004, figure 2.31): its five top days.
const SEED_ANOMALIES: [&str; 5] = [
    "2017-12-06",
    "2016-06-15",
    "2015-11-03",
    "2017-12-21",
    "2015-01-13",
];

/// 1-based rank of `day` (or the next day: the seed's days look one day early) in `ranked`.
fn rank_of(ranked: &[String], day: &str) -> Option<usize> {
    let day: NaiveDate = day.parse().unwrap();
    [day, day + chrono::Duration::days(1)]
        .iter()
        .filter_map(|d| ranked.iter().position(|r| r == &d.to_string()))
        .min()
        .map(|i| i + 1)
}

#[test]
fn anomalies_find_the_seed_s_kibana_days_and_the_covid_crash() {
    let dir = tempfile::tempdir().unwrap();
    let es = es_mock::EsMock::start(es_mock::Faults::default());
    let (status, log) = run_bounded(
        sluice_run(
            "pipelines/btc-anomalies-to-elasticsearch.yaml",
            dir.path().join("state"),
        )
        .arg("--once")
        .env("ELASTICSEARCH_URL", &es.url)
        .env("ANOMALY_MIN_SEVERITY", "0")
        .env("ANOMALY_DLQ_OUT", dir.path().join("dlq.jsonl")),
        std::time::Duration::from_secs(120),
    );
    assert!(status.success(), "{log}");
    let scored = es.documents("btc-anomalies");
    // Every non-null day but the 30 of the warm-up is scored.
    assert_eq!(scored.len(), 2530 - 30);
    let mut ranked: Vec<&Value> = scored.iter().collect();
    ranked.sort_by(|a, b| {
        let score = |v: &Value| v["score"].as_f64().unwrap().abs();
        score(b).total_cmp(&score(a))
    });
    // Severity within 0–100; ranked against the history (the default), few days are severe
    // and the covid crash is one of them.
    let severe: Vec<&&Value> = ranked
        .iter()
        .filter(|r| r["severity"].as_f64().unwrap() >= 75.0)
        .collect();
    assert!(
        !severe.is_empty() && severe.len() <= scored.len() / 100,
        "{} severe days",
        severe.len()
    );
    assert!(
        severe
            .iter()
            .any(|r| r["time"].as_str().unwrap().starts_with("2020-03-12")),
        "the covid crash is not severe"
    );
    for record in &ranked {
        let severity = record["severity"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&severity), "{record}");
        let (actual, typical) = (
            record["actual"].as_f64().unwrap(),
            record["typical"].as_f64().unwrap(),
        );
        assert!(actual > 0.0 && typical > 0.0);
        assert_eq!(record["direction"] == "up", actual >= typical, "{record}");
    }
    let days: Vec<String> = ranked
        .iter()
        .map(|r| r["time"].as_str().unwrap()[..10].to_string())
        .collect();
    let ranks: Vec<Option<usize>> = SEED_ANOMALIES.iter().map(|d| rank_of(&days, d)).collect();
    let within = |n: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= n)).count();
    let table: Vec<String> = ranked[..20]
        .iter()
        .map(|r| {
            format!(
                "{} {:.1} {} {}",
                &r["time"].as_str().unwrap()[..10],
                r["severity"],
                r["actual"],
                r["typical"]
            )
        })
        .collect();
    assert!(
        within(10) >= 3,
        "seed days ranked {ranks:?}; top 20:\n{}",
        table.join("\n")
    );
    assert!(
        within(20) >= 4,
        "seed days ranked {ranks:?}; top 20:\n{}",
        table.join("\n")
    );
    let covid = rank_of(&days, "2020-03-12").unwrap();
    assert!(covid <= 3, "2020-03-12 ranked {covid}");
}

#[test]
fn forecasts_backtest_against_the_naive_forecast_with_calibrated_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("forecast.jsonl");
    let (status, log) = run_bounded(
        sluice_run("pipelines/btc-forecast.yaml", dir.path().join("state"))
            .arg("--once")
            .env("FORECAST_OUT", &out)
            .env("FORECAST_DLQ_OUT", dir.path().join("dlq.jsonl")),
        std::time::Duration::from_secs(300),
    );
    assert!(status.success(), "{log}");
    let close: BTreeMap<String, f64> = csv_rows(&fixture("BTC-USD.csv"))
        .into_iter()
        .filter_map(|r| Some((r.date, r.numbers?[3])))
        .collect();
    let last_day: NaiveDate = close.keys().last().unwrap().parse().unwrap();
    let first_origin = last_day - chrono::Duration::days(2 * 365);
    let forecasts = read_jsonl(&out);
    // Rolling origins over the last two years: every forecast whose target is known.
    let mut ape = [(0.0, 0.0, 0usize); 7]; // (model, naive, n) per horizon
    let mut covered = [(0usize, 0usize); 7]; // (80 %, 95 %) per horizon
    let mut widths: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for f in &forecasts {
        let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k} of {f}"));
        for k in [
            "mean", "lower_80", "upper_80", "lower_95", "upper_95", "last",
        ] {
            assert!(num(k).is_finite() && num(k) > 0.0, "{k} of {f}");
        }
        let fitted_at = f["fitted_at"].as_str().unwrap();
        widths
            .entry(fitted_at)
            .or_default()
            .push(num("upper_95") - num("lower_95"));
        let origin: NaiveDate = fitted_at[..10].parse().unwrap();
        let target = &f["target"].as_str().unwrap()[..10];
        let (Some(actual), true) = (close.get(target), origin > first_origin) else {
            continue;
        };
        let h = f["horizon"].as_u64().unwrap() as usize - 1;
        ape[h].0 += (num("mean") - actual).abs() / actual;
        ape[h].1 += (num("last") - actual).abs() / actual;
        ape[h].2 += 1;
        covered[h].0 += usize::from((num("lower_80")..=num("upper_80")).contains(actual));
        covered[h].1 += usize::from((num("lower_95")..=num("upper_95")).contains(actual));
    }
    for (origin, w) in &widths {
        assert_eq!(w.len(), 7, "seven days ahead from {origin}");
        assert!(
            w.windows(2).all(|p| p[1] >= p[0]),
            "intervals narrow from {origin}: {w:?}"
        );
    }
    let n: usize = ape.iter().map(|a| a.2).sum();
    assert!(ape[6].2 > 700, "{} origins at h7", ape[6].2);
    let (mape7, naive7) = (ape[6].0 / ape[6].2 as f64, ape[6].1 / ape[6].2 as f64);
    let coverage80 = covered.iter().map(|c| c.0).sum::<usize>() as f64 / n as f64;
    let coverage95 = covered.iter().map(|c| c.1).sum::<usize>() as f64 / n as f64;
    let table = format!(
        "MAPE h7 {:.4} vs naive {:.4}; coverage 80 % {coverage80:.3}, 95 % {coverage95:.3}",
        mape7, naive7
    );
    eprintln!("{table}");
    assert!(mape7 <= 1.03 * naive7, "{table}");
    assert!((0.75..=0.88).contains(&coverage80), "{table}");
    assert!((0.90..=0.975).contains(&coverage95), "{table}");
}

/// Runs `pipeline` on Kafka with its output topic `topic` into a file, and returns the output
/// records and how many were out at the kill; with `kill_after` lines, the run is killed (-9)
/// once that many are out, then run again to the end, and the second run's output appended.
fn run_on_kafka(
    pipeline: &str,
    topic: &str,
    transform: &str,
    kill_after: Option<usize>,
) -> (Vec<Value>, usize) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let path = with_sinks(
        pipeline,
        dir.path(),
        "pipeline.yaml",
        &format!(
            "  out:\n    type: file\n    topics: [{topic}]\n    path: {}\n  rejects:\n    type: file\n    topics: [bitcoin-dlq]\n    path: {}\n",
            out.display(),
            dir.path().join("dlq.jsonl").display()
        ),
    );
    let command = || {
        let mut cmd = sluice_run(&path, dir.path().join("state"));
        cmd.arg("--once")
            .arg("--kafka")
            .arg(broker.addr())
            .env("SLUICE_SOURCES__YAHOO_CSV__RATE", "500")
            .env(
                format!(
                    "SLUICE_TRANSFORMS__{}__BATCH__MAX_RECORDS",
                    transform.to_uppercase()
                ),
                "50",
            )
            .stderr(std::process::Stdio::null());
        cmd
    };
    let mut at_kill = 0;
    if let Some(lines) = kill_after {
        let mut child = command().spawn().unwrap();
        wait_for_lines(&out, lines, std::time::Duration::from_secs(120));
        child.kill().unwrap();
        child.wait().unwrap();
        at_kill = count_lines(&out);
    }
    let (status, log) = run_bounded(&mut command(), std::time::Duration::from_secs(300));
    assert!(status.success(), "{log}");
    (read_jsonl(&out), at_kill)
}

/// A kill -9 in the middle of a windowed, an anomaly and a forecast run on Kafka, then a
/// restart, gives the records of an uninterrupted run: the transform's state comes back from
/// its checkpoint with the input offsets it reflects. The file sink is at least once, so a
/// record written again after the kill may appear twice; it must then be the same record.
#[test]
fn a_kill_9_mid_run_on_kafka_then_a_restart_gives_the_uninterrupted_output() {
    for (pipeline, topic, transform, id, kill_after) in [
        (
            "pipelines/btc-weekly-candles.yaml",
            "bitcoin-weekly",
            "weekly",
            &["start"][..],
            80,
        ),
        (
            "pipelines/btc-anomalies-to-elasticsearch.yaml",
            "bitcoin-anomalies",
            "close_anomalies",
            &["time"][..],
            150,
        ),
        (
            "pipelines/btc-forecast.yaml",
            "bitcoin-forecast",
            "close_forecast",
            &["fitted_at", "horizon"][..],
            3000,
        ),
    ] {
        let (whole, _) = run_on_kafka(pipeline, topic, transform, None);
        let (killed, at_kill) = run_on_kafka(pipeline, topic, transform, Some(kill_after));
        assert!(
            at_kill < whole.len(),
            "{pipeline}: the run ended before the kill"
        );
        eprintln!(
            "{pipeline}: killed with {at_kill} of {} records out",
            whole.len()
        );
        let by_id = |records: &[Value]| {
            let mut map: BTreeMap<String, Value> = BTreeMap::new();
            for r in records {
                let key = id
                    .iter()
                    .map(|f| r[*f].to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                if let Some(before) = map.insert(key.clone(), r.clone()) {
                    assert_eq!(&before, r, "{pipeline}: {key} written twice, differently");
                }
            }
            map
        };
        let (whole, killed) = (by_id(&whole), by_id(&killed));
        let differing: Vec<String> = whole
            .iter()
            .filter(|(k, v)| killed.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} ≠ {:?}", killed.get(k)))
            .chain(
                killed
                    .keys()
                    .filter(|k| !whole.contains_key(*k))
                    .map(|k| format!("{k} added")),
            )
            .collect();
        assert!(
            differing.is_empty(),
            "{pipeline}: {} of {} records differ after the kill, e.g.\n{}",
            differing.len(),
            whole.len(),
            differing[..differing.len().min(3)].join("\n")
        );
    }
}

/// An `exactly_once` pipeline's source of the real BTC-USD file into `bitcoin-daily`, keyed
/// `BTC-USD`, its null days skipped (YAML, from `exactly_once:` to the end of `sources:`).
fn btc_daily() -> String {
    format!(
        r#"exactly_once: true
sources:
  yahoo_csv:
    type: csv
    path: {csv}
    topic: bitcoin-daily
    timestamp_column: Date
    columns: {{ Date: date, Open: float, High: float, Low: float, Close: float, "Adj Close": float, Volume: int }}
    null_values: ["null"]
    all_null_rows: skip
    transforms:
      - {{ type: insert_field, field: symbol, value: BTC-USD }}
      - {{ type: value_to_key, fields: [symbol] }}
"#,
        csv = fixture("BTC-USD.csv").display()
    )
}

/// `indicators` in a running pipeline: every day of the real file comes out with its moving
/// averages, returns and volatility, equal to a computation here.
#[test]
fn indicators_enrich_every_day_of_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("indicators.jsonl");
    let pipeline = dir.path().join("indicators.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: btc-indicators
{daily}transforms:
  close_indicators:
    type: indicators
    inputs: [bitcoin-daily]
    topic: bitcoin-indicators
    field: Close
    sma: [7]
    ema: [12]
    volatility: [30]
sinks:
  out:
    type: file
    topics: [bitcoin-indicators]
    path: {out}
"#,
            daily = btc_daily(),
            out = out.display()
        ),
    )
    .unwrap();
    let (status, log) = run_bounded(
        sluice_run(&pipeline, dir.path().join("state")).arg("--once"),
        std::time::Duration::from_secs(120),
    );
    assert!(status.success(), "{log}");
    let closes: Vec<f64> = csv_rows(&fixture("BTC-USD.csv"))
        .into_iter()
        .filter_map(|r| Some(r.numbers?[3]))
        .collect();
    let days = read_jsonl(&out);
    assert_eq!(days.len(), closes.len());
    let mut ema = closes[0];
    for (i, day) in days.iter().enumerate() {
        assert_eq!(day["Close"].as_f64(), Some(closes[i]), "day {i} in order");
        ema += 2.0 / 13.0 * (closes[i] - ema);
        let close = |k: &str, want: f64| {
            let got = day[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} of day {i}: {day}"));
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{k} of day {i}: {got} ≠ {want}"
            );
        };
        close("ema_12", ema);
        if i >= 6 {
            close("sma_7", closes[i - 6..=i].iter().sum::<f64>() / 7.0);
        } else {
            assert!(day["sma_7"].is_null());
        }
        if i >= 30 {
            let r: Vec<f64> = (i - 29..=i)
                .map(|j| (closes[j] / closes[j - 1]).ln())
                .collect();
            let mean = r.iter().sum::<f64>() / 30.0;
            let sd = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 29.0).sqrt();
            close("volatility_30", sd);
            close("log_return", r[29]);
        }
    }
}

/// A `window` whose state outgrows a Kafka record (20,000 keys with an open week in one input
/// partition, about 2 MB checkpointed) stores it in chunks of the offsets topic, and a second run
/// resumes from it: the weeks the first run left open close with every day of the first run
/// in them. It used to fail with "record is … bytes, over the producer's `message.max.bytes`".
#[test]
fn a_window_state_larger_than_a_kafka_record_is_checkpointed_and_restored() {
    const SYMBOLS: usize = 20_000;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let bars = dir.path().join("bars.ndjson");
    let days = |dates: &[&str]| {
        let mut text = String::new();
        for date in dates {
            for k in 0..SYMBOLS {
                text.push_str(&format!(
                    "{{\"Date\":\"{date}\",\"symbol\":\"S{k}\",\"v\":{k}}}\n"
                ));
            }
        }
        text
    };
    // Monday to Wednesday of one week: every window stays open at the end of the first run.
    std::fs::write(&bars, days(&["2024-01-01", "2024-01-02", "2024-01-03"])).unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("big-state.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: big-state
topics: {{ bars: {{ partitions: 1 }}, weeks: {{ partitions: 1 }} }}
sources:
  bars: {{ type: file, path: {bars}, topic: bars, key: /symbol }}
transforms:
  weekly:
    type: window
    inputs: [bars]
    topic: weeks
    size: 1w
    time_field: Date
    time_format: date
    emit_partial: false
    batch: {{ max_records: 100000, linger: 1s }}
    aggregates: {{ days: count, total: sum(v) }}
sinks:
  out: {{ type: file, topics: [weeks], path: {out} }}
",
            bars = bars.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let run = || {
        let mut cmd = sluice_run(&pipeline, dir.path().join("state"));
        cmd.arg("--once").arg("--kafka").arg(broker.addr());
        let (status, log) = run_bounded(&mut cmd, std::time::Duration::from_secs(300));
        assert!(status.success(), "{log}");
    };
    run();
    assert_eq!(count_lines(&out), 0, "no week closed in the first run");
    // The next Monday closes every week of the first run.
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(&bars)
        .unwrap();
    std::io::Write::write_all(&mut more, days(&["2024-01-08"]).as_bytes()).unwrap();
    run();
    let weeks = read_jsonl(&out);
    assert_eq!(weeks.len(), SYMBOLS, "one closed week per symbol");
    for week in &weeks {
        let k: f64 = week["key"]
            .as_str()
            .and_then(|s| s.strip_prefix('S'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no symbol key in {week}"));
        assert_eq!(week["days"], 3, "{week}");
        assert_eq!(week["total"].as_f64(), Some(3.0 * k), "{week}");
    }
}

/// Stream transforms read each other's topics: `pipelines/btc-weekly-indicators.yaml` makes
/// weekly candles, then indicators on the candles. At the end of input the window drains
/// first, so its last, partial week reaches the indicators before they drain too. The candles
/// are those of `btc-weekly-candles.yaml`, run here too; the 4-week SMA equals a computation
/// on them.
#[test]
fn a_stream_transform_reads_another_one_s_output_and_drains_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (candles_out, out) = (
        dir.path().join("candles.jsonl"),
        dir.path().join("out.jsonl"),
    );
    let run = |pipeline: &str, state: &str| {
        let mut cmd = sluice_run(root().join(pipeline), dir.path().join(state));
        cmd.arg("--once")
            .env("CANDLES_OUT", &candles_out)
            .env("CANDLES_DLQ_OUT", dir.path().join("dlq.jsonl"))
            .env("INDICATORS_OUT", &out);
        let (status, log) = run_bounded(&mut cmd, std::time::Duration::from_secs(120));
        assert!(status.success(), "{pipeline}: {log}");
    };
    run("pipelines/btc-weekly-candles.yaml", "state-candles");
    run("pipelines/btc-weekly-indicators.yaml", "state-indicators");
    let candles = read_jsonl(&candles_out);
    let weeks = read_jsonl(&out);
    assert_eq!(candles.len(), 363);
    assert_eq!(
        weeks.len(),
        candles.len(),
        "every candle, the partial last one too"
    );
    assert_eq!(weeks.last().unwrap()["final"], false);
    let closes: Vec<f64> = candles
        .iter()
        .map(|c| c["close"].as_f64().unwrap())
        .collect();
    for (i, week) in weeks.iter().enumerate() {
        for field in ["start", "open", "high", "low", "close", "volume", "days"] {
            assert_eq!(week[field], candles[i][field], "{field} of week {i}");
        }
        if i >= 3 {
            let sma = closes[i - 3..=i].iter().sum::<f64>() / 4.0;
            let got = week["sma_4"].as_f64().unwrap_or(f64::NAN);
            assert!(
                (got - sma).abs() <= 1e-9 * sma,
                "sma_4 of week {i}: {got} ≠ {sma}"
            );
        }
    }
}

/// A stream transform checkpoints (and so commits its inputs) once per `checkpoint_interval`,
/// and sooner when a writer of its inputs can send nothing more until it commits. Here the
/// interval is an hour and the source may have two batches of 50 unacknowledged on the embedded
/// transport, whose acknowledgements wait for the transform's commits: the run ends in seconds
/// with every week, because the blocked source makes the transform checkpoint.
#[test]
fn a_stream_transform_checkpoints_early_when_its_source_waits_for_it() {
    const SYMBOLS: usize = 30;
    const DAYS: i64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let bars = dir.path().join("bars.ndjson");
    let monday = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let mut text = String::new();
    for d in 0..DAYS {
        let date = monday + chrono::Duration::days(d);
        for k in 0..SYMBOLS {
            text.push_str(&format!(
                "{{\"Date\":\"{date}\",\"symbol\":\"S{k}\",\"v\":{d}}}\n"
            ));
        }
    }
    std::fs::write(&bars, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("held.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: held
sources:
  bars: {{ type: file, path: {bars}, topic: bars, key: /symbol, batch_size: 50, max_in_flight_batches: 2 }}
transforms:
  weekly:
    type: window
    inputs: [bars]
    topic: weeks
    size: 1w
    time_field: Date
    time_format: date
    checkpoint_interval: 1h
    batch: {{ max_records: 40, linger: 1h }}
    aggregates: {{ days: count, last: last(v) }}
sinks:
  out: {{ type: file, topics: [weeks], path: {out} }}
",
            bars = bars.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let mut cmd = sluice_run(&pipeline, dir.path().join("state"));
    cmd.arg("--once");
    let (status, log) = run_bounded(&mut cmd, std::time::Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let weeks = read_jsonl(&out);
    // 14 whole weeks and 2 days of a 15th, per symbol.
    assert_eq!(weeks.len(), 15 * SYMBOLS);
    let days: i64 = weeks.iter().map(|w| w["days"].as_i64().unwrap()).sum();
    assert_eq!(days, DAYS * SYMBOLS as i64, "every day in one week");
    assert!(
        weeks.iter().all(|w| w["last"].as_i64()
            == Some(
                (w["days"].as_i64().unwrap() - 1)
                    + (NaiveDate::parse_from_str(&w["start"].as_str().unwrap()[..10], "%Y-%m-%d")
                        .unwrap()
                        - monday)
                        .num_days()
            )),
        "each week's last day is its last"
    );
}
