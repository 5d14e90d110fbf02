//! What a watch is (`key`, `keyprefix`), as the agent config's `watches` and `tribune watch`
//! define one, and how a `watches` entry is parsed ([`parse_watch`]). Running watches is
//! `watch`'s business; this module sits beneath the config so that a bad definition is a
//! config error.

use std::time::Duration;

use serde_json::Value;

use crate::flags::parse_duration;

/// Consul's text when an HTTP handler names no URL.
const NO_PATH: &str = "http_handler_config.path is required";

/// Why a watch definition is refused: fix that part of the definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("a watch must be an object")]
    NotAnObject,
    #[error("Watch type must be specified")]
    NoType,
    /// A Consul watch type this agent does not run yet.
    #[error("watch type {0:?} is not supported yet")]
    NotYetSupported(String),
    #[error("Unsupported watch type: {0}")]
    UnknownType(String),
    #[error("Invalid parameters: {0:?}")]
    UnknownParameters(Vec<String>),
    #[error("Only one watch handler allowed")]
    TwoHandlers,
    #[error("Must define a watch handler")]
    NoHandler,
    /// The type's own parameter (`key`, `prefix`) is missing.
    #[error("Must specify a single {0} to watch")]
    MissingParameter(&'static str),
    #[error("{0} must be a string")]
    NotAString(&'static str),
    /// The handler's settings are incomplete or of the wrong kind.
    #[error("{0}")]
    BadHandler(&'static str),
    #[error("http_handler_config.timeout: invalid duration {0:?}")]
    BadTimeout(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchKind {
    Key(String),
    KeyPrefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Run `args` (through `$SHELL -c` when `shell`), JSON on stdin, CONSUL_INDEX in env.
    Script {
        args: Vec<String>,
        shell: bool,
        inherit_output: bool,
    },
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        timeout: Duration,
    },
    /// Print the JSON to stdout (`tribune watch` without a handler).
    Stdout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub kind: WatchKind,
    pub handler: Handler,
    pub stale: bool,
}

/// Parse one entry of the agent config's `watches`.
pub fn parse_watch(v: &Value) -> Result<WatchSpec, WatchError> {
    let obj = v.as_object().ok_or(WatchError::NotAnObject)?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or(WatchError::NoType)?;
    let common = [
        "type",
        "datacenter",
        "token",
        "args",
        "handler",
        "handler_type",
        "http_handler_config",
        "stale",
    ];
    let (kind, own): (WatchKind, &[&str]) = match ty {
        "key" => (WatchKind::Key(str_param(obj, "key")?), &["key"]),
        "keyprefix" => (WatchKind::KeyPrefix(str_param(obj, "prefix")?), &["prefix"]),
        "services" | "nodes" | "service" | "checks" | "event" => {
            return Err(WatchError::NotYetSupported(ty.to_string()))
        }
        other => return Err(WatchError::UnknownType(other.to_string())),
    };
    let unknown: Vec<String> = obj
        .keys()
        .filter(|k| !common.contains(&k.as_str()) && !own.contains(&k.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(WatchError::UnknownParameters(unknown));
    }
    let stale = obj.get("stale").and_then(Value::as_bool).unwrap_or(false);
    let handler_type = obj.get("handler_type").and_then(Value::as_str);
    let has_args = obj.contains_key("args");
    let has_handler = obj.contains_key("handler");
    let is_http = handler_type == Some("http");
    if [has_args, has_handler, is_http]
        .iter()
        .filter(|b| **b)
        .count()
        > 1
    {
        return Err(WatchError::TwoHandlers);
    }
    let handler = if is_http {
        let c = obj
            .get("http_handler_config")
            .and_then(Value::as_object)
            .ok_or(WatchError::BadHandler(
                "http_handler_config is required for handler_type http",
            ))?;
        let url = c
            .get("path")
            .and_then(Value::as_str)
            .ok_or(WatchError::BadHandler(NO_PATH))?
            .to_string();
        if url.is_empty() {
            return Err(WatchError::BadHandler(NO_PATH));
        }
        let method = c
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("POST")
            .to_uppercase();
        let timeout = match c.get("timeout").and_then(Value::as_str) {
            Some(t) => parse_duration(t).ok_or_else(|| WatchError::BadTimeout(t.to_string()))?,
            None => Duration::from_secs(10),
        };
        let mut headers = Vec::new();
        if let Some(h) = c.get("header").and_then(Value::as_object) {
            for (k, vs) in h {
                for v in vs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    headers.push((k.clone(), v.to_string()));
                }
            }
        }
        Handler::Http {
            url,
            method,
            headers,
            timeout,
        }
    } else if has_args {
        let args: Vec<String> = obj["args"]
            .as_array()
            .ok_or(WatchError::BadHandler("args must be a list of strings"))?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        if args.is_empty() {
            return Err(WatchError::NoHandler);
        }
        Handler::Script {
            args,
            shell: false,
            inherit_output: false,
        }
    } else if let Some(h) = obj.get("handler").and_then(Value::as_str) {
        Handler::Script {
            args: vec![h.to_string()],
            shell: true,
            inherit_output: false,
        }
    } else {
        return Err(WatchError::NoHandler);
    };
    Ok(WatchSpec {
        kind,
        handler,
        stale,
    })
}

fn str_param(
    obj: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<String, WatchError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(WatchError::NotAString(name)),
        None => Err(WatchError::MissingParameter(name)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_walkthrough_watches() {
        let w = parse_watch(
            &json!({ "type": "key", "key": "foo/bar/baz", "handler_type": "script",
            "args": ["/usr/bin/my-service-handler.sh", "-redis"] }),
        )
        .unwrap();
        assert_eq!(w.kind, WatchKind::Key("foo/bar/baz".into()));
        assert!(
            matches!(w.handler, Handler::Script { ref args, shell: false, .. } if args.len() == 2)
        );
        let w = parse_watch(
            &json!({ "type": "keyprefix", "prefix": "foo/", "handler_type": "http",
            "http_handler_config": { "path": "https://localhost:8000/watch", "method": "POST",
              "header": {"x-foo": ["bar", "baz"]}, "timeout": "10s", "tls_skip_verify": false } }),
        )
        .unwrap();
        match w.handler {
            Handler::Http {
                url,
                method,
                headers,
                timeout,
            } => {
                assert_eq!(
                    (url.as_str(), method.as_str(), timeout),
                    (
                        "https://localhost:8000/watch",
                        "POST",
                        Duration::from_secs(10)
                    )
                );
                assert_eq!(headers.len(), 2);
            }
            h => panic!("{h:?}"),
        }
    }

    #[test]
    fn watch_errors() {
        let err = |v: Value| parse_watch(&v).unwrap_err().to_string();
        assert_eq!(
            err(json!({"key": "k", "args": ["x"]})),
            "Watch type must be specified"
        );
        assert_eq!(
            err(json!({"type": "key", "key": "k"})),
            "Must define a watch handler"
        );
        assert_eq!(
            err(json!({"type": "key", "key": "k", "args": ["x"], "handler": "y"})),
            "Only one watch handler allowed"
        );
        assert!(
            err(json!({"type": "key", "key": "k", "args": ["x"], "bogus": 1}))
                .starts_with("Invalid parameters")
        );
        assert!(err(json!({"type": "key", "args": ["x"]})).contains("key"));
    }
}
