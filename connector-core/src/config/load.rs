//! Reading a pipeline file: `${VAR}` interpolation, `SLUICE_` environment overrides (figment),
//! per-component deserialization with field paths, then each connector's pure `validate()`.

use super::{
    PipelineConfig, SinkOuter, SourceOuter, Tolerance, SINK_FRAMEWORK_FIELDS,
    SOURCE_FRAMEWORK_FIELDS,
};
use crate::FieldError;
use figment::providers::{Env, Format, Yaml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

type PathError = serde_path_to_error::Error<serde_json::Error>;

/// A pipeline file that can't be used, saying where: file, line, component and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Component id, for errors inside `sources.<id>` or `sinks.<id>`.
    pub component: Option<String>,
    /// Field path, inside the component when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(":")?;
        if let Some(component) = &self.component {
            write!(f, " component `{component}`")?;
        }
        if let Some(field) = &self.field {
            if self.component.is_some() {
                f.write_str(",")?;
            }
            write!(f, " field `{field}`")?;
        }
        if self.component.is_some() || self.field.is_some() {
            f.write_str(":")?;
        }
        write!(f, " {}", self.message)
    }
}

/// Overrides applied on top of the file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--kafka host:port`: use this cluster whatever the file says.
    pub kafka_bootstrap: Option<String>,
}

/// Top-level keys of a pipeline file; environment overrides may only reach these.
const TOP_LEVEL_KEYS: &[&str] = &[
    "name", "kafka", "worker", "embedded", "topics", "sources", "sinks", "errors",
];

/// Reads, interpolates, deserializes and validates one pipeline file.
pub fn load_pipeline(file: &Path, options: &LoadOptions) -> Result<PipelineConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        component: None,
        field: None,
        message: format!("cannot read the pipeline file: {e}"),
    })?;
    let loader = Loader { file, text: &text };
    let interpolated = interpolate(&text)
        .map_err(|(line, message)| loader.error(Some(line), None, None, message))?;
    loader.parse(&interpolated, options)
}

