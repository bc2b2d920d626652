//! `sluice`: run, validate and list the connectors of YAML pipelines.
//!
//! The command is a library function ([`run`]) so that a binary with connectors of its own is
//! one line: `sluice::main!(my_connectors);` links `my_connectors` next to the built-ins.

mod api;
mod progress;

use clap::{Parser, Subcommand};
use sluice_core::config::{load_pipeline, LoadOptions, PipelineConfig};
use sluice_core::registry;
use sluice_core::runtime::{PipelineRun, RunError, RunOptions};
use sluice_core::transport::StateLock;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// Link the connector crates so their typetag and plugin registrations are present.
use sluice_sinks as _;
use sluice_sources as _;
use sluice_transforms as _;

/// A `sluice` binary with the connectors of more crates: `sluice::main!(my_connectors);` is the
/// whole `main.rs`. Naming the crates links them, so their registrations are in the binary (a
/// crate that is only a dependency would be left out by the linker, its connectors missing).
#[macro_export]
macro_rules! main {
    ($($connectors:ident),* $(,)?) => {
        $(use $connectors as _;)*
        fn main() -> ::std::process::ExitCode {
            $crate::run()
        }
    };
}

/// Records are built on reader threads and freed on runtime workers; glibc's allocator serialises
/// that on its arena locks (a third of CPU time in profiles), mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an unusable pipeline file.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a run that failed.
const EXIT_RUNTIME: u8 = 1;

/// Where the REST API listens unless told: loopback only, Kafka Connect's port.
const DEFAULT_LISTEN: &str = "127.0.0.1:8083";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Connector framework: YAML pipelines from sources through Kafka topics into sinks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines until their sources finish (and sinks catch up) or until SIGINT/SIGTERM.
    Run {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Use this Kafka cluster (`host:port,…`) instead of the file's `kafka` section or the embedded log.
        #[arg(long)]
        kafka: Option<String>,
        /// Where the embedded transport keeps source offsets between runs.
        #[arg(long, env = "SLUICE_STATE_DIR", default_value = ".sluice-state")]
        state_dir: PathBuf,
        /// After SIGINT/SIGTERM, how long sinks may drain before they flush what they have and stop.
        #[arg(long, default_value = "7s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Stop once the sinks have caught up with their topics, also in pipelines without
        /// sources (backfills); without it such pipelines run until stopped.
        #[arg(long)]
        once: bool,
        /// Address of the REST API and `/metrics` (`none`: no API). When the default's port is
        /// taken the run goes on without the API, saying so; an address given here must bind.
        #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Bearer token that the REST API's calls changing something (pause, resume, stop,
        /// restart, offset reset, validate) and its reads of configs and offsets must carry.
        /// Prefer `SLUICE_API_TOKEN` or `--api-token-file`: a command line is readable by every
        /// local user (`ps`).
        #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// A file holding the REST API's bearer token (its first line).
        #[arg(long, env = "SLUICE_API_TOKEN_FILE", conflicts_with = "api_token")]
        api_token_file: Option<PathBuf>,
        /// Host names the REST API answers to besides `localhost` and IP addresses (the name
        /// a proxy or a container network reaches it by); any other `Host` is refused, so that
        /// a web page cannot reach the API through a name it controls (DNS rebinding).
        #[arg(long = "api-host", env = "SLUICE_API_HOSTS", value_delimiter = ',')]
        api_hosts: Vec<String>,
        /// Serve the REST API on a non-loopback address without a token (refused otherwise):
        /// anyone who can reach the address can then stop connectors and reset offsets.
        #[arg(long)]
        insecure_api_without_token: bool,
    },
    /// Print the connectors of a running worker with their state, from its REST API.
    Status {
        /// The worker's REST API.
        #[arg(long, default_value = "http://127.0.0.1:8083")]
        url: String,
    },
    /// Check pipeline files and every connector's config, without touching the network.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// As for `run`: check the files as they would run against this cluster.
        #[arg(long)]
        kafka: Option<String>,
    },
    /// List every source, sink and transform type with its fields and docs.
    Plugins {
        /// `text` for the terminal, `markdown` for a page (`docs/connectors.md` is this).
        #[arg(long, value_enum, default_value = "text")]
        format: PluginsFormat,
    },
    /// Print the JSON Schema of a pipeline file (every connector's fields by `type:`), for
    /// editors: `# yaml-language-server: $schema=…` at the top of a pipeline file.
    Schema,
}

