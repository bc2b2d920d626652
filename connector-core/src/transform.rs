//! Transforms: record → zero or more records, applied inside a source or sink task.

use crate::jq::JqProgram;
use crate::{ConnectorError, FieldError, Record};
use serde::{Deserialize, Serialize};
pub use sluice_api::transform::{Transform, TransformConfig};
use std::fmt::Debug;

/// One entry of a `transforms:` list: the framework's fields around the transform's own.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransformOuter {
    /// Names the transform in dead letters and logs; default `<type>#<position>` (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A jq condition (see the `jq` transform for what it sees): the transform applies only to
    /// records for which it is true; the others pass unchanged. E.g. `.Volume > 0`,
    /// `$topic == "bitcoin"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The transform's own config.
    #[serde(flatten)]
    pub inner: Box<dyn TransformConfig>,
}

/// Fields every transform takes next to its own.
pub const TRANSFORM_FRAMEWORK_FIELDS: &[&str] = &["id", "when"];

impl TransformOuter {
    /// The transform's name: its `id`, or `<type>#<position>` (`position` counted from 0).
    pub fn name(&self, position: usize) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("{}#{}", self.inner.typetag_name(), position + 1))
    }

    /// Checks the transform's config and its condition.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = self.inner.validate().err().unwrap_or_default();
        if let Some(when) = &self.when {
            if let Err(e) = JqProgram::compile(when) {
                errors.push(FieldError::new("when", e));
            }
        }
        FieldError::all(errors)
    }

    /// Builds the transform at `position` of its list, with its condition; its errors name it.
    pub fn build(&self, position: usize) -> Result<Box<dyn Transform>, ConnectorError> {
        let when = match &self.when {
            Some(code) => Some(JqProgram::compile(code).map_err(|e| {
                ConnectorError::user(e).with_field(&format!("transforms.{position}.when"))
            })?),
            None => None,
        };
        Ok(Box::new(Named {
            name: self.name(position),
            when,
            inner: self.inner.build()?,
        }))
    }
}

/// A transform as it runs in a list: skipped where its condition is false, its errors prefixed
/// with its name.
struct Named {
    name: String,
    when: Option<JqProgram>,
    inner: Box<dyn Transform>,
}

impl Transform for Named {
    fn apply(&self, record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let applies = match &self.when {
            None => true,
            Some(when) => when
                .matches(&record)
                .map_err(|e| format!("transform `{}`: condition `when`: {e}", self.name))?,
        };
        if !applies {
            out.push(record);
            return Ok(());
        }
        self.inner
            .apply(record, out)
            .map_err(|e| format!("transform `{}`: {e}", self.name))
    }

    fn apply_borrowed(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), String> {
        if let Some(when) = &self.when {
            let applies = when
                .matches(record)
                .map_err(|e| format!("transform `{}`: condition `when`: {e}", self.name))?;
            if !applies {
                out.push(record.clone());
                return Ok(());
            }
        }
        self.inner
            .apply_borrowed(record, out)
            .map_err(|e| format!("transform `{}`: {e}", self.name))
    }
}
