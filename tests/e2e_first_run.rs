//! The first thing a new user does: run the examples from a fresh copy of the repository, with
//! the relative paths as written, no folder made beforehand and nothing left from a run before.

mod common;

use common::root;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The example pipelines that need no server: no `kafka:` section and no `url` of a service.
fn offline_examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            !text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with('#') && (l.starts_with("kafka:") || l.contains("url:"))
            })
        })
        .collect();
    found.sort();
    found
}

/// Copies `from` into `to`, folders included.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `${VAR:-default}` as the run sees it with `VAR` unset.
fn default_of(text: &str) -> String {
    match (text.find("${"), text.find(":-"), text.rfind('}')) {
        (Some(open), Some(dash), Some(close)) if open < dash && dash < close => {
            format!(
                "{}{}{}",
                &text[..open],
                &text[dash + 2..close],
                &text[close + 1..]
            )
        }
        _ => text.to_string(),
    }
}

/// Each file sink of the pipeline: its id and the path it writes, as the run resolves it.
fn file_sinks(pipeline: &Path) -> Vec<(String, String)> {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(pipeline).unwrap()).unwrap();
    let mut sinks = Vec::new();
    if let Some(map) = yaml["sinks"].as_mapping() {
        for (id, sink) in map {
            if sink["type"].as_str() == Some("file") {
                let path = sink["path"].as_str().unwrap();
                sinks.push((id.as_str().unwrap().to_string(), default_of(path)));
            }
        }
    }
    sinks
}

/// The `out` column of each sink's row in the run's summary, by component id.
fn records_out(stderr: &str, pipeline: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{pipeline}/");
    stderr
        .lines()
        .skip_while(|l| !l.starts_with("summary after"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let id = cols.first()?.strip_prefix(&prefix)?;
            (cols.get(1) == Some(&"sink")).then(|| (id.to_string(), cols[3].parse().unwrap()))
        })
        .collect()
}

#[test]
fn every_offline_example_run_from_a_fresh_copy_writes_each_record_once_without_a_warning() {
    let examples = offline_examples();
    let names: Vec<_> = examples
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for must in [
        "quickstart.yaml",
        "btc-weekly-candles.yaml",
        "json-lines-to-file.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} is not among {names:?}"
        );
    }
    let mut failures = Vec::new();
    for example in &examples {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(&root().join("pipelines"), &copy.path().join("pipelines"));
        copy_tree(
            &root().join("tests/fixtures"),
            &copy.path().join("tests/fixtures"),
        );
        let relative = Path::new("pipelines").join(example.file_name().unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(copy.path())
            .env_remove("SLUICE_LOG")
            .env_remove("SLUICE_STATE_DIR")
            .env("SLUICE_LISTEN", "none")
            .arg("run")
            .arg(&relative)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = relative.display().to_string();
        if !out.status.success() {
            failures.push(format!("{name}: exit {:?}\n{stderr}", out.status));
            continue;
        }
        if stderr.contains("WARN") {
            failures.push(format!("{name}: a warning\n{stderr}"));
        }
        let pipeline: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
        let counted = records_out(&stderr, pipeline["name"].as_str().unwrap());
        for (id, path) in file_sinks(example) {
            let text = std::fs::read_to_string(copy.path().join(&path)).unwrap_or_default();
            let lines = text.lines().count();
            let distinct = text.lines().collect::<HashSet<_>>().len();
            let out = counted.get(&id).copied();
            eprintln!("{name} {id} {path}: {lines} lines, {distinct} distinct, {out:?} out");
            if lines != distinct || Some(lines as u64) != out {
                failures.push(format!(
                    "{name}: sink `{id}` ({path}) holds {lines} lines, {distinct} distinct; the summary says {out:?} out\n{stderr}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Running the quickstart a second time reads nothing new (its offsets are stored): the run
/// says so at its end, and how to read the input again; doing that reads it all again.
#[test]
fn a_second_run_of_an_example_says_it_resumed_and_how_to_start_over() {
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&root().join("pipelines"), &copy.path().join("pipelines"));
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(copy.path())
            .env_remove("SLUICE_LOG")
            .env_remove("SLUICE_STATE_DIR")
            .env("SLUICE_LISTEN", "none")
            .args(["run", "pipelines/quickstart.yaml"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = run();
    assert!(!first.contains("note:"), "{first}");
    let second = run();
    let note = second
        .lines()
        .find(|l| l.starts_with("note: quickstart/market read nothing new"))
        .unwrap_or_else(|| panic!("no note:\n{second}"));
    assert!(note.contains("delete `.sluice-state/quickstart`"), "{note}");
    std::fs::remove_dir_all(copy.path().join(".sluice-state/quickstart")).unwrap();
    let third = run();
    assert_eq!(
        records_out(&third, "quickstart").get("archive"),
        Some(&30_000),
        "{third}"
    );
}

/// The summary of the weekly-candles example: the stream transform's `out` is the candles it
/// wrote (not the days it read), and each row says where its records went.
#[test]
fn the_summary_says_what_a_stream_transform_wrote_and_where_records_went() {
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&root().join("pipelines"), &copy.path().join("pipelines"));
    copy_tree(
        &root().join("tests/fixtures"),
        &copy.path().join("tests/fixtures"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(copy.path())
        .env_remove("SLUICE_LOG")
        .env("SLUICE_LISTEN", "none")
        .args(["run", "pipelines/btc-weekly-candles.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let row = |name: &str| {
        stderr
            .lines()
            .skip_while(|l| !l.starts_with("summary after"))
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{stderr}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let weekly = row("btc-weekly/weekly");
    assert_eq!(
        (weekly[2].as_str(), weekly[3].as_str()),
        ("2530", "363"),
        "{stderr}"
    );
    assert_eq!(weekly.last().unwrap(), "bitcoin-weekly");
    assert_eq!(
        row("btc-weekly/candles").last().unwrap(),
        "out/btc-weekly-candles.jsonl"
    );
    assert!(row("btc-weekly/yahoo_csv").contains(&"done".to_string()));
}
