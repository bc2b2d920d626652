//! The REST API of `sluice run`, in Kafka Connect's words, and Prometheus `/metrics`.
//!
//! A *connector* is one source, stream transform or sink of a running pipeline, named
//! `<pipeline>.<component>`, with one task. With a token set (`SLUICE_API_TOKEN`), calls that
//! change something (pause, resume, stop, restart, offset reset, validate) and reads of configs
//! and offsets need `Authorization: Bearer <token>`; status, health, metrics and the status page
//! stay open. Configs and offsets are shown with every value that may be a secret as `***`.
//!
//! A web page in the user's browser must not drive it: a request whose `Host` is not
//! `localhost`, an IP address or a name given with `--api-host` is refused (a page reaching the
//! API through a name it controls: DNS rebinding); a call that changes something is refused
//! when it comes from another origin (`Origin`, `Sec-Fetch-Site`), and a `POST` needs
//! `Content-Type: application/json`, which no cross-site form or simple request can send. A
//! connection has 10 s to send a request's headers and lasts 2 minutes at most; 64 at a time.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use sluice_core::metrics::ComponentMetrics;
use sluice_core::registry::{self, PluginKind};
use sluice_core::runtime::{Command, CommandError, PipelineRun};
use sluice_core::stream::StreamTransformConfig;
use sluice_core::{SinkConfig, SourceConfig, TransformConfig};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the API serves.
pub struct Api {
    pub runs: Vec<Arc<PipelineRun>>,
    /// Required on mutating calls when set.
    pub token: Option<String>,
    pub prometheus: PrometheusHandle,
    /// This worker's name in status answers (`host:port` of the API, like Kafka Connect).
    pub worker_id: String,
    /// Host names answered to besides `localhost` and IP addresses (`--api-host`).
    pub hosts: Vec<String>,
}

/// The API's OpenAPI description.
const OPENAPI: &str = include_str!("openapi.json");

/// The status page: one file, compiled in, no CDN; it polls `/connectors?expand=status`.
const STATUS_PAGE: &str = include_str!("ui/index.html");

/// How long a connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a connection may stay open, requests and all.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// Serves `api` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: try again shortly.
                Err(e) => {
                    tracing::debug!(error = %e, "cannot accept a REST API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), connection).await;
                }
            }
        });
    }
}

/// The API's routes, every request through [`guard`].
fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ui", get(page))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi))
        .route("/connectors", get(connectors))
        .route("/connectors/{name}", get(connector))
        .route("/connectors/{name}/status", get(status))
        .route(
            "/connectors/{name}/offsets",
            get(offsets).delete(reset_offsets),
        )
        .route("/connectors/{name}/restart", post(restart))
        .route("/connectors/{name}/stop", put(stop))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connector-plugins", get(plugins))
        .route("/connector-plugins/{plugin}/config/validate", put(validate))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; GET /openapi.json lists them",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method; GET /openapi.json lists them",
            )
        })
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

