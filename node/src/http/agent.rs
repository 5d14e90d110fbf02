//! `/v1/agent`: this agent (self, members, join, leave, force-leave, reload), and the member
//! record it announces on gossip.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use serde_json::Map;
use serde_json::Value;

use super::context::Ctx;
use super::context::Reply;
use super::error::ApiError;
use super::percent_decode;
use super::text;
use super::AgentInfo;
use super::Api;
use super::Control;
use super::CONSUL_VERSION;
use super::REVISION;
use super::VERSION;
use crate::config::Config;
use crate::flags::parse_duration;
use crate::serf::GossipError;

/// Consul's default `session_ttl_min`.
const SESSION_TTL_MIN: Duration = Duration::from_secs(10);

/// A path segment, URL-decoded (lossily: a name is shown back, not stored).
fn decoded(tail: &str) -> String {
    String::from_utf8_lossy(&percent_decode(tail.as_bytes())).into_owned()
}

/// This agent's member record (the `/v1/agent/members` shape), for the LAN or WAN pool.
pub fn member(a: &AgentInfo, wan: bool) -> Value {
    let mut tags = Map::new();
    let mut put = |k: &str, v: String| {
        tags.insert(k.to_string(), Value::String(v));
    };
    put("role", if a.server { "consul" } else { "node" }.into());
    put("dc", a.datacenter.clone());
    put("segment", String::new());
    put("id", a.node_id.clone());
    put("vsn", "2".into());
    put("vsn_min", "2".into());
    put("vsn_max", "3".into());
    put("build", format!("{VERSION}:{REVISION}"));
    if a.server {
        put("raft_vsn", "3".into());
        if let Some(id) = a.raft_id {
            put("raft_id", id.to_string());
        }
        put("port", a.server_port.to_string());
        put("wan_join_port", a.serf_wan_port.to_string());
        if a.bootstrap {
            put("bootstrap", "1".into());
        }
        if a.bootstrap_expect > 0 {
            put("expect", a.bootstrap_expect.to_string());
        }
    }
    let (name, port) = if wan {
        (format!("{}.{}", a.node_name, a.datacenter), a.serf_wan_port)
    } else {
        (a.node_name.clone(), a.serf_lan_port)
    };
    json!({
        "Name": name, "Addr": a.advertise_ip, "Port": port, "Tags": tags, "Status": 1,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

/// `GET /v1/agent/self`.
pub async fn agent_self(cx: Ctx) -> Reply {
    Ok(cx.json(&self_json(&cx.api)))
}

fn self_json(api: &Api) -> Value {
    let a = &api.agent;
    let mut applied = 0;
    let mut keys = 0;
    api.store.with_state(&mut |sm| {
        applied = sm.last_applied();
        keys = sm.kv().len();
    });
    let leader = api.store.leader();
    let own_rpc = format!("{}:{}", a.advertise_ip, a.server_port);
    let mut raft = Map::new();
    for (k, v) in [
        ("applied_index", applied.to_string()),
        ("commit_index", applied.to_string()),
        (
            "num_peers",
            api.store.peers().len().saturating_sub(1).to_string(),
        ),
        ("kv_keys", keys.to_string()),
    ]
    .into_iter()
    .chain(api.store.raft_stats())
    {
        raft.insert(k.to_string(), Value::String(v));
    }
    json!({
        "Config": {
            "Datacenter": a.datacenter, "PrimaryDatacenter": a.datacenter,
            "NodeName": a.node_name, "NodeID": a.node_id, "Server": a.server,
            "Revision": REVISION,
            // The Consul release whose API this is (clients gate features on it) ...
            "Version": CONSUL_VERSION,
            // ... and the Tribune build serving it.
            "TribuneVersion": VERSION,
            "BuildDate": "",
            // A Go duration: nanoseconds (Patroni reads it so).
            "SessionTTLMin": a.session_ttl_min.as_nanos() as u64,
        },
        "DebugConfig": a.debug_config,
        "Coord": null,
        "Member": member(a, false),
        "Stats": {
            "agent": {"check_monitors": "0", "check_ttls": "0", "checks": "0", "services": "0"},
            "build": {"prerelease": "", "revision": REVISION, "version": VERSION},
            "consul": {
                "bootstrap": a.bootstrap.to_string(), "known_datacenters": "1",
                "leader": (leader.as_deref() == Some(own_rpc.as_str())).to_string(),
                "leader_addr": leader.unwrap_or_default(), "server": a.server.to_string(),
            },
            "raft": raft,
            "runtime": {
                "arch": std::env::consts::ARCH, "os": std::env::consts::OS, "version": "rust",
            },
            "serf_lan": serf_stats(&api.lan, a.encrypted, 1),
            "serf_wan": serf_stats(&api.wan, a.encrypted, a.server as usize),
        },
        "Meta": a.node_meta,
    })
}

/// A gossip pool's `Stats` entry (strings, as Consul's): members (`alone` when there is no
/// pool), failed and left ones, encryption.
fn serf_stats(pool: &Option<crate::serf::Pool>, encrypted: bool, alone: usize) -> Value {
    use tribune_core::gossip::MemberState;
    let members = pool.as_ref().map(|p| p.members()).unwrap_or_default();
    let count = |s: MemberState| members.iter().filter(|m| m.state == s).count().to_string();
    json!({
        "members": if pool.is_some() { members.len().to_string() } else { alone.to_string() },
        "failed": count(MemberState::Failed),
        "left": count(MemberState::Left),
        "encrypted": encrypted.to_string(),
    })
}

/// `GET /v1/agent/members[?wan]`.
pub async fn members(cx: Ctx) -> Reply {
    let wan = cx.query.has("wan");
    let pool = if wan { &cx.api.wan } else { &cx.api.lan };
    let members: Vec<Value> = match pool {
        Some(p) => p.members().iter().map(crate::serf::member_json).collect(),
        None => vec![member(&cx.api.agent, wan)],
    };
    Ok(cx.json(&members))
}

/// `PUT /v1/agent/leave`: leave gracefully, then stop.
pub async fn leave(cx: Ctx) -> Reply {
    let _ = cx.api.control.send(Control::Leave);
    Ok(text(StatusCode::OK, ""))
}

/// `PUT /v1/agent/reload`.
pub async fn reload(cx: Ctx) -> Reply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let down = || ApiError::internal("agent is shutting down");
    cx.api
        .control
        .send(Control::Reload(tx))
        .map_err(|_| down())?;
    match rx.await {
        Ok(Ok(())) => Ok(text(StatusCode::OK, "")),
        Ok(Err(e)) => Err(ApiError::internal(format!("Failed to reload configs: {e}"))),
        Err(_) => Err(down()),
    }
}

/// `PUT /v1/agent/join/<address>[?wan]`.
pub async fn join(cx: Ctx) -> Reply {
    let api = &cx.api;
    let addr = decoded(&cx.tail);
    let wan = cx.query.has("wan");
    let a = &api.agent;
    let own = [
        format!("{}:{}", a.advertise_ip, a.serf_lan_port),
        a.advertise_ip.clone(),
    ];
    let (pool, port) = if wan {
        (&api.wan, a.serf_wan_port)
    } else {
        (&api.lan, a.serf_lan_port)
    };
    let failed = |e: &str| {
        ApiError::internal(format!(
            "1 error occurred:\n\t* Failed to join {addr}: {e}\n\n"
        ))
    };
    if own.contains(&addr) {
        return Ok(text(StatusCode::OK, ""));
    }
    let Some(pool) = pool else {
        return Err(failed("gossip is disabled"));
    };
    let addrs = crate::serf::resolve(std::slice::from_ref(&addr), port as u16).await;
    if addrs.is_empty() {
        return Err(failed(&format!("no address for {addr}")));
    }
    pool.join(addrs).await.map_err(|e| failed(&e.to_string()))?;
    Ok(text(StatusCode::OK, ""))
}

/// `PUT /v1/agent/force-leave/<node>[?prune]`: Consul's "No node found" for a name no
/// member has (or with no gossip at all); any other refusal with its own text.
pub async fn force_leave(cx: Ctx) -> Reply {
    let node = decoded(&cx.tail);
    let result = match &cx.api.lan {
        Some(pool) => pool.force_leave(node.clone(), cx.query.has("prune")).await,
        None => Err(GossipError::NoSuchMember),
    };
    match result {
        Ok(()) => Ok(text(StatusCode::OK, "")),
        Err(GossipError::NoSuchMember) => Err(ApiError::internal(format!(
            "agent: No node found with name '{node}'"
        ))),
        Err(e) => Err(ApiError::internal(format!(
            "agent: Cannot force leave {node}: {e}"
        ))),
    }
}

/// `node_meta` from the config, values as strings (Consul's `Meta`).
pub fn node_meta(cfg: &Config) -> BTreeMap<String, String> {
    let meta = cfg.raw.get("node_meta").and_then(Value::as_object);
    let as_string = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    meta.into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), as_string(v)))
        .collect()
}

