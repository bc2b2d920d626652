//! Sluice's runtime: pipeline configuration, transports (Kafka and embedded), offsets and the
//! tasks that run connectors, built on the connector contract of [`sluice_api`] (re-exported
//! here, so the runtime and the binary name one crate).
//!
//! A connector crate depends on `sluice-api` only.

pub mod config;
pub mod metrics;
pub mod runtime;
pub mod transform;
pub mod transport;

// The contract, under the paths the runtime has always used.
pub use sluice_api::{error, exactly_once, record, registry, secret, sink, source, stream, topic};
pub use sluice_jq as jq;

pub use error::{BadInput, ConnectorError, ErrorKind, FieldError};
pub use record::{Headers, Record};
pub use secret::{redact_url, Secret};
pub use sink::{PrepareBatch, Prepared, PutOutcome, Sink, SinkBuildContext, SinkConfig};
pub use source::{
    Payload, Source, SourceBuildContext, SourceConfig, SourceOffsets, SourceRecord, SourceStatus,
    UnitShare,
};
pub use transform::{Transform, TransformConfig, TransformOuter};

pub use sluice_api::{async_trait, inventory, register_plugin, schemars, typetag};
