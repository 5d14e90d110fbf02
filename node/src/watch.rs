//! Watches (`key`, `keyprefix`): Consul's plan loop over a blocking query, with script,
//! HTTP or stdout handlers. Used by agent-config `watches` (reading the local store) and by
//! `tribune watch` (reading an agent over HTTP). What a watch is, and how a definition is
//! parsed, is `watch_spec`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tribune_core::kv::Entry;

use crate::client;
use crate::client::ClientError;
use crate::http::Api;
use crate::http::ReadOpts;
use crate::hub::Topic;
use crate::store::Consistency;
use crate::store::StoreError;
use crate::watch_spec::Handler;
use crate::watch_spec::WatchKind;
use crate::watch_spec::WatchSpec;

/// An entry as the Go API client (and so watch handlers) shows it.
pub fn entry_watch_json(e: &Entry) -> Value {
    json!({
        "Key": e.key, "CreateIndex": e.create_index, "ModifyIndex": e.modify_index,
        "LockIndex": e.lock_index, "Flags": e.flags,
        "Value": if e.value.is_empty() {
            Value::Null
        } else {
            Value::String(crate::http::b64(&e.value))
        },
        "Session": e.session.clone().unwrap_or_default(),
    })
}

/// Same, from the HTTP API's entry JSON.
fn http_entry_to_watch(v: &Value) -> Value {
    json!({
        "Key": v.get("Key").cloned().unwrap_or(Value::Null),
        "CreateIndex": v.get("CreateIndex").cloned().unwrap_or(json!(0)),
        "ModifyIndex": v.get("ModifyIndex").cloned().unwrap_or(json!(0)),
        "LockIndex": v.get("LockIndex").cloned().unwrap_or(json!(0)),
        "Flags": v.get("Flags").cloned().unwrap_or(json!(0)),
        "Value": v.get("Value").cloned().unwrap_or(Value::Null),
        "Session": v.get("Session").cloned().unwrap_or(json!("")),
    })
}

