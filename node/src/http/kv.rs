//! `/v1/kv/<key>`: read (one key, `?recurse`, `?keys`, `?raw`), write (`?flags`, `?cas`,
//! locks) and delete (`?recurse`, `?cas`).

use axum::body::Bytes;
use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use tribune_core::fsm::Command;
use tribune_core::kv::Entry;
use tribune_core::kv::KvOp;

use super::b64;
use super::blocking;
use super::context::Ctx;
use super::context::Reply;
use super::error::ApiError;
use super::json_response;
use super::percent_decode;
use super::text;
use crate::hub::Topic;
use crate::store::StoreError;

/// How far past the value limit a request body is still read before answering 413.
const DRAIN_SLACK: u64 = 64 * 1024;

/// The key a request names: URL-decoded, `//` collapsed, no leading `/`, no linefeed and no
/// `..` segment.
fn key_of(cx: &Ctx) -> Result<String, ApiError> {
    let key = String::from_utf8(percent_decode(cx.tail.as_bytes()))
        .map_err(|_| ApiError::bad_request("Invalid key: not UTF-8"))?;
    if key.contains('\n') {
        return Err(ApiError::bad_request("Invalid key: contains a linefeed"));
    }
    let mut key = key;
    while key.contains("//") {
        key = key.replace("//", "/");
    }
    let key = key.trim_start_matches('/').to_string();
    if key.split('/').any(|seg| seg == "..") {
        return Err(ApiError::bad_request(
            "Invalid key: path traversal is not allowed",
        ));
    }
    cx.check_dc()?;
    Ok(key)
}

fn conflicting(cx: &Ctx) -> ApiError {
    ApiError::bad_request(format!("Conflicting flags: {}", cx.query.raw))
}

/// Consul's KV entry JSON, fields in upstream order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EntryJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    create_index: u64,
    modify_index: u64,
}

