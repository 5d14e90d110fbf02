//! Reading request bodies the way Consul's Go decoder does: field names match without
//! regard to case, and the snake_case spelling Consul also accepts (`tagged_addresses` for
//! `TaggedAddresses`). User data (meta and tagged-address maps) keeps its keys as sent.
//!
//! A field of the wrong type is a 400 `Request decode failed: ...` naming the field, as
//! Consul's is.

use std::collections::BTreeMap;

use serde_json::Map;
use serde_json::Value;

use super::error::ApiError;

/// A JSON object whose fields are looked up loosely.
#[derive(Clone, Copy)]
pub struct Loose<'a> {
    obj: Option<&'a Map<String, Value>>,
    /// The object's path in the request, for errors (`Service`, `Checks[1]`).
    path: &'a str,
}

fn folded(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn decode_error(path: &str, field: &str, want: &str) -> ApiError {
    let at = if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    };
    ApiError::bad_request(format!(
        "Request decode failed: json: cannot unmarshal into field {at} of type {want}"
    ))
}

impl<'a> Loose<'a> {
    /// The request body's top level: it must be an object (or `null`, read as empty).
    pub fn top(v: &'a Value) -> Result<Loose<'a>, ApiError> {
        match v {
            Value::Object(m) => Ok(Loose {
                obj: Some(m),
                path: "",
            }),
            Value::Null => Ok(Loose {
                obj: None,
                path: "",
            }),
            _ => Err(ApiError::bad_request(
                "Request decode failed: json: cannot unmarshal into a request object",
            )),
        }
    }

    /// Field `name`, matched loosely; `null` counts as absent.
    pub fn field(&self, name: &str) -> Option<&'a Value> {
        let obj = self.obj?;
        let v = obj.get(name).or_else(|| {
            let want = folded(name);
            obj.iter().find(|(k, _)| folded(k) == want).map(|(_, v)| v)
        })?;
        (!v.is_null()).then_some(v)
    }

    pub fn string(&self, name: &str) -> Result<String, ApiError> {
        match self.field(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(decode_error(self.path, name, "string")),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.field(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(decode_error(self.path, name, "bool")),
        }
    }

    /// An integer field that fits `T` (a port, a weight).
    pub fn int<T: TryFrom<i64> + Default>(&self, name: &str) -> Result<T, ApiError> {
        match self.field(name) {
            None => Ok(T::default()),
            Some(v) => v
                .as_i64()
                .and_then(|i| T::try_from(i).ok())
                .ok_or_else(|| decode_error(self.path, name, "int")),
        }
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        match self.field(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(decode_error(self.path, name, "[]string")),
                })
                .collect(),
            Some(_) => Err(decode_error(self.path, name, "[]string")),
        }
    }

    /// A map of strings, keys as sent.
    pub fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>, ApiError> {
        match self.field(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(decode_error(self.path, name, "map[string]string")),
                })
                .collect(),
            Some(_) => Err(decode_error(self.path, name, "map[string]string")),
        }
    }

    /// A nested object, if present; `path` names it in errors.
    pub fn object(&self, name: &str, path: &'a str) -> Result<Option<Loose<'a>>, ApiError> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Loose { obj: Some(m), path })),
            Some(_) => Err(decode_error(self.path, name, "object")),
        }
    }

    /// The entries of a nested map of objects (`TaggedAddresses` of a service).
    pub fn object_map(&self, name: &str) -> Result<Vec<(String, Loose<'a>)>, ApiError> {
        match self.field(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Object(o) => Ok((
                        k.clone(),
                        Loose {
                            obj: Some(o),
                            path: self.path,
                        },
                    )),
                    _ => Err(decode_error(self.path, name, "map of objects")),
                })
                .collect(),
            Some(_) => Err(decode_error(self.path, name, "map of objects")),
        }
    }

    /// The objects of an array field.
    pub fn objects(&self, name: &str, path: &'a str) -> Result<Vec<Loose<'a>>, ApiError> {
        match self.field(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::Object(o) => Ok(Loose { obj: Some(o), path }),
                    _ => Err(decode_error(self.path, name, "[]object")),
                })
                .collect(),
            Some(_) => Err(decode_error(self.path, name, "[]object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_match_in_any_case_and_in_snake_case_and_user_keys_are_kept() {
        let v = json!({"node": "n1", "TAGGED_ADDRESSES": {"Lan": "a"}, "Port": 80});
        let l = Loose::top(&v).unwrap();
        assert_eq!(l.string("Node").unwrap(), "n1");
        let tagged = l.string_map("TaggedAddresses").unwrap();
        assert_eq!(tagged.get("Lan").map(String::as_str), Some("a"));
        assert_eq!(l.int::<u16>("port").unwrap(), 80);
        assert_eq!(l.string("Missing").unwrap(), "");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_decode_error_naming_it() {
        let v = json!({"Service": {"Port": "eighty"}});
        let l = Loose::top(&v).unwrap();
        let s = l.object("Service", "Service").unwrap().unwrap();
        let e = s.int::<u16>("Port").unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        assert!(e.to_string().contains("Service.Port"), "{e}");
        let big = json!({"Port": 70000});
        assert!(Loose::top(&big).unwrap().int::<u16>("Port").is_err());
        assert!(Loose::top(&json!([1])).is_err());
    }
}