/// `session_ttl_min` from the config (Consul's default 10s).
pub fn session_ttl_min(cfg: &Config) -> Duration {
    let v = cfg.raw.get("session_ttl_min").and_then(Value::as_str);
    v.and_then(parse_duration).unwrap_or(SESSION_TTL_MIN)
}

/// Go's `time.Duration.String()`: `0s`, `250ms`, `1.5s`, `5m0s`, `72h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let n = d.as_nanos();
    // `whole.rem` with `rem` of `digits` digits, trailing zeros dropped.
    let frac = |whole: u128, rem: u128, digits: usize| {
        if rem == 0 {
            whole.to_string()
        } else {
            let rem = format!("{rem:0digits$}");
            format!("{whole}.{}", rem.trim_end_matches('0'))
        }
    };
    match n {
        0 => "0s".into(),
        1..=999 => format!("{n}ns"),
        1_000..=999_999 => format!("{}\u{b5}s", frac(n / 1_000, n % 1_000, 3)),
        1_000_000..=999_999_999 => format!("{}ms", frac(n / 1_000_000, n % 1_000_000, 6)),
        _ => {
            let secs = n / 1_000_000_000;
            let (h, m) = (secs / 3600, secs / 60 % 60);
            let s = format!("{}s", frac(secs % 60, n % 1_000_000_000, 9));
            match (h, m) {
                (0, 0) => s,
                (0, m) => format!("{m}m{s}"),
                (h, m) => format!("{h}h{m}m{s}"),
            }
        }
    }
}

