//! Sluice's runtime: pipeline configuration, transports (Kafka and embedded), offsets and the
//! tasks that run connectors, built on the connector contract of [`sluice_api`] (re-exported
//! here whole, so the runtime and the binary name one crate).
//!
//! A connector crate depends on `sluice-api` only.

pub mod config;
pub mod metrics;
pub mod runtime;
pub mod transform;
pub mod transport;

// The contract under the paths the runtime has always used (`transform` is this crate's: the
// API's traits plus the framework's `TransformOuter`).
pub use sluice_api::*;
pub use sluice_jq as jq;
pub use transform::TransformOuter;
