//! Broken pipeline files give one clear message naming file, component and field, exit code 2,
//! and no stack trace; every example in pipelines/ validates.

mod common;

use common::*;

const GOOD: &str = "name: t
sources:
  src:
    type: csv
    path: FIXTURE
    topic: t
    columns: { Open: float }
sinks:
  out:
    type: file
    topics: [t]
    path: OUT
";

/// Runs `sluice run` on `GOOD` changed by `edit`; returns stderr after checking exit code 2.
fn broken(edit: impl Fn(&str) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let yaml = GOOD
        .replace("FIXTURE", &fixture("btc-sample.csv").display().to_string())
        .replace("OUT", &dir.path().join("out.jsonl").display().to_string());
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, edit(&yaml)).unwrap();
    let out = run(&mut sluice_run(&file, dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pipeline.yaml"), "names the file: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "one message: {stderr}"
    );
    stderr
}

#[test]
fn an_unknown_type_names_the_component_and_lists_the_types() {
    let e = broken(|y| y.replace("type: csv", "type: cvs"));
    assert!(
        e.contains("pipeline.yaml:4")
            && e.contains("`src`")
            && e.contains("`type`")
            && e.contains("cvs"),
        "{e}"
    );
    assert!(e.contains("csv") && e.contains("datagen"), "{e}");
}

#[test]
fn a_misspelled_field_names_it_and_its_line() {
    let e = broken(|y| y.replace("    topics: [t]\n    path:", "    topics: [t]\n    pth:"));
    assert!(
        e.contains("pipeline.yaml:12") && e.contains("`out`") && e.contains("`pth`"),
        "{e}"
    );
}

#[test]
fn a_missing_variable_names_it_and_its_line() {
    let e = broken(|y| y.replace("topic: t\n", "topic: ${SLUICE_TEST_NOT_SET_ANYWHERE}\n"));
    assert!(
        e.contains("pipeline.yaml:6") && e.contains("SLUICE_TEST_NOT_SET_ANYWHERE"),
        "{e}"
    );
}

#[test]
fn a_missing_input_file_names_the_component_and_field() {
    let e = broken(|y| y.replace("btc-sample.csv", "no-such-file.csv"));
    assert!(
        e.contains("`src`") && e.contains("`path`") && e.contains("no-such-file.csv"),
        "{e}"
    );
}

#[test]
fn a_missing_pipeline_file_is_a_config_error() {
    let out = run(sluice().args(["run", "no/such/pipeline.yaml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/pipeline.yaml"));
}

#[test]
fn a_wrong_type_names_the_field() {
    let e = broken(|y| y.replace("    topic: t\n", "    topic: t\n    rate: fast\n"));
    assert!(
        e.contains("`src`") && e.contains("`rate`") && e.contains("fast"),
        "{e}"
    );
    let e = broken(|y| y.replace("columns: { Open: float }", "columns: { Open: money }"));
    assert!(e.contains("`src`") && e.contains("columns"), "{e}");
    let e = broken(|y| y.replace("topics: [t]", "topics: 5"));
    assert!(e.contains("`out`") && e.contains("`topics`"), "{e}");
}

#[test]
fn an_invalid_value_is_reported_by_the_connector_validation() {
    let e = broken(|y| y.replace("    topic: t\n", "    topic: t\n    rate: -3\n"));
    assert!(
        e.contains("`src`") && e.contains("`rate`") && e.contains("positive"),
        "{e}"
    );
}

#[test]
fn tolerance_all_without_a_dead_letter_topic_is_refused() {
    let e = broken(|y| format!("{y}errors: {{ tolerance: all }}\n"));
    assert!(e.contains("dead_letter_topic"), "{e}");
}

#[test]
fn an_environment_override_reaches_one_field() {
    let out = run(sluice()
        .args(["validate", "pipelines/quickstart.yaml"])
        .env("SLUICE_SOURCES__MARKET__RATE", "-1"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`rate`"));
}

#[test]
fn ids_made_of_offsets_are_refused_on_the_embedded_transport() {
    let e = broken(|y| {
        // The file sink becomes an Elasticsearch sink with the default `document_id: coordinates`.
        let (head, _sink_path) = y.rsplit_once("    path:").unwrap();
        head.replace(
            "    type: file\n",
            "    type: elasticsearch\n    url: http://127.0.0.1:9\n",
        )
    });
    assert!(
        e.contains("`out`") && e.contains("`document_id`") && e.contains("kafka"),
        "{e}"
    );
}

#[test]
fn every_example_pipeline_validates() {
    let mut files: Vec<_> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    let out = run(sluice().arg("validate").args(&files));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches(": ok").count(),
        files.len()
    );
}

/// A fresh clone of the project has nothing outside it: no example pipeline reaches out of the
/// project (they defaulted to `../shared/data/BTC-USD.csv`), and every input file a pipeline
/// reads by default is in the project. (The embedded ones are run as they are by
/// `e2e_embedded`, the Kafka/MySQL/Elasticsearch ones by `secrets`.)
#[test]
fn every_example_pipeline_reads_only_files_inside_the_project() {
    for entry in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.display();
        // What the pipeline reads, not its comments (the editor's schema line points at
        // `../docs/`, inside the project).
        let read: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!read.contains("../"), "{name} reaches outside the project");
        for default in read.split("${").skip(1).filter_map(|v| {
            let v = &v[..v.find('}')?];
            v.split_once(":-").map(|(_, d)| d.to_string())
        }) {
            if default.ends_with(".csv") {
                assert!(
                    root().join(&default).is_file(),
                    "{name} reads {default} by default, which is not in the project"
                );
            }
        }
    }
}

