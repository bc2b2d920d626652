//! Generated reference pages match what the binary says: `docs/connectors.md` is
//! `sluice plugins --format markdown`, `docs/pipeline.schema.json` is `sluice schema`, and every
//! example pipeline points editors at that schema.

mod common;

use common::*;

fn output_of(args: &[&str]) -> String {
    let out = sluice().args(args).output().expect("sluice runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_connectors_page_is_what_plugins_prints() {
    let printed = output_of(&["plugins", "--format", "markdown"]);
    let page = std::fs::read_to_string(root().join("docs/connectors.md")).unwrap_or_default();
    assert!(
        page == printed,
        "docs/connectors.md is stale: run `sluice plugins --format markdown > docs/connectors.md`"
    );
    for name in ["csv", "mysql", "elasticsearch", "window", "jq"] {
        assert!(printed.contains(&format!("### `{name}`")), "{name}");
    }
}

#[test]
fn the_pipeline_schema_is_what_schema_prints_and_every_example_points_at_it() {
    let printed = output_of(&["schema"]);
    let schema: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    let sources = &schema["properties"]["sources"]["additionalProperties"];
    let types = sources["properties"]["type"]["enum"].to_string();
    for name in ["csv", "messari", "twitter", "yahoo_finance", "http"] {
        assert!(types.contains(name), "{name} in {types}");
    }
    let committed =
        std::fs::read_to_string(root().join("docs/pipeline.schema.json")).unwrap_or_default();
    assert!(
        committed.trim_end() == printed.trim_end(),
        "docs/pipeline.schema.json is stale: run `sluice schema > docs/pipeline.schema.json`"
    );
    for file in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let path = file.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# yaml-language-server: $schema=../docs/pipeline.schema.json"),
            "{} does not point editors at the schema",
            path.display()
        );
    }
}
