use super::*;
use serde_json::json;

fn window(yaml: &str) -> Box<dyn StreamOperator> {
    let config: WindowConfig = serde_yaml::from_str(yaml).unwrap();
    config.build().unwrap()
}

fn bar(date: &str, open: f64, high: f64, low: f64, close: f64, volume: i64) -> Record {
    let mut r = Record::new(
        json!({"Date": date, "Open": open, "High": high, "Low": low, "Close": close, "Volume": volume}),
    )
    .with_key("BTC-USD");
    r.timestamp = date
        .parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_millisecond());
    r
}

const CANDLES: &str = "size: 1w\naggregates: { open: first(Open), high: max(High), low: min(Low), close: last(Close), volume: sum(Volume), days: count }";

fn tp() -> TopicPartition {
    ("bitcoin".into(), 0)
}

fn run(op: &mut dyn StreamOperator, records: Vec<Record>) -> Vec<Value> {
    let mut out = Vec::new();
    for r in records {
        let e = op.process(&tp(), &r);
        assert!(e.rejected.is_none(), "{:?}", e.rejected);
        out.extend(e.records.into_iter().map(|r| r.value));
    }
    out
}

#[test]
fn weekly_candles_start_on_monday_and_close_when_the_next_week_starts() {
    let mut op = window(CANDLES);
    // Wed 2020-03-11 … Sun 2020-03-15, then Mon 2020-03-16 closes the week.
    let out = run(
        &mut *op,
        vec![
            bar("2020-03-11", 7910.1, 7950.8, 7642.8, 7911.4, 35_807_000_000),
            bar("2020-03-12", 7913.6, 7929.1, 4860.4, 4970.8, 53_980_000_000),
            bar("2020-03-13", 5017.8, 5838.1, 4106.9, 5563.7, 74_156_772_000),
            bar("2020-03-15", 5201.1, 5836.6, 5169.3, 5392.3, 33_997_889_000),
            bar("2020-03-16", 5385.2, 5385.2, 4575.4, 5014.5, 45_368_026_000),
        ],
    );
    assert_eq!(
        out,
        [
            json!({"key": "BTC-USD", "start": "2020-03-09T00:00:00Z", "end": "2020-03-16T00:00:00Z",
            "open": 7910.1, "high": 7950.8, "low": 4106.9, "close": 5392.3,
            "volume": 197_941_661_000_i64, "days": 4, "final": true})
        ]
    );
    // The open week is written as not final at the end of input.
    let partial = op.flush(&tp());
    assert_eq!(partial.len(), 1);
    assert_eq!(partial[0].value["start"], "2020-03-16T00:00:00Z");
    assert_eq!(partial[0].value["final"], false);
    assert_eq!(partial[0].value["days"], 1);
}

/// `week_start: sunday` makes Sunday-to-Saturday weeks (the US calendar); the aggregates
/// come out in the order they are written.
#[test]
fn weeks_may_start_on_sunday() {
    let mut op = window(&format!("{CANDLES}\nweek_start: sunday"));
    // Wed 2020-03-11 … Sat 2020-03-14, then Sun 2020-03-15 closes the week.
    let out = run(
        &mut *op,
        vec![
            bar("2020-03-11", 1.0, 2.0, 0.5, 1.5, 10),
            bar("2020-03-14", 1.5, 3.0, 1.0, 2.5, 20),
            bar("2020-03-15", 2.5, 2.5, 2.0, 2.2, 30),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["start"], "2020-03-08T00:00:00Z");
    assert_eq!(out[0]["end"], "2020-03-15T00:00:00Z");
    assert_eq!(out[0]["days"], 2);
    let fields: Vec<&String> = out[0].as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["key", "start", "end", "open", "high", "low", "close", "volume", "days", "final"]
    );
}

/// One record dated far in the future must not move the watermark: it is refused, and
/// the records after it are not late.
#[test]
fn a_record_dated_far_ahead_of_the_clock_is_refused_and_moves_nothing() {
    let mut op = window(CANDLES);
    run(&mut *op, vec![bar("2020-03-16", 1.0, 1.0, 1.0, 1.0, 1)]);
    let e = op.process(&tp(), &bar("2099-01-01", 1.0, 1.0, 1.0, 1.0, 1));
    assert!(
        e.rejected
            .as_deref()
            .unwrap_or_default()
            .contains("max_ahead_of_clock"),
        "{:?}",
        e.rejected
    );
    let e = op.process(&tp(), &bar("2020-03-17", 1.0, 1.0, 1.0, 1.0, 1));
    assert_eq!(e.rejected, None);
}

#[test]
fn a_late_record_is_rejected_unless_within_the_allowed_lateness() {
    let mut op = window(CANDLES);
    run(
        &mut *op,
        vec![
            bar("2020-03-16", 1.0, 1.0, 1.0, 1.0, 1),
            bar("2020-03-24", 1.0, 1.0, 1.0, 1.0, 1),
        ],
    );
    let e = op.process(&tp(), &bar("2020-03-18", 1.0, 1.0, 1.0, 1.0, 1));
    assert!(e.rejected.unwrap().starts_with("late:"));
    let mut lenient = window(&format!("{CANDLES}\nallowed_lateness: 3days"));
    let out = run(
        &mut *lenient,
        vec![
            bar("2020-03-16", 1.0, 2.0, 1.0, 1.0, 1),
            bar("2020-03-24", 1.0, 1.0, 1.0, 1.0, 1),
            bar("2020-03-18", 1.0, 5.0, 1.0, 3.0, 1),
            bar("2020-03-26", 1.0, 1.0, 1.0, 1.0, 1),
        ],
    );
    assert_eq!(out.len(), 1, "the week closes 3 days after its end");
    assert_eq!(out[0]["high"], 5.0);
    assert_eq!(out[0]["close"], 3.0, "last by event time");
}

