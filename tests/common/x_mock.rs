//! A local server answering like X's API v2 for the `twitter` source, from a script:
//! - `GET|POST /2/tweets/search/stream/rules` (`dry_run=true` checks only): the rules on the
//!   stream; a rule whose value is `refused` is answered as X answers an invalid rule;
//! - `GET /2/tweets/search/stream`: each connection plays the next entry of `connections` (a
//!   status to answer, or lines with pauses, then the end of the body); once they are played,
//!   connections stay open sending a keep-alive every 100 ms;
//! - `GET /2/tweets/search/recent`: posts numbered `first_id + n` (default [`FIRST_ID`]) for
//!   n below `posts` (more by `grow` from the second scan on), newest first, `since_id`
//!   exclusive, `page_size` per page with `next_token`, each page after `page_delay_ms`; a
//!   `since_id` below `oldest_since_id` (a post older than 7 days) is refused with X's 400,
//!   `start_time` is taken (every post here is within the 7 days);
//! - every request must carry `Authorization: Bearer {token}` (401 with X's problem body).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Id of the oldest recent-search post.
pub const FIRST_ID: u64 = 1_600_000_000_000_000_000;

/// What one stream connection gets.
#[derive(Clone, Debug)]
pub enum Connection {
    /// Answered with this status and X's problem body.
    Status(u16),
    /// 200, then these steps, then the body ends.
    Lines(Vec<Step>),
}

#[derive(Clone, Debug)]
pub enum Step {
    Line(String),
    Pause(u64),
}

#[derive(Clone, Default)]
pub struct XScript {
    pub token: String,
    /// Rules on the stream before the source starts: (id, value, tag).
    pub rules: Vec<(String, String, Option<String>)>,
    /// A rule value X refuses.
    pub refused: Option<String>,
    pub connections: Vec<Connection>,
    pub posts: u64,
    pub grow: u64,
    pub page_size: u64,
    pub page_delay_ms: u64,
    /// Id of the oldest recent-search post (0: [`FIRST_ID`]).
    pub first_id: u64,
    /// `since_id`s below this are refused, as X refuses posts older than 7 days.
    pub oldest_since_id: Option<u64>,
}

#[derive(Default)]
pub struct XLog {
    /// (time, status) of each stream connection.
    pub connections: Vec<(Instant, u16)>,
    /// (method and path with query, body) of each rules request.
    pub rule_requests: Vec<(String, Value)>,
    /// Path and query of each recent-search request.
    pub searches: Vec<String>,
    rules: Vec<(String, String, Option<String>)>,
    next_rule_id: u64,
    scans: u64,
    posts: u64,
}

type Shared = Arc<(Mutex<XLog>, XScript)>;

pub struct XMock {
    pub url: String,
    state: Shared,
}

impl XMock {
    pub fn start(script: XScript) -> Self {
        let log = XLog {
            rules: script.rules.clone(),
            next_rule_id: 9000,
            posts: script.posts,
            ..XLog::default()
        };
        let state: Shared = Arc::new((Mutex::new(log), script));
        let app = Router::new()
            .route(
                "/2/tweets/search/stream/rules",
                get(rules).post(change_rules),
            )
            .route("/2/tweets/search/stream", get(stream))
            .route("/2/tweets/search/recent", get(recent))
            .with_state(state.clone());
        XMock {
            url: super::es_mock::serve(app),
            state,
        }
    }

    pub fn log<T>(&self, read: impl FnOnce(&XLog) -> T) -> T {
        read(&self.state.0.lock().unwrap())
    }

    /// The rules on the stream now: (value, tag).
    pub fn rules(&self) -> Vec<(String, Option<String>)> {
        self.log(|log| {
            log.rules
                .iter()
                .map(|(_, value, tag)| (value.clone(), tag.clone()))
                .collect()
        })
    }
}

