//! Record transforms (Kafka Connect's single message transforms): record → zero or more
//! records, applied inside a source or sink task.

use crate::{ConnectorError, FieldError, Record};
use std::fmt::Debug;

/// The YAML config of a transform; `type:` picks the implementation.
#[typetag::serde(tag = "type")]
pub trait TransformConfig: Debug + Send + Sync {
    /// Checks the config without any I/O.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Builds the transform.
    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError>;

    /// Whether it may send records to other topics than the one they came with (`route`):
    /// which ones is known only at run time.
    fn changes_topics(&self) -> bool {
        false
    }
}

/// A running transform.
pub trait Transform: Send + Sync {
    /// Appends what `record` becomes to `out` (nothing drops it). An `Err` makes the record a bad
    /// record: dead-lettered or fatal, as `errors.tolerance` says.
    fn apply(&self, record: Record, out: &mut Vec<Record>) -> Result<(), String>;

    /// Like [`Transform::apply`], leaving `record` as it was: the runtime keeps it for the dead
    /// letter. The default applies to a copy; a transform that makes new records from a borrowed
    /// one saves that copy.
    fn apply_borrowed(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), String> {
        self.apply(record.clone(), out)
    }
}
