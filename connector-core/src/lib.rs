//! Sluice's core: records, connector traits, pipeline configuration, transports and the runtime.
//!
//! A connector crate depends on this one only: it implements [`SourceConfig`]/[`Source`],
//! [`SinkConfig`]/[`Sink`] or [`TransformConfig`]/[`Transform`], registers the config with
//! `#[typetag::serde(name = "...")]` and describes itself to `sluice plugins` with [`register_plugin!`].

pub mod config;
pub mod error;
pub mod exactly_once;
pub mod jq;
pub mod metrics;
pub mod record;
pub mod registry;
pub mod runtime;
pub mod secret;
pub mod sink;
pub mod source;
pub mod stream;
pub mod transform;
pub mod transport;

pub use error::{BadInput, ConnectorError, ErrorKind, FieldError};
pub use record::{Headers, Record};
pub use secret::{redact_url, Secret};
pub use sink::{PrepareBatch, Prepared, PutOutcome, Sink, SinkBuildContext, SinkConfig};
pub use source::{
    Payload, Source, SourceBuildContext, SourceConfig, SourceOffsets, SourceRecord, UnitShare,
};
pub use transform::{Transform, TransformConfig, TransformOuter};

// Re-exported so connector crates register themselves without naming these crates.
pub use async_trait::async_trait;
pub use inventory;
pub use schemars;
pub use typetag;
