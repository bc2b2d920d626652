//! A small in-process HTTP server that answers like Elasticsearch 8 does for what the sink uses,
//! per the documented APIs: `GET /`, index creation with mappings (`PUT /{index}`,
//! `resource_already_exists_exception`), `GET /{index}/_mapping`, `POST /_bulk` with per-item
//! results (`errors: true`, `document_parsing_exception` for values the mapping refuses,
//! `es_rejected_execution_exception` 429s on demand), whole-request 429s on demand,
//! `_refresh`, `_count`, `_search`, and basic-auth 401s. Also what real clusters do that a
//! permissive stand-in would hide:
//! - dynamic mapping: an unmapped field's first value decides its type (`date` for date
//!   strings, `long`, `float`, `boolean`, else `text`), and later values must fit it;
//! - the coercions Elasticsearch does (`"12.5"` into a `long` is 12) and what it refuses
//!   (`NaN` or `Infinity` into numbers, `2020-13-45` as a date);
//! - `_bulk` validates every item first: an `_id` over 512 bytes, or an empty one, fails the
//!   whole request with 400 `action_request_validation_exception`;
//! - request bodies over `http.max_content_length` are answered 413;
//! - gzip request bodies (`Content-Encoding: gzip`) are decoded;
//! - least-privilege users: `GET /` without `monitor` and `PUT /{index}` without
//!   `create_index` are 403 `security_exception`; a read-only index answers each item 403
//!   `cluster_block_exception`;
//! - an outage answers every request 503.
//!
//! It is not Elasticsearch: the tests that use it run against a real cluster instead when
//! `ELASTICSEARCH_URL` is set.

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
    /// `GET /` answers 403 (a user without the `monitor` privilege).
    pub forbid_monitor: bool,
    /// `PUT /{index}` answers 403 (a user without `create_index`), even for an existing index.
    pub forbid_create_index: bool,
    /// Every write to these indices answers 403 `cluster_block_exception` (read-only).
    pub read_only_indices: Vec<String>,
    /// `http.max_content_length`: larger request bodies are answered 413 (0: 100 MB).
    pub max_content_length: usize,
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

type Shared = Arc<(Mutex<Cluster>, Faults, std::sync::atomic::AtomicBool)>;

/// A running stand-in; stops with the test process.
pub struct EsMock {
    pub url: String,
    state: Shared,
}

impl EsMock {
    pub fn start(faults: Faults) -> Self {
        let state: Shared = Arc::new((
            Mutex::new(Cluster::default()),
            faults,
            std::sync::atomic::AtomicBool::new(false),
        ));
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
            .route("/{index}/_doc/{id}", get(get_doc))
            .layer(axum::middleware::from_fn_with_state(state.clone(), outage))
            .with_state(state.clone());
        let url = serve(app);
        EsMock { url, state }
    }

    /// Items answered 429 so far.
    pub fn rejected_429(&self) -> u64 {
        self.state.0.lock().unwrap().rejected_429
    }

    /// Creates an empty index as an administrator would (whatever the faults).
    pub fn create_index(&self, name: &str) {
        self.state
            .0
            .lock()
            .unwrap()
            .indices
            .insert(name.to_string(), Index::default());
    }