/// Whether a config field's name says it holds a secret (Consul's `isSecret`).
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "secret"].iter().any(|s| name.contains(s))
}

/// A `retry_join` entry with go-discover secrets (`secret_access_key=...`) hidden.
fn clean_retry_join(entry: &str) -> String {
    let hide = |f: &str| match f.split_once('=') {
        Some((k, _)) if is_secret(f) => format!("{k}=hidden"),
        _ => f.to_string(),
    };
    entry
        .split_whitespace()
        .map(hide)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A watch definition with its token (if any) hidden.
fn clean_watch(w: &Value) -> Value {
    let mut w = w.clone();
    if let Some(o) = w.as_object_mut() {
        for (k, v) in o.iter_mut() {
            if v.is_string() && ["token", "secret"].iter().any(|s| k.contains(s)) {
                *v = json!("hidden");
            }
        }
    }
    w
}

/// `/v1/agent/self`'s `DebugConfig`: the settings the agent runs with, under Consul's
/// runtime-config names, durations as Go writes them and secrets hidden.
pub fn debug_config(cfg: &Config) -> Value {
    let raw = |k: &str| cfg.raw.get(k);
    let raw_bool = |k: &str| raw(k).and_then(Value::as_bool).unwrap_or(false);
    let raw_str = |k: &str| raw(k).and_then(Value::as_str).map(str::to_string);
    let dur = |d: Duration| Value::String(go_duration(d));
    let service_ttl: Map<String, Value> = cfg
        .dns
        .service_ttl
        .iter()
        .map(|(name, ttl)| (name.clone(), dur(*ttl)))
        .collect();
    let data_dir = cfg
        .data_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let retry_join: Vec<String> = cfg.retry_join.iter().map(|e| clean_retry_join(e)).collect();
    let advertise_wan = raw_str("advertise_addr_wan").unwrap_or_else(|| cfg.advertise_ip());
    let scripts = raw_bool("enable_script_checks");
    let logging = json!({
        "EnableSyslog": cfg.enable_syslog,
        "LogJSON": cfg.log_json,
        "LogLevel": raw_str("log_level").unwrap_or_else(|| "INFO".into()),
    });
    let fields = [
        ("AdvertiseAddrLAN", json!(cfg.advertise_ip())),
        ("AdvertiseAddrWAN", json!(advertise_wan)),
        ("BindAddr", json!(cfg.bind_addr)),
        ("Bootstrap", json!(cfg.bootstrap)),
        ("BootstrapExpect", json!(cfg.bootstrap_expect)),
        (
            "ClientAddrs",
            json!(cfg.client_addr.split_whitespace().collect::<Vec<_>>()),
        ),
        ("DNSDomain", json!(cfg.domain)),
        ("DNSEnableTruncate", json!(cfg.dns.enable_truncate)),
        ("DNSNodeTTL", dur(cfg.dns.node_ttl)),
        ("DNSPort", json!(cfg.dns_port)),
        ("DNSServiceTTL", json!(service_ttl)),
        ("DNSUDPAnswerLimit", json!(cfg.dns.udp_answer_limit)),
        ("DataDir", json!(data_dir)),
        ("Datacenter", json!(cfg.datacenter)),
        ("DefaultQueryTime", dur(cfg.default_query_time)),
        ("DevMode", json!(cfg.dev)),
        (
            "EnableLocalScriptChecks",
            json!(scripts || raw_bool("enable_local_script_checks")),
        ),
        ("EnableRemoteScriptChecks", json!(scripts)),
        // Consul hides every field named like a secret, set or not.
        ("EncryptKey", json!("hidden")),
        (
            "HTTPMaxConnsPerClient",
            json!(cfg.http_max_conns_per_client),
        ),
        ("HTTPPort", json!(cfg.http_port)),
        ("KVMaxValueSize", json!(cfg.kv_max_value_size)),
        ("LeaveOnTerm", json!(cfg.leave_on_terminate)),
        ("Logging", logging),
        ("MaxQueryTime", dur(cfg.max_query_time)),
        ("NodeMeta", json!(node_meta(cfg))),
        ("NodeName", json!(cfg.node_name)),
        ("PrimaryDatacenter", json!(cfg.datacenter)),
        ("RaftProtocol", json!(3)),
        ("RejoinAfterLeave", json!(cfg.rejoin_after_leave)),
        ("RetryJoinIntervalLAN", dur(cfg.retry_interval)),
        ("RetryJoinLAN", json!(retry_join)),
        ("Revision", json!(REVISION)),
        ("SerfPortLAN", json!(cfg.serf_lan_port)),
        ("SerfPortWAN", json!(cfg.serf_wan_port)),
        ("ServerMode", json!(cfg.server)),
        ("ServerPort", json!(cfg.server_port)),
        ("SessionTTLMin", dur(session_ttl_min(cfg))),
        ("SkipLeaveOnInt", json!(cfg.skip_leave_on_interrupt)),
        ("StartJoinAddrsLAN", json!(cfg.start_join)),
        (
            "UIConfig",
            json!({"ContentPath": "/ui/", "Enabled": cfg.ui}),
        ),
        ("Version", json!(CONSUL_VERSION)),
        (
            "Watches",
            json!(cfg.watches.iter().map(clean_watch).collect::<Vec<_>>()),
        ),
    ];
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::http::testing::agent_info;
    use crate::http::testing::api_with;
    use crate::http::testing::get_json;
    use crate::store::DevStore;

    #[tokio::test]
    async fn force_leave_without_gossip_finds_no_node() {
        let api = crate::http::testing::dev_api();
        let (status, _, body) =
            crate::http::testing::call(&api, "PUT", "/v1/agent/force-leave/n9", b"").await;
        assert_eq!(
            (status, String::from_utf8(body).unwrap().as_str()),
            (500, "agent: No node found with name 'n9'")
        );
    }

    #[test]
    fn go_durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::from_nanos(1_500), "1.5\u{b5}s"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_micros(250_500), "250.5ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(300), "5m0s"),
            (Duration::from_secs(600), "10m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(72 * 3600), "72h0m0s"),
            (Duration::from_millis(3_723_500), "1h2m3.5s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn secrets_are_hidden() {
        let e = "provider=aws tag_key=consul secret_access_key=abc region=eu";
        assert_eq!(
            clean_retry_join(e),
            "provider=aws tag_key=hidden secret_access_key=hidden region=eu"
        );
        let w = clean_watch(&json!({"type": "key", "key": "a", "token": "t"}));
        assert_eq!(w, json!({"type": "key", "key": "a", "token": "hidden"}));
    }

    #[tokio::test]
    async fn self_tells_the_api_version_meta_and_session_ttl_min() {
        let mut agent = agent_info();
        agent.node_meta = [("rack".to_string(), "r1".to_string())].into();
        agent.session_ttl_min = Duration::from_secs(25);
        agent.debug_config = json!({"SessionTTLMin": "25s"});
        let store = Arc::new(DevStore::new("127.0.0.1:8300".into()));
        let api = api_with(store, agent);
        let me = get_json(&api, "/v1/agent/self").await;
        let config = &me["Config"];
        assert_eq!(config["Version"], CONSUL_VERSION);
        assert!(CONSUL_VERSION.starts_with("1."), "a Consul 1.x API");
        assert_eq!(config["TribuneVersion"], VERSION);
        assert_eq!(config["SessionTTLMin"], 25_000_000_000u64);
        assert_eq!(
            (&config["Datacenter"], &config["NodeName"]),
            (&json!("dc1"), &json!("n"))
        );
        assert_eq!(me["Meta"], json!({"rack": "r1"}));
        assert_eq!(me["DebugConfig"], json!({"SessionTTLMin": "25s"}));
        assert_eq!(
            me["Member"]["Tags"]["build"],
            format!("{VERSION}:{REVISION}")
        );
        assert!(me["Stats"]["raft"]["applied_index"].is_string());
    }

    fn config(fragment: Value) -> Config {
        let flags = fragment.as_object().unwrap().clone();
        let opts = crate::config::LoadOptions {
            dev: true,
            flags,
            ..Default::default()
        };
        crate::config::load(&opts).unwrap().0
    }

    #[test]
    fn debug_config_uses_consuls_names() {
        let key = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=";
        let cfg = config(json!({
            "node_name": "dbg", "datacenter": "dc9", "encrypt": key,
            "ports": {"serf_wan": 8402, "dns": -1}, "session_ttl_min": "15s",
            "node_meta": {"rack": "r1", "n": 3}, "retry_join": ["provider=x api_token=t"],
            "watches": [{"type": "keyprefix", "prefix": "p/", "args": ["true"]}],
            "default_query_time": "90s",
        }));
        let d = debug_config(&cfg);
        assert_eq!(d["NodeName"], "dbg");
        assert_eq!(d["Datacenter"], "dc9");
        assert_eq!(d["SerfPortWAN"], 8402);
        assert_eq!(d["DNSPort"], -1);
        assert_eq!(d["ServerMode"], true);
        assert_eq!(d["DevMode"], true);
        assert_eq!(d["SessionTTLMin"], "15s");
        assert_eq!(d["DefaultQueryTime"], "1m30s");
        assert_eq!(d["MaxQueryTime"], "10m0s");
        assert_eq!(d["NodeMeta"], json!({"n": "3", "rack": "r1"}));
        assert_eq!(d["RetryJoinLAN"], json!(["provider=x api_token=hidden"]));
        assert_eq!(d["Watches"][0]["prefix"], "p/");
        assert_eq!(d["EncryptKey"], "hidden");
        assert_eq!(d["Version"], CONSUL_VERSION);
        assert!(
            !d.to_string().contains(key),
            "the gossip key is never shown"
        );
        // Consul's names only: no key of the config files' own spelling.
        for k in d.as_object().unwrap().keys() {
            assert!(
                k.chars().next().unwrap().is_ascii_uppercase() && !k.contains('_'),
                "{k}"
            );
        }
        assert_eq!(session_ttl_min(&cfg), Duration::from_secs(15));
        assert_eq!(session_ttl_min(&config(json!({}))), Duration::from_secs(10));
        assert_eq!(node_meta(&cfg)["n"], "3");
    }
}
