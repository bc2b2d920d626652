//! Transforms: record → zero or more records, applied inside a source or sink task.

use crate::{ConnectorError, FieldError, Record};
use std::fmt::Debug;

/// The YAML config of a transform; `type:` picks the implementation.
#[typetag::serde(tag = "type")]
pub trait TransformConfig: Debug + Send + Sync {
    /// Checks the config without any I/O.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Builds the transform.
    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError>;
}

/// A running transform.
pub trait Transform: Send + Sync {
    /// Appends what `record` becomes to `out` (nothing drops it). An `Err` makes the record a bad
    /// record: dead-lettered or fatal, as `errors.tolerance` says.
    fn apply(&self, record: Record, out: &mut Vec<Record>) -> Result<(), String>;
}
