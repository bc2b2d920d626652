//! The REST API of `sluice run`, in Kafka Connect's words, and Prometheus `/metrics`.
//!
//! A *connector* is one source or sink of a running pipeline, named `<pipeline>.<component>`,
//! with one task. Reads are open; calls that change something (pause, resume, stop, restart,
//! offset reset) need `Authorization: Bearer <token>` when `--api-token` is set. Configs are
//! shown with every secret as `***`.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
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
}

/// The API's OpenAPI description.
const OPENAPI: &str = include_str!("openapi.json");

/// The status page: one file, compiled in, no CDN; it polls `/connectors?expand=status`.
const STATUS_PAGE: &str = include_str!("ui/index.html");

/// Serves `api` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
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
        .with_state(api);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
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

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
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
                "this call needs `Authorization: Bearer <token>` (the token `sluice run` was given with --api-token)",
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

async fn connector(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Response {
    let found = match api.find(&name) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let id = &found.metrics.id;
    let config = &found.run.config;
    // Secrets serialize as `***`.
    let component = match found.metrics.kind {
        "source" => config.sources.get(id).map(serde_json::to_value),
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
/// (`mysql://user:pass@host`), and string values under secret-looking names (a header named
/// `Authorization` or `X-Api-Token`).
fn redacted(config: Value) -> Value {
    match config {
        Value::String(text) => Value::String(sluice_core::redact_url(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(redacted).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let secret = sluice_core::secret::is_secret_setting(&key)
                        || key.eq_ignore_ascii_case("authorization");
                    let value = match value {
                        Value::String(_) if secret => Value::String("***".into()),
                        other => redacted(other),
                    };
                    (key, value)
                })
                .collect(),
        ),
        other => other,
    }
}

async fn status(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Response {
    match api.find(&name) {
        Ok(found) => Json(api.status(&found)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// What the connector last stored (a source's offsets) or committed (a sink's consumer
/// offsets) in this process, in Kafka Connect's shape.
async fn offsets(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Response {
    match api.find(&name) {
        Ok(found) => Json(json!({ "offsets": found.metrics.offsets() })).into_response(),
        Err(e) => e.into_response(),
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
    Json(body): Json<Value>,
) -> Response {
    if let Err(e) = api.authorize(&headers) {
        return e.into_response();
    }
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
        Err(e) => vec![(e.path().to_string(), e.inner().to_string())],
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
        }));
        let text = shown.to_string();
        for secret in ["hunter2", "abc123", "t0k3n"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(shown["headers"]["Accept"], "json");
        assert_eq!(shown["batch"]["max_records"], 10);
    }
}