fn authorized(state: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let wanted = format!("Bearer {}", state.1.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(wanted.as_str()) {
        return Ok(());
    }
    let body = json!({"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"});
    Err(Box::new(
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response(),
    ))
}

async fn rules(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorized(&state, &headers) {
        return *refused;
    }
    let mut log = state.0.lock().unwrap();
    log.rule_requests
        .push(("GET /2/tweets/search/stream/rules".into(), Value::Null));
    let data: Vec<Value> = log
        .rules
        .iter()
        .map(|(id, value, tag)| json!({"id": id, "value": value, "tag": tag}))
        .collect();
    let count = data.len();
    let mut body = json!({"meta": {"sent": "2023-02-01T19:00:00.000Z", "result_count": count}});
    if count > 0 {
        body["data"] = Value::Array(data);
    }
    axum::Json(body).into_response()
}

async fn change_rules(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    axum::Json(change): axum::Json<Value>,
) -> Response {
    if let Err(refused) = authorized(&state, &headers) {
        return *refused;
    }
    let dry_run = query.get("dry_run").is_some_and(|v| v == "true");
    let mut log = state.0.lock().unwrap();
    let what = if dry_run {
        "POST /2/tweets/search/stream/rules?dry_run=true"
    } else {
        "POST /2/tweets/search/stream/rules"
    };
    log.rule_requests.push((what.into(), change.clone()));
    if let Some(ids) = change["delete"]["ids"].as_array() {
        let ids: Vec<&str> = ids.iter().filter_map(Value::as_str).collect();
        let before = log.rules.len();
        log.rules.retain(|(id, _, _)| !ids.contains(&id.as_str()));
        let deleted = before - log.rules.len();
        return axum::Json(json!({"meta": {"sent": "2023-02-01T19:00:00.000Z", "summary": {"deleted": deleted, "not_deleted": ids.len() - deleted}}})).into_response();
    }
    let mut data = Vec::new();
    let mut errors = Vec::new();
    for rule in change["add"].as_array().cloned().unwrap_or_default() {
        let value = rule["value"].as_str().unwrap_or_default().to_string();
        let tag = rule["tag"].as_str().map(String::from);
        if state.1.refused.as_deref() == Some(value.as_str()) {
            errors.push(
                json!({"value": value, "id": "0", "title": "UnprocessableEntity",
                "details": ["Rules must contain a non-stopword keyword or a connecting operator"],
                "type": "https://api.twitter.com/2/problems/invalid-rules"}),
            );
            continue;
        }
        if let Some((id, _, _)) = log.rules.iter().find(|(_, v, _)| *v == value) {
            errors.push(json!({"value": value, "id": id, "title": "DuplicateRule",
                "type": "https://api.twitter.com/2/problems/duplicate-rules"}));
            continue;
        }
        log.next_rule_id += 1;
        let id = log.next_rule_id.to_string();
        data.push(json!({"id": id, "value": value, "tag": tag}));
        if !dry_run {
            log.rules.push((id, value, tag));
        }
    }
    let mut body = json!({"meta": {"sent": "2023-02-01T19:00:00.000Z",
        "summary": {"created": data.len(), "not_created": errors.len(), "valid": data.len(), "invalid": errors.len()}}});
    if !data.is_empty() {
        body["data"] = Value::Array(data);
    }
    if !errors.is_empty() {
        body["errors"] = Value::Array(errors);
    }
    axum::Json(body).into_response()
}

async fn stream(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorized(&state, &headers) {
        state
            .0
            .lock()
            .unwrap()
            .connections
            .push((Instant::now(), 401));
        return *refused;
    }
    let played = {
        let mut log = state.0.lock().unwrap();
        let n = log.connections.len();
        let connection = state.1.connections.get(n).cloned();
        let status = match &connection {
            Some(Connection::Status(status)) => *status,
            _ => 200,
        };
        log.connections.push((Instant::now(), status));
        connection
    };
    let steps = match played {
        Some(Connection::Status(status)) => {
            let code = StatusCode::from_u16(status).unwrap();
            let body = json!({"title": code.canonical_reason(), "detail": "scripted", "type": "about:blank", "status": status});
            return (code, axum::Json(body)).into_response();
        }
        Some(Connection::Lines(steps)) => Some(steps),
        None => None,
    };
    let body = futures::stream::unfold((steps, 0usize), |(steps, i)| async move {
        match &steps {
            Some(list) => {
                let mut i = i;
                loop {
                    match list.get(i)? {
                        Step::Pause(ms) => {
                            let ms = *ms;
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            i += 1;
                        }
                        Step::Line(line) => {
                            let chunk = format!("{line}\r\n");
                            return Some((Ok::<_, std::io::Error>(chunk), (steps, i + 1)));
                        }
                    }
                }
            }
            None => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok("\r\n".to_string()), (steps, i)))
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .unwrap()
}

async fn recent(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = authorized(&state, &headers) {
        return *refused;
    }
    let script = &state.1;
    if script.page_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(script.page_delay_ms)).await;
    }
    let mut log = state.0.lock().unwrap();
    let mut shown: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    shown.sort();
    log.searches.push(shown.join("&"));
    let since: u64 = query
        .get("since_id")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if query.contains_key("since_id") && query.contains_key("start_time") {
        let body = json!({"errors": [{"parameters": {"since_id": [since.to_string()]}, "message": "since_id and start_time cannot both be set"}],
            "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request"});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    if script
        .oldest_since_id
        .is_some_and(|oldest| query.contains_key("since_id") && since < oldest)
    {
        // X's answer to a since_id older than recent search's 7 days.
        let body = json!({"errors": [{"parameters": {"since_id": [since.to_string()]},
            "message": format!("Invalid 'since_id':'{since}'. 'since_id' must be a tweet id created after 2026-11-30T22:00:00.000Z. Please use a 'start_time' parameter instead.")}],
            "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request"});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let first_page = !query.contains_key("next_token");
    if first_page {
        if log.scans == 1 {
            log.posts += script.grow;
        }
        log.scans += 1;
    }
    let first_id = if script.first_id == 0 {
        FIRST_ID
    } else {
        script.first_id
    };
    // Newest first: the token is how many posts of the scan came before.
    let skip: u64 = query
        .get("next_token")
        .and_then(|t| t.strip_prefix("t"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let all: Vec<u64> = (0..log.posts)
        .rev()
        .map(|n| first_id + n)
        .filter(|id| *id > since)
        .collect();
    let page: Vec<u64> = all
        .iter()
        .copied()
        .skip(skip as usize)
        .take(script.page_size as usize)
        .collect();
    let data: Vec<Value> = page
        .iter()
        .map(|id| {
            json!({"id": id.to_string(), "text": format!("post {}", id - first_id),
                "author_id": "2244994945", "created_at": "2023-02-01T19:00:00.000Z"})
        })
        .collect();
    let mut meta = json!({"result_count": data.len()});
    if let (Some(newest), Some(oldest)) = (page.first(), page.last()) {
        meta["newest_id"] = json!(newest.to_string());
        meta["oldest_id"] = json!(oldest.to_string());
    }
    if skip + (page.len() as u64) < all.len() as u64 {
        meta["next_token"] = json!(format!("t{}", skip + page.len() as u64));
    }
    let mut body = json!({"meta": meta});
    if !data.is_empty() {
        body["data"] = Value::Array(data);
        body["includes"] = json!({"users": [{"id": "2244994945", "name": "Sample User", "username": "sample_user"}]});
    }
    axum::Json(body).into_response()
}
