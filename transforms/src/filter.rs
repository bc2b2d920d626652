//! `require_fields`: drops (or rejects) records whose listed fields are missing or null.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_api::{ConnectorError, FieldError, Record, Transform, TransformConfig};

/// Keeps only records whose value has every listed field set (not null).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequireFieldsConfig {
    /// Fields that must be present and not null.
    pub fields: Vec<String>,
    /// `drop` the record (counted as skipped) or `reject` it as a bad record (dead letter).
    #[serde(default)]
    pub otherwise: Otherwise,
}

/// What happens to a record lacking a required field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Otherwise {
    #[default]
    Drop,
    Reject,
}

#[sluice_api::transform("require_fields")]
impl TransformConfig for RequireFieldsConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if self.fields.is_empty() {
            return Err(vec![FieldError::new(
                "fields",
                "must name at least one field",
            )]);
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
        Ok(Box::new(self.clone()))
    }
}

impl Transform for RequireFieldsConfig {
    fn apply(&self, record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let missing = self
            .fields
            .iter()
            .find(|f| record.value.get(f.as_str()).is_none_or(Value::is_null));
        match (missing, self.otherwise) {
            (None, _) => out.push(record),
            (Some(_), Otherwise::Drop) => {}
            (Some(field), Otherwise::Reject) => {
                return Err(format!("required field `{field}` is missing or null"))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_missing_a_required_field_are_dropped_or_rejected() {
        let mut t: RequireFieldsConfig = serde_yaml::from_str("fields: [Close]").unwrap();
        let mut out = Vec::new();
        t.apply(Record::new(json!({"Close": 1.0})), &mut out)
            .unwrap();
        t.apply(Record::new(json!({"Close": null})), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        t.otherwise = Otherwise::Reject;
        let err = t
            .apply(Record::new(json!({"Open": 1})), &mut out)
            .unwrap_err();
        assert!(err.contains("Close"), "{err}");
    }
}