#[test]
fn hopping_windows_hold_a_record_in_each_window_it_falls_in() {
    let mut op = window("size: 3d\nhop: 1d\naggregates: { n: count, s: sum(Close), sd: stddev(Close), avg: avg(Close) }");
    let out = run(
        &mut *op,
        (1..=5)
            .map(|d| bar(&format!("2020-03-0{d}"), 0.0, 0.0, 0.0, d as f64, 1))
            .collect(),
    );
    let starts: Vec<&str> = out.iter().map(|v| v["start"].as_str().unwrap()).collect();
    assert_eq!(
        starts,
        [
            "2020-02-28T00:00:00Z",
            "2020-02-29T00:00:00Z",
            "2020-03-01T00:00:00Z",
            "2020-03-02T00:00:00Z"
        ]
    );
    assert_eq!(out[2]["n"], 3);
    assert_eq!(out[2]["s"], 6.0);
    assert_eq!(out[2]["avg"], 2.0);
    assert_eq!(out[2]["sd"], 1.0);
}

#[test]
fn calendar_windows_follow_the_time_zone() {
    let mut op = window("size: 1d\ntimezone: Europe/Paris\naggregates: { n: count }\ntime_field: at\ntime_format: rfc3339");
    let at = |t: &str| {
        let mut r = Record::new(json!({"at": t})).with_key("k");
        r.timestamp = None;
        r
    };
    let out = run(
        &mut *op,
        vec![
            at("2020-03-11T22:30:00Z"),
            at("2020-03-11T23:30:00Z"),
            at("2020-03-12T23:30:00Z"),
        ],
    );
    assert_eq!(out[0]["start"], "2020-03-11T00:00:00+01:00");
    assert_eq!(out[0]["n"], 1, "23:30 UTC is the next day in Paris");
    assert_eq!(out[1]["start"], "2020-03-12T00:00:00+01:00");
    let mut monthly = window("size: 1mo\naggregates: { n: count }");
    let out = run(
        &mut *monthly,
        vec![
            bar("2020-01-31", 0.0, 0.0, 0.0, 0.0, 0),
            bar("2020-02-29", 0.0, 0.0, 0.0, 0.0, 0),
            bar("2020-03-01", 0.0, 0.0, 0.0, 0.0, 0),
        ],
    );
    assert_eq!(out[0]["end"], "2020-02-01T00:00:00Z");
    assert_eq!(out[1]["start"], "2020-02-01T00:00:00Z");
}

#[test]
fn state_round_trips_through_a_checkpoint() {
    let mut op = window(CANDLES);
    run(
        &mut *op,
        vec![
            bar("2020-03-11", 1.0, 3.0, 0.5, 2.0, 10),
            bar("2020-03-12", 2.0, 4.0, 1.0, 3.0, 20),
        ],
    );
    let saved = op.snapshot(&tp()).unwrap();
    let mut restored = window(CANDLES);
    restored.restore(&tp(), &saved).unwrap();
    let out = run(
        &mut *restored,
        vec![bar("2020-03-16", 0.0, 0.0, 0.0, 0.0, 0)],
    );
    assert_eq!(out[0]["open"], 1.0);
    assert_eq!(out[0]["high"], 4.0);
    assert_eq!(out[0]["volume"], 30);
}

#[test]
fn null_values_are_skipped_and_bad_configs_named() {
    let mut op = window(CANDLES);
    let mut gap = bar("2020-03-12", 0.0, 0.0, 0.0, 0.0, 0);
    gap.value = json!({"Date": "2020-03-12", "Open": null, "High": null, "Low": null, "Close": null, "Volume": null});
    let out = run(
        &mut *op,
        vec![
            bar("2020-03-11", 1.0, 3.0, 0.5, 2.0, 10),
            gap,
            bar("2020-03-16", 0.0, 0.0, 0.0, 0.0, 0),
        ],
    );
    assert_eq!(out[0]["close"], 2.0);
    assert_eq!(out[0]["volume"], 10);
    let mut r = bar("2020-03-17", 0.0, 0.0, 0.0, 0.0, 0);
    r.value["High"] = json!("high");
    let text = op.process(&tp(), &r);
    assert_eq!(
        text.rejected.unwrap(),
        "field `High` of `high` is not a number: \"high\""
    );
    for (yaml, field) in [
        ("size: 7x\naggregates: { n: count }", "size"),
        ("size: 7m\naggregates: { n: count }", "size"),
        ("size: 1w\nhop: 2d\naggregates: { n: count }", "hop"),
        ("size: 1d\naggregates: { n: median(Close) }", "aggregates.n"),
        ("size: 1d\naggregates: { n: sum }", "aggregates.n"),
    ] {
        let c: WindowConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(c.validate().unwrap_err()[0].field, field, "{yaml}");
    }
}
