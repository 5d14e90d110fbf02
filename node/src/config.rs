//! Agent configuration: Consul's JSON keys, `-config-file` / `-config-dir` loading and
//! merging, command-line overrides, validation.
//!
//! Every source (file, or the command line) is checked on its own against the schema, so an
//! error names the file and the key; unknown keys are reported as warnings. Sources are then
//! merged in order: later scalars win, lists append, objects merge key by key.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::Map;
use serde_json::Value;

use crate::flags::parse_duration;

/// How a config value must look.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    Str,
    /// Integer within bounds.
    Int(i64, i64),
    StrList,
    Duration,
    LogLevel,
    /// Base64 of 16, 24 or 32 bytes.
    GossipKey,
    Datacenter,
    Obj(&'static [(&'static str, Kind)]),
    /// A list of objects (watches, services...), checked where they are used.
    ObjList,
    /// Free-form object (node_meta, telemetry...).
    AnyObj,
}

const PORT: Kind = Kind::Int(-1, 65535);

const PORTS: &[(&str, Kind)] = &[
    ("http", PORT),
    ("https", PORT),
    ("dns", PORT),
    ("grpc", PORT),
    ("grpc_tls", PORT),
    ("serf_lan", PORT),
    ("serf_wan", PORT),
    ("server", PORT),
];

const ADDRESSES: &[(&str, Kind)] = &[("http", Kind::Str), ("https", Kind::Str), ("dns", Kind::Str), ("grpc", Kind::Str)];

const DNS_CONFIG: &[(&str, Kind)] = &[
    ("allow_stale", Kind::Bool),
    ("max_stale", Kind::Duration),
    ("node_ttl", Kind::Duration),
    ("service_ttl", Kind::AnyObj),
    ("enable_truncate", Kind::Bool),
    ("only_passing", Kind::Bool),
    ("udp_answer_limit", Kind::Int(0, 1 << 16)),
    ("a_record_limit", Kind::Int(0, 1 << 16)),
    ("recursor_strategy", Kind::Str),
    ("recursor_timeout", Kind::Duration),
    ("disable_compression", Kind::Bool),
    ("soa", Kind::AnyObj),
    ("use_cache", Kind::Bool),
    ("cache_max_age", Kind::Duration),
    ("enable_additional_node_meta_txt", Kind::Bool),
];

const PERFORMANCE: &[(&str, Kind)] = &[
    ("raft_multiplier", Kind::Int(1, 10)),
    ("leave_drain_time", Kind::Duration),
    ("rpc_hold_timeout", Kind::Duration),
];

const LIMITS: &[(&str, Kind)] = &[
    ("kv_max_value_size", Kind::Int(1, 1 << 40)),
    ("txn_max_req_len", Kind::Int(1, 1 << 40)),
    ("http_max_conns_per_client", Kind::Int(1, 1 << 31)),
    ("rpc_rate", Kind::Int(-1, i64::MAX)),
    ("rpc_max_burst", Kind::Int(0, i64::MAX)),
];

/// Every top-level key the agent knows.
pub const SCHEMA: &[(&str, Kind)] = &[
    ("addresses", Kind::Obj(ADDRESSES)),
    ("advertise_addr", Kind::Str),
    ("advertise_addr_wan", Kind::Str),
    ("bind_addr", Kind::Str),
    ("bootstrap", Kind::Bool),
    ("bootstrap_expect", Kind::Int(0, 1024)),
    ("client_addr", Kind::Str),
    ("data_dir", Kind::Str),
    ("datacenter", Kind::Datacenter),
    ("default_query_time", Kind::Duration),
    ("disable_keyring_file", Kind::Bool),
    ("dns_config", Kind::Obj(DNS_CONFIG)),
    ("domain", Kind::Str),
    ("enable_local_script_checks", Kind::Bool),
    ("enable_script_checks", Kind::Bool),
    ("enable_syslog", Kind::Bool),
    ("encrypt", Kind::GossipKey),
    ("encrypt_verify_incoming", Kind::Bool),
    ("encrypt_verify_outgoing", Kind::Bool),
    ("leave_on_terminate", Kind::Bool),
    ("limits", Kind::Obj(LIMITS)),
    ("log_json", Kind::Bool),
    ("log_level", Kind::LogLevel),
    ("max_query_time", Kind::Duration),
    ("node_id", Kind::Str),
    ("node_meta", Kind::AnyObj),
    ("node_name", Kind::Str),
    ("performance", Kind::Obj(PERFORMANCE)),
    ("ports", Kind::Obj(PORTS)),
    ("reconnect_timeout", Kind::Duration),
    ("recursors", Kind::StrList),
    ("rejoin_after_leave", Kind::Bool),
    ("retry_interval", Kind::Duration),
    ("retry_join", Kind::StrList),
    ("retry_max", Kind::Int(0, i64::MAX)),
    ("server", Kind::Bool),
    ("session_ttl_min", Kind::Duration),
    ("skip_leave_on_interrupt", Kind::Bool),
    ("start_join", Kind::StrList),
    ("syslog_facility", Kind::Str),
    ("telemetry", Kind::AnyObj),
    ("ui", Kind::Bool),
    ("ui_config", Kind::AnyObj),
    ("watches", Kind::ObjList),
];