    /// The documents of `index` (their `_source`), none if it does not exist.
    pub fn documents(&self, index: &str) -> Vec<Value> {
        let cluster = self.state.0.lock().unwrap();
        cluster
            .indices
            .get(index)
            .map(|i| i.docs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts or ends an outage: every request answered 503.
    pub fn set_down(&self, down: bool) {
        self.state
            .2
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// During an outage, every request is answered 503, but `POST /_stand_in/outage/{on|off}`,
/// which starts and ends it from outside the process (bench/chaos.sh).
async fn outage(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(switch) = request.uri().path().strip_prefix("/_stand_in/outage/") {
        let down = switch == "on";
        state.2.store(down, std::sync::atomic::Ordering::SeqCst);
        return Json(json!({ "down": down })).into_response();
    }
    if state.2.load(std::sync::atomic::Ordering::SeqCst) {
        let error = json!({"error": {"type": "unavailable_shards_exception", "reason": "cluster is restarting"}, "status": 503});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
    }
    next.run(request).await
}

fn forbidden(action: &str) -> Response {
    let body = json!({"error": {"type": "security_exception", "reason": format!("action [{action}] is unauthorized for user [writer] with effective roles [writer]")}, "status": 403});
    (StatusCode::FORBIDDEN, Json(body)).into_response()
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
    if state.1.forbid_monitor {
        return forbidden("cluster:monitor/main");
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
    if state.1.forbid_create_index {
        return forbidden("indices:admin/create");
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

async fn get_doc(
    State(state): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let cluster = state.0.lock().unwrap();
    match cluster.indices.get(&name).and_then(|i| i.docs.get(&id)) {
        Some(source) => Json(json!({"_index": name, "_id": id, "found": true, "_source": source}))
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"_index": name, "_id": id, "found": false})),
        )
            .into_response(),
    }
}

/// A date Elasticsearch's default `date` format (`strict_date_optional_time||epoch_millis`)
/// reads: `yyyy-MM-dd`, optionally followed by a time.
fn is_date(s: &str) -> bool {
    let day = s.get(..10).unwrap_or("");
    let rest = &s[day.len()..];
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok()
        && (rest.is_empty()
            || chrono::DateTime::parse_from_rfc3339(s).is_ok()
            || rest.starts_with('T'))
}

/// A number as Elasticsearch reads one for a numeric field: JSON numbers, and strings it
/// coerces (`"12.5"`); not `NaN` or infinities.
fn finite_number(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// Why `value` does not fit a field of mapping type `kind`, if it does not.
fn refuses(kind: &str, value: &Value) -> Option<String> {
    let fits = match (kind, value) {
        (_, Value::Null) => true,
        ("double" | "float" | "long" | "integer", v) => finite_number(v).is_some(),
        ("date", Value::String(s)) => is_date(s),
        ("date", Value::Number(n)) => n.is_i64(),
        ("keyword" | "text", Value::String(_) | Value::Number(_) | Value::Bool(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("boolean", Value::String(s)) => s == "true" || s == "false",
        ("date" | "boolean", _) => false,
        _ => true,
    };
    (!fits).then(|| format!("failed to parse field of type [{kind}]: value [{value}]"))
}

/// The type dynamic mapping gives a field first seen with `value`.
fn dynamic_type(value: &Value) -> Option<&'static str> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "long",
        Value::Number(_) => "float",
        Value::String(s) if is_date(s) => "date",
        Value::String(_) => "text",
        Value::Object(_) => "object",
        Value::Array(_) => return None,
    })
}

/// Checks `doc` against the index's mapping, mapping new fields on the way.
fn map_document(index: &mut Index, id: &str, doc: &Value) -> Option<String> {
    let fields = doc.as_object()?;
    if !index.mappings.is_object() {
        index.mappings = json!({});
    }
    let mappings = index.mappings.as_object_mut()?;
    let properties = mappings
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()?;
    for (field, value) in fields {
        let kind = match properties
            .get(field)
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
        {
            Some(kind) => kind.to_string(),
            None => match dynamic_type(value) {
                Some(kind) => {
                    properties.insert(field.clone(), json!({ "type": kind }));
                    continue;
                }
                None => continue,
            },
        };
        if let Some(reason) = refuses(&kind, value) {
            return Some(format!(
                "failed to parse field [{field}] of type [{kind}] in document with id '{id}'. {reason}"
            ));
        }
    }
    None
}

/// What `_bulk` validation refuses before running any item: an id over 512 bytes, or empty.
fn invalid_ids(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(line) = lines.next() {
        let action: Map<String, Value> = serde_json::from_str(line).ok()?;
        let (op, meta) = action.into_iter().next()?;
        if let Some(id) = meta.get("_id").and_then(Value::as_str) {
            if id.len() > 512 {
                return Some(format!(
                    "id [{id}] is too long, must be no longer than 512 bytes but was: {}",
                    id.len()
                ));
            }
            if id.is_empty() {
                return Some("an id must not be empty".into());
            }
        }
        if op != "delete" {
            lines.next();
        }
    }
    None
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
    let limit = if faults.max_content_length == 0 {
        100 << 20
    } else {
        faults.max_content_length
    };
    if body.len() > limit {
        let error = json!({"error": {"type": "content_too_long_exception", "reason": format!("request body is too large ({} > {limit})", body.len())}, "status": 413});
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(error)).into_response();
    }
    let gzipped = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gzipped {
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .is_err()
        {
            let error = json!({"error": {"type": "parse_exception", "reason": "request body is not valid gzip"}, "status": 400});
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        Bytes::from(plain)
    } else {
        body
    };
    if let Some(reason) = invalid_ids(&body) {
        let error = json!({"error": {"type": "action_request_validation_exception", "reason": format!("Validation Failed: 1: {reason};")}, "status": 400});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
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
        let result = if faults.read_only_indices.contains(&index_name) {
            json!({"_index": index_name, "_id": id, "status": 403, "error": {"type": "cluster_block_exception", "reason": format!("index [{index_name}] blocked by: [FORBIDDEN/8/index write (api)];")}})
        } else if faults.item_429_every > 0
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
            let refusal = doc.as_ref().and_then(|d| map_document(index, &id, d));
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

/// Serves `app` on a free loopback port from a thread of its own; its `http://` URL.
pub fn serve(app: axum::Router) -> String {
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
    url
}