/// Refuses what a web page could send: a `Host` that is not the API's, and calls that change
/// something from another origin or as a simple (unpreflighted) request.
async fn guard(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    match api.admit(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Whether `host` (a `Host` header) names this API: `localhost`, an IP address (a page cannot
/// be served from one it does not own), or one of `names`; with or without a port.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    !name.is_empty()
        && (name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// Whether a request's `Content-Type` is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// A Kafka Connect-style error answer.
struct ApiError {
    code: StatusCode,
    message: String,
}

fn error(code: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(json!({ "error_code": self.code.as_u16(), "message": self.message })),
        )
            .into_response()
    }
}

/// One connector: its pipeline and counters.
struct Found<'a> {
    run: &'a Arc<PipelineRun>,
    metrics: &'a Arc<ComponentMetrics>,
}

impl Api {
    fn name(run: &PipelineRun, metrics: &ComponentMetrics) -> String {
        format!("{}.{}", run.config.name, metrics.id)
    }

    fn all(&self) -> impl Iterator<Item = Found<'_>> {
        self.runs.iter().flat_map(|run| {
            run.metrics
                .iter()
                .map(move |metrics| Found { run, metrics })
        })
    }

    fn find(&self, name: &str) -> Result<Found<'_>, ApiError> {
        self.all()
            .find(|f| Api::name(f.run, f.metrics) == name)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("Connector {name} not found")))
    }

    /// Refuses what a web page could send (see the module's documentation).
    fn admit(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !host_allowed(host, &self.hosts) {
            return Err(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!("`Host: {host}` is not a name of this API: it answers to localhost, IP addresses and the names given with --api-host (SLUICE_API_HOSTS)"),
            ));
        }
        if matches!(*method, Method::GET | Method::HEAD) {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let same = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host));
            if !same {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    format!("a call from the web page at {origin} is refused: only clients outside a browser, or pages of this API, may change something"),
                ));
            }
        }
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Err(error(
                StatusCode::FORBIDDEN,
                "a call from another site's web page is refused",
            ));
        }
        let has_body = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n != "0")
            || headers.contains_key(header::TRANSFER_ENCODING);
        if (*method == Method::POST || has_body) && !is_json(headers) {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send `Content-Type: application/json` with this call (curl: -H 'Content-Type: application/json'): a web page cannot, so it cannot make the call",
            ));
        }
        Ok(())
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        // The scheme is case-insensitive (RFC 9110), the token not.
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        // Compared in constant time: the answer's timing does not tell how much matched.
        let matches = given.is_some_and(|given| {
            given.len() == token.len()
                && given
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if matches {
            Ok(())
        } else {
            Err(error(
                StatusCode::UNAUTHORIZED,
                "this call needs `Authorization: Bearer <token>` (the token `sluice run` was given in SLUICE_API_TOKEN or --api-token-file)",
            ))
        }
    }

    /// Kafka Connect's status object, with Sluice's counters under `metrics`.
    fn status(&self, found: &Found<'_>) -> Value {
        let m = found.metrics;
        let state = m.state().as_str();
        let mut task = json!({ "id": 0, "state": state, "worker_id": self.worker_id });
        if let Some(failure) = m.failure() {
            task["trace"] = json!(format!(
                "{} (trace id {})",
                failure.message, failure.trace_id
            ));
        }
        let snapshot = m.snapshot();
        json!({
            "name": Api::name(found.run, m),
            "connector": { "state": state, "worker_id": self.worker_id },
            "tasks": [task],
            "type": m.kind,
            "metrics": {
                "records_in": snapshot.records_in,
                "records_out": snapshot.records_out,
                "dead_lettered": snapshot.dead_lettered,
                "skipped": snapshot.skipped,
                "records_written": snapshot.written,
                "throttled": m.throttled_count(),
                "average_rate": m.average_rate(),
                "lag": m.lag().iter().map(|(_, _, lag)| lag).sum::<i64>(),
            },
        })
    }
}

/// The version, or the status page for a browser (`Accept: text/html`).
async fn root(headers: HeaderMap) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if html {
        return page().await;
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("SLUICE_COMMIT").unwrap_or("unknown"),
    }))
    .into_response()
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        STATUS_PAGE,
    )
        .into_response()
}