/// One configuration source, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Dir(PathBuf),
}

/// The merged, validated configuration.
#[allow(dead_code)] // some keys are accepted and shown, not acted on yet
#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub node_name: String,
    pub node_id: Option<String>,
    pub datacenter: String,
    pub data_dir: Option<PathBuf>,
    pub server: bool,
    pub bootstrap: bool,
    pub bootstrap_expect: u64,
    pub client_addr: String,
    pub bind_addr: String,
    pub advertise_addr: Option<String>,
    pub http_addr: Option<String>,
    pub http_port: i64,
    pub dns_port: i64,
    pub serf_lan_port: i64,
    pub serf_wan_port: i64,
    pub server_port: i64,
    pub domain: String,
    pub encrypt: Option<String>,
    pub enable_syslog: bool,
    pub log_level: String,
    pub log_json: bool,
    pub leave_on_terminate: bool,
    pub skip_leave_on_interrupt: bool,
    pub rejoin_after_leave: bool,
    pub start_join: Vec<String>,
    pub retry_join: Vec<String>,
    pub retry_interval: Duration,
    pub raft_multiplier: u64,
    pub kv_max_value_size: u64,
    pub http_max_conns_per_client: u64,
    pub default_query_time: Duration,
    pub max_query_time: Duration,
    pub ui: bool,
    pub watches: Vec<Value>,
    pub dns: DnsConfig,
    /// The merged JSON, for `/v1/agent/self`'s DebugConfig.
    pub raw: Value,
}

/// `addresses.dns` and the `dns_config` keys the DNS interface acts on.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// `addresses.dns`: overrides `client_addr` for the DNS listeners.
    pub addr: Option<String>,
    /// Set TC on a UDP answer that had to be trimmed.
    pub enable_truncate: bool,
    /// Answers in a UDP response to a query without EDNS (Consul's default 3).
    pub udp_answer_limit: usize,
    pub node_ttl: Duration,
    /// `service_ttl`: TTL per service name, `"*"` for any other.
    pub service_ttl: Vec<(String, Duration)>,
}

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    pub dev: bool,
    pub sources: Vec<Source>,
    /// Command-line flags as a config fragment (already in JSON-key form).
    pub flags: Map<String, Value>,
    /// `-pid-file`: where the agent writes its process id.
    pub pid_file: Option<PathBuf>,
}

/// Load and validate. Returns the config and the warnings (unknown keys...).
pub fn load(opts: &LoadOptions) -> Result<(Config, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut merged = Value::Object(Map::new());
    for src in &opts.sources {
        match src {
            Source::File(path) => {
                let v = read_file(path)?;
                check_source(&path.display().to_string(), &v, &mut warnings)?;
                merge(&mut merged, v);
            }
            Source::Dir(dir) => {
                for path in dir_files(dir)? {
                    let v = read_file(&path)?;
                    check_source(&path.display().to_string(), &v, &mut warnings)?;
                    merge(&mut merged, v);
                }
            }
        }
    }
    let flags = Value::Object(opts.flags.clone());
    check_source("command-line flags", &flags, &mut warnings)?;
    merge(&mut merged, flags);
    let cfg = build(opts.dev, merged)?;
    Ok((cfg, warnings))
}

