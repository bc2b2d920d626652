//! `rename_fields` and `drop_fields`: reshape object values.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_api::{ConnectorError, FieldError, Record, Transform, TransformConfig};

/// Renames top-level fields of object values; other values pass unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameFieldsConfig {
    /// Old name → new name, e.g. `{ "Adj Close": adj_close }`.
    pub fields: IndexMap<String, String>,
}

#[sluice_api::transform("rename_fields")]
impl TransformConfig for RenameFieldsConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if self.fields.is_empty() {
            return Err(vec![FieldError::new(
                "fields",
                "must rename at least one field",
            )]);
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
        Ok(Box::new(self.clone()))
    }
}

impl Transform for RenameFieldsConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        if let Value::Object(map) = &mut record.value {
            if self.fields.keys().any(|old| map.contains_key(old)) {
                // Rebuilt in order, so renamed fields keep their place.
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (self.fields.get(&k).cloned().unwrap_or(k), v))
                    .collect();
            }
        }
        out.push(record);
        Ok(())
    }
}

/// Removes top-level fields of object values.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropFieldsConfig {
    /// Names of the fields to remove.
    pub fields: Vec<String>,
}

#[sluice_api::transform("drop_fields")]
impl TransformConfig for DropFieldsConfig {
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

impl Transform for DropFieldsConfig {
    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        if let Value::Object(map) = &mut record.value {
            for field in &self.fields {
                map.shift_remove(field);
            }
        }
        out.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(t: &dyn Transform, value: Value) -> Vec<Value> {
        let mut out = Vec::new();
        t.apply(Record::new(value), &mut out).unwrap();
        out.into_iter().map(|r| r.value).collect()
    }

    #[test]
    fn renamed_fields_keep_their_place() {
        let t: RenameFieldsConfig =
            serde_yaml::from_str("fields: { \"Adj Close\": adj_close }").unwrap();
        let out = run(&t, json!({"Close": 1, "Adj Close": 2, "Volume": 3}));
        assert_eq!(
            serde_json::to_string(&out[0]).unwrap(),
            r#"{"Close":1,"adj_close":2,"Volume":3}"#
        );
    }

    #[test]
    fn dropped_fields_are_gone_and_others_stay() {
        let t: DropFieldsConfig = serde_yaml::from_str("fields: [b]").unwrap();
        assert_eq!(run(&t, json!({"a": 1, "b": 2})), vec![json!({"a": 1})]);
        assert_eq!(run(&t, json!(5)), vec![json!(5)]);
    }
}