/// 200 once every pipeline is connected with its tasks running and none failed; 503 before
/// and after.
async fn health(State(api): State<Arc<Api>>) -> Response {
    let failed: Vec<String> = api
        .all()
        .filter(|f| f.metrics.failure().is_some())
        .map(|f| Api::name(f.run, f.metrics))
        .collect();
    let starting: Vec<&str> = api
        .runs
        .iter()
        .filter(|r| !r.is_ready())
        .map(|r| r.config.name.as_str())
        .collect();
    if failed.is_empty() && starting.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "healthy" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unhealthy", "failed": failed, "not_running": starting })),
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn connectors(
    State(api): State<Arc<Api>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    if query.get("expand").is_some_and(|e| e == "status") {
        let all: serde_json::Map<String, Value> = api
            .all()
            .map(|f| {
                (
                    Api::name(f.run, f.metrics),
                    json!({ "status": api.status(&f) }),
                )
            })
            .collect();
        return Json(Value::Object(all));
    }
    Json(json!(api
        .all()
        .map(|f| Api::name(f.run, f.metrics))
        .collect::<Vec<_>>()))
}

async fn connector(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = api.authorize(&headers) {
        return e.into_response();
    }
    let found = match api.find(&name) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let id = &found.metrics.id;
    let config = &found.run.config;
    // Secrets serialize as `***`.
    let component = match found.metrics.kind {
        "source" => config.sources.get(id).map(serde_json::to_value),
        "transform" => config.transforms.get(id).map(serde_json::to_value),
        _ => config.sinks.get(id).map(serde_json::to_value),
    };
    let config = match component {
        Some(Ok(config)) => redacted(config),
        Some(Err(e)) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        None => {
            return error(StatusCode::NOT_FOUND, format!("Connector {name} not found"))
                .into_response()
        }
    };
    Json(json!({
        "name": name,
        "type": found.metrics.kind,
        "config": config,
        "tasks": [{ "connector": name, "task": 0 }],
    }))
    .into_response()
}

/// `config` with what may be a secret outside a `Secret` field hidden too: credentials in URLs
/// (`mysql://user:pass@host`), every header and query value but those known to be harmless
/// (`Accept`, `limit`, `symbol`…), in `headers`/`query` maps and in URLs' query strings, and
/// string values under secret-looking names.
fn redacted(config: Value) -> Value {
    match config {
        Value::String(text) => Value::String(redact_url_query(&sluice_core::redact_url(&text))),
        Value::Array(items) => Value::Array(items.into_iter().map(redacted).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let secret = sluice_core::secret::is_secret_setting(&key)
                        || key.eq_ignore_ascii_case("authorization");
                    let value = match value {
                        Value::String(_) if secret => Value::String("***".into()),
                        Value::Object(map) if key == "headers" => hide_values(map, harmless_header),
                        Value::Object(map) if key == "query" => hide_values(map, harmless_query),
                        other => redacted(other),
                    };
                    (key, value)
                })
                .collect(),
        ),
        other => other,
    }
}

/// Each value of `map` as `***` unless its name is `harmless` or it is only a template of the
/// source's cursor (`{offset.NAME}`).
fn hide_values(map: serde_json::Map<String, Value>, harmless: fn(&str) -> bool) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(name, value)| {
                let template = value
                    .as_str()
                    .is_some_and(|v| v.starts_with("{offset.") && v.ends_with('}'));
                let shown = if harmless(&name) || template {
                    value
                } else {
                    Value::String("***".into())
                };
                (name, shown)
            })
            .collect(),
    )
}

/// Headers that carry no credential.
const HARMLESS_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-type",
    "user-agent",
];

/// Query parameters that select or page data, not credentials.
const HARMLESS_QUERY: &[&str] = &[
    "limit",
    "page",
    "per_page",
    "page_size",
    "pagesize",
    "size",
    "offset",
    "sort",
    "order",
    "fields",
    "symbol",
    "symbols",
    "interval",
    "range",
    "start",
    "end",
    "from",
    "to",
    "since",
    "until",
    "period1",
    "period2",
    "format",
    "currency",
    "convert",
    "vs_currency",
    "lang",
    "region",
    "asset",
    "assets",
    "metrics",
    "granularity",
    "max_results",
    "expansions",
    "tweet.fields",
    "user.fields",
    "includeprepost",
    "events",
    "query",
    "q",
];