/// The `*.json` files of a config directory in lexical order (no subdirectories).
pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("Error reading config directory {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("Error reading config directory {}: {e}", dir.display()))?;
        let path = entry.path();
        let is_file = std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false);
        if is_file && path.extension().and_then(|e| e.to_str()) == Some("json") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("Error reading config file {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("Error parsing {}: {e}", path.display()))?;
    if !v.is_object() {
        return Err(format!("Error parsing {}: the top level must be a JSON object", path.display()));
    }
    Ok(v)
}

/// Check one source against the schema.
pub fn check_source(name: &str, v: &Value, warnings: &mut Vec<String>) -> Result<(), String> {
    let obj = v.as_object().ok_or_else(|| format!("Error parsing {name}: the top level must be a JSON object"))?;
    check_obj(name, "", obj, SCHEMA, warnings)
}

fn check_obj(src: &str, path: &str, obj: &Map<String, Value>, schema: &[(&str, Kind)], warnings: &mut Vec<String>) -> Result<(), String> {
    for (k, v) in obj {
        let full = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        match schema.iter().find(|(n, _)| n == k) {
            None => warnings.push(format!("{src}: unknown config key {full:?} (ignored)")),
            Some((_, kind)) => check_value(src, &full, v, *kind, warnings)?,
        }
    }
    Ok(())
}

fn check_value(src: &str, key: &str, v: &Value, kind: Kind, warnings: &mut Vec<String>) -> Result<(), String> {
    let bad = |what: &str| Err(format!("Error in {src}: {key}: {what}, got {v}"));
    match kind {
        Kind::Bool => {
            if !v.is_boolean() {
                return bad("expected true or false");
            }
        }
        Kind::Str => {
            if !v.is_string() {
                return bad("expected a string");
            }
        }
        Kind::Int(lo, hi) => match v.as_i64() {
            Some(n) if n >= lo && n <= hi => {}
            Some(_) => return bad(&format!("expected an integer from {lo} to {hi}")),
            None => return bad("expected an integer"),
        },
        Kind::StrList => match v.as_array() {
            Some(a) if a.iter().all(Value::is_string) => {}
            _ => return bad("expected a list of strings"),
        },
        Kind::Duration => match v.as_str().and_then(parse_duration) {
            Some(_) => {}
            None => return bad("expected a duration such as \"30s\""),
        },
        Kind::LogLevel => match v.as_str() {
            Some(s) if log_level_directive(s).is_some() => {}
            _ => return bad("expected one of trace, debug, info, warn, error"),
        },
        Kind::GossipKey => match v.as_str() {
            Some(s) => match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(b) if matches!(b.len(), 16 | 24 | 32) => {}
                Ok(b) => return Err(format!("Error in {src}: {key}: the key must be 16, 24 or 32 bytes, got {} bytes", b.len())),
                Err(e) => return Err(format!("Error in {src}: {key}: the key is not valid base64: {e}")),
            },
            None => return bad("expected a base64 string"),
        },
        Kind::Datacenter => match v.as_str() {
            Some(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {}
            _ => return bad("expected a name of letters, digits, '-' and '_'"),
        },
        Kind::Obj(schema) => match v.as_object() {
            Some(o) => check_obj(src, key, o, schema, warnings)?,
            None => return bad("expected an object"),
        },
        Kind::ObjList => match v.as_array() {
            Some(a) if a.iter().all(Value::is_object) => {}
            _ => return bad("expected a list of objects"),
        },
        Kind::AnyObj => {
            if !v.is_object() {
                return bad("expected an object");
            }
        }
    }
    Ok(())
}

/// Merge `src` into `dst`: objects key by key, lists append, scalars replace.
pub fn merge(dst: &mut Value, src: Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(d), Value::Array(s)) => d.extend(s),
        (d, s) => *d = s,
    }
}

