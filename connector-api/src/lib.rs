//! The connector contract of Sluice, as Kafka Connect's `connect-api` is for Kafka Connect: what a
//! connector crate implements and depends on, and nothing of how the runtime runs it (no broker
//! client, no pipeline-file loader, no query language).
//!
//! A connector implements [`SourceConfig`]/[`Source`], [`SinkConfig`]/[`Sink`],
//! [`TransformConfig`]/[`Transform`] or [`stream::StreamTransformConfig`]/[`stream::StreamOperator`]
//! and names itself once, with an attribute on the config trait's impl:
//!
//! ```ignore
//! #[sluice_api::config]
//! #[serde(deny_unknown_fields)]
//! pub struct LinesConfig {
//!     /// The file to read.
//!     pub path: String,
//! }
//!
//! #[sluice_api::source("lines")]
//! impl SourceConfig for LinesConfig {
//!     fn validate(&self) -> Result<(), Vec<FieldError>> { Ok(()) }
//!     async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
//!         todo!()
//!     }
//! }
//! ```
//!
//! The attribute registers the type for `type: lines` in pipeline files and for `sluice
//! plugins` (whose field docs are the struct's `///` comments); `#[sluice_api::config]` adds the
//! derives it needs, so the crate depends on `sluice-api` alone.
//!
//! **Cancel safety.** The runtime drops a pending [`Source::poll`] at shutdown and when a
//! source is paused or its work units move: `poll` must leave the source consistent wherever it
//! is cancelled (no record half taken from its input; anything read and not returned is read
//! again by the next poll or the next run, from the offsets). [`Sink::put`] and
//! [`Sink::flush`] are never dropped midway by the runtime: they are awaited to their end, within
//! the runtime's bounded waits.

pub mod error;
pub mod exactly_once;
pub mod record;
pub mod registry;
pub mod secret;
pub mod sink;
pub mod source;
pub mod stream;
pub mod topic;
pub mod transform;

pub use error::{BadInput, ConnectorError, ErrorKind, FieldError};
pub use record::{Headers, Record};
pub use secret::{redact_url, Secret};
pub use sink::{PrepareBatch, Prepared, PutOutcome, Sink, SinkBuildContext, SinkConfig};
pub use source::{
    Payload, Source, SourceBuildContext, SourceConfig, SourceOffsets, SourceRecord, SourceStatus,
    UnitShare,
};
pub use transform::{Transform, TransformConfig};

// Re-exported so connector crates register themselves without naming these crates.
pub use async_trait::async_trait;
pub use inventory;
pub use schemars;
pub use serde;
pub use serde_json;
pub use sluice_macros::{config, sink, source, stream_transform, transform};
pub use typetag;
