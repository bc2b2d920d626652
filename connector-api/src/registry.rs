//! What `sluice plugins` lists: every source, sink and transform type linked into the binary.
//!
//! typetag's own registry is private, so each connector also submits a [`Plugin`] with
//! [`register_plugin!`]; its field docs come from the config struct's `///` comments via schemars.

use std::fmt;

/// Which trait a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PluginKind {
    Source,
    Sink,
    Transform,
    /// A stateful step between topics (top-level `transforms:`).
    StreamTransform,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Source => "source",
            PluginKind::Sink => "sink",
            PluginKind::Transform => "transform",
            PluginKind::StreamTransform => "stream transform",
        })
    }
}

/// One connector or transform type.
pub struct Plugin {
    pub kind: PluginKind,
    /// The `type:` value that selects it.
    pub name: &'static str,
    /// JSON schema of its config (field names, types, docs).
    pub schema: fn() -> schemars::Schema,
    /// The crate (package) it comes from, to say which connector crates a binary has.
    pub krate: &'static str,
}

inventory::collect!(Plugin);

/// Registers a config type for `sluice plugins`:
/// `register_plugin!(Source, "csv", CsvSourceConfig);`
#[macro_export]
macro_rules! register_plugin {
    ($kind:ident, $name:literal, $config:ty) => {
        $crate::inventory::submit! {
            $crate::registry::Plugin {
                kind: $crate::registry::PluginKind::$kind,
                name: $name,
                schema: || $crate::schemars::schema_for!($config),
                krate: env!("CARGO_PKG_NAME"),
            }
        }
    };
}

/// Something a connector needs done once at process start, before any thread runs (setting a
/// client library's environment): `inventory::submit! { ProcessSetup { run: my_fn } }`. The
/// binary runs every one first, so it never names a connector crate for it.
pub struct ProcessSetup {
    pub run: fn(),
}

inventory::collect!(ProcessSetup);

/// Runs every connector's [`ProcessSetup`]; call before any thread is spawned.
pub fn run_process_setups() {
    for setup in inventory::iter::<ProcessSetup> {
        (setup.run)();
    }
}

/// Every registered plugin, sorted by kind then name.
pub fn plugins() -> Vec<&'static Plugin> {
    let mut all: Vec<_> = inventory::iter::<Plugin>.into_iter().collect();
    all.sort_by_key(|p| (p.kind, p.name));
    all
}

/// The crates whose connectors are linked into this binary, sorted.
pub fn crates() -> Vec<&'static str> {
    let mut all: Vec<&str> = inventory::iter::<Plugin>
        .into_iter()
        .map(|p| p.krate)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// One config field of a plugin, for display.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDoc {
    pub name: String,
    pub type_name: String,
    pub required: bool,
    pub doc: String,
}

/// Fields of a plugin's config with their types and docs, read from its schema.
pub fn fields(plugin: &Plugin) -> Vec<FieldDoc> {
    let schema = (plugin.schema)();
    let value = schema.as_value();
    let required: Vec<&str> = value
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let Some(props) = value.get("properties").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    let defs = value.get("$defs");
    props
        .iter()
        .map(|(name, prop)| FieldDoc {
            name: name.clone(),
            type_name: type_name(prop, defs),
            required: required.contains(&name.as_str()),
            doc: prop
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("")
                .replace('\n', " "),
        })
        .collect()
}

fn type_name(prop: &serde_json::Value, defs: Option<&serde_json::Value>) -> String {
    // An enum (directly or behind `$ref`/`anyOf` with null) lists its choices.
    let target = prop
        .get("$ref")
        .or_else(|| {
            prop.get("anyOf")
                .and_then(|a| a.get(0))
                .and_then(|a| a.get("$ref"))
        })
        .and_then(|r| r.as_str())
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| defs?.get(name))
        .unwrap_or(prop);
    let choices: Vec<&str> = target
        .get("enum")
        .and_then(|e| e.as_array())
        .map(|e| e.iter().filter_map(|v| v.as_str()).collect())
        .or_else(|| {
            target.get("oneOf").and_then(|o| o.as_array()).map(|o| {
                o.iter()
                    .filter_map(|v| {
                        v.get("const")
                            .or_else(|| v.get("enum").and_then(|e| e.get(0)))
                    })
                    .filter_map(|v| v.as_str())
                    .collect()
            })
        })
        .unwrap_or_default();
    if !choices.is_empty() {
        return choices.join("|");
    }
    match target.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(serde_json::Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ => "object".into(),
    }
}
