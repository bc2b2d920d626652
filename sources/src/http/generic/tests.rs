use super::*;

/// RFC 8288: a target may hold commas; `rel` may list several types, in any case.
#[test]
fn the_next_link_is_found_whatever_its_target_holds() {
    let header = r#"<https://api.example/items?page=1&fields=a,b>; rel="prev first", <https://api.example/items?page=3&fields=a,b>; rel="NEXT", <https://api.example/items?page=9>; rel=last"#;
    assert_eq!(
        next_link(header).as_deref(),
        Some("https://api.example/items?page=3&fields=a,b")
    );
    assert_eq!(
        next_link("<https://a.example/?p=2>; rel=next").as_deref(),
        Some("https://a.example/?p=2")
    );
    assert_eq!(next_link(r#"<https://a.example/?p=1>; rel="prev""#), None);
}
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A JSON API on loopback answering each request with `pages(path and query)`.
struct Api {
    url: String,
    pages: Arc<Mutex<HashMap<String, Value>>>,
}

use std::collections::HashMap;

impl Api {
    async fn start() -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/items", listener.local_addr().unwrap());
        let pages: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let served = pages.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&request).to_string();
                    let target = line.split(' ').nth(1).unwrap_or("").to_string();
                    let body = served
                        .lock()
                        .unwrap()
                        .get(&target)
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new()))
                        .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Api { url, pages }
    }

    fn serve(&self, target: &str, records: Value) {
        self.pages
            .lock()
            .unwrap()
            .insert(target.to_string(), records);
    }
}

fn config(yaml: &str) -> HttpSourceConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn context(offset: Option<Value>, partition: &str) -> SourceBuildContext {
    SourceBuildContext {
        component: "web".into(),
        offsets: offset
            .map(|o| [(partition.to_string(), o)].into())
            .unwrap_or_default(),
        exactly_once: true,
        ..SourceBuildContext::default()
    }
}

/// Polls one item at a time (as a runtime whose batches hold one record), until
/// `records` records came or nothing more comes; the items with the offsets they carry.
async fn items(source: &mut dyn Source, records: usize) -> Vec<SourceRecord> {
    let mut out = Vec::new();
    while out
        .iter()
        .filter(|i: &&SourceRecord| matches!(i.payload, Payload::Record(_)))
        .count()
        < records
    {
        match tokio::time::timeout(Duration::from_secs(2), source.poll(1)).await {
            Ok(Ok(Some(batch))) => out.extend(batch),
            _ => break,
        }
    }
    out
}

/// The name (the value of `n`) and position of each record among `items`, in order.
fn numbered(items: &[SourceRecord]) -> Vec<(String, u64)> {
    items
        .iter()
        .filter_map(|i| match &i.payload {
            Payload::Record(r) => Some((
                r.value["n"].as_str().unwrap_or_default().to_string(),
                i.position?,
            )),
            _ => None,
        })
        .collect()
}

fn page(names: &[&str], with_id: bool) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| {
                if with_id {
                    serde_json::json!({ "id": format!("id-{n}"), "n": n })
                } else {
                    serde_json::json!({ "n": n })
                }
            })
            .collect(),
    )
}

/// A crash after the first record's offset was stored, and the page changed before the
/// restart (a record inserted among those sent): the records sent before the crash keep
/// their positions, so an exactly-once sink skips them, and the new record gets a position
/// after them all, so it is not skipped. With and without `id`.
#[tokio::test]
async fn a_page_changed_between_a_crash_and_the_restart_keeps_the_positions_of_what_was_sent() {
    for with_id in [true, false] {
        let api = Api::start().await;
        api.serve("/items", page(&["a", "b", "c"], with_id));
        let id = if with_id { "id: /id\n" } else { "" };
        let config = config(&format!("url: {}\ninterval: 1h\n{id}", api.url));
        let mut first = config.build(context(None, &api.url)).await.unwrap();
        let sent = items(&mut *first, 3).await;
        assert_eq!(
            numbered(&sent),
            [("a".into(), 0), ("b".into(), 1), ("c".into(), 2)]
        );
        assert!(
            matches!(sent[0].payload, Payload::Checkpoint),
            "the plan is stored before the page is sent"
        );
        // Stored: the offset after "a" (b and c were sent, not acknowledged).
        let stored = sent[1].offset.clone();
        drop(first);

        api.serve("/items", page(&["a", "x", "b", "c"], with_id));
        let mut second = config.build(context(Some(stored), &api.url)).await.unwrap();
        let resent = items(&mut *second, 3).await;
        assert_eq!(
            numbered(&resent),
            [("b".into(), 1), ("c".into(), 2), ("x".into(), 3)],
            "with id: {with_id}"
        );
    }
}

/// A page that slides (the latest 5 records of a feed, polled again and again) keeps a
/// plan of its own size in the offset, and numbers each record once, in order.
#[tokio::test]
async fn a_sliding_page_keeps_a_plan_of_its_own_size() {
    let api = Api::start().await;
    let names: Vec<String> = (0..30).map(|n| format!("r{n:02}")).collect();
    let window = |from: usize| {
        let slice: Vec<&str> = names[from..from + 5].iter().map(String::as_str).collect();
        page(&slice, false)
    };
    api.serve("/items", window(0));
    let config = config(&format!("url: {}\ninterval: 10ms\n", api.url));
    let mut source = config.build(context(None, &api.url)).await.unwrap();
    let mut sent = items(&mut *source, 5).await;
    for from in 1..=25 {
        api.serve("/items", window(from));
        sent.extend(items(&mut *source, 1).await);
    }
    let numbered = numbered(&sent);
    let expected: Vec<(String, u64)> = (0..30).map(|n| (format!("r{n:02}"), n as u64)).collect();
    assert_eq!(numbered, expected);
    let offset = &sent
        .iter()
        .rev()
        .find(|i| !i.offset.is_null())
        .unwrap()
        .offset;
    assert_eq!(
        offset["plan"]["entries"].as_array().unwrap().len(),
        5,
        "{offset}"
    );
}

/// A crash once the plan of the next page was stored, and that page changed before the
/// restart: the restart goes on with that page as planned.
#[tokio::test]
async fn a_restart_after_the_next_pages_plan_was_stored_reads_that_page_as_planned() {
    let api = Api::start().await;
    api.serve("/items?page=1", page(&["a", "b"], true));
    api.serve("/items?page=2", page(&["c", "d"], true));
    let config = config(&format!(
        "url: {}\ninterval: 1h\nid: /id\npagination: {{ type: page, param: page }}\n",
        api.url
    ));
    let mut first = config.build(context(None, &api.url)).await.unwrap();
    let sent = items(&mut *first, 4).await;
    assert_eq!(
        numbered(&sent),
        [
            ("a".into(), 0),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 3)
        ]
    );
    // Stored: the checkpoint of page 2 (c and d were sent, not acknowledged).
    let plan_of_page_2 = sent
        .iter()
        .rposition(|i| matches!(i.payload, Payload::Checkpoint))
        .unwrap();
    assert_eq!(plan_of_page_2, 3);
    let stored = sent[plan_of_page_2].offset.clone();
    drop(first);

    api.serve("/items?page=2", page(&["c", "x", "d"], true));
    let mut second = config.build(context(Some(stored), &api.url)).await.unwrap();
    let resent = items(&mut *second, 3).await;
    assert_eq!(
        numbered(&resent),
        [("c".into(), 2), ("d".into(), 3), ("x".into(), 4)]
    );
}
