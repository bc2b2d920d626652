//! Record transforms in a running pipeline, as a user writes them: a chain on a source and on a
//! sink, conditions (`when:`), and a transform failing on one record, which becomes a dead letter
//! naming the transform, while the others arrive.

mod common;

use common::*;

#[test]
fn a_transform_chain_reshapes_records_and_a_failing_one_dead_letters_naming_itself() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("prices.csv");
    std::fs::write(
        &csv,
        "Date,Open,Close,Volume,Note\n2020-03-11,7900.5,7911.4,35807000000,ok\n2020-03-12,7913.6,4970.8,53980000000,crash\n2020-03-13,4860.7,5563.7,74156772000,n/a\n2020-03-14,5573.1,5200.4,36154500000,-\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let dlq = dir.path().join("dlq.jsonl");
    let pipeline = dir.path().join("transforms.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: transforms
sources:
  prices:
    type: csv
    path: {csv}
    topic: prices
    columns: {{ Date: string, Open: float, Close: float, Volume: int, Note: string }}
    transforms:
      - {{ type: timestamp_convert, field: Date, from: date, target: $timestamp }}
      - {{ type: insert_field, field: source, value: yahoo }}
      - {{ type: jq, program: '. + {{change: ((.Close - .Open) / .Open * 100 | . * 100 | round / 100)}}' }}
      - {{ type: value_to_key, fields: [Date] }}
sinks:
  archive:
    type: file
    topics: [prices]
    path: {out}
    transforms:
      - {{ type: insert_field, field: crash, value: true, when: .change < -30 }}
      - {{ id: note-as-number, type: cast, fields: {{ Note: int }}, when: '.Note != "ok" and .Note != "crash" and .Note != "-"' }}
      - {{ type: drop_fields, fields: [Note] }}
      - {{ type: timestamp_convert, field: $timestamp, target: day, to: '%A' }}
  rejects:
    type: file
    topics: [prices-dlq]
    format: envelope
    path: {dlq}
errors:
  tolerance: all
  dead_letter_topic: prices-dlq
"#,
            csv = csv.display(),
            out = out.display(),
            dlq = dlq.display(),
        ),
    )
    .unwrap();
    let output = run(sluice_run(&pipeline, dir.path().join("state")).arg("--once"));
    assert!(output.status.success());
    let rows = read_jsonl(&out);
    let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        text,
        [
            r#"{"Date":"2020-03-11","Open":7900.5,"Close":7911.4,"Volume":35807000000,"source":"yahoo","change":0.14,"day":"Wednesday"}"#,
            r#"{"Date":"2020-03-12","Open":7913.6,"Close":4970.8,"Volume":53980000000,"source":"yahoo","change":-37.19,"crash":true,"day":"Thursday"}"#,
            r#"{"Date":"2020-03-14","Open":5573.1,"Close":5200.4,"Volume":36154500000,"source":"yahoo","change":-6.69,"day":"Saturday"}"#,
        ]
    );
    let dead = read_jsonl(&dlq);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"]["Date"], "2020-03-13");
    let reason = dead[0]["headers"]["sluice.error.message"].as_str().unwrap();
    assert_eq!(
        reason,
        "transform `note-as-number`: field `Note`: cannot cast \"n/a\" to int"
    );
    assert_eq!(dead[0]["headers"]["sluice.error.component"], "archive");
}

/// A broken jq program is a config error naming the file, the component and the field.
#[test]
fn a_broken_jq_program_is_reported_by_validate_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("broken.yaml");
    std::fs::write(
        &pipeline,
        "name: broken\nsources:\n  gen:\n    type: datagen\n    topic: t\n    transforms:\n      - { type: jq, program: '.a |' }\n      - { type: drop_fields, fields: [a], when: '.b ==' }\nsinks:\n  out:\n    type: console\n    topics: [t]\n",
    )
    .unwrap();
    let output = run(sluice().arg("validate").arg(&pipeline));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.yaml")
            && stderr.contains("gen")
            && stderr.contains("transforms.0.program")
            && stderr.contains("invalid jq program"),
        "{stderr}"
    );
}

/// A `route` on a source sends each record to the topic it names (the source's `topic` is only
/// where records go unless a transform says otherwise): big moves to `prices-big`, the rest
/// stays in `prices`.
#[test]
fn a_route_on_a_source_sends_records_to_the_topic_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("prices.csv");
    std::fs::write(
        &csv,
        "Date,Open,Close\n2020-03-11,7900.5,7911.4\n2020-03-12,7913.6,4970.8\n2020-03-13,4860.7,5563.7\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("route.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: route
topics:
  prices: {{ partitions: 1 }}
  prices-big: {{ partitions: 1 }}
sources:
  prices:
    type: csv
    path: {csv}
    topic: prices
    columns: {{ Date: string, Open: float, Close: float }}
    transforms:
      - {{ type: route, template: "{{topic}}-big", when: '.Close - .Open > 500 or .Open - .Close > 500' }}
sinks:
  archive:
    type: file
    topics: [prices, prices-big]
    format: envelope
    path: {out}
"#,
            csv = csv.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let status = run(&mut sluice_run(&pipeline, dir.path().join("state"))).status;
    assert!(status.success());
    let mut topics: Vec<(String, String)> = read_jsonl(&out)
        .iter()
        .map(|r| {
            (
                r["value"]["Date"].as_str().unwrap().to_string(),
                r["topic"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            ("2020-03-11".into(), "prices".into()),
            ("2020-03-12".into(), "prices-big".into()),
            ("2020-03-13".into(), "prices-big".into()),
        ]
    );
}
