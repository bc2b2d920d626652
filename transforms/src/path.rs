//! Field paths in record values: `Close`, or `market_data.price_usd` into nested objects. A
//! field whose own name holds a dot is found too: the whole name is tried first.

use serde_json::{Map, Value};

/// The value at `path` in `value`, if any.
pub fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let map = value.as_object()?;
    if let Some(v) = sluice_api::record::field(map, path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    get(sluice_api::record::field(map, head)?, rest)
}

/// The value at `path`, to change it in place.
pub fn get_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let map = value.as_object_mut()?;
    if map.contains_key(path) {
        return map.get_mut(path);
    }
    let (head, rest) = path.split_once('.')?;
    get_mut(map.get_mut(head)?, rest)
}

/// Removes and returns the value at `path`.
pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
    let map = value.as_object_mut()?;
    if map.contains_key(path) {
        return map.shift_remove(path);
    }
    let (head, rest) = path.split_once('.')?;
    remove(map.get_mut(head)?, rest)
}

/// Sets `path` to `new`, creating the objects on the way; fails when something on the way is
/// not an object.
pub fn set(value: &mut Value, path: &str, new: Value) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "cannot set `{path}` in a value that is not an object"
        ));
    };
    match path.split_once('.') {
        Some((head, rest)) if !map.contains_key(path) => {
            let inner = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            set(inner, rest, new)
                .map_err(|_| format!("cannot set `{path}`: `{head}` is not an object"))
        }
        _ => {
            map.insert(path.to_string(), new);
            Ok(())
        }
    }
}

/// A value as text for keys, topics and headers: strings as they are, the rest as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_reach_into_nested_objects_and_dotted_names() {
        let mut v = json!({"a": {"b": 1}, "c.d": 2});
        assert_eq!(get(&v, "a.b"), Some(&json!(1)));
        assert_eq!(get(&v, "c.d"), Some(&json!(2)));
        assert_eq!(get(&v, "a.x"), None);
        set(&mut v, "e.f", json!(3)).unwrap();
        assert_eq!(v["e"], json!({"f": 3}));
        assert_eq!(remove(&mut v, "a.b"), Some(json!(1)));
        assert!(set(&mut json!({"a": 1}), "a.b", json!(0)).is_err());
    }
}