/// How `sluice plugins` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PluginsFormat {
    Text,
    Markdown,
}

/// mimalloc's `arena_eager_commit` option (mimalloc.h's `mi_option_e`: it has no constant in
/// `libmimalloc-sys`).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// On Linux mimalloc commits each arena (1 GiB) when it reserves it, by default: the Kafka →
/// MySQL benchmark peaked 25-30 MiB higher that way (159-162 MiB against 131-134 MiB, the same
/// rate). The first arena is reserved at the first allocation, before `main`: the option is set
/// from the binary's initialisers, which run before Rust's runtime allocates.
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_ARENAS_ON_DEMAND: extern "C" fn() = {
    extern "C" fn commit_arenas_on_demand() {
        // SAFETY: sets a process-wide option; no other thread exists yet.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
    commit_arenas_on_demand
};

/// The `sluice` command: parses the command line and runs it, with every connector linked
/// into the binary (the built-ins, and those of crates named in [`main!`]).
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // Still single-threaded: the one moment the process environment may be set.
    registry::run_process_setups();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Plugins { format } => {
            let mut out = std::io::stdout().lock();
            let _ = match format {
                PluginsFormat::Text => write_plugins(&mut out),
                PluginsFormat::Markdown => write_plugins_markdown(&mut out),
            };
            ExitCode::SUCCESS
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&pipeline_schema()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Status { url } => print_status(&url),
        Command::Validate { files, kafka } => match load_all(&files, kafka) {
            Ok(pipelines) => {
                for (file, p) in files.iter().zip(&pipelines) {
                    println!(
                        "{}: ok — pipeline `{}`, {} source(s), {} sink(s), {} topic(s), {} transport",
                        file.display(),
                        p.name,
                        p.sources.len(),
                        p.sinks.len(),
                        p.all_topics().len(),
                        if p.kafka.is_some() { "Kafka" } else { "embedded" }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run {
            files,
            kafka,
            state_dir,
            drain_timeout,
            once,
            listen,
            api_token,
            api_token_file,
            api_hosts,
            insecure_api_without_token,
        } => {
            if std::env::args().any(|a| a == "--api-token" || a.starts_with("--api-token=")) {
                eprintln!("warning: a token given with --api-token is readable by every local user (ps); use SLUICE_API_TOKEN or --api-token-file");
            }
            let api_token = match (api_token, api_token_file) {
                (_, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(text) => text.lines().next().map(|line| line.trim().to_string()),
                    Err(e) => {
                        eprintln!(
                            "error: cannot read the API token file {}: {e}",
                            path.display()
                        );
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                (token, None) => token,
            }
            .filter(|t| !t.is_empty());
            let pipelines = match load_all(&files, kafka) {
                Ok(p) => p,
                Err(code) => return code,
            };
            // Held until the process ends: one process per embedded pipeline and state dir.
            let mut locks = Vec::new();
            for (file, pipeline) in files.iter().zip(&pipelines) {
                if pipeline.kafka.is_some() {
                    continue;
                }
                match StateLock::take(&state_dir, &pipeline.name) {
                    Ok(lock) => locks.push(lock),
                    Err(message) => {
                        eprintln!("error: {}: {message}", file.display());
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            let code = runtime.block_on(run_pipelines(
                pipelines,
                files,
                RunSettings {
                    state_dir,
                    drain_timeout,
                    once,
                    listen,
                    api_token,
                    api_hosts,
                    insecure_api_without_token,
                },
            ));
            // Blocking client calls still running (a synchronous commit to a broker that is
            // gone) do not hold the exit beyond this.
            runtime.shutdown_timeout(Duration::from_secs(2));
            drop(locks);
            code
        }
    }
}

/// Loads every file, printing each error; exit code 2 if any is unusable.
fn load_all(files: &[PathBuf], kafka: Option<String>) -> Result<Vec<PipelineConfig>, ExitCode> {
    let options = LoadOptions {
        kafka_bootstrap: kafka,
    };
    let mut pipelines = Vec::new();
    let mut failed = false;
    for file in files {
        match load_pipeline(file, &options) {
            Ok(p) => {
                for warning in sluice_core::config::warnings(&p) {
                    eprintln!("warning: {}: {warning}", file.display());
                }
                pipelines.push(p)
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        Err(ExitCode::from(EXIT_CONFIG))
    } else {
        Ok(pipelines)
    }
}

/// How `run` was asked to run.
struct RunSettings {
    state_dir: PathBuf,
    drain_timeout: Duration,
    once: bool,
    listen: String,
    api_token: Option<String>,
    /// Host names the API answers to besides `localhost` and IP addresses.
    api_hosts: Vec<String>,
    /// A non-loopback address without a token was asked for.
    insecure_api_without_token: bool,
}

async fn run_pipelines(
    pipelines: Vec<PipelineConfig>,
    files: Vec<PathBuf>,
    settings: RunSettings,
) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let runs: Vec<Arc<PipelineRun>> = pipelines
        .into_iter()
        .map(|p| Arc::new(PipelineRun::new(p)))
        .collect();
    let display = progress::Progress::start(runs.clone());
    let api_stop = CancellationToken::new();
    if let Err(code) = start_api(&settings, &runs, api_stop.clone()).await {
        return code;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (pipeline, file) in runs.iter().zip(files) {
        let pipeline = pipeline.clone();
        let options = RunOptions {
            state_dir: settings.state_dir.clone(),
            shutdown: shutdown.clone(),
            drain_timeout: settings.drain_timeout,
            once: settings.once,
        };
        tasks.spawn(async move { (file, pipeline.run(options).await) });
    }
    let mut exit = ExitCode::SUCCESS;
    let mut errors = Vec::new();
    let mut setup_failures = 0;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => continue,
            Ok((file, Err(failure))) => (file, failure),
            Err(e) => {
                errors.push(format!("a pipeline task failed: {e}"));
                exit = ExitCode::from(EXIT_RUNTIME);
                shutdown.cancel();
                continue;
            }
        };
        shutdown.cancel();
        let (file, failure) = failure;
        if matches!(failure, RunError::Setup(_)) {
            setup_failures += 1;
        }
        let e = failure.error();
        if failure.is_config() {
            exit = ExitCode::from(EXIT_CONFIG);
            let field = e
                .field
                .as_ref()
                .map(|f| format!(", field `{f}`"))
                .unwrap_or_default();
            errors.push(format!(
                "{}: component `{}`{field}: {}",
                file.display(),
                e.component,
                e.message
            ));
        } else {
            if exit == ExitCode::SUCCESS {
                exit = ExitCode::from(EXIT_RUNTIME);
            }
            let retry = if e.retryable {
                " (retrying later may help)"
            } else {
                ""
            };
            errors.push(format!(
                "{}: component `{}`: {}{retry}",
                file.display(),
                e.component,
                e.message
            ));
        }
    }
    api_stop.cancel();
    display.finish(setup_failures < runs.len(), &settings.state_dir);
    for e in errors {
        eprintln!("error: {e}");
    }
    exit
}

/// Starts the REST API on `settings.listen` unless it is `none`.
async fn start_api(
    settings: &RunSettings,
    runs: &[Arc<PipelineRun>],
    stop: CancellationToken,
) -> Result<(), ExitCode> {
    if settings.listen == "none" {
        return Ok(());
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed; /metrics shows only counters");
    }
    let listener = match tokio::net::TcpListener::bind(&settings.listen).await {
        Ok(listener) => listener,
        Err(e) if settings.listen == DEFAULT_LISTEN => {
            tracing::warn!(listen = %settings.listen, error = %e, "the REST API's default address is taken; running without it (set --listen)");
            return Ok(());
        }
        Err(e) => {
            eprintln!(
                "error: cannot listen on {} for the REST API: {e}",
                settings.listen
            );
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let local = listener.local_addr().ok();
    let address = local.map_or_else(|| settings.listen.clone(), |a| a.to_string());
    let token = settings.api_token.clone().filter(|t| !t.is_empty());
    let loopback = local.is_some_and(|a| a.ip().is_loopback());
    if !loopback && token.is_none() {
        if !settings.insecure_api_without_token {
            eprintln!(
                "error: the REST API would listen on {address}, beyond this machine, without a token: anyone reaching it could stop connectors and reset offsets. Set SLUICE_API_TOKEN (or --api-token-file), listen on 127.0.0.1, or pass --insecure-api-without-token"
            );
            return Err(ExitCode::from(EXIT_CONFIG));
        }
        tracing::warn!(%address, "the REST API listens beyond this machine without a token (--insecure-api-without-token): anyone reaching it can stop connectors and reset offsets");
    }
    tracing::info!(%address, "REST API and /metrics listening");
    let api = Arc::new(api::Api {
        runs: runs.to_vec(),
        token,
        prometheus,
        worker_id: address,
        hosts: settings.api_hosts.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = api::serve(listener, api, stop).await {
            tracing::warn!(error = %e, "the REST API stopped");
        }
    });
    Ok(())
}

/// `sluice status`: the connectors of the worker at `url`, one line each.
fn print_status(url: &str) -> ExitCode {
    let answer = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .and_then(|c| {
            c.get(format!(
                "{}/connectors?expand=status",
                url.trim_end_matches('/')
            ))
            .send()
        })
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json::<serde_json::Value>());
    let connectors = match answer {
        Ok(serde_json::Value::Object(connectors)) => connectors,
        Ok(other) => {
            eprintln!("error: {url} answered something other than connector statuses: {other}");
            return ExitCode::from(EXIT_RUNTIME);
        }
        Err(e) => {
            eprintln!("error: cannot read the status from {url}: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // Values as text first: JSON values ignore widths.
    let width = connectors.keys().map(String::len).max().unwrap_or(0).max(9);
    println!(
        "{:<width$} {:<9} {:<8} {:>12} {:>12}  WORKER / ERROR",
        "CONNECTOR", "TYPE", "STATE", "IN", "OUT"
    );
    let number = |v: &serde_json::Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
    for (name, entry) in &connectors {
        let status = &entry["status"];
        let task = &status["tasks"][0];
        let detail = task["trace"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| task["worker_id"].as_str().unwrap_or("").to_string());
        println!(
            "{:<width$} {:<9} {:<8} {:>12} {:>12}  {}",
            name,
            status["type"].as_str().unwrap_or(""),
            status["connector"]["state"].as_str().unwrap_or(""),
            number(&status["metrics"]["records_in"]),
            number(&status["metrics"]["records_out"]),
            detail
        );
    }
    ExitCode::SUCCESS
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: sources stop, sinks flush and commit");
    shutdown.cancel();
    // A second signal means: stop now.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("second signal: exiting without waiting");
    std::process::exit(130);
}

/// Writes the plugin list; a closed pipe (`sluice plugins | head`) just ends it.
/// The plugins as a Markdown page: a section per kind, a table of fields per type.
fn write_plugins_markdown(out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(out, "# Connectors and transforms\n")?;
    writeln!(
        out,
        "Every `type:` of the `sluice` binary and its fields, as `sluice plugins --format markdown` prints them (a test checks that this page is current). What each connector does: [sources-and-sinks.md](sources-and-sinks.md).\n"
    )?;
    writeln!(out, "Framework fields: sources take `topic`, `transforms`, `batch_size`; sinks take `topics`, `transforms`, `batch {{ max_records, linger }}`; every transform takes `id` (its name in dead letters) and `when` (a jq condition: it applies only to matching records).")?;
    let mut kind = None;
    for plugin in registry::plugins() {
        if kind != Some(plugin.kind) {
            kind = Some(plugin.kind);
            writeln!(out, "\n## {}s", capitalized(&plugin.kind.to_string()))?;
        }
        writeln!(out, "\n### `{}`\n", plugin.name)?;
        let schema = (plugin.schema)();
        if let Some(doc) = schema
            .as_value()
            .get("description")
            .and_then(|d| d.as_str())
        {
            writeln!(out, "{}\n", doc.replace('\n', " "))?;
        }
        let fields = registry::fields(plugin);
        if fields.is_empty() {
            continue;
        }
        writeln!(out, "| field | type | required | what it is |")?;
        writeln!(out, "|---|---|---|---|")?;
        for field in fields {
            writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                field.name,
                field.type_name.replace('|', "\\|"),
                if field.required { "yes" } else { "" },
                field.doc.replace('\n', " ").replace('|', "\\|")
            )?;
        }
    }
    Ok(())
}

/// Points every `#/$defs/X` reference inside `schema` at `#/$defs/{prefix}X`.
fn rename_refs(schema: &mut serde_json::Value, prefix: &str) {
    match schema {
        serde_json::Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    serde_json::Value::String(target) if key == "$ref" => {
                        if let Some(name) = target.strip_prefix("#/$defs/") {
                            *target = format!("#/$defs/{prefix}{name}");
                        }
                    }
                    other => rename_refs(other, prefix),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, prefix)),
        _ => {}
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

/// The JSON Schema of a pipeline file: the framework's sections, and for each component the
/// schema of the connector its `type:` names (JSON Schema `if`/`then` on `type`).
fn pipeline_schema() -> serde_json::Value {
    use serde_json::json;
    // Each connector's definitions, renamed `{kind}.{type}.{name}` so that two connectors'
    // `Format`s do not meet, hoisted to the root where their `$ref`s point.
    let definitions = std::cell::RefCell::new(serde_json::Map::new());
    let by_kind = |kind: registry::PluginKind, framework: serde_json::Value| {
        let variants: Vec<serde_json::Value> = registry::plugins()
            .into_iter()
            .filter(|p| p.kind == kind)
            .map(|plugin| {
                let prefix = format!("{kind}.{}.", plugin.name).replace(' ', "_");
                let mut schema = (plugin.schema)().to_value();
                rename_refs(&mut schema, &prefix);
                if let Some(object) = schema.as_object_mut() {
                    object.remove("$schema");
                    object.remove("title");
                    // The framework's fields are allowed beside the connector's own.
                    object.remove("additionalProperties");
                    if let Some(serde_json::Value::Object(defs)) = object.remove("$defs") {
                        let mut all = definitions.borrow_mut();
                        for (name, def) in defs {
                            all.insert(format!("{prefix}{name}"), def);
                        }
                    }
                }
                json!({
                    "if": {"properties": {"type": {"const": plugin.name}}, "required": ["type"]},
                    "then": schema,
                })
            })
            .collect();
        let names: Vec<&str> = registry::plugins()
            .into_iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.name)
            .collect();
        json!({
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": names, "description": format!("The {kind} type (`sluice plugins`).")},
            },
            "allOf": [framework, {"allOf": variants}],
            // A field neither the framework nor the connector has is a typo (`pth`).
            "unevaluatedProperties": false,
        })
    };
    let transform_list = json!({"type": "array", "items": by_kind(registry::PluginKind::Transform, json!({
        "properties": {"id": {"type": "string"}, "when": {"type": "string", "description": "jq condition"}}
    }))});
    let sources = by_kind(
        registry::PluginKind::Source,
        json!({"properties": {"topic": {"type": "string"}, "transforms": transform_list.clone(), "batch_size": {"type": "integer"}}}),
    );
    let sinks = by_kind(
        registry::PluginKind::Sink,
        json!({"properties": {"topics": {"type": "array", "items": {"type": "string"}}, "transforms": transform_list.clone(), "batch": {"type": "object"}}}),
    );
    let stream_transforms = by_kind(
        registry::PluginKind::StreamTransform,
        json!({"properties": {"inputs": {"type": "array", "items": {"type": "string"}}, "topic": {"type": "string"}}}),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Sluice pipeline",
        "$defs": definitions.into_inner(),
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "description": "The pipeline's name: topic, group and offset names derive from it."},
            "kafka": {"type": "object", "description": "The Kafka cluster; without it topics are embedded (see docs/workers.md)."},
            "worker": {"type": "object"},
            "topics": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "partitions": {"type": "integer"}, "replication_factor": {"type": "integer"}, "config": {"type": "object"}
            }}},
            "errors": {"type": "object"},
            "exactly_once": {"type": "boolean"},
            "sources": {"type": "object", "additionalProperties": sources},
            "sinks": {"type": "object", "additionalProperties": sinks},
            "transforms": {"type": "object", "additionalProperties": stream_transforms},
        },
    })
}

fn write_plugins(out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut kind = None;
    for plugin in registry::plugins() {
        if kind != Some(plugin.kind) {
            kind = Some(plugin.kind);
            writeln!(out, "\n{}S", plugin.kind.to_string().to_uppercase())?;
        }
        writeln!(out, "\n  type: {}", plugin.name)?;
        let schema = (plugin.schema)();
        if let Some(doc) = schema
            .as_value()
            .get("description")
            .and_then(|d| d.as_str())
        {
            writeln!(out, "  {}", doc.replace('\n', " "))?;
        }
        for field in registry::fields(plugin) {
            let required = if field.required { " (required)" } else { "" };
            writeln!(
                out,
                "    {:<18} {:<16}{} {}",
                field.name, field.type_name, required, field.doc
            )?;
        }
    }
    writeln!(out, "\nFramework fields: sources take `topic`, `transforms`, `batch_size`; sinks take `topics`, `transforms`, `batch {{ max_records, linger }}`; every transform takes `id` (its name in dead letters) and `when` (a jq condition: it applies only to matching records).")
}
