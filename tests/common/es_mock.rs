//! A small in-process HTTP server that answers like Elasticsearch 8 does for what the sink uses,
//! per the documented APIs: `GET /`, index creation with mappings (`PUT /{index}`,
//! `resource_already_exists_exception`), `GET /{index}/_mapping`, `POST /_bulk` with per-item
//! results (`errors: true`, `mapper_parsing_exception` for values the mapping refuses,
//! `es_rejected_execution_exception` 429s on demand), whole-request 429s on demand,
//! `_refresh`, `_count`, `_search`, and basic-auth 401s. It is not Elasticsearch: the tests that
//! use it run against a real cluster instead when `ELASTICSEARCH_URL` is set.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Failures to inject.
#[derive(Clone, Default)]
pub struct Faults {
    /// Documents whose id hashes to 0 modulo this answer 429 on their first `item_429_times` tries.
    pub item_429_every: u64,
    pub item_429_times: u32,
    /// The first this many `_bulk` requests are answered 429 as a whole.
    pub busy_requests: u32,
    /// `user:password` that `Authorization: Basic` must carry.
    pub basic_auth: Option<String>,
}

#[derive(Default)]
struct Index {
    mappings: Value,
    docs: HashMap<String, Value>,
}

#[derive(Default)]
struct Cluster {
    indices: HashMap<String, Index>,
    attempts: HashMap<String, u32>,
    bulk_requests: u32,
    next_id: u64,
    /// Items answered 429, for the tests' assertions.
    pub rejected_429: u64,
}

type Shared = Arc<(Mutex<Cluster>, Faults)>;

/// A running stand-in; stops with the test process.
pub struct EsMock {
    pub url: String,
    state: Shared,
}

impl EsMock {
    pub fn start(faults: Faults) -> Self {
        let state: Shared = Arc::new((Mutex::new(Cluster::default()), faults));
        let app = Router::new()
            .route("/", get(info))
            .route("/_bulk", post(bulk))
            .route(
                "/{index}",
                axum::routing::put(create_index).head(head_index),
            )
            .route("/{index}/_mapping", get(mapping))
            .route("/{index}/_refresh", post(ok_shards).get(ok_shards))
            .route("/{index}/_count", get(count).post(count))
            .route("/{index}/_search", get(search).post(search))
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        EsMock { url, state }
    }

    /// Items answered 429 so far.
    pub fn rejected_429(&self) -> u64 {
        self.state.0.lock().unwrap().rejected_429
    }
}

fn authorized(state: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(expected) = &state.1.basic_auth else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given == format!("Basic {}", base64(expected.as_bytes())) {
        return Ok(());
    }
    let body = json!({"error": {"type": "security_exception", "reason": "unable to authenticate user"}, "status": 401});
    Err(Box::new(
        (StatusCode::UNAUTHORIZED, Json(body)).into_response(),
    ))
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn info(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return *r;
    }
    Json(json!({"name": "mock", "cluster_name": "sluice-es-mock", "version": {"number": "8.15.0"}, "tagline": "You Know, for Search"})).into_response()
}

async fn create_index(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return *r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let mut cluster = state.0.lock().unwrap();
    if cluster.indices.contains_key(&name) {
        let error = json!({"error": {"type": "resource_already_exists_exception", "reason": format!("index [{name}] already exists")}, "status": 400});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    let mappings = body.get("mappings").cloned().unwrap_or(json!({}));
    cluster.indices.insert(
        name.clone(),
        Index {
            mappings,
            docs: HashMap::new(),
        },
    );
    Json(json!({"acknowledged": true, "shards_acknowledged": true, "index": name})).into_response()
}

async fn head_index(State(state): State<Shared>, Path(name): Path<String>) -> StatusCode {
    if state.0.lock().unwrap().indices.contains_key(&name) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

fn missing(name: &str) -> Response {
    let error = json!({"error": {"type": "index_not_found_exception", "reason": format!("no such index [{name}]")}, "status": 404});
    (StatusCode::NOT_FOUND, Json(error)).into_response()
}

async fn mapping(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    let cluster = state.0.lock().unwrap();
    match cluster.indices.get(&name) {
        Some(index) => Json(json!({ name: { "mappings": index.mappings } })).into_response(),
        None => missing(&name),
    }
}

async fn ok_shards() -> Json<Value> {
    Json(json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}))
}

async fn count(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    let cluster = state.0.lock().unwrap();
    match cluster.indices.get(&name) {
        Some(index) => {
            Json(json!({"count": index.docs.len(), "_shards": {"total": 1, "successful": 1}}))
                .into_response()
        }
        None => missing(&name),
    }
}

async fn search(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    let cluster = state.0.lock().unwrap();
    let Some(index) = cluster.indices.get(&name) else {
        return missing(&name);
    };
    let hits: Vec<Value> = index
        .docs
        .iter()
        .take(10)
        .map(|(id, source)| json!({"_index": name, "_id": id, "_score": 1.0, "_source": source}))
        .collect();
    Json(json!({"took": 1, "timed_out": false, "hits": {"total": {"value": index.docs.len(), "relation": "eq"}, "hits": hits}})).into_response()
}