struct Loader<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Loader<'_> {
    fn error(
        &self,
        line: Option<usize>,
        component: Option<&str>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            component: component.map(str::to_string),
            field,
            message: message.into(),
        }
    }

    fn parse(&self, yaml: &str, options: &LoadOptions) -> Result<PipelineConfig, ConfigError> {
        let mut figment = Figment::new().merge(Yaml::string(yaml)).merge(
            // Only keys of the pipeline file; SLUICE_LOG, SLUICE_STATE_DIR… are the CLI's.
            Env::prefixed("SLUICE_").split("__").filter(|key| {
                let top = key.as_str().split('.').next().unwrap_or("");
                TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            }),
        );
        if let Some(bootstrap) = &options.kafka_bootstrap {
            figment = figment.merge(("kafka.bootstrap_servers", bootstrap.as_str()));
        }
        let tree: Value = figment.extract().map_err(|e| {
            let line = yaml_error_line(&e.to_string());
            self.error(
                line,
                None,
                None,
                format!("not a valid pipeline file: {}", e.kind),
            )
        })?;
        // Figment's maps are sorted by key: the file's order (of aggregates, components,
        // columns) is taken back from the file itself.
        let tree = match serde_yaml::from_str::<Value>(yaml) {
            Ok(written) => in_order_of(tree, &written),
            Err(_) => tree,
        };
        let Value::Object(mut top) = tree else {
            return Err(self.error(None, None, None, "the pipeline file must be a mapping"));
        };

        let sources =
            self.components::<SourceOuter>(&mut top, "sources", SOURCE_FRAMEWORK_FIELDS, |v| {
                serde_path_to_error::deserialize::<_, Box<dyn crate::SourceConfig>>(v).map(drop)
            })?;
        let sinks =
            self.components::<SinkOuter>(&mut top, "sinks", SINK_FRAMEWORK_FIELDS, |v| {
                serde_path_to_error::deserialize::<_, Box<dyn crate::SinkConfig>>(v).map(drop)
            })?;
        top.insert("sources".into(), Value::Object(Map::new()));
        top.insert("sinks".into(), Value::Object(Map::new()));
        let mut pipeline: PipelineConfig = serde_path_to_error::deserialize(Value::Object(top))
            .map_err(|e| {
                let field = e.path().to_string();
                let line = find_line(self.text, &field.split('.').collect::<Vec<_>>());
                self.error(line, None, Some(field), e.into_inner().to_string())
            })?;
        pipeline.sources = sources;
        pipeline.sinks = sinks;
        self.validate(&pipeline)?;
        Ok(pipeline)
    }

    /// Deserializes each component of `section` on its own, so errors name it and the field.
    fn components<T: DeserializeOwned>(
        &self,
        top: &mut Map<String, Value>,
        section: &str,
        framework_fields: &[&str],
        inner_check: fn(Value) -> Result<(), PathError>,
    ) -> Result<indexmap::IndexMap<String, T>, ConfigError> {
        let mut out = indexmap::IndexMap::new();
        let Some(value) = top.remove(section) else {
            return Ok(out);
        };
        let Value::Object(components) = value else {
            return Err(self.error(
                find_line(self.text, &[section]),
                None,
                Some(section.into()),
                "must be a mapping from component id to component",
            ));
        };
        for (id, body) in components {
            let line_of = |field: &str| {
                let mut path = vec![section, id.as_str()];
                path.extend(field.split('.').filter(|s| !s.is_empty()));
                find_line(self.text, &path)
            };
            let Value::Object(body) = body else {
                return Err(self.error(line_of(""), Some(&id), None, "must be a mapping"));
            };
            // `type` first, so typetag streams the fields and the error path names the field.
            let mut ordered = Map::new();
            match body.get("type") {
                Some(t) => ordered.insert("type".into(), t.clone()),
                None => {
                    return Err(self.error(
                        line_of(""),
                        Some(&id),
                        Some("type".into()),
                        "missing: every component needs a `type:` (see `sluice plugins`)",
                    ))
                }
            };
            for (k, v) in body {
                if k != "type" {
                    ordered.insert(k, v);
                }
            }
            // The wrapper's `flatten` buffers the connector's fields and loses their path; on
            // failure, the connector part alone (`type` first, so typetag streams it) names it.
            let connector_part: Map<String, Value> = ordered
                .iter()
                .filter(|(k, _)| !framework_fields.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let component: T =
                serde_path_to_error::deserialize(Value::Object(ordered)).map_err(|outer| {
                    let e = match inner_check(Value::Object(connector_part)) {
                        Err(inner) => inner,
                        Ok(()) => outer,
                    };
                    let path = e.path().to_string();
                    let message = in_words(&e.into_inner().to_string());
                    // An unknown `type:` fails at the config itself; an unknown value of
                    // another field (`format: envelop`) fails at that field.
                    let unknown_type = message.starts_with("unknown variant")
                        && matches!(path.as_str(), "" | "." | "type");
                    let field = if unknown_type {
                        Some("type".to_string())
                    } else {
                        field_from(&path, &message)
                    };
                    let line = field.as_deref().and_then(line_of).or_else(|| line_of(""));
                    let hint = if unknown_type {
                        format!(
                            " (run `sluice plugins` to list the types); this binary has the connectors of {}: a type from another crate needs a binary that links it, `sluice::main!(that_crate)`",
                            crate::registry::crates().join(", ")
                        )
                    } else {
                        String::new()
                    };
                    self.error(line, Some(&id), field, format!("{message}{hint}"))
                })?;
            out.insert(id, component);
        }
        Ok(out)
    }

    /// Runs every connector's `validate()` and checks how the components are wired.
    fn validate(&self, pipeline: &PipelineConfig) -> Result<(), ConfigError> {
        let fail = |section: &str, id: &str, errors: Vec<FieldError>| {
            let first = &errors[0];
            let mut path = vec![section, id];
            path.extend(first.field.split('.'));
            let more = if errors.len() > 1 {
                format!(" (and {} more)", errors.len() - 1)
            } else {
                String::new()
            };
            self.error(
                find_line(self.text, &path),
                Some(id),
                Some(first.field.clone()),
                format!("{}{more}", first.message),
            )
        };
        for (id, source) in &pipeline.sources {
            source
                .inner
                .validate()
                .map_err(|e| fail("sources", id, e))?;
            for (field, value) in [
                ("batch_size", source.batch_size),
                (
                    "max_in_flight_batches",
                    source.max_in_flight_batches.unwrap_or(1),
                ),
            ] {
                if value == 0 {
                    return Err(fail(
                        "sources",
                        id,
                        vec![FieldError::new(field, "must be at least 1")],
                    ));
                }
            }
            for (i, t) in source.transforms.iter().enumerate() {
                t.validate()
                    .map_err(|e| fail("sources", id, prefix(e, &format!("transforms.{i}"))))?;
            }
        }
        for (id, sink) in &pipeline.sinks {
            sink.inner.validate().map_err(|e| fail("sinks", id, e))?;
            if sink.topics.is_empty() {
                return Err(fail(
                    "sinks",
                    id,
                    vec![FieldError::new("topics", "must name at least one topic")],
                ));
            }
            if sink.batch.max_records == 0 {
                return Err(fail(
                    "sinks",
                    id,
                    vec![FieldError::new("batch.max_records", "must be at least 1")],
                ));
            }
            for (i, t) in sink.transforms.iter().enumerate() {
                t.validate()
                    .map_err(|e| fail("sinks", id, prefix(e, &format!("transforms.{i}"))))?;
            }
        }
        for (id, stream) in &pipeline.transforms {
            stream
                .inner
                .validate()
                .map_err(|e| fail("transforms", id, e))?;
            if stream.inputs.is_empty() {
                return Err(fail(
                    "transforms",
                    id,
                    vec![FieldError::new("inputs", "must name at least one topic")],
                ));
            }
            if let Some(input) = reads_itself(&pipeline.transforms, id) {
                return Err(fail("transforms", id, vec![FieldError::new("inputs",
                    format!("`{input}` is written by this stream transform or by one that reads its output: stream transforms may read each other's topics, but not in a circle"))]));
            }
            if stream.batch.max_records == 0 {
                return Err(fail(
                    "transforms",
                    id,
                    vec![FieldError::new("batch.max_records", "must be at least 1")],
                ));
            }
        }
        for (name, spec) in &pipeline.topics {
            if spec.partitions < 1 || spec.replication_factor < 1 {
                return Err(self.error(
                    find_line(self.text, &["topics", name]),
                    None,
                    Some(format!("topics.{name}")),
                    "partitions and replication_factor must be at least 1",
                ));
            }
        }
        let errors_line = || find_line(self.text, &["errors"]);
        if pipeline.errors.tolerance == Tolerance::All
            && pipeline.errors.dead_letter_topic.is_none()
        {
            return Err(self.error(
                errors_line(),
                None,
                Some("errors.dead_letter_topic".into()),
                "`tolerance: all` needs a dead-letter topic, or bad records would vanish",
            ));
        }
        if let Some(dlq) = &pipeline.errors.dead_letter_topic {
            // Its bad records would be dead-lettered into the topic they came from, forever.
            if let Some((id, _)) = pipeline.sources.iter().find(|(_, s)| &s.topic == dlq) {
                return Err(fail("sources", id, vec![FieldError::new("topic",
                    format!("`{dlq}` is the dead-letter topic (`errors.dead_letter_topic`); a source cannot write to it: give one of them another name"))]));
            }
        }
        if pipeline.kafka.is_none() && pipeline.worker.is_some() {
            return Err(self.error(
                find_line(self.text, &["worker"]),
                None,
                Some("worker".into()),
                "the embedded transport runs in one process, so it has no worker group: add a `kafka:` section (or `--kafka`) to share the pipeline between workers, or remove `worker`",
            ));
        }
        if let Some(worker) = &pipeline.worker {
            if worker.heartbeat_interval * 3 > worker.session_timeout {
                return Err(self.error(
                    find_line(self.text, &["worker"]),
                    None,
                    Some("worker.heartbeat_interval".into()),
                    "must be at most a third of `worker.session_timeout`, or a live worker may be taken as dead",
                ));
            }
        }
        if let Some(kafka) = &pipeline.kafka {
            let numbered = pipeline
                .sources
                .keys()
                .any(|id| pipeline.source_exactly_once(id));
            // Exactly-once relies on a record sent again landing where it landed before, in
            // order: librdkafka's idempotence and Sluice's partitioner.
            let breaking = kafka.producer.iter().find(|(name, value)| {
                (name.as_str() == "enable.idempotence" && value.trim() != "true")
                    || (name.as_str() == "partitioner" && value.trim() != "murmur2_random")
                    || (name.as_str() == "message.timeout.ms" && value.trim() != "0")
            });
            if let (true, Some((name, _))) = (numbered, breaking) {
                return Err(self.error(
                    find_line(self.text, &["kafka", "producer"]),
                    None,
                    Some(format!("kafka.producer.{name}")),
                    "cannot be changed with `exactly_once`: a record a source sends again after a crash must land in the partition it landed in before, after the records sent before it (Sluice sets the idempotent producer, Kafka's key partitioner and no delivery timeout, which would leave gaps); remove it",
                ));
            }
        }
        if pipeline.kafka.is_none() {
            // In-process topics end with the process: whatever nobody reads is gone.
            let read: Vec<&String> = pipeline
                .sinks
                .values()
                .flat_map(|s| s.topics.iter())
                .chain(pipeline.transforms.values().flat_map(|t| t.inputs.iter()))
                .collect();
            for (id, stream) in &pipeline.transforms {
                if !read.contains(&&stream.topic) {
                    return Err(fail("transforms", id, vec![FieldError::new("topic",
                        format!("no sink reads `{}`; with the embedded transport its records would be lost", stream.topic))]));
                }
            }
            if let Some(dlq) = &pipeline.errors.dead_letter_topic {
                if !read.contains(&dlq) {
                    return Err(self.error(errors_line(), None, Some("errors.dead_letter_topic".into()),
                        format!("with the embedded transport no sink reads `{dlq}`, so its records would be lost at exit; add a sink (e.g. `type: file`) with `topics: [{dlq}]`")));
                }
            }
            for (id, sink) in &pipeline.sinks {
                if let Some(field) = sink.inner.needs_durable_offsets() {
                    return Err(fail("sinks", id, vec![FieldError::new(field,
                        "relies on topic offsets, which the embedded transport restarts at 0 in each run (rows would be overwritten or skipped); add a `kafka:` section or choose another setting")]));
                }
                // In-process topics are gone after a crash: only the sources' numbering tells
                // what an earlier run wrote.
                if let Some(field) = sink.inner.exactly_once() {
                    // Through stream transforms too: their output is numbered from their
                    // inputs' numbers, and on the embedded transport from nothing else.
                    let feeding = upstream_topics(pipeline, &sink.topics);
                    let unnumbered = pipeline.sources.iter().find(|(source_id, s)| {
                        feeding.contains(&s.topic) && !pipeline.source_exactly_once(source_id)
                    });
                    if let Some((source_id, _)) = unnumbered {
                        return Err(fail("sinks", id, vec![FieldError::new(field,
                            format!("on the embedded transport this needs the sources of its topics to number their records: set `exactly_once: true` on the pipeline (or on source `{source_id}`)"))]));
                    }
                }
            }
            // A topic read that nothing here writes stays empty for good: most likely a typo.
            let written = written_topics(pipeline);
            for (id, sink) in &pipeline.sinks {
                for (i, topic) in sink.topics.iter().enumerate() {
                    if !written.contains(&topic) {
                        return Err(fail("sinks", id, vec![FieldError::new(format!("topics.{i}"),
                            format!("nothing in this file writes `{topic}`, and with the embedded transport nothing else can: the sink would read nothing{}", closest(topic, &written)))]));
                    }
                }
            }
            for (id, stream) in &pipeline.transforms {
                for (i, topic) in stream.inputs.iter().enumerate() {
                    if !written.contains(&topic) {
                        return Err(fail("transforms", id, vec![FieldError::new(format!("inputs.{i}"),
                            format!("nothing in this file writes `{topic}`, and with the embedded transport nothing else can{}", closest(topic, &written)))]));
                    }
                }
            }
            for (id, source) in &pipeline.sources {
                if !read.contains(&&source.topic) {
                    return Err(fail("sources", id, vec![FieldError::new("topic",
                        format!("no sink reads `{}`; with the embedded transport its records would be lost", source.topic))]));
                }
            }
        }
        Ok(())
    }
}