/// Why a watch's query got no result (logged; the watch retries after a backoff).
#[derive(Debug, thiserror::Error)]
enum QueryError {
    /// The local store could not serve the read (no leader, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The agent's HTTP API did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// It answered 200 with a body that is not JSON.
    #[error("bad response: {0}")]
    BadBody(#[from] serde_json::Error),
    /// It answered with an error.
    #[error("Unexpected response code: {status} ({body})")]
    Status { status: u16, body: String },
}

/// Why a handler failed (logged; the watch goes on).
#[derive(Debug, thiserror::Error)]
enum HandlerError {
    /// The script could not be started.
    #[error("failed to run {args:?}: {source}")]
    Spawn {
        args: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// Its output could not be collected.
    #[error("handler {args:?}: {source}")]
    Wait {
        args: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("handler {args:?} exited with {status}")]
    Exit {
        args: Vec<String>,
        status: std::process::ExitStatus,
    },
    /// The HTTP handler's URL did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// It answered with a status outside 2xx.
    #[error("{method} {url}: status {status}")]
    Status {
        method: String,
        url: String,
        status: u16,
    },
}

/// Where a watch reads from.
#[derive(Clone)]
pub enum Source {
    Local(Arc<Api>),
    /// An agent's HTTP address (`host:port`).
    Remote(String),
}

const WATCH_WAIT: Duration = Duration::from_secs(300);

impl Source {
    async fn fetch(
        &self,
        kind: &WatchKind,
        stale: bool,
        index: u64,
    ) -> Result<(Value, u64), QueryError> {
        match self {
            Source::Local(api) => {
                let opts = ReadOpts {
                    mode: if stale {
                        Consistency::Stale
                    } else {
                        Consistency::Default
                    },
                    min_index: index,
                    wait: WATCH_WAIT,
                };
                let (topic, k) = match kind {
                    WatchKind::Key(k) => (Topic::Key(k.clone()), k.clone()),
                    WatchKind::KeyPrefix(p) => (Topic::Prefix(p.clone()), p.clone()),
                };
                let prefix = matches!(kind, WatchKind::KeyPrefix(_));
                let (v, idx, _) =
                    crate::http::blocking(&*api.store, &api.metrics, topic, &opts, |sm| {
                        if prefix {
                            let (es, i) = sm.kv().list(&k);
                            (
                                Value::Array(es.into_iter().map(entry_watch_json).collect()),
                                i,
                            )
                        } else {
                            (
                                sm.kv().get(&k).map(entry_watch_json).unwrap_or(Value::Null),
                                sm.kv().key_index(&k),
                            )
                        }
                    })
                    .await?;
                Ok((v, idx.max(1)))
            }
            Source::Remote(addr) => {
                let (key, recurse) = match kind {
                    WatchKind::Key(k) => (k, false),
                    WatchKind::KeyPrefix(p) => (p, true),
                };
                let mut path = format!("/v1/kv/{}?index={index}&wait=5m", client::escape_key(key));
                if recurse {
                    path.push_str("&recurse");
                }
                if stale {
                    path.push_str("&stale");
                }
                let r = client::request(
                    addr,
                    "GET",
                    &path,
                    &[],
                    b"",
                    WATCH_WAIT + Duration::from_secs(60),
                )
                .await?;
                let idx = r
                    .header("X-Consul-Index")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .max(1);
                let v = match r.status {
                    200 => {
                        let arr: Value = serde_json::from_slice(&r.body)?;
                        let items: Vec<Value> = arr
                            .as_array()
                            .map(|a| a.iter().map(http_entry_to_watch).collect())
                            .unwrap_or_default();
                        if recurse {
                            Value::Array(items)
                        } else {
                            items.into_iter().next().unwrap_or(Value::Null)
                        }
                    }
                    404 if recurse => Value::Array(vec![]),
                    404 => Value::Null,
                    status => {
                        return Err(QueryError::Status {
                            status,
                            body: r.text().trim().to_string(),
                        })
                    }
                };
                Ok((v, idx))
            }
        }
    }
}

/// Consul's plan loop: fire on the first result, then whenever the index moves and the
/// result differs. Handlers run in the loop, so bursts coalesce. Runs until cancelled.
pub async fn run(spec: WatchSpec, source: Source) {
    let mut last_index: u64 = 0;
    let mut last_result: Option<Value> = None;
    let mut failures: u32 = 0;
    loop {
        let (result, index) = match source.fetch(&spec.kind, spec.stale, last_index).await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                let backoff = (Duration::from_secs(5) * failures.saturating_mul(failures))
                    .min(Duration::from_secs(180));
                tracing::error!(
                    watch = ?spec.kind,
                    error = %e,
                    retry_in = ?backoff,
                    "watch: query failed",
                );
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        failures = 0;
        if last_result.is_some() && index == last_index {
            continue;
        }
        // An index that went backwards means the data was reset: start over.
        last_index = if index < last_index { 0 } else { index };
        if last_result.as_ref() == Some(&result) {
            continue;
        }
        last_result = Some(result.clone());
        if let Source::Local(api) = &source {
            api.metrics.watch_fires.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = fire(&spec.handler, index, &result).await {
            tracing::error!(watch = ?spec.kind, error = %e, "watch: handler failed");
        }
    }
}

async fn fire(handler: &Handler, index: u64, result: &Value) -> Result<(), HandlerError> {
    match handler {
        Handler::Stdout => {
            println!(
                "{}",
                serde_json::to_string_pretty(result).expect("JSON values serialize")
            );
            Ok(())
        }
        Handler::Script {
            args,
            shell,
            inherit_output,
        } => {
            let mut cmd = if *shell {
                let sh = std::env::var("SHELL")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/bin/sh".into());
                let mut c = tokio::process::Command::new(sh);
                c.arg("-c").arg(args.join(" "));
                c
            } else {
                let mut c = tokio::process::Command::new(&args[0]);
                c.args(&args[1..]);
                c
            };
            cmd.env("CONSUL_INDEX", index.to_string())
                .stdin(std::process::Stdio::piped());
            if !*inherit_output {
                cmd.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
            }
            let mut child = cmd.spawn().map_err(|source| HandlerError::Spawn {
                args: args.clone(),
                source,
            })?;
            let mut input = serde_json::to_vec(result).expect("JSON values serialize");
            input.push(b'\n');
            if let Some(mut stdin) = child.stdin.take() {
                // A handler that does not read its input is not an error.
                let _ = stdin.write_all(&input).await;
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|source| HandlerError::Wait {
                    args: args.clone(),
                    source,
                })?;
            if !*inherit_output {
                const KEEP: usize = 64 * 1024;
                let mut captured = out.stdout;
                captured.extend_from_slice(&out.stderr);
                let total = captured.len();
                captured.truncate(KEEP);
                tracing::debug!(
                    handler = ?args,
                    "watch handler output (Captured {} of {} bytes): {}",
                    captured.len(),
                    total,
                    String::from_utf8_lossy(&captured),
                );
            }
            if !out.status.success() {
                return Err(HandlerError::Exit {
                    args: args.clone(),
                    status: out.status,
                });
            }
            Ok(())
        }
        Handler::Http {
            url,
            method,
            headers,
            timeout,
        } => {
            let (addr, path) = client::split_url(url)?;
            let mut hs = headers.clone();
            hs.push(("Content-Type".into(), "application/json".into()));
            hs.push(("X-Consul-Index".into(), index.to_string()));
            let body = serde_json::to_vec(result).expect("JSON values serialize");
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            let r = client::request(&addr, method, &path, &hs, &body, *timeout).await?;
            if !(200..300).contains(&r.status) {
                return Err(HandlerError::Status {
                    method: method.clone(),
                    url: url.clone(),
                    status: r.status,
                });
            }
            Ok(())
        }
    }
}