fn entry_json(e: &Entry) -> EntryJson<'_> {
    EntryJson {
        lock_index: e.lock_index,
        key: &e.key,
        flags: e.flags,
        value: if e.value.is_empty() {
            None
        } else {
            Some(b64(&e.value))
        },
        session: e.session.as_deref().filter(|s| !s.is_empty()),
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

enum KvRead {
    One(Option<Entry>),
    List(Vec<Entry>),
    Keys(Vec<String>),
}

/// `GET /v1/kv/<key>`.
pub async fn get(cx: Ctx) -> Reply {
    let key = key_of(&cx)?;
    let q = &cx.query;
    let (keys, recurse, raw) = (q.has("keys"), q.has("recurse"), q.has("raw"));
    if key.is_empty() && !keys && !recurse {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let opts = cx.read_options()?;
    let sep = q
        .get("separator")
        .or_else(|| q.get("seperator"))
        .map(str::to_string);
    let topic = if keys || recurse {
        Topic::Prefix(key.clone())
    } else {
        Topic::Key(key.clone())
    };
    let read = |sm: &tribune_core::fsm::StateMachine| {
        let kv = sm.kv();
        if keys {
            let (ks, idx) = kv.keys(&key, sep.as_deref());
            (KvRead::Keys(ks), idx)
        } else if recurse {
            let (es, idx) = kv.list(&key);
            (KvRead::List(es.into_iter().cloned().collect()), idx)
        } else {
            (KvRead::One(kv.get(&key).cloned()), kv.key_index(&key))
        }
    };
    let not_found = || text(StatusCode::NOT_FOUND, "");
    let render = |result| match result {
        KvRead::Keys(ks) if ks.is_empty() && !key.is_empty() => not_found(),
        KvRead::Keys(ks) => json_response(&ks, opts.pretty),
        KvRead::List(es) if es.is_empty() => not_found(),
        KvRead::List(es) => {
            json_response(&es.iter().map(entry_json).collect::<Vec<_>>(), opts.pretty)
        }
        KvRead::One(None) => not_found(),
        KvRead::One(Some(e)) if raw => {
            let mut r = (StatusCode::OK, e.value).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(
                "X-Content-Type-Options",
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                "Content-Security-Policy",
                HeaderValue::from_static("sandbox"),
            );
            r
        }
        KvRead::One(Some(e)) => json_response(&[entry_json(&e)], opts.pretty),
    };
    blocking::respond(&cx.api, &opts, topic, read, render).await
}

/// A `u64` query value, or a 400 naming it.
fn u64_flag(v: &str, what: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::bad_request(format!("Invalid {what}: {v:?}")))
}

/// The outcome of a KV write: `true` or `false`.
fn write_result(r: Result<tribune_core::fsm::Response, StoreError>) -> Reply {
    match r? {
        tribune_core::fsm::Response::Kv { outcome, .. } => Ok(json_response(&outcome.ok, false)),
        other => Err(ApiError::internal(format!(
            "unexpected write response: {other:?}"
        ))),
    }
}

/// `PUT /v1/kv/<key>`: the body is the value.
pub async fn put(cx: Ctx) -> Reply {
    let key = key_of(&cx)?;
    let q = &cx.query;
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    if ["cas", "acquire", "release"]
        .iter()
        .filter(|f| q.has(f))
        .count()
        > 1
    {
        return Err(conflicting(&cx));
    }
    let flags = match q.get("flags") {
        None | Some("") => 0,
        Some(v) => u64_flag(v, "flags")?,
    };
    let cas = q.get("cas").map(|v| u64_flag(v, "cas index")).transpose()?;
    for lock in ["acquire", "release"] {
        if let Some(session) = q.get(lock) {
            return Err(ApiError::internal(format!("invalid session {session:?}")));
        }
    }
    let max = cx.api.kv_max_value_size;
    let length = cx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if let Some(len) = length.and_then(|v| v.parse::<u64>().ok()) {
        if len > max {
            // Read (and drop) a body that is not much larger, so that the client, still
            // sending, gets the 413 instead of a reset connection. Larger ones are cut off.
            if len <= max + DRAIN_SLACK {
                let _ = axum::body::to_bytes(cx.body, len as usize).await;
            }
            return Err(ApiError::TooLarge { size: len, max });
        }
    }
    let value: Bytes = match axum::body::to_bytes(cx.body, max as usize + 1).await {
        Ok(b) if b.len() as u64 > max => {
            return Err(ApiError::TooLarge {
                size: b.len() as u64,
                max,
            })
        }
        Ok(b) => b,
        Err(_) => return Err(ApiError::TooLarge { size: max + 1, max }),
    };
    let value = value.to_vec();
    let op = match cas {
        Some(index) => KvOp::Cas {
            key,
            value,
            flags,
            index,
        },
        None => KvOp::Set { key, value, flags },
    };
    write_result(cx.api.store.write(Command::Kv(op)).await)
}

/// `DELETE /v1/kv/<key>`.
pub async fn delete(cx: Ctx) -> Reply {
    let key = key_of(&cx)?;
    let q = &cx.query;
    let recurse = q.has("recurse");
    if recurse && q.has("cas") {
        return Err(conflicting(&cx));
    }
    if key.is_empty() && !recurse {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let op = if recurse {
        KvOp::DeleteTree { prefix: key }
    } else if let Some(v) = q.get("cas") {
        KvOp::DeleteCas {
            key,
            index: u64_flag(v, "cas index")?,
        }
    } else {
        KvOp::Delete { key }
    };
    write_result(cx.api.store.write(Command::Kv(op)).await)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::http::testing::api_over;
    use crate::http::testing::call;
    use crate::http::testing::dev_api;
    use crate::hub::Hub;
    use crate::store;
    use crate::store::Consistency;
    use crate::store::ReadMeta;
    use crate::store::Store;

    /// A store with no leader: reads and writes fail the way a Raft store without quorum
    /// does.
    struct Leaderless(Hub);

    impl Store for Leaderless {
        fn write(
            &self,
            _cmd: Command,
        ) -> store::BoxFuture<'_, Result<tribune_core::fsm::Response, StoreError>> {
            Box::pin(async { Err(StoreError::NoLeader) })
        }
        fn read_barrier(
            &self,
            mode: Consistency,
        ) -> store::BoxFuture<'_, Result<ReadMeta, StoreError>> {
            Box::pin(async move {
                match mode {
                    Consistency::Stale => Ok(ReadMeta {
                        known_leader: false,
                        last_contact_ms: 12_345,
                    }),
                    _ => Err(StoreError::NoLeader),
                }
            })
        }
        fn with_state(&self, f: &mut dyn FnMut(&tribune_core::fsm::StateMachine)) {
            f(&tribune_core::fsm::StateMachine::new())
        }
        fn hub(&self) -> &Hub {
            &self.0
        }
        fn leader(&self) -> Option<String> {
            None
        }
        fn peers(&self) -> Vec<String> {
            vec![]
        }
    }

    #[tokio::test]
    async fn without_a_leader_reads_and_writes_fail_but_stale_reads_work() {
        let api = api_over(Arc::new(Leaderless(Hub::new())));
        let (s, _, b) = call(&api, "GET", "/v1/kv/k", b"").await;
        assert_eq!((s, b.as_slice()), (500, &b"No cluster leader"[..]));
        let (s, _, b) = call(&api, "PUT", "/v1/kv/k", b"v").await;
        assert_eq!((s, b.as_slice()), (500, &b"No cluster leader"[..]));
        let (s, h, _) = call(&api, "GET", "/v1/kv/k?stale", b"").await;
        assert_eq!(s, 404);
        assert_eq!(h["X-Consul-KnownLeader"], "false");
        assert_eq!(h["X-Consul-LastContact"], "12345");
        assert_eq!(h["X-Consul-Index"], "1");
        assert_eq!(h["X-Consul-Effective-Consistency"], "stale");
        let (s, _, b) = call(&api, "GET", "/v1/status/leader", b"").await;
        assert_eq!((s, b.as_slice()), (200, &b"\"\""[..]));
        let (s, _, b) = call(&api, "GET", "/v1/status/peers", b"").await;
        assert_eq!((s, b.as_slice()), (200, &b"[]"[..]));
    }

    #[tokio::test]
    async fn routes_and_limits_in_process() {
        let api = dev_api();
        let (s, _, b) = call(&api, "PUT", "/v1/kv/k", b"0123456789abcdefX").await;
        assert_eq!(s, 413);
        assert!(String::from_utf8(b).unwrap().contains("max size: 16 bytes"));
        assert_eq!(
            call(&api, "PUT", "/v1/kv/k", b"0123456789abcdef").await.0,
            200
        );
        assert_eq!(call(&api, "DELETE", "/v1/status/leader", b"").await.0, 405);
        assert_eq!(call(&api, "GET", "/v1/nope", b"").await.0, 404);
        let (_, h, b) = call(&api, "GET", "/v1/kv/k?raw", b"").await;
        assert_eq!(b, b"0123456789abcdef");
        assert_eq!(h["X-Consul-Effective-Consistency"], "leader");
        assert_eq!(h["X-Consul-Default-ACL-Policy"], "allow");
    }

    #[tokio::test]
    async fn malformed_read_options_are_400_through_the_api() {
        let api = dev_api();
        for (query, text) in [
            ("index=x", "Invalid index"),
            ("index=-1", "Invalid index"),
            ("index=1&wait=abc", "Invalid wait time"),
            ("index=1&wait=10", "Invalid wait time"),
            (
                "stale&consistent",
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ),
            (
                "cached&consistent",
                "Cannot specify ?cached with ?consistent, conflicting semantics.",
            ),
            ("max_stale=x", "Invalid max_stale value \"x\""),
        ] {
            let (s, _, b) = call(&api, "GET", &format!("/v1/kv/k?{query}"), b"").await;
            assert_eq!(
                (s, String::from_utf8(b).unwrap().as_str()),
                (400, text),
                "{query}"
            );
        }
        let (s, _, b) = call(&api, "GET", "/v1/kv/k?dc=elsewhere", b"").await;
        assert_eq!((s, b.as_slice()), (500, &b"No path to datacenter"[..]));
    }

    #[tokio::test]
    async fn key_rules() {
        let api = dev_api();
        let (s, _, b) = call(&api, "GET", "/v1/kv/", b"").await;
        assert_eq!((s, b.as_slice()), (400, &b"Missing key name"[..]));
        let (s, _, _) = call(&api, "GET", "/v1/kv/a/../b", b"").await;
        assert_eq!(s, 400);
        let (s, _, _) = call(&api, "PUT", "/v1/kv/a%0Ab", b"v").await;
        assert_eq!(s, 400);
        assert_eq!(call(&api, "PUT", "/v1/kv//a//b", b"v").await.0, 200);
        let (s, _, b) = call(&api, "GET", "/v1/kv/a/b?raw", b"").await;
        assert_eq!((s, b.as_slice()), (200, &b"v"[..]));
        let (s, _, b) = call(&api, "PUT", "/v1/kv/a?cas=1&acquire=x", b"v").await;
        assert_eq!(
            (s, b.as_slice()),
            (400, &b"Conflicting flags: cas=1&acquire=x"[..])
        );
    }
}