/// Every topic something in `pipeline` writes: its sources, stream transforms and dead letters;
/// and when a source routes records (`route`), the topics declared under `topics:`, where the
/// routed-to topics must be declared.
fn written_topics(pipeline: &PipelineConfig) -> Vec<&String> {
    let routes = pipeline
        .sources
        .values()
        .any(|s| s.transforms.iter().any(|t| t.inner.changes_topics()));
    pipeline
        .sources
        .values()
        .map(|s| &s.topic)
        .chain(pipeline.transforms.values().map(|t| &t.topic))
        .chain(pipeline.errors.dead_letter_topic.as_ref())
        .chain(pipeline.topics.keys().filter(|_| routes))
        .collect()
}

/// `; did you mean `x`?` for the name among `names` closest to `name`, if one is close.
fn closest(name: &str, names: &[&String]) -> String {
    names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(name, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| format!("; did you mean `{n}`?"))
        .unwrap_or_default()
}

/// Warnings of a pipeline that runs but may not do what is meant: on Kafka, a topic read that
/// nothing in the file writes and whose name is close to one it does (another pipeline may
/// write it; a typo is likelier).
pub fn warnings(pipeline: &PipelineConfig) -> Vec<String> {
    if pipeline.kafka.is_none() {
        return Vec::new();
    }
    let written = written_topics(pipeline);
    let mut out = Vec::new();
    let reads = pipeline
        .sinks
        .iter()
        .flat_map(|(id, s)| s.topics.iter().map(move |t| (id, t)))
        .chain(
            pipeline
                .transforms
                .iter()
                .flat_map(|(id, t)| t.inputs.iter().map(move |i| (id, i))),
        );
    for (id, topic) in reads {
        let hint = closest(topic, &written);
        if !written.contains(&topic) && !hint.is_empty() {
            out.push(format!(
                "component `{id}` reads `{topic}`, which nothing in this file writes{hint}"
            ));
        }
    }
    out
}

