//! What Sluice's tests share. [`sink_compliance`] checks any sink the same way (STYLE.md):
//! every record put is written or refused (then dead-lettered by the runtime), `flush`
//! persists, and a retryable failure is retried — by the sink or, when it returns one, by the
//! runtime putting the batch again — without losing or doubling a record.

use sluice_api::serde_json::{json, Value};
use sluice_api::{Record, SinkBuildContext, SinkConfig};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A future the check awaits.
pub type Step<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What the check needs of the store besides the sink.
pub trait Store {
    /// The `n` of every record the store holds now (the records are `{"id": "r<n>", "n": n}`).
    fn numbers(&self) -> Step<'_, Vec<u64>>;
    /// Makes the store fail as a brief outage does (`true`), or ends the outage (`false`);
    /// `None` when the store cannot be made to fail here.
    fn outage(&self, down: bool) -> Option<Step<'_, ()>>;
}

/// A CSV file with a header whose last column is each record's `n`: the store of a sink that
/// writes CSV (`columns: [id, n]`), which cannot be made to fail.
pub struct CsvFile(pub std::path::PathBuf);

impl Store for CsvFile {
    fn numbers(&self) -> Step<'_, Vec<u64>> {
        Box::pin(async move {
            std::fs::read_to_string(&self.0)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(|line| {
                    let n = line.rsplit(',').next().unwrap_or_default();
                    n.parse()
                        .unwrap_or_else(|e| panic!("`{line}` does not end with a number: {e}"))
                })
                .collect()
        })
    }

    fn outage(&self, _: bool) -> Option<Step<'_, ()>> {
        None
    }
}

/// Records `{"id": "r<n>", "n": n}` for `n` in `range`, keyed by their id, on topic `t`.
pub fn numbered(range: std::ops::Range<u64>) -> Vec<Arc<Record>> {
    range
        .enumerate()
        .map(|(offset, n)| {
            let mut record = Record::new(json!({"id": format!("r{n}"), "n": n}));
            record.key = Some(format!("r{n}").into_bytes());
            record.topic = "t".into();
            record.offset = offset as i64;
            Arc::new(record)
        })
        .collect()
}

/// Builds the sink `yaml` describes (a `type:` and its fields), puts 1,000 records and one the
/// store must refuse (`refused`, if the sink refuses some value; it must come back in
/// `PutOutcome::rejected`, the others not), flushes, and checks the store holds each of the
/// 1,000 once. Then, if the store can fail, puts 500 more into an outage that ends 2 s later:
/// the sink waits it out, or fails retryably and a second put (as the runtime makes) succeeds;
/// each record is in the store once. Panics with what broke.
pub async fn sink_compliance(yaml: &str, refused: Option<Value>, store: &dyn Store) {
    let config: Box<dyn SinkConfig> =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("the sink config: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("validate: {e:?}"));
    let context = SinkBuildContext {
        component: "compliance".into(),
        topics: vec!["t".into()],
        group: "compliance".into(),
        durable_offsets: true,
    };
    let mut sink = config
        .build(context.clone())
        .await
        .expect("the sink builds");
    let _ = sink.open(&[("t".into(), 0)]).await.expect("open");

    let mut batch = numbered(0..1_000);
    if let Some(value) = &refused {
        let mut bad = Record::new(value.clone());
        bad.topic = "t".into();
        bad.offset = 1_000;
        batch.insert(500, Arc::new(bad));
    }
    let outcome = sink.put(&batch).await.expect("put");
    let rejected: Vec<usize> = outcome.rejected.iter().map(|(i, _)| *i).collect();
    let expected: Vec<usize> = if refused.is_some() {
        vec![500]
    } else {
        Vec::new()
    };
    assert_eq!(rejected, expected, "refused: {:?}", outcome.rejected);
    sink.flush().await.expect("flush");
    drop(sink);
    assert_each_once(store, 1_000).await;

    let mut sink = config.build(context).await.expect("the sink builds again");
    let _ = sink.open(&[("t".into(), 0)]).await.expect("open");
    if let Some(down) = store.outage(true) {
        down.await;
        let more = numbered(1_000..1_500);
        // The store comes back 2 s into the put: a sink either waits it out (its put ends
        // well) or gives up with a retryable error, after which the runtime puts the batch
        // again.
        let work = async {
            sink.put(&more).await?;
            sink.flush().await
        };
        let back = async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            if let Some(up) = store.outage(false) {
                up.await;
            }
        };
        let (first, ()) = tokio::join!(
            tokio::time::timeout(std::time::Duration::from_secs(120), work),
            back
        );
        match first.expect("a sink waits out an outage within 2 minutes or gives up") {
            Ok(()) => {}
            Err(e) => {
                assert!(e.retryable, "an outage is retryable: {e}");
                sink.put(&more).await.expect("put after the outage");
                sink.flush().await.expect("flush after the outage");
            }
        }
        drop(sink);
        assert_each_once(store, 1_500).await;
    }
}

async fn assert_each_once(store: &dyn Store, count: u64) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for n in store.numbers().await {
        *seen.entry(n).or_default() += 1;
    }
    let missing: Vec<u64> = (0..count)
        .filter(|n| !seen.contains_key(n))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "not in the store after flush: {missing:?}…"
    );
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "in the store twice: {twice:?}…");
    assert_eq!(seen.len() as u64, count, "records the check never put");
}