#[test]
fn plugins_lists_every_connector_with_documented_fields() {
    let out = run(sluice().arg("plugins"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "type: csv",
        "type: datagen",
        "type: file",
        "type: console",
        "type: rename_fields",
        "type: require_fields",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("null_values") && text.contains("Field values that mean null"));
}

/// A source writing the dead-letter topic would dead-letter its bad records into the topic it
/// writes, read back by the same sinks, forever.
#[test]
fn a_dead_letter_topic_that_a_source_writes_is_refused() {
    let e = broken(|y| format!("{y}errors:\n  tolerance: all\n  dead_letter_topic: t\n"));
    assert!(
        e.contains("`src`") && e.contains("`topic`") && e.contains("dead-letter topic"),
        "{e}"
    );
}

/// A column type that does not exist lists the ones that do.
#[test]
fn an_unknown_column_type_lists_the_types() {
    let e = broken(|y| y.replace("{ Open: float }", "{ Open: money }"));
    assert!(e.contains("`src`") && e.contains("money"), "{e}");
    for t in ["string", "int", "float", "bool", "date", "timestamp"] {
        assert!(e.contains(t), "does not list `{t}`: {e}");
    }
    assert!(!e.contains("untagged enum"), "{e}");
}

/// `GOOD` with its sink `out` replaced by one with the fields `body`.
fn with_sink(yaml: &str, body: &str) -> String {
    let (head, _) = yaml.split_once("sinks:").unwrap();
    format!("{head}sinks:\n  out:\n{body}")
}

/// `insert` into a table with a primary key fails with a duplicate key on the first replay, and
/// on every restart after: refused with advice, unless the sink is exactly-once.
#[test]
fn mysql_insert_with_a_primary_key_and_no_exactly_once_is_refused_with_advice() {
    let e = broken(|y| {
        with_sink(
            y,
            "    type: mysql\n    topics: [t]\n    url: mysql://u@127.0.0.1:1/db\n    insert_mode: insert\n    primary_key: { mode: record_value, fields: [Open] }\n",
        )
    });
    assert!(
        e.contains("`out`") && e.contains("insert_mode") && e.contains("upsert"),
        "{e}"
    );
}

/// Elasticsearch's rules for index names, and a date format chrono cannot read, are checked
/// by `validate` (an invalid `{date:…}` pattern panicked on the first batch).
#[test]
fn elasticsearch_index_names_and_date_patterns_are_validated() {
    for (index, says) in [
        ("btc-{date:%Q}", "date format"),
        ("_btc", "start"),
        ("btc data", "contain"),
    ] {
        let e = broken(|y| {
            with_sink(
                y,
                &format!("    type: elasticsearch\n    topics: [t]\n    url: http://127.0.0.1:1\n    document_id: key\n    index: \"{index}\"\n"),
            )
        });
        assert!(e.contains("`index`") && e.contains(says), "{index}: {e}");
    }
    let e = broken(|y| {
        with_sink(
            y,
            "    type: elasticsearch\n    topics: [t]\n    url: http://127.0.0.1:1\n    document_id: fields\n    id_fields: [Open]\n    tombstones: delete\n",
        )
    });
    assert!(
        e.contains("tombstones") && e.contains("document_id: key"),
        "{e}"
    );
}

/// On the embedded transport the topics die with the process, so an exactly-once sink can only
/// tell what an earlier run wrote by the sources' numbering: without it, refused with advice.
#[test]
fn an_embedded_exactly_once_sink_needs_numbered_sources() {
    let e = broken(|y| {
        with_sink(
            y,
            "    type: mysql\n    topics: [t]\n    url: mysql://u@127.0.0.1:1/db\n    exactly_once: true\n",
        )
    });
    assert!(
        e.contains("`out`") && e.contains("exactly_once") && e.contains("`src`"),
        "{e}"
    );
}

/// The embedded transport runs in one process: a `worker` section with it is refused, naming
/// the field; with Kafka a heartbeat too close to the session timeout is refused.
#[test]
fn worker_settings_need_kafka_and_a_heartbeat_well_under_the_session_timeout() {
    let e = broken(|y| format!("{y}worker: {{ session_timeout: 10s }}\n"));
    assert!(
        e.contains("`worker`") && e.contains("embedded transport") && e.contains("kafka"),
        "{e}"
    );
    let e = broken(|y| {
        format!("{y}kafka: {{ bootstrap_servers: \"127.0.0.1:1\" }}\nworker: {{ session_timeout: 3s, heartbeat_interval: 2s }}\n")
    });
    assert!(
        e.contains("worker.heartbeat_interval") && e.contains("third"),
        "{e}"
    );
}

#[test]
fn stream_transforms_reading_each_other_in_a_circle_are_refused() {
    let err = broken(|y| {
        y.replace(
            "sinks:",
            "transforms:
  a: { type: window, inputs: [t, from_b], topic: from_a, size: 1d, aggregates: { n: count } }
  b: { type: window, inputs: [from_a], topic: from_b, size: 1d, aggregates: { n: count } }
sinks:",
        )
    });
    assert!(err.contains("`a`") && err.contains("inputs"), "{err}");
    assert!(err.contains("not in a circle"), "{err}");
}

/// Through a stream transform too: on the embedded transport its output is numbered only from
/// numbered inputs, so an exactly-once sink behind it needs the sources' numbering.
#[test]
fn an_embedded_exactly_once_sink_behind_a_stream_transform_needs_numbered_sources() {
    let e = broken(|y| {
        with_sink(
            &y.replace(
                "sinks:",
                "transforms:\n  weekly: { type: window, inputs: [t], topic: w, size: 7d, aggregates: { n: count } }\nsinks:",
            ),
            "    type: mysql\n    topics: [w]\n    url: mysql://u@127.0.0.1:1/db\n    exactly_once: true\n",
        )
    });
    assert!(
        e.contains("`out`") && e.contains("exactly_once") && e.contains("`src`"),
        "{e}"
    );
}

/// Exactly-once needs a record sent again to land where it landed before, in order: a
/// producer override that gives up idempotence or Kafka's key partitioner is refused by name.
#[test]
fn exactly_once_refuses_producer_overrides_that_move_or_reorder_records() {
    for (name, value) in [
        ("partitioner", "random"),
        ("enable.idempotence", "false"),
        ("message.timeout.ms", "30000"),
    ] {
        let e = broken(|y| {
            format!(
                "{y}exactly_once: true\nkafka:\n  bootstrap_servers: \"127.0.0.1:1\"\n  producer: {{ {name}: \"{value}\" }}\n"
            )
        });
        assert!(e.contains(&format!("kafka.producer.{name}")), "{e}");
        assert!(e.contains("exactly_once"), "{e}");
    }
}

/// An unknown value of a field with a fixed set (`format: envelop`) names that field and its
/// line, with the values allowed, not the component's `type:`.
#[test]
fn an_unknown_value_of_a_field_names_that_field_and_the_values_allowed() {
    let e = broken(|y| {
        y.replace(
            "    topics: [t]\n",
            "    topics: [t]\n    format: envelop\n",
        )
    });
    assert!(
        e.contains("pipeline.yaml:12") && e.contains("field `format`") && e.contains("envelope"),
        "{e}"
    );
    assert!(
        !e.contains("field `type`") && !e.contains("sluice plugins"),
        "{e}"
    );
}

/// Numbers and durations of the wrong form are explained in words, not Rust's type names.
#[test]
fn numbers_and_durations_of_the_wrong_form_are_explained_in_words() {
    let e = broken(|y| y.replace("    topic: t\n", "    topic: t\n    batch_size: -3\n"));
    assert!(
        e.contains("a whole number ≥ 0") && !e.contains("u64") && !e.contains("usize"),
        "{e}"
    );
    let e = broken(|y| {
        y.replace(
            "    topics: [t]\n",
            "    topics: [t]\n    batch: { linger: 5 }\n",
        )
    });
    assert!(
        e.contains("field `batch.linger`") && e.contains("`500ms`"),
        "{e}"
    );
}

/// A sink reading a topic nothing in the file writes (a typo) is refused on the embedded
/// transport, naming the closest topic; on Kafka `validate` warns the same way.
#[test]
fn a_sink_reading_a_topic_nothing_writes_is_refused_naming_the_closest() {
    let typo = |y: &str| {
        y.replace("topic: t\n", "topic: ticks\n")
            .replace("topics: [t]", "topics: [ticks]")
            + "  typo:\n    type: file\n    topics: [tikcs]\n    path: typo.jsonl\n"
    };
    let e = broken(typo);
    assert!(
        e.contains("`typo`") && e.contains("topics.0") && e.contains("did you mean `ticks`"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    let yaml = GOOD
        .replace("FIXTURE", &fixture("btc-sample.csv").display().to_string())
        .replace("OUT", &dir.path().join("out.jsonl").display().to_string());
    std::fs::write(&file, typo(&yaml)).unwrap();
    let out = run(sluice()
        .arg("validate")
        .arg(&file)
        .args(["--kafka", "127.0.0.1:9"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("did you mean `ticks`"),
        "{stderr}"
    );
}