/// `topics` and every topic whose records reach them through stream transforms.
fn upstream_topics(pipeline: &PipelineConfig, topics: &[String]) -> Vec<String> {
    let mut found: Vec<String> = topics.to_vec();
    let mut at = 0;
    while at < found.len() {
        let topic = found[at].clone();
        for stream in pipeline.transforms.values().filter(|s| s.topic == topic) {
            for input in &stream.inputs {
                if !found.contains(input) {
                    found.push(input.clone());
                }
            }
        }
        at += 1;
    }
    found
}

/// An input of stream transform `id` written by `id` itself or by a stream transform that
/// reads, through others or directly, what `id` writes: a circle, which would never drain.
fn reads_itself(
    streams: &indexmap::IndexMap<String, super::StreamTransformOuter>,
    id: &str,
) -> Option<String> {
    let writer_of = |topic: &String| streams.iter().find(|(_, s)| &s.topic == topic);
    let stream = streams.get(id)?;
    stream.inputs.iter().find_map(|input| {
        // Walk upstream from the writer of `input`, each stream once.
        let mut seen = std::collections::BTreeSet::new();
        let mut next: Vec<&str> = writer_of(input)
            .map(|(w, _)| w.as_str())
            .into_iter()
            .collect();
        while let Some(writer) = next.pop() {
            if writer == id {
                return Some(input.clone());
            }
            if !seen.insert(writer) {
                continue;
            }
            if let Some(upstream) = streams.get(writer) {
                next.extend(
                    upstream
                        .inputs
                        .iter()
                        .filter_map(|t| writer_of(t).map(|(w, _)| w.as_str())),
                );
            }
        }
        None
    })
}