/// Consul's log level names to a tracing level name.
pub fn log_level_directive(s: &str) -> Option<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some("trace"),
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" | "warning" => Some("warn"),
        "err" | "error" => Some("error"),
        _ => None,
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn build(dev: bool, v: Value) -> Result<Config, String> {
    let s = |path: &[&str]| -> Option<String> { lookup(&v, path).and_then(Value::as_str).map(str::to_string) };
    let b = |path: &[&str], d: bool| lookup(&v, path).and_then(Value::as_bool).unwrap_or(d);
    let i = |path: &[&str], d: i64| lookup(&v, path).and_then(Value::as_i64).unwrap_or(d);
    let d = |path: &[&str], dflt: Duration| lookup(&v, path).and_then(Value::as_str).and_then(parse_duration).unwrap_or(dflt);
    let list = |path: &[&str]| -> Vec<String> {
        lookup(&v, path)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let server = b(&["server"], dev);
    let bootstrap = b(&["bootstrap"], false);
    let bootstrap_expect = i(&["bootstrap_expect"], 0) as u64;
    if bootstrap && bootstrap_expect > 0 {
        return Err("'bootstrap_expect' and 'bootstrap' are mutually exclusive".into());
    }
    if bootstrap_expect > 0 && !server {
        return Err("'bootstrap_expect' requires 'server' to be true".into());
    }
    let data_dir = s(&["data_dir"]).map(PathBuf::from);
    if !dev && data_dir.is_none() {
        return Err("data_dir cannot be empty (set \"data_dir\" in a config file or -data-dir)".into());
    }
    let node_name = s(&["node_name"]).unwrap_or_else(hostname);
    if node_name.is_empty() || node_name.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'') {
        return Err(format!("node_name {node_name:?} is not valid: no whitespace or quotes"));
    }
    let default_query_time = d(&["default_query_time"], Duration::from_secs(300));
    let max_query_time = d(&["max_query_time"], Duration::from_secs(600));
    let mut service_ttl = Vec::new();
    for (name, ttl) in lookup(&v, &["dns_config", "service_ttl"]).and_then(Value::as_object).into_iter().flatten() {
        match ttl.as_str().and_then(parse_duration) {
            Some(t) => service_ttl.push((name.to_lowercase(), t)),
            None => return Err(format!("dns_config.service_ttl.{name}: expected a duration such as \"30s\", got {ttl}")),
        }
    }
    let loopback = "127.0.0.1".to_string();
    Ok(Config {
        dev,
        node_name,
        node_id: s(&["node_id"]),
        datacenter: s(&["datacenter"]).unwrap_or_else(|| "dc1".into()).to_lowercase(),
        data_dir,
        server,
        bootstrap: bootstrap || (dev && bootstrap_expect == 0),
        bootstrap_expect,
        client_addr: s(&["client_addr"]).unwrap_or_else(|| loopback.clone()),
        bind_addr: s(&["bind_addr"]).unwrap_or_else(|| if dev { loopback.clone() } else { "0.0.0.0".into() }),
        advertise_addr: s(&["advertise_addr"]),
        http_addr: s(&["addresses", "http"]),
        http_port: i(&["ports", "http"], 8500),
        dns_port: i(&["ports", "dns"], 8600),
        serf_lan_port: i(&["ports", "serf_lan"], 8301),
        serf_wan_port: i(&["ports", "serf_wan"], 8302),
        server_port: i(&["ports", "server"], 8300),
        domain: s(&["domain"]).unwrap_or_else(|| "consul.".into()),
        encrypt: s(&["encrypt"]),
        enable_syslog: b(&["enable_syslog"], false),
        log_level: s(&["log_level"]).and_then(|l| log_level_directive(&l)).unwrap_or("info").to_string(),
        log_json: b(&["log_json"], false),
        leave_on_terminate: b(&["leave_on_terminate"], !server),
        skip_leave_on_interrupt: b(&["skip_leave_on_interrupt"], server),
        rejoin_after_leave: b(&["rejoin_after_leave"], false),
        start_join: list(&["start_join"]),
        retry_join: list(&["retry_join"]),
        retry_interval: d(&["retry_interval"], Duration::from_secs(30)),
        raft_multiplier: i(&["performance", "raft_multiplier"], 5) as u64,
        kv_max_value_size: i(&["limits", "kv_max_value_size"], 512 * 1024) as u64,
        http_max_conns_per_client: i(&["limits", "http_max_conns_per_client"], 200) as u64,
        default_query_time,
        max_query_time,
        ui: b(&["ui"], dev),
        watches: lookup(&v, &["watches"]).and_then(Value::as_array).cloned().unwrap_or_default(),
        dns: DnsConfig {
            addr: s(&["addresses", "dns"]),
            enable_truncate: b(&["dns_config", "enable_truncate"], false),
            udp_answer_limit: i(&["dns_config", "udp_answer_limit"], 3) as usize,
            node_ttl: d(&["dns_config", "node_ttl"], Duration::ZERO),
            service_ttl,
        },
        raw: v,
    })
}

fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

impl Config {
    /// The address the agent advertises to the cluster (server RPC and gossip).
    pub fn advertise_ip(&self) -> String {
        match &self.advertise_addr {
            Some(a) => a.clone(),
            None if self.bind_addr != "0.0.0.0" => self.bind_addr.clone(),
            None => "127.0.0.1".into(),
        }
    }

    /// Where the HTTP API listens.
    pub fn http_listen(&self) -> String {
        let host = self.http_addr.clone().unwrap_or_else(|| self.client_addr.split_whitespace().next().unwrap_or("127.0.0.1").to_string());
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.http_port)
        } else {
            format!("{host}:{}", self.http_port)
        }
    }

    /// Where the DNS interface listens: every address of `addresses.dns` or `client_addr`.
    pub fn dns_listen(&self) -> Vec<String> {
        let hosts = self.dns.addr.as_deref().unwrap_or(&self.client_addr);
        hosts
            .split_whitespace()
            .map(|h| if h.contains(':') && !h.starts_with('[') { format!("[{h}]:{}", self.dns_port) } else { format!("{h}:{}", self.dns_port) })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tribune-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(dir: &Path, name: &str, v: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, v).unwrap();
        p
    }

    #[test]
    fn walkthrough_config_loads() {
        let d = tmpdir("walk");
        write(
            &d,
            "config.json",
            r#"{ "bootstrap_expect": 3, "client_addr": "0.0.0.0", "bind_addr": "192.168.122.150",
              "datacenter": "KE-DC", "data_dir": "/var/lib/consul", "domain": "consul",
              "enable_script_checks": true, "dns_config": { "enable_truncate": true, "only_passing": true },
              "enable_syslog": true, "encrypt": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
              "leave_on_terminate": true, "log_level": "INFO", "rejoin_after_leave": true,
              "retry_join": ["consul01", "consul02", "consul03"], "server": true,
              "start_join": ["consul01", "consul02", "consul03"], "ui": true }"#,
        );
        let (cfg, warnings) = load(&LoadOptions { sources: vec![Source::Dir(d)], ..Default::default() }).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.datacenter, "ke-dc");
        assert_eq!(cfg.bootstrap_expect, 3);
        assert!(cfg.server && cfg.enable_syslog && cfg.ui);
        assert_eq!(cfg.retry_join.len(), 3);
        assert_eq!(cfg.log_level, "info");
        assert_eq!(cfg.http_listen(), "0.0.0.0:8500");
    }

    #[test]
    fn dir_is_lexical_json_only_later_wins_lists_append_flags_override() {
        let d = tmpdir("merge");
        write(&d, "b.json", r#"{"datacenter":"two","retry_join":["b"],"ports":{"dns":8601}}"#);
        write(&d, "a.json", r#"{"datacenter":"one","retry_join":["a"],"ports":{"http":9000},"data_dir":"/tmp/x"}"#);
        write(&d, "c.hcl", r#"datacenter = "hcl""#);
        write(&d, "z.txt", "not json");
        let mut flags = Map::new();
        flags.insert("ports".into(), json!({"http": 9100}));
        flags.insert("retry_join".into(), json!(["flag"]));
        let (cfg, _) = load(&LoadOptions { sources: vec![Source::Dir(d)], flags, dev: false, pid_file: None }).unwrap();
        assert_eq!(cfg.datacenter, "two");
        assert_eq!(cfg.retry_join, vec!["a", "b", "flag"]);
        assert_eq!(cfg.http_port, 9100);
        assert_eq!(cfg.dns_port, 8601);
        assert_eq!(cfg.data_dir, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn files_in_command_line_order() {
        let d = tmpdir("files");
        let one = write(&d, "1.json", r#"{"node_name":"first","dev_unknown":1}"#);
        let two = write(&d, "0.json", r#"{"node_name":"second"}"#);
        let (cfg, warnings) = load(&LoadOptions { sources: vec![Source::File(one), Source::File(two)], dev: true, ..Default::default() }).unwrap();
        assert_eq!(cfg.node_name, "second");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("1.json") && warnings[0].contains("dev_unknown"), "{warnings:?}");
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let d = tmpdir("bad");
        let cases = [
            (r#"{"ports":{"http":"eighty"}}"#, "ports.http"),
            (r#"{"ports":{"http":70000}}"#, "ports.http"),
            (r#"{"server":"yes"}"#, "server"),
            (r#"{"log_level":"loud"}"#, "log_level"),
            (r#"{"encrypt":"c2hvcnQ="}"#, "encrypt"),
            (r#"{"retry_interval":"30"}"#, "retry_interval"),
            (r#"{"retry_join":"a"}"#, "retry_join"),
            (r#"{"performance":{"raft_multiplier":11}}"#, "performance.raft_multiplier"),
            (r#"{"limits":{"kv_max_value_size":-1}}"#, "limits.kv_max_value_size"),
            (r#"{"datacenter":"a b"}"#, "datacenter"),
        ];
        for (text, key) in cases {
            let p = write(&d, "bad.json", text);
            let err = load(&LoadOptions { sources: vec![Source::File(p)], dev: true, ..Default::default() }).unwrap_err();
            assert!(err.contains("bad.json") && err.contains(key), "{text}: {err}");
        }
        let p = write(&d, "syntax.json", "{ nope");
        let err = load(&LoadOptions { sources: vec![Source::File(p)], dev: true, ..Default::default() }).unwrap_err();
        assert!(err.contains("syntax.json"), "{err}");
        let err = load(&LoadOptions { sources: vec![Source::Dir(d.join("missing"))], dev: true, ..Default::default() }).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn cross_checks() {
        let mut flags = Map::new();
        flags.insert("bootstrap".into(), json!(true));
        flags.insert("bootstrap_expect".into(), json!(3));
        flags.insert("server".into(), json!(true));
        assert!(load(&LoadOptions { flags, dev: true, ..Default::default() }).unwrap_err().contains("mutually exclusive"));
        assert!(load(&LoadOptions::default()).unwrap_err().contains("data_dir"));
        let (dev, _) = load(&LoadOptions { dev: true, ..Default::default() }).unwrap();
        assert!(dev.server && dev.bootstrap);
        assert_eq!(dev.bind_addr, "127.0.0.1");
        assert_eq!(dev.http_listen(), "127.0.0.1:8500");
        assert_eq!(dev.kv_max_value_size, 524288);
    }

    #[test]
    fn dns_addresses_and_settings() {
        let dev = |frag: Value| {
            let Value::Object(flags) = frag else { unreachable!() };
            load(&LoadOptions { flags, dev: true, ..Default::default() }).map(|(c, _)| c)
        };
        let cfg = dev(json!({"client_addr": "127.0.0.1 ::1", "dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s", "Web": "1m"}}})).unwrap();
        assert_eq!(cfg.dns_listen(), vec!["127.0.0.1:8600", "[::1]:8600"]);
        assert_eq!((cfg.dns.enable_truncate, cfg.dns.udp_answer_limit, cfg.dns.node_ttl), (false, 3, Duration::from_secs(10)));
        assert_eq!(cfg.dns.service_ttl, vec![("*".to_string(), Duration::from_secs(5)), ("web".to_string(), Duration::from_secs(60))]);
        let cfg = dev(json!({"addresses": {"dns": "127.0.0.2"}, "ports": {"dns": 53}, "dns_config": {"enable_truncate": true}})).unwrap();
        assert_eq!((cfg.dns_listen(), cfg.dns.enable_truncate), (vec!["127.0.0.2:53".to_string()], true));
        let err = dev(json!({"dns_config": {"service_ttl": {"web": "soon"}}})).unwrap_err();
        assert!(err.contains("dns_config.service_ttl.web"), "{err}");
    }
}