fn harmless_header(name: &str) -> bool {
    HARMLESS_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

fn harmless_query(name: &str) -> bool {
    HARMLESS_QUERY.iter().any(|q| q.eq_ignore_ascii_case(name))
}

/// `text` with the value of every query parameter of a URL in it hidden unless harmless.
fn redact_url_query(text: &str) -> String {
    let Some((start, query)) = text.split_once('?') else {
        return text.to_string();
    };
    if !start.contains("://") {
        return text.to_string();
    }
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => {
                let template = value.starts_with("%7Boffset.") || value.starts_with("{offset.");
                if harmless_query(name) || template {
                    pair.to_string()
                } else {
                    format!("{name}=***")
                }
            }
            None => pair.to_string(),
        })
        .collect();
    let mut out = format!("{start}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

async fn status(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Response {
    match api.find(&name) {
        Ok(found) => Json(api.status(&found)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// What the connector last stored (a source's offsets) or committed (a sink's consumer
/// offsets) in this process, in Kafka Connect's shape.
async fn offsets(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = api.authorize(&headers) {
        return e.into_response();
    }
    match api.find(&name) {
        Ok(found) => {
            let offsets = serde_json::to_value(found.metrics.offsets()).unwrap_or(Value::Null);
            Json(json!({ "offsets": without_queries(offsets) })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `offsets` with the query string of every URL in it cut off (`?…`): a source's offset may
/// hold the requests it made, keys in their query included.
fn without_queries(offsets: Value) -> Value {
    let cut = |text: String| match text.split_once('?') {
        Some((start, _)) if start.contains("://") => {
            format!("{}?…", sluice_core::redact_url(start))
        }
        _ => text,
    };
    match offsets {
        Value::String(text) => Value::String(cut(text)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_queries).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (cut(k), without_queries(v)))
                .collect(),
        ),
        other => other,
    }
}

async fn pause(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(&api, &name, &headers, true)
}

/// Unpauses a paused connector, and starts a stopped one again.
async fn resume(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    run_command(&api, &name, &headers, Command::Resume, StatusCode::ACCEPTED).await
}

/// Starts a failed or stopped connector again; a running one is stopped, then started.
async fn restart(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    run_command(
        &api,
        &name,
        &headers,
        Command::Restart,
        StatusCode::ACCEPTED,
    )
    .await
}

/// Stops a connector (KIP-875): it stores its offsets and stays stopped until resumed.
async fn stop(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    run_command(&api, &name, &headers, Command::Stop, StatusCode::ACCEPTED).await
}

/// Resets a stopped connector's offsets (KIP-875).
async fn reset_offsets(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    run_command(&api, &name, &headers, Command::ResetOffsets, StatusCode::OK).await
}

async fn run_command(
    api: &Api,
    name: &str,
    headers: &HeaderMap,
    command: Command,
    done: StatusCode,
) -> Response {
    if let Err(e) = api.authorize(headers) {
        return e.into_response();
    }
    let found = match api.find(name) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    match found.run.command(&found.metrics.id, command).await {
        Ok(message) => {
            tracing::info!(connector = %name, ?command, %message, "done through the REST API");
            (done, Json(json!({ "message": message }))).into_response()
        }
        Err(e @ (CommandError::NotRunning(_) | CommandError::Conflict(_))) => {
            error(StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(CommandError::Failed(e)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, e.message).into_response()
        }
    }
}

fn set_paused(api: &Api, name: &str, headers: &HeaderMap, paused: bool) -> Response {
    if let Err(e) = api.authorize(headers) {
        return e.into_response();
    }
    match api.find(name) {
        Ok(found) => {
            found.metrics.set_paused(paused);
            tracing::info!(connector = %name, paused, "set through the REST API");
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn plugins() -> Json<Value> {
    Json(json!(registry::plugins()
        .into_iter()
        .map(|p| json!({ "class": p.name, "type": p.kind.to_string(), "version": env!("CARGO_PKG_VERSION") }))
        .collect::<Vec<_>>()))
}

/// Kafka Connect's validation answer for a config of plugin `plugin`: every field error.
async fn validate(
    State(api): State<Arc<Api>>,
    Path(plugin): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    if let Err(e) = api.authorize(&headers) {
        return e.into_response();
    }
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return error(rejection.status(), rejection.body_text()).into_response();
        }
    };
    let Some(found) = registry::plugins().into_iter().find(|p| p.name == plugin) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no plugin `{plugin}`; GET /connector-plugins lists them"),
        )
        .into_response();
    };
    let Value::Object(mut config) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be the config as a JSON object",
        )
        .into_response();
    };
    config.insert("type".into(), json!(plugin));
    let config = Value::Object(config);
    let errors: Vec<(String, String)> = match found.kind {
        PluginKind::Source => checked::<Box<dyn SourceConfig>>(config, |c| c.validate()),
        PluginKind::Sink => checked::<Box<dyn SinkConfig>>(config, |c| c.validate()),
        PluginKind::Transform => checked::<Box<dyn TransformConfig>>(config, |c| c.validate()),
        PluginKind::StreamTransform => {
            checked::<Box<dyn StreamTransformConfig>>(config, |c| c.validate())
        }
    };
    Json(json!({
        "name": plugin,
        "error_count": errors.len(),
        "groups": [],
        "configs": errors
            .iter()
            .map(|(field, message)| json!({ "value": { "name": field, "errors": [message] } }))
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Field errors of `config` as `T`: where it does not deserialize, or what `check` finds.
fn checked<T: serde::de::DeserializeOwned>(
    config: Value,
    check: impl Fn(&T) -> Result<(), Vec<sluice_core::FieldError>>,
) -> Vec<(String, String)> {
    match serde_path_to_error::deserialize::<_, T>(config) {
        Err(e) => {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            // A field missing or unknown is named in the message, not in the path ("." for
            // the config itself).
            let field = sluice_core::config::field_from(&path, &message).unwrap_or(path);
            vec![(field, message)]
        }
        Ok(config) => match check(&config) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| (e.field, e.message)).collect(),
        },
    }
}

/// Prometheus text: each component's counters, pause and failure gauges and last poll time,
/// then the histograms the runtime records (batch sizes, store latency) and retries.
async fn prometheus(State(api): State<Arc<Api>>) -> Response {
    for found in api.all() {
        let m = found.metrics;
        let labels = [
            ("pipeline", found.run.config.name.clone()),
            ("component", m.id.clone()),
            ("kind", m.kind.to_string()),
        ];
        let s = m.snapshot();
        for (name, value) in [
            ("sluice_records_in_total", s.records_in),
            ("sluice_records_out_total", s.records_out),
            ("sluice_records_dead_lettered_total", s.dead_lettered),
            ("sluice_records_skipped_total", s.skipped),
        ] {
            metrics::counter!(name, &labels).absolute(value);
        }
        metrics::gauge!("sluice_component_paused", &labels).set(f64::from(u8::from(m.is_paused())));
        metrics::gauge!("sluice_component_failed", &labels)
            .set(f64::from(u8::from(m.failure().is_some())));
        let lag = m.lag();
        if m.kind == "sink" {
            metrics::gauge!("sluice_sink_partitions", &labels).set(lag.len() as f64);
        }
        for (topic, partition, lag) in lag {
            let mut labels = labels.to_vec();
            labels.push(("topic", topic));
            labels.push(("partition", partition.to_string()));
            metrics::gauge!("sluice_consumer_lag", &labels).set(lag as f64);
        }
        let last_poll = m.last_poll_ms.load(std::sync::atomic::Ordering::Relaxed);
        if m.kind == "source" && last_poll > 0 {
            metrics::gauge!("sluice_source_last_poll_timestamp_seconds", &labels)
                .set(last_poll as f64 / 1000.0);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.prometheus.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_hide_credentials_in_urls_and_secret_looking_values() {
        let shown = redacted(json!({
            "url": "mysql://sluice:hunter2@db:3306/prices",
            "headers": { "Authorization": "Bearer abc123", "X-Api-Token": "t0k3n", "Accept": "json" },
            "password": "***",
            "batch": { "max_records": 10 },
            "source": {
                "url": "https://api.example/v1?apikey=k3y&symbol=BTC",
                "headers": { "X-Api-Key": "free-form-1", "Accept": "json" },
                "query": { "appid": "free-form-2", "limit": "50", "since": "{offset.since}" },
            },
        }));
        let text = shown.to_string();
        for secret in [
            "hunter2",
            "abc123",
            "t0k3n",
            "k3y",
            "free-form-1",
            "free-form-2",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(shown["headers"]["Accept"], "json");
        assert_eq!(shown["batch"]["max_records"], 10);
        assert_eq!(
            shown["source"]["url"],
            "https://api.example/v1?apikey=***&symbol=BTC"
        );
        assert_eq!(shown["source"]["query"]["limit"], "50");
        assert_eq!(shown["source"]["query"]["since"], "{offset.since}");
    }

    #[test]
    fn only_local_names_and_addresses_are_hosts_of_the_api() {
        let names = vec!["sluice.internal".to_string()];
        for host in [
            "localhost",
            "localhost:8083",
            "127.0.0.1:8083",
            "[::1]:8083",
            "10.0.0.7",
            "SLUICE.internal:80",
        ] {
            assert!(host_allowed(host, &names), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8083",
            "localhost.evil.example",
            "",
            "[x]",
        ] {
            assert!(!host_allowed(host, &names), "{host}");
        }
    }

    #[test]
    fn offsets_shown_lose_their_query_strings() {
        let shown = without_queries(json!({
            "https://api.example/items?apikey=k3y": { "url": "https://api.example/items?apikey=k3y&page=2" },
            "plain": "a?b",
        }));
        let text = shown.to_string();
        assert!(!text.contains("k3y"), "{text}");
        assert_eq!(
            shown["https://api.example/items?…"]["url"],
            "https://api.example/items?…"
        );
        assert_eq!(shown["plain"], "a?b");
    }
}