fn prefix(errors: Vec<FieldError>, prefix: &str) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| FieldError::new(format!("{prefix}.{}", e.field), e.message))
        .collect()
}

/// A deserializer's message in the user's words: Rust's type names become what they accept,
/// and a duration that is not one shows how one is written.
pub fn in_words(message: &str) -> String {
    let mut text = message.to_string();
    for (rust, words) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected isize", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        (
            "expected a duration",
            "expected a duration: a number and a unit, e.g. `500ms`, `3s`, `1m`, `1h`",
        ),
    ] {
        if let Some(at) = text.find(rust) {
            let end = at + rust.len();
            // Whole words only (`expected u64` but not `expected u640`).
            if !text[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                text.replace_range(at..end, words);
            }
        }
    }
    text
}

/// `tree` with the keys of each of its maps in the order they have in `written` (the same
/// document as written); keys `written` lacks (set from the environment) come last.
fn in_order_of(tree: Value, written: &Value) -> Value {
    match (tree, written) {
        (Value::Object(mut fields), Value::Object(order)) => {
            let mut out = Map::with_capacity(fields.len());
            for (key, inner) in order {
                if let Some(value) = fields.remove(key) {
                    out.insert(key.clone(), in_order_of(value, inner));
                }
            }
            out.extend(fields);
            Value::Object(out)
        }
        (Value::Array(items), Value::Array(order)) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match order.get(i) {
                    Some(inner) => in_order_of(item, inner),
                    None => item,
                })
                .collect(),
        ),
        (tree, _) => tree,
    }
}

/// The field an error is about: its path, or for `missing field `x`` the named field.
pub fn field_from(path: &str, message: &str) -> Option<String> {
    let named = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) | ("", Some(name)) => Some(name.to_string()),
        (".", None) | ("", None) => None,
        (path, Some(name)) if message.starts_with("missing") => Some(format!("{path}.{name}")),
        (path, Some(name)) => Some(match path.rsplit_once('.') {
            Some((parent, _)) => format!("{parent}.{name}"),
            None => name.to_string(),
        }),
        (path, None) => Some(path.to_string()),
    }
}

