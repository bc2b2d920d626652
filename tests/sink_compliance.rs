//! The compliance check every sink runs (test-support's `sink_compliance`), against the real
//! MariaDB here and the Elasticsearch stand-in, each made to fail once (the server stopped, the
//! stand-in answering 503) for 2 s in the middle of a put. The file sink runs it in its crate.

mod common;

use common::es_mock::{EsMock, Faults};
use common::*;
use sluice_test_support::{sink_compliance, Step, Store};
// Links the built-in connectors, whose registrations the check's YAML names.
use sluice as _;

struct MySqlTable(std::sync::Mutex<MariaDb>);

impl Store for MySqlTable {
    fn numbers(&self) -> Step<'_, Vec<u64>> {
        Box::pin(async move {
            let db = self.0.lock().unwrap();
            db.sql("SELECT n FROM compliance ORDER BY n")
                .lines()
                .map(|n| n.parse().unwrap())
                .collect()
        })
    }

    fn outage(&self, down: bool) -> Option<Step<'_, ()>> {
        Some(Box::pin(async move {
            let mut db = self.0.lock().unwrap();
            if down {
                db.stop();
            } else {
                db.start_again();
            }
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_sink_passes_the_sink_compliance_check() {
    let db = MariaDb::start();
    let yaml = format!(
        "type: mysql\nurl: {}\npassword: pw\ntable: compliance\ninsert_mode: upsert\nprimary_key: {{ mode: record_value, fields: [id] }}\ncolumns: {{ id: VARCHAR(32) }}\n",
        db.url()
    );
    sink_compliance(
        &yaml,
        Some(serde_json::json!([1, 2])),
        &MySqlTable(std::sync::Mutex::new(db)),
    )
    .await;
}

struct EsIndex(EsMock);

impl Store for EsIndex {
    fn numbers(&self) -> Step<'_, Vec<u64>> {
        Box::pin(async move {
            self.0
                .documents("compliance")
                .iter()
                .map(|d| d["n"].as_u64().unwrap())
                .collect()
        })
    }

    fn outage(&self, down: bool) -> Option<Step<'_, ()>> {
        self.0.set_down(down);
        Some(Box::pin(async {}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elasticsearch_sink_passes_the_sink_compliance_check() {
    let es = EsMock::start(Faults::default());
    let yaml = format!(
        "type: elasticsearch\nurl: {}\nindex: compliance\ndocument_id: key\n",
        es.url
    );
    sink_compliance(&yaml, Some(serde_json::json!([1, 2])), &EsIndex(es)).await;
}