/// Why `value` does not fit a field of mapping type `kind`, if it does not.
fn refuses(kind: &str, value: &Value) -> Option<String> {
    let fits = match (kind, value) {
        (_, Value::Null) => true,
        ("double" | "float" | "long" | "integer", Value::Number(_)) => true,
        ("double" | "float", Value::String(s)) => s.parse::<f64>().is_ok(),
        ("long" | "integer", Value::String(s)) => s.parse::<i64>().is_ok(),
        ("date", Value::String(s)) => {
            s.len() >= 10 && s.as_bytes()[4] == b'-' && s[..4].parse::<u32>().is_ok()
        }
        ("date", Value::Number(_)) => true,
        ("keyword" | "text", Value::String(_) | Value::Number(_) | Value::Bool(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("double" | "float" | "long" | "integer" | "date" | "boolean", _) => false,
        _ => true,
    };
    (!fits).then(|| format!("failed to parse field of type [{kind}]: value [{value}]"))
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

async fn bulk(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return *r;
    }
    let faults = &state.1;
    let mut cluster = state.0.lock().unwrap();
    cluster.bulk_requests += 1;
    if cluster.bulk_requests <= faults.busy_requests {
        let error = json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution (queue capacity 200)"}, "status": 429});
        return (StatusCode::TOO_MANY_REQUESTS, Json(error)).into_response();
    }
    let text = String::from_utf8_lossy(&body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(action_line) = lines.next() {
        let Ok(action) = serde_json::from_str::<Map<String, Value>>(action_line) else {
            let error = json!({"error": {"type": "illegal_argument_exception", "reason": "Malformed action/metadata line"}, "status": 400});
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        };
        let Some((op, meta)) = action.into_iter().next() else {
            continue;
        };
        let index_name = meta
            .get("_index")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let id = match meta.get("_id").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => {
                cluster.next_id += 1;
                format!("auto-{}", cluster.next_id)
            }
        };
        let source: Option<Value> = if op == "delete" {
            None
        } else {
            lines.next().and_then(|l| serde_json::from_str(l).ok())
        };
        let key = format!("{index_name}/{id}");
        let attempt = {
            let a = cluster.attempts.entry(key).or_default();
            *a += 1;
            *a
        };
        let result = if faults.item_429_every > 0
            && hash(&id).is_multiple_of(faults.item_429_every)
            && attempt <= faults.item_429_times
        {
            cluster.rejected_429 += 1;
            json!({"_index": index_name, "_id": id, "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}})
        } else {
            let index = cluster.indices.entry(index_name.clone()).or_default();
            let doc = match (op.as_str(), &source) {
                ("update", Some(s)) => {
                    let mut merged = index.docs.get(&id).cloned().unwrap_or(json!({}));
                    if let (Some(m), Some(d)) = (
                        merged.as_object_mut(),
                        s.get("doc").and_then(Value::as_object),
                    ) {
                        m.extend(d.clone());
                    }
                    Some(merged)
                }
                (_, s) => s.clone(),
            };
            let refusal = doc.as_ref().and_then(|d| {
                let props = index.mappings.get("properties")?.as_object()?;
                props.iter().find_map(|(field, spec)| {
                    let kind = spec.get("type")?.as_str()?;
                    refuses(kind, d.get(field)?).map(|r| format!("failed to parse field [{field}] of type [{kind}] in document with id '{id}'. {r}"))
                })
            });
            match (op.as_str(), refusal, doc) {
                (_, Some(reason), _) => {
                    json!({"_index": index_name, "_id": id, "status": 400, "error": {"type": "document_parsing_exception", "reason": reason, "caused_by": {"type": "mapper_parsing_exception"}}})
                }
                ("delete", _, _) => match index.docs.remove(&id) {
                    Some(_) => {
                        json!({"_index": index_name, "_id": id, "result": "deleted", "status": 200})
                    }
                    None => {
                        json!({"_index": index_name, "_id": id, "result": "not_found", "status": 404})
                    }
                },
                ("create", _, Some(_)) if index.docs.contains_key(&id) => {
                    json!({"_index": index_name, "_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists")}})
                }
                (_, _, Some(doc)) => {
                    let existed = index.docs.insert(id.clone(), doc).is_some();
                    json!({"_index": index_name, "_id": id, "result": if existed { "updated" } else { "created" }, "status": if existed { 200 } else { 201 }})
                }
                (_, _, None) => {
                    json!({"_index": index_name, "_id": id, "status": 400, "error": {"type": "parse_exception", "reason": "missing source"}})
                }
            }
        };
        errors |= result.get("error").is_some();
        items.push(json!({ op: result }));
    }
    Json(json!({"took": 3, "errors": errors, "items": items})).into_response()
}