fn yaml_error_line(message: &str) -> Option<usize> {
    let at = message.find("line ")?;
    message[at + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// 1-based line of the key at `path` (mapping keys, outermost first) in a block-style YAML text,
/// or of the deepest ancestor found.
fn find_line(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let (mut from, mut to, mut parent_indent) = (0, lines.len(), None::<usize>);
    for key in path.iter().filter(|k| !k.is_empty()) {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().take(to).skip(from) {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if parent_indent.is_some_and(|p| indent <= p) {
                break;
            }
            let bare = trimmed.trim_start_matches("- ");
            let k = bare.trim_matches(|c| c == '"' || c == '\'');
            if bare.starts_with(&format!("{key}:"))
                || k.starts_with(&format!("{key}\":"))
                || k.starts_with(&format!("{key}':"))
                || bare.contains(&format!("{{ {key}:"))
                || bare.contains(&format!(", {key}:"))
            {
                hit = Some((i, indent));
                break;
            }
        }
        let Some((i, indent)) = hit else { break };
        found = Some(i + 1);
        from = i + 1;
        parent_indent = Some(indent);
        to = lines.len();
    }
    found
}

/// Replaces `${VAR}` and `${VAR:-default}` with the environment's values; `$${` stays literal.
/// Comment lines are left alone. Errors carry the 1-based line.
fn interpolate(text: &str) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(literal) = after.strip_prefix("${") {
                out.push_str("${");
                rest = literal;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| (n + 1, "unclosed `${` in variable reference".to_string()))?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (expr, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err((
                        n + 1,
                        format!("`${{{expr}}}` is not a valid variable reference"),
                    ));
                }
                // `${VAR:-default}` also applies when VAR is set but empty, as in the shell.
                let value = std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty() || default.is_none());
                match (value, default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => {
                        return Err((n + 1, format!("environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)")))
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_fills_variables_and_defaults() {
        std::env::set_var("SLUICE_TEST_INTERP_X", "hello");
        let out = interpolate(
            "a: ${SLUICE_TEST_INTERP_X}\nb: ${SLUICE_TEST_INTERP_MISSING:-dflt}\nc: $${KEEP}\n",
        )
        .unwrap();
        assert_eq!(out, "a: hello\nb: dflt\nc: ${KEEP}\n");
    }

    #[test]
    fn interpolation_of_a_missing_variable_names_it_and_its_line() {
        let err = interpolate("a: 1\nb: ${SLUICE_TEST_SURELY_UNSET}\n").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("SLUICE_TEST_SURELY_UNSET"), "{}", err.1);
    }

    #[test]
    fn find_line_follows_nesting() {
        let text = "name: x\nsources:\n  a:\n    type: csv\n    path: p\n  b:\n    type: csv\n    path: q\nsinks:\n  a:\n    path: r\n";
        assert_eq!(find_line(text, &["sources", "b", "path"]), Some(8));
        assert_eq!(find_line(text, &["sinks", "a", "path"]), Some(11));
        assert_eq!(find_line(text, &["sources", "a", "nope"]), Some(3));
    }

    /// Figment sorts map keys; the loaded pipeline keeps the file's order (components, and
    /// inside them maps such as a window's aggregates, whose order is the output's).
    #[test]
    fn maps_keep_the_order_they_are_written_in() {
        let yaml = "name: p\nsources:\n  zeta: { type: x, topic: t, columns: { Open: f, Close: f, High: f } }\n  alpha: { type: x, topic: t }\n";
        let written: Value = serde_yaml::from_str(yaml).unwrap();
        let sorted: Value = Figment::new().merge(Yaml::string(yaml)).extract().unwrap();
        assert_eq!(
            sorted["sources"]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap(),
            "alpha"
        );
        let ordered = in_order_of(sorted, &written);
        let sources: Vec<&String> = ordered["sources"].as_object().unwrap().keys().collect();
        assert_eq!(sources, ["zeta", "alpha"]);
        let columns: Vec<&String> = ordered["sources"]["zeta"]["columns"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(columns, ["Open", "Close", "High"]);
    }

    #[test]
    fn field_from_names_the_offending_field() {
        assert_eq!(field_from(".", "missing field `path`"), Some("path".into()));
        assert_eq!(
            field_from("pathh", "unknown field `pathh`, expected one of"),
            Some("pathh".into())
        );
        assert_eq!(
            field_from("rate", "invalid type: string \"x\", expected f64"),
            Some("rate".into())
        );
    }
}
