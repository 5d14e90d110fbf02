//! Agent configuration: Consul's keys in JSON or HCL files, `-config-file` / `-config-dir`
//! loading and merging, command-line overrides, validation.
//!
//! An HCL file is first turned into the JSON tree the same settings take in a `.json` file
//! ([`hcl_to_json`]), so both go through the same checks and merge. Every source (file, or the
//! command line) is checked on its own against the schema, so an error names the file and the
//! key; unknown keys are reported as warnings. Sources are then merged in order: later scalars
//! win, lists append, objects merge key by key.

use std::ops::Range;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use hcl::edit::expr::Expression;
use hcl::edit::expr::ObjectKey;
use hcl::edit::expr::UnaryOperator;
use hcl::edit::structure::BlockLabel;
use hcl::edit::structure::Body;
use hcl::edit::structure::Structure;
use hcl::edit::template::Element;
use hcl::edit::template::Template;
use hcl::edit::Span;
use serde_json::Map;
use serde_json::Value;

use crate::flags::parse_duration;
use crate::watch_spec::WatchError;

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
    /// An object, or a list of them (`service`, `check`: one block, or repeated blocks).
    OneOrMany,
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

const ADDRESSES: &[(&str, Kind)] = &[
    ("http", Kind::Str),
    ("https", Kind::Str),
    ("dns", Kind::Str),
    ("grpc", Kind::Str),
];

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
    ("soa", Kind::Obj(DNS_SOA)),
    ("use_cache", Kind::Bool),
    ("cache_max_age", Kind::Duration),
    ("enable_additional_node_meta_txt", Kind::Bool),
];

const DNS_SOA: &[(&str, Kind)] = &[
    ("refresh", Kind::Int(0, u32::MAX as i64)),
    ("retry", Kind::Int(0, u32::MAX as i64)),
    ("expire", Kind::Int(0, u32::MAX as i64)),
    ("min_ttl", Kind::Int(0, u32::MAX as i64)),
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
    ("check", Kind::OneOrMany),
    ("checks", Kind::ObjList),
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
    ("raft_snapshot_threshold", Kind::Int(1, 1 << 40)),
    ("raft_snapshot_interval", Kind::Duration),
    ("reconnect_timeout", Kind::Duration),
    ("recursors", Kind::StrList),
    ("rejoin_after_leave", Kind::Bool),
    ("retry_interval", Kind::Duration),
    ("retry_join", Kind::StrList),
    ("retry_max", Kind::Int(0, i64::MAX)),
    ("server", Kind::Bool),
    ("service", Kind::OneOrMany),
    ("services", Kind::ObjList),
    ("session_ttl_min", Kind::Duration),
    ("skip_leave_on_interrupt", Kind::Bool),
    ("start_join", Kind::StrList),
    ("syslog_facility", Kind::Str),
    ("telemetry", Kind::AnyObj),
    ("ui", Kind::Bool),
    ("ui_config", Kind::AnyObj),
    ("watches", Kind::ObjList),
];

/// Keys (paths joined with `.`) that are checked and then do nothing yet: the agent reads
/// them nowhere (a few are only shown back in `/v1/agent/self`'s DebugConfig). Each is
/// warned about, as an unknown key is, so no one counts on a setting that is not acted on.
pub const NO_EFFECT_YET: &[&str] = &[
    "addresses.grpc",
    "addresses.https",
    "advertise_addr_wan",
    "disable_keyring_file",
    "dns_config.allow_stale",
    "dns_config.cache_max_age",
    "dns_config.disable_compression",
    "dns_config.max_stale",
    "dns_config.recursor_strategy",
    "dns_config.use_cache",
    "encrypt_verify_incoming",
    "encrypt_verify_outgoing",
    "limits.rpc_max_burst",
    "limits.rpc_rate",
    "limits.txn_max_req_len",
    "performance.leave_drain_time",
    "performance.rpc_hold_timeout",
    "ports.grpc",
    "ports.grpc_tls",
    "ports.https",
    "reconnect_timeout",
    "retry_max",
    "syslog_facility",
    "telemetry",
    "ui",
    "ui_config",
];

/// One configuration source, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Dir(PathBuf),
}

/// How a config file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Hcl,
}

impl Format {
    /// `-config-format`'s values.
    pub fn from_flag(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "hcl" => Some(Format::Hcl),
            _ => None,
        }
    }

    /// By the file name's ending, as Consul tells them apart.
    fn of_file(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".json") {
            Some(Format::Json)
        } else if name.ends_with(".hcl") {
            Some(Format::Hcl)
        } else {
            None
        }
    }
}

const NOT_A_CONFIG_NAME: &str = "the name must end in .json or .hcl, or -config-format must be set";

/// Why the config did not load, by what the operator can fix. The texts are what the
/// agent prints (after `==> `) and what a failed reload reports.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file or directory cannot be read: check its path and permissions.
    #[error("Error reading config {what} {}: {source}", path.display())]
    Unreadable {
        /// `file` or `directory`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's name says neither JSON nor HCL: rename it, or give `-config-format`.
    #[error("Error reading config file {}: {NOT_A_CONFIG_NAME}", path.display())]
    UnknownFormat { path: PathBuf },
    /// A source is not valid JSON or HCL, or its top level is not an object: fix its syntax.
    #[error("Error parsing {source_name}: {reason}")]
    Syntax { source_name: String, reason: String },
    /// A setting has a value of the wrong kind or out of range: fix that value.
    #[error("Error in {source_name}: {key}: {reason}")]
    BadValue {
        source_name: String,
        key: String,
        reason: String,
    },
    /// The merged settings are invalid (they contradict each other, a required one is
    /// missing, a name is malformed): fix them.
    #[error("{0}")]
    Invalid(String),
    /// A `watches` entry is not a watch this agent can run: fix or remove it.
    #[error("Failed to compile watch: {0}")]
    Watch(#[from] WatchError),
}

/// An HCL text that does not convert, with where (line and column) when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HclError(String);

impl HclError {
    /// The same error, told at `place` (" at line L column C").
    fn at(self, place: &str) -> HclError {
        HclError(self.0 + place)
    }
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
    /// Script checks may be registered over HTTP and from config files.
    pub enable_script_checks: bool,
    /// Script checks may come from config files only.
    pub enable_local_script_checks: bool,
    pub skip_leave_on_interrupt: bool,
    pub rejoin_after_leave: bool,
    pub start_join: Vec<String>,
    pub retry_join: Vec<String>,
    pub retry_interval: Duration,
    pub raft_multiplier: u64,
    /// Log entries between two Raft snapshots (Consul's `raft_snapshot_threshold`).
    pub raft_snapshot_threshold: u64,
    /// How often a server checks whether a snapshot is due, staggered by up to as long
    /// again (Consul's `raft_snapshot_interval`).
    pub raft_snapshot_interval: Duration,
    pub kv_max_value_size: u64,
    pub http_max_conns_per_client: u64,
    pub default_query_time: Duration,
    pub max_query_time: Duration,
    pub ui: bool,
    pub watches: Vec<Value>,
    /// `service` and `services`: service definitions, read where they are registered.
    pub services: Vec<Value>,
    /// `check` and `checks`: check definitions.
    pub checks: Vec<Value>,
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
    /// `service_ttl`: TTL per service name (lowercase); a name ending in `*` is a prefix,
    /// the longest matching one applies when no exact name does (`"*"` matches any).
    pub service_ttl: Vec<(String, Duration)>,
    /// `only_passing`: leave out instances with a warning check too (critical ones always
    /// are).
    pub only_passing: bool,
    /// `a_record_limit`: at most this many A/AAAA answers for a service (0: no limit).
    pub a_record_limit: usize,
    /// `enable_additional_node_meta_txt`: node meta as TXT records in the additional
    /// section of node A/AAAA and service SRV answers (Consul's default: on).
    pub node_meta_txt: bool,
    /// `soa`: the zone's SOA timers, in seconds.
    pub soa: SoaConfig,
    /// Top-level `recursors`, each `ip[:port]` (port 53 by default), tried in order for
    /// names outside the domain.
    pub recursors: Vec<std::net::SocketAddr>,
    /// `recursor_timeout`: how long one recursor gets to answer (Consul's default 2s).
    pub recursor_timeout: Duration,
}

/// `dns_config.soa`, with Consul's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoaConfig {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// The negative-caching TTL, and the SOA record's own TTL.
    pub min_ttl: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

impl Default for DnsConfig {
    /// Consul's defaults.
    fn default() -> Self {
        DnsConfig {
            addr: None,
            enable_truncate: false,
            udp_answer_limit: 3,
            node_ttl: Duration::ZERO,
            service_ttl: Vec::new(),
            only_passing: false,
            a_record_limit: 0,
            node_meta_txt: true,
            soa: SoaConfig::default(),
            recursors: Vec::new(),
            recursor_timeout: Duration::from_secs(2),
        }
    }
}

/// A recursor's address as Consul takes it: `ip`, `ip:port` or `[ipv6]:port`.
fn recursor_addr(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let ip: std::net::IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(std::net::SocketAddr::new(ip, 53))
}

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    pub dev: bool,
    pub sources: Vec<Source>,
    /// Command-line flags as a config fragment (already in JSON-key form).
    pub flags: Map<String, Value>,
    /// `-config-format`: read every config file as this, whatever its name.
    pub format: Option<Format>,
    /// `-pid-file`: where the agent writes its process id.
    pub pid_file: Option<PathBuf>,
}

/// Load and validate. Returns the config and the warnings (unknown keys...).
pub fn load(opts: &LoadOptions) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let mut merged = Value::Object(Map::new());
    for src in &opts.sources {
        match src {
            Source::File(path) => {
                let Some(format) = opts.format.or_else(|| Format::of_file(path)) else {
                    return Err(ConfigError::UnknownFormat { path: path.clone() });
                };
                let v = read_file(path, format)?;
                check_source(&path.display().to_string(), &v, &mut warnings)?;
                merge(&mut merged, v);
            }
            Source::Dir(dir) => {
                for path in dir_files(dir)? {
                    let Some(format) = opts.format.or_else(|| Format::of_file(&path)) else {
                        let p = path.display();
                        warnings.push(format!("{p}: not read as config: {NOT_A_CONFIG_NAME}"));
                        continue;
                    };
                    let v = read_file(&path, format)?;
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

/// The files of a config directory in lexical order (no subdirectories); which of them are
/// config is for the caller to say.
pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        what: "directory",
        path: dir.to_path_buf(),
        source,
    };
    let rd = std::fs::read_dir(dir).map_err(unreadable)?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path();
        let is_file = std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if is_file {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(path: &Path, format: Format) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        what: "file",
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |reason: String| ConfigError::Syntax {
        source_name: path.display().to_string(),
        reason,
    };
    // As in Consul, whose HCL reader takes JSON too: HCL text that opens with `{` is JSON.
    let v = match format {
        Format::Hcl if !text.trim_start().starts_with('{') => {
            hcl_to_json(&text).map_err(|e| syntax(e.to_string()))?
        }
        _ => serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?,
    };
    if !v.is_object() {
        return Err(syntax(TOP_LEVEL.to_string()));
    }
    Ok(v)
}

/// Why a source whose top level is not an object is refused.
const TOP_LEVEL: &str = "the top level must be a JSON object";

/// Check one source against the schema.
pub fn check_source(name: &str, v: &Value, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let obj = v.as_object().ok_or_else(|| ConfigError::Syntax {
        source_name: name.to_string(),
        reason: TOP_LEVEL.to_string(),
    })?;
    check_obj(name, "", obj, SCHEMA, warnings)
}

fn check_obj(
    src: &str,
    path: &str,
    obj: &Map<String, Value>,
    schema: &[(&str, Kind)],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (k, v) in obj {
        let full = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match schema.iter().find(|(n, _)| n == k) {
            None => warnings.push(format!("{src}: unknown config key {full:?} (ignored)")),
            Some((_, kind)) => {
                check_value(src, &full, v, *kind, warnings)?;
                // A listener this agent does not have, turned off: just what it does.
                let off = full.starts_with("ports.") && v.as_i64() == Some(-1);
                if NO_EFFECT_YET.contains(&full.as_str()) && !off {
                    warnings.push(format!(
                        "{src}: config key {full:?} is accepted but has no effect yet (ignored)"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_value(
    src: &str,
    key: &str,
    v: &Value,
    kind: Kind,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let refused = |reason: String| ConfigError::BadValue {
        source_name: src.to_string(),
        key: key.to_string(),
        reason,
    };
    let bad = |what: &str| Err(refused(format!("{what}, got {v}")));
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
                Ok(b) => {
                    return Err(refused(format!(
                        "the key must be 16, 24 or 32 bytes, got {} bytes",
                        b.len()
                    )))
                }
                Err(e) => return Err(refused(format!("the key is not valid base64: {e}"))),
            },
            None => return bad("expected a base64 string"),
        },
        Kind::Datacenter => match v.as_str() {
            Some(s)
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {}
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
        Kind::OneOrMany => match v {
            Value::Object(_) => {}
            Value::Array(a) if a.iter().all(Value::is_object) => {}
            _ => return bad("expected an object or a list of objects"),
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

/// The objects under `one` (an object or a list of them) and `many` (a list), in that order.
fn one_or_many(v: &Value, one: &str, many: &str) -> Vec<Value> {
    let mut out = Vec::new();
    match lookup(v, &[one]) {
        Some(Value::Array(a)) => out.extend(a.iter().cloned()),
        Some(o @ Value::Object(_)) => out.push(o.clone()),
        _ => {}
    }
    if let Some(Value::Array(a)) = lookup(v, &[many]) {
        out.extend(a.iter().cloned());
    }
    out
}

/// HCL blocks (and `key = { ... }` objects, which Consul's HCL reads the same) that are list
/// entries, by key path (keys joined with `.`, list positions left out): `watches { ... }` is
/// `"watches": [{...}]`, and two `checks { ... }` blocks are a list of two. These are the
/// list-valued keys of Consul's config whose items are objects.
const HCL_LIST_KEYS: &[&str] = &[
    "checks",
    "services",
    "watches",
    "service.checks",
    "services.checks",
];

/// Where one block is an object (`service { ... }` is `"service": {...}`) and repeated blocks
/// are a list of them in order (two services, not one merged). Any other repeated block
/// merges into one object, as two files' objects do.
const HCL_ONE_OR_MANY_KEYS: &[&str] = &["check", "service", "service.check", "services.check"];

/// Convert an HCL config file into the JSON tree the same settings take in a `.json` file.
/// Block labels nest (`a "b" { ... }` is `a { b { ... } }`). As in Consul's HCL, `${...}` is not
/// interpolated: a string keeps it as written. Errors end with the line and column.
pub fn hcl_to_json(text: &str) -> Result<Value, HclError> {
    hcl_nesting_within(text, HCL_NESTING_MAX)?;
    let body = hcl::edit::parser::parse_body(text).map_err(|e| {
        let at = e.location();
        HclError(format!(
            "{} at line {} column {}",
            e.message(),
            at.line(),
            at.column()
        ))
    })?;
    let mut out = Map::new();
    hcl_body(text, &body, "", &mut out)?;
    Ok(Value::Object(out))
}

/// How deep brackets, braces, parentheses, strings and `${...}` may nest in an HCL file. Real
/// configs nest a few levels (a sidecar proxy's upstream config inside a service is about
/// eight). The parser stops at 64, but its time on some unclosed forms grows steeply with
/// depth: the config fuzz target found files of about 300 bytes that took over 10 s, one of
/// nested objects under expression keys, one of 21 unclosed objects under comparisons
/// (about 1.8 times longer per level; 16 levels take 1.5 s in the instrumented fuzz build),
/// so deeper text is refused before it is parsed.
pub const HCL_NESTING_MAX: usize = 16;

/// Refuse `text` if its nesting goes deeper than `max`, saying where. A lexical scan: it knows
/// strings, templates, comments and heredocs, and leaves every other error to the parser.
fn hcl_nesting_within(text: &str, max: usize) -> Result<(), HclError> {
    #[derive(PartialEq)]
    enum Open {
        Code(u8),
        Str,
    }
    let b = text.as_bytes();
    let mut stack: Vec<Open> = Vec::new();
    let mut i = 0;
    let too_deep = |i: usize| {
        let place = at(text, Some(i..i));
        HclError(format!("nesting deeper than {max} levels{place}"))
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if stack.last() == Some(&Open::Str) {
            match (c, next) {
                (b'\\', _) | (b'$', Some(b'$')) | (b'%', Some(b'%')) => i += 1,
                (b'"', _) => {
                    stack.pop();
                }
                (b'$' | b'%', Some(b'{')) => {
                    stack.push(Open::Code(b'}'));
                    i += 1;
                }
                _ => {}
            }
        } else {
            match (c, next) {
                (b'#', _) | (b'/', Some(b'/')) => {
                    i = b[i..]
                        .iter()
                        .position(|&x| x == b'\n')
                        .map_or(b.len(), |p| i + p);
                }
                (b'/', Some(b'*')) => {
                    i = text[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 1);
                }
                (b'<', Some(b'<')) => i = heredoc_end(text, i),
                (b'"', _) => stack.push(Open::Str),
                (b'{', _) => stack.push(Open::Code(b'}')),
                (b'[', _) => stack.push(Open::Code(b']')),
                (b'(', _) => stack.push(Open::Code(b')')),
                (b'}' | b']' | b')', _) => {
                    let matched = stack.pop() == Some(Open::Code(c));
                    if !matched {
                        return Ok(()); // unbalanced: the parser says where
                    }
                }
                _ => {}
            }
        }
        if stack.len() > max {
            return Err(too_deep(i));
        }
        i += 1;
    }
    Ok(())
}

/// Where the scan goes on after `<<` at `start`: past the heredoc's closing line when it is
/// one (`<<ID` or `<<-ID` and a newline), else just past the `<<`.
fn heredoc_end(text: &str, start: usize) -> usize {
    let rest = &text[start + 2..];
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let id_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    let (id, after) = rest.split_at(id_len);
    let Some(body) = after
        .strip_prefix('\n')
        .or_else(|| after.strip_prefix("\r\n"))
    else {
        return start + 1;
    };
    if id.is_empty() {
        return start + 1;
    }
    let body_at = text.len() - body.len();
    let mut line_at = body_at;
    for line in body.split_inclusive('\n') {
        line_at += line.len();
        if line.trim() == id {
            return line_at - 1;
        }
    }
    text.len()
}

fn key_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// " at line L column C" of a span of `text`.
fn at(text: &str, span: Option<Range<usize>>) -> String {
    let Some(start) = span.map(|s| s.start.min(text.len())) else {
        return String::new();
    };
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(" at line {line} column {column}")
}

fn hcl_body(
    text: &str,
    body: &Body,
    path: &str,
    out: &mut Map<String, Value>,
) -> Result<(), HclError> {
    for s in body.iter() {
        let (key, v) = match s {
            Structure::Attribute(a) => {
                let key = a.key.as_str();
                (key, hcl_expr(text, &a.value, &key_path(path, key))?)
            }
            Structure::Block(b) => {
                let key = b.ident.as_str();
                let labels: Vec<&str> = b.labels.iter().map(BlockLabel::as_str).collect();
                let inner_path = labels
                    .iter()
                    .fold(key_path(path, key), |p, l| key_path(&p, l));
                let mut inner = Map::new();
                hcl_body(text, &b.body, &inner_path, &mut inner)?;
                let v = labels.iter().rev().fold(Value::Object(inner), |v, l| {
                    Value::Object(Map::from_iter([(l.to_string(), v)]))
                });
                (key, v)
            }
        };
        hcl_put(out, key, &key_path(path, key), v).map_err(|e| e.at(&at(text, s.span())))?;
    }
    Ok(())
}

/// Add `key` (at `path`) to an object being built, by the rules of [`HCL_LIST_KEYS`] and
/// [`HCL_ONE_OR_MANY_KEYS`].
fn hcl_put(out: &mut Map<String, Value>, key: &str, path: &str, v: Value) -> Result<(), HclError> {
    let list = HCL_LIST_KEYS.contains(&path);
    let one_or_many = HCL_ONE_OR_MANY_KEYS.contains(&path);
    let Some(old) = out.get_mut(key) else {
        let v = if list && v.is_object() {
            Value::Array(vec![v])
        } else {
            v
        };
        out.insert(key.to_string(), v);
        return Ok(());
    };
    match (old, v) {
        (Value::Array(a), v @ Value::Object(_)) if list || one_or_many => a.push(v),
        (Value::Array(a), Value::Array(b)) if list => a.extend(b),
        (old @ Value::Object(_), v @ Value::Object(_)) if one_or_many => {
            *old = Value::Array(vec![old.take(), v]);
        }
        (old @ Value::Object(_), v @ Value::Object(_)) => merge(old, v),
        _ => return Err(HclError(format!("{path}: set twice"))),
    }
    Ok(())
}

fn hcl_expr(text: &str, e: &Expression, path: &str) -> Result<Value, HclError> {
    let v = match e {
        Expression::Null(_) => Value::Null,
        Expression::Bool(b) => Value::Bool(*b.value()),
        Expression::Number(n) => {
            // As in JSON, a number written with a fraction or an exponent is a float.
            let written = n.span().map_or("", |r| &text[r]);
            let float = written.contains(['.', 'e', 'E']);
            let n = n.value();
            match (n.as_u64(), n.as_i64()) {
                (Some(u), _) if !float => Value::from(u),
                (_, Some(i)) if !float => Value::from(i),
                _ => n.as_f64().map_or(Value::Null, Value::from),
            }
        }
        Expression::String(s) => Value::String(s.value().clone()),
        Expression::Array(a) => {
            let items = a.iter().map(|x| hcl_expr(text, x, path));
            Value::Array(items.collect::<Result<_, _>>()?)
        }
        Expression::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o.iter() {
                let key = match k {
                    ObjectKey::Ident(i) => i.as_str(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().as_str(),
                    ObjectKey::Expression(x) => {
                        let what = "an object key must be a name or a quoted string";
                        return Err(HclError(format!("{path}: {what}{}", at(text, x.span()))));
                    }
                };
                let p = key_path(path, key);
                let value = hcl_expr(text, v.expr(), &p)?;
                hcl_put(&mut out, key, &p, value).map_err(|e| e.at(&at(text, k.span())))?;
            }
            Value::Object(out)
        }
        Expression::StringTemplate(t) => Value::String(template_text(text, t)),
        Expression::HeredocTemplate(h) => Value::String(template_text(text, &h.template)),
        Expression::Parenthesis(p) => hcl_expr(text, p.inner(), path)?,
        Expression::UnaryOp(op) if *op.operator.value() == UnaryOperator::Neg => {
            let negated = match hcl_expr(text, &op.expr, path)? {
                Value::Number(n) if n.is_f64() => n.as_f64().map(|f| Value::from(-f)),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => i.checked_neg().map(Value::from),
                    None => (n.as_u64() == Some(1 << 63)).then_some(Value::from(i64::MIN)),
                },
                _ => None,
            };
            let what = "expected a number after '-'";
            negated.ok_or_else(|| HclError(format!("{path}: {what}{}", at(text, e.span()))))?
        }
        _ => {
            let what = "expected a value (variables, functions and operators are not supported)";
            return Err(HclError(format!("{path}: {what}{}", at(text, e.span()))));
        }
    };
    Ok(v)
}

/// A template's text as written: literal parts unescaped, `${...}` and `%{...}` kept.
fn template_text(text: &str, t: &Template) -> String {
    let mut s = String::new();
    for el in t.iter() {
        match el {
            Element::Literal(l) => s.push_str(l.value()),
            other => s.push_str(other.span().map_or("", |r| &text[r])),
        }
    }
    s
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

fn build(dev: bool, v: Value) -> Result<Config, ConfigError> {
    let invalid = |msg: String| Err(ConfigError::Invalid(msg));
    let s = |path: &[&str]| -> Option<String> {
        lookup(&v, path).and_then(Value::as_str).map(str::to_string)
    };
    let b = |path: &[&str], d: bool| lookup(&v, path).and_then(Value::as_bool).unwrap_or(d);
    let i = |path: &[&str], d: i64| lookup(&v, path).and_then(Value::as_i64).unwrap_or(d);
    let d = |path: &[&str], dflt: Duration| {
        lookup(&v, path)
            .and_then(Value::as_str)
            .and_then(parse_duration)
            .unwrap_or(dflt)
    };
    let list = |path: &[&str]| -> Vec<String> {
        lookup(&v, path)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let server = b(&["server"], dev);
    let bootstrap = b(&["bootstrap"], false);
    let bootstrap_expect = i(&["bootstrap_expect"], 0) as u64;
    if bootstrap && bootstrap_expect > 0 {
        return invalid("'bootstrap_expect' and 'bootstrap' are mutually exclusive".into());
    }
    if bootstrap_expect > 0 && !server {
        return invalid("'bootstrap_expect' requires 'server' to be true".into());
    }
    let data_dir = s(&["data_dir"]).map(PathBuf::from);
    if !dev && data_dir.is_none() {
        return invalid(
            "data_dir cannot be empty (set \"data_dir\" in a config file or -data-dir)".into(),
        );
    }
    let node_name = s(&["node_name"]).unwrap_or_else(hostname);
    if node_name.is_empty()
        || node_name
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        return invalid(format!(
            "node_name {node_name:?} is not valid: no whitespace or quotes"
        ));
    }
    let default_query_time = d(&["default_query_time"], Duration::from_secs(300));
    let max_query_time = d(&["max_query_time"], Duration::from_secs(600));
    let mut service_ttl = Vec::new();
    for (name, ttl) in lookup(&v, &["dns_config", "service_ttl"])
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match ttl.as_str().and_then(parse_duration) {
            Some(t) => service_ttl.push((name.to_lowercase(), t)),
            None => {
                return invalid(format!(
                    "dns_config.service_ttl.{name}: expected a duration such as \"30s\", got {ttl}"
                ))
            }
        }
    }
    let mut soa = SoaConfig::default();
    for (key, field) in [
        ("refresh", &mut soa.refresh),
        ("retry", &mut soa.retry),
        ("expire", &mut soa.expire),
        ("min_ttl", &mut soa.min_ttl),
    ] {
        let Some(x) = lookup(&v, &["dns_config", "soa", key]) else {
            continue;
        };
        match x.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => *field = n,
            None => {
                return invalid(format!(
                    "dns_config.soa.{key}: expected a number of seconds, got {x}"
                ))
            }
        }
    }
    let mut recursors = Vec::new();
    for r in list(&["recursors"]) {
        match recursor_addr(&r) {
            Some(a) => recursors.push(a),
            None => return invalid(format!("Invalid recursor address: {r:?}")),
        }
    }
    let loopback = "127.0.0.1".to_string();
    Ok(Config {
        dev,
        node_name,
        node_id: s(&["node_id"]),
        datacenter: s(&["datacenter"])
            .unwrap_or_else(|| "dc1".into())
            .to_lowercase(),
        data_dir,
        server,
        bootstrap: bootstrap || (dev && bootstrap_expect == 0),
        bootstrap_expect,
        client_addr: s(&["client_addr"]).unwrap_or_else(|| loopback.clone()),
        bind_addr: s(&["bind_addr"]).unwrap_or_else(|| {
            if dev {
                loopback.clone()
            } else {
                "0.0.0.0".into()
            }
        }),
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
        log_level: s(&["log_level"])
            .and_then(|l| log_level_directive(&l))
            .unwrap_or("info")
            .to_string(),
        log_json: b(&["log_json"], false),
        leave_on_terminate: b(&["leave_on_terminate"], !server),
        enable_script_checks: b(&["enable_script_checks"], false),
        enable_local_script_checks: b(&["enable_local_script_checks"], false),
        skip_leave_on_interrupt: b(&["skip_leave_on_interrupt"], server),
        rejoin_after_leave: b(&["rejoin_after_leave"], false),
        start_join: list(&["start_join"]),
        retry_join: list(&["retry_join"]),
        retry_interval: d(&["retry_interval"], Duration::from_secs(30)),
        raft_multiplier: i(&["performance", "raft_multiplier"], 5) as u64,
        raft_snapshot_threshold: i(&["raft_snapshot_threshold"], 16_384) as u64,
        raft_snapshot_interval: d(&["raft_snapshot_interval"], Duration::from_secs(30)),
        kv_max_value_size: i(&["limits", "kv_max_value_size"], 512 * 1024) as u64,
        http_max_conns_per_client: i(&["limits", "http_max_conns_per_client"], 200) as u64,
        default_query_time,
        max_query_time,
        ui: b(&["ui"], dev),
        watches: lookup(&v, &["watches"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        services: one_or_many(&v, "service", "services"),
        checks: one_or_many(&v, "check", "checks"),
        dns: DnsConfig {
            addr: s(&["addresses", "dns"]),
            enable_truncate: b(&["dns_config", "enable_truncate"], false),
            udp_answer_limit: i(&["dns_config", "udp_answer_limit"], 3) as usize,
            node_ttl: d(&["dns_config", "node_ttl"], Duration::ZERO),
            service_ttl,
            only_passing: b(&["dns_config", "only_passing"], false),
            a_record_limit: i(&["dns_config", "a_record_limit"], 0) as usize,
            node_meta_txt: b(&["dns_config", "enable_additional_node_meta_txt"], true),
            soa,
            recursors,
            recursor_timeout: d(&["dns_config", "recursor_timeout"], Duration::from_secs(2)),
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
        let host = self.http_addr.clone().unwrap_or_else(|| {
            self.client_addr
                .split_whitespace()
                .next()
                .unwrap_or("127.0.0.1")
                .to_string()
        });
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
            .map(|h| {
                if h.contains(':') && !h.starts_with('[') {
                    format!("[{h}]:{}", self.dns_port)
                } else {
                    format!("{h}:{}", self.dns_port)
                }
            })
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
              "enable_script_checks": true,
              "dns_config": { "enable_truncate": true, "only_passing": true },
              "enable_syslog": true, "encrypt": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
              "leave_on_terminate": true, "log_level": "INFO", "rejoin_after_leave": true,
              "retry_join": ["consul01", "consul02", "consul03"], "server": true,
              "start_join": ["consul01", "consul02", "consul03"], "ui": true }"#,
        );
        let (cfg, warnings) = load(&LoadOptions {
            sources: vec![Source::Dir(d.clone())],
            ..Default::default()
        })
        .unwrap();
        // One of the walkthrough's keys (ui) is not acted on yet: warned about, and it starts.
        let src = d.join("config.json").display().to_string();
        let no_effect = |k: &str| {
            format!("{src}: config key {k:?} is accepted but has no effect yet (ignored)")
        };
        assert_eq!(warnings, ["ui"].map(no_effect),);
        assert!(cfg.enable_script_checks && !cfg.enable_local_script_checks);
        assert_eq!(cfg.datacenter, "ke-dc");
        assert_eq!(cfg.bootstrap_expect, 3);
        assert!(cfg.server && cfg.enable_syslog && cfg.ui);
        assert_eq!(cfg.retry_join.len(), 3);
        assert_eq!(cfg.log_level, "info");
        assert_eq!(cfg.http_listen(), "0.0.0.0:8500");
    }

    /// A key that is checked but not acted on yet is warned about, as an unknown key is;
    /// one the agent acts on (node_meta: `/v1/agent/self`'s Meta; services and checks) is
    /// not.
    #[test]
    fn keys_with_no_effect_yet_are_warned() {
        let d = tmpdir("noeffect");
        let p = write(
            &d,
            "a.json",
            r#"{"node_meta": {"rack": "r1"}, "recursors": ["8.8.8.8"],
                "ui_config": {"enabled": true}, "telemetry": {"disable_hostname": true},
                "service": {"name": "web", "port": 80}, "services": [{"name": "db"}],
                "check": [{"id": "c1", "ttl": "30s"}], "checks": [{"id": "c2", "ttl": "5s"}],
                "dns_config": {"enable_truncate": true, "only_passing": true},
                "ports": {"http": 8500, "grpc": -1, "https": 8501}, "no_such_key": 1}"#,
        );
        let (_, warnings) = load_files(true, vec![p.clone()]).unwrap();
        let src = p.display();
        let no_effect = |k: &str| {
            format!("{src}: config key {k:?} is accepted but has no effect yet (ignored)")
        };
        let mut want: Vec<String> = ["ports.https", "telemetry", "ui_config"]
            .map(no_effect)
            .to_vec();
        want.push(format!(
            "{src}: unknown config key \"no_such_key\" (ignored)"
        ));
        want.sort();
        let mut got = warnings.clone();
        got.sort();
        assert_eq!(got, want);
        // A flag is a source too; a bad value of such a key is still refused.
        let mut flags = Map::new();
        flags.insert("ui".into(), json!(true));
        let opts = LoadOptions {
            dev: true,
            flags,
            ..Default::default()
        };
        let (_, warnings) = load(&opts).unwrap();
        assert_eq!(warnings, [no_effect_in("command-line flags", "ui")]);
        let p = write(&d, "b.json", r#"{"service": "web"}"#);
        let err = load_files(true, vec![p]).unwrap_err().to_string();
        assert!(err.contains(": service: expected an object"), "{err}");
        // Every key listed is one the schema knows.
        for key in NO_EFFECT_YET {
            let mut schema = SCHEMA;
            let mut parts = key.split('.').peekable();
            while let Some(part) = parts.next() {
                let kind = schema.iter().find(|(n, _)| *n == part).map(|(_, k)| *k);
                match (kind, parts.peek()) {
                    (Some(_), None) => {}
                    (Some(Kind::Obj(inner)), Some(_)) => schema = inner,
                    _ => panic!("{key} is not in the schema"),
                }
            }
        }
    }

    fn no_effect_in(src: &str, key: &str) -> String {
        format!("{src}: config key {key:?} is accepted but has no effect yet (ignored)")
    }

    #[test]
    fn dir_is_lexical_later_wins_lists_append_flags_override() {
        let d = tmpdir("merge");
        write(
            &d,
            "b.json",
            r#"{"datacenter":"two","retry_join":["b"],"ports":{"dns":8601}}"#,
        );
        write(
            &d,
            "a.json",
            r#"{"datacenter":"one","retry_join":["a"],"ports":{"http":9000},"data_dir":"/tmp/x"}"#,
        );
        write(&d, "c.hcl.bak", r#"datacenter = "hcl""#);
        write(&d, "z.txt", "not json");
        let mut flags = Map::new();
        flags.insert("ports".into(), json!({"http": 9100}));
        flags.insert("retry_join".into(), json!(["flag"]));
        let opts = LoadOptions {
            sources: vec![Source::Dir(d)],
            flags,
            ..Default::default()
        };
        let (cfg, warnings) = load(&opts).unwrap();
        // Files named neither .json nor .hcl are skipped, with a warning each, as in Consul.
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("c.hcl.bak") && warnings[1].contains("z.txt"),
            "{warnings:?}"
        );
        assert_eq!(cfg.datacenter, "two");
        assert_eq!(cfg.retry_join, vec!["a", "b", "flag"]);
        assert_eq!(cfg.http_port, 9100);
        assert_eq!(cfg.dns_port, 8601);
        assert_eq!(cfg.data_dir, Some(PathBuf::from("/tmp/x")));
    }

    fn load_files(dev: bool, files: Vec<PathBuf>) -> Result<(Config, Vec<String>), ConfigError> {
        let sources = files.into_iter().map(Source::File).collect();
        load(&LoadOptions {
            sources,
            dev,
            ..Default::default()
        })
    }

    /// Text nested past [`HCL_NESTING_MAX`] is refused before the parser sees it, with the
    /// place; nesting within it, and braces in strings, comments and heredocs, are not.
    #[test]
    fn hcl_nesting_is_bounded_before_parsing() {
        // Unclosed objects under parenthesised keys: the parser's worst case.
        let deep = |n: usize| format!("a = {}", "{(b) = ".repeat(n));
        let started = std::time::Instant::now();
        let e = hcl_to_json(&deep(HCL_NESTING_MAX)).unwrap_err().to_string();
        assert!(
            e.contains("nesting deeper than 16 levels at line 1 column"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let e = hcl_to_json(&format!("x = {}", "[".repeat(100)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nesting deeper"), "{e}");
        // A long, valid nesting within the bound still parses.
        let n = HCL_NESTING_MAX / 2 - 1;
        let ok = format!("a = {}1{}", "{b = ".repeat(n), "}".repeat(n));
        let v = hcl_to_json(&ok).unwrap();
        let mut at = &v["a"];
        for _ in 0..n {
            at = &at["b"];
        }
        assert_eq!(at, &Value::from(1));
        // Braces that are text do not count.
        let many = "{".repeat(40);
        let text = format!(
            "# {many}\n/* {many} */\nx = \"{many}\"\n\
             y = <<EOT\n{many}\nEOT\nz = <<-EOT\n  {many}\n  EOT\n"
        );
        let v = hcl_to_json(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(v["x"], Value::from(many.clone()));
        assert_eq!(v["z"], Value::from(format!("{many}\n")));
        // The fuzz target's second slow file (in its corpus): 21 unclosed objects under
        // comparisons.
        let slow = include_str!("../../fuzz/corpus/config_loader/slow-unclosed-comparisons");
        let started = std::time::Instant::now();
        let e = hcl_to_json(slow).unwrap_err().to_string();
        assert!(e.contains("nesting deeper than 16 levels"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Templates nest: `${` opens code inside a string.
        let e = hcl_to_json(&format!("x = \"{}\"", "${\"".repeat(30))).unwrap_err();
        assert!(e.to_string().contains("nesting deeper"), "{e}");
    }

    /// Each HCL form and its JSON equivalent: the same merged config, the same warnings.
    #[test]
    fn hcl_forms_load_as_their_json() {
        let cases: &[(&str, &str)] = &[
            (
                "datacenter = \"east\"\nnode_name = \"n1\"\nserver = true\nbootstrap_expect = 0",
                r#"{"datacenter": "east", "node_name": "n1", "server": true,
                    "bootstrap_expect": 0}"#,
            ),
            ("ports { dns = 8600 }", r#"{"ports": {"dns": 8600}}"#),
            (
                "ports = { http = 8501, dns = -1 }",
                r#"{"ports": {"http": 8501, "dns": -1}}"#,
            ),
            // Repeated blocks of an object-valued key merge.
            (
                r#"
                ports {
                  http = 1
                  dns = 2
                }
                ports {
                  dns = 3
                }"#,
                r#"{"ports": {"http": 1, "dns": 3}}"#,
            ),
            (
                "addresses { http = \"0.0.0.0\" }",
                r#"{"addresses": {"http": "0.0.0.0"}}"#,
            ),
            (
                r#"
                dns_config {
                  enable_truncate = true
                  service_ttl = { "*" = "5s", web = "1m" }
                }"#,
                r#"{"dns_config": {"enable_truncate": true,
                    "service_ttl": {"*": "5s", "web": "1m"}}}"#,
            ),
            (
                r#"
                recursors = ["8.8.8.8", "1.1.1.1:53"]
                dns_config {
                  only_passing = true
                  a_record_limit = 4
                  recursor_timeout = "1s"
                  enable_additional_node_meta_txt = false
                  soa {
                    refresh = 10
                    min_ttl = 5
                  }
                }"#,
                r#"{"recursors": ["8.8.8.8", "1.1.1.1:53"],
                    "dns_config": {"only_passing": true, "a_record_limit": 4,
                    "recursor_timeout": "1s", "enable_additional_node_meta_txt": false,
                    "soa": {"refresh": 10, "min_ttl": 5}}}"#,
            ),
            (
                "performance { raft_multiplier = 1 }",
                r#"{"performance": {"raft_multiplier": 1}}"#,
            ),
            (
                "limits {\n  http_max_conns_per_client = 10\n  rpc_max_burst = 5\n}",
                r#"{"limits": {"http_max_conns_per_client": 10, "rpc_max_burst": 5}}"#,
            ),
            (
                "retry_join = [\"a\", \"b\"]",
                r#"{"retry_join": ["a", "b"]}"#,
            ),
            (
                "node_meta {\n  rack = \"r1\"\n  instance-type = \"t2\"\n}",
                r#"{"node_meta": {"rack": "r1", "instance-type": "t2"}}"#,
            ),
            // Labels nest, as Consul reads them.
            (
                "telemetry \"statsd\" { addr = \"x\" }",
                r#"{"telemetry": {"statsd": {"addr": "x"}}}"#,
            ),
            (
                r#"
                service {
                  name = "web"
                  port = 80
                  check {
                    http = "http://l/h"
                    interval = "10s"
                  }
                  checks {
                    tcp = "l:80"
                  }
                  checks {
                    tcp = "l:81"
                  }
                }"#,
                r#"{"service": {"name": "web", "port": 80,
                    "check": {"http": "http://l/h", "interval": "10s"},
                    "checks": [{"tcp": "l:80"}, {"tcp": "l:81"}]}}"#,
            ),
            // Repeated `service` blocks are a list of services, not one merged service.
            (
                "service {\n  name = \"web\"\n}\nservice {\n  name = \"db\"\n}\n",
                r#"{"service": [{"name": "web"}, {"name": "db"}]}"#,
            ),
            (
                r#"
                services {
                  name = "a"
                  checks = [{ ttl = "5s" }]
                }
                services {
                  name = "b"
                }"#,
                r#"{"services": [{"name": "a", "checks": [{"ttl": "5s"}]}, {"name": "b"}]}"#,
            ),
            (
                "check {\n  id = \"c1\"\n  ttl = \"30s\"\n}",
                r#"{"check": {"id": "c1", "ttl": "30s"}}"#,
            ),
            (
                "checks {\n  id = \"c1\"\n}\nchecks {\n  id = \"c2\"\n}",
                r#"{"checks": [{"id": "c1"}, {"id": "c2"}]}"#,
            ),
            (
                r#"
                watches = [
                  {
                    type = "key"
                    key = "a"
                    args = ["x"]
                  }
                ]"#,
                r#"{"watches": [{"type": "key", "key": "a", "args": ["x"]}]}"#,
            ),
            // The block form, after the list form: one list, in order.
            (
                r#"
                watches = [{ type = "key", key = "a", args = ["x"] }]
                watches {
                  type = "keyprefix"
                  prefix = "p/"
                  handler_type = "http"
                  http_handler_config {
                    path = "http://h/"
                    header = { x-foo = ["bar"] }
                  }
                }"#,
                r#"{"watches": [{"type": "key", "key": "a", "args": ["x"]},
                    {"type": "keyprefix", "prefix": "p/", "handler_type": "http",
                     "http_handler_config": {"path": "http://h/",
                                             "header": {"x-foo": ["bar"]}}}]}"#,
            ),
            // No interpolation in Consul's HCL; escapes, heredocs and comments as HCL has them.
            (
                r#"
                # comment
                // comment
                /* comment */
                node_name = "n-${x}"
                domain = "a\"b$${y}"
                bind_addr = <<-EOT
                  127.0.0.1
                EOT"#,
                r#"{"node_name": "n-${x}", "domain": "a\"b${y}", "bind_addr": "127.0.0.1\n"}"#,
            ),
            (
                "ui_config { enabled = true }\nnothing = null",
                r#"{"ui_config": {"enabled": true}, "nothing": null}"#,
            ),
            // An .hcl file that holds JSON is read as JSON, as Consul's HCL reader does.
            (r#"  {"datacenter": "j"}"#, r#"{"datacenter": "j"}"#),
        ];
        let d = tmpdir("forms");
        for (i, (hcl, json)) in cases.iter().enumerate() {
            let h = write(&d, &format!("{i}.hcl"), hcl);
            let j = write(&d, &format!("{i}.json"), json);
            let (from_hcl, hcl_warnings) =
                load_files(true, vec![h]).unwrap_or_else(|e| panic!("{hcl}: {e}"));
            let (from_json, json_warnings) = load_files(true, vec![j]).unwrap();
            assert_eq!(from_hcl.raw, from_json.raw, "{hcl}");
            let hcl_warnings: Vec<String> = hcl_warnings
                .iter()
                .map(|w| w.replace(".hcl:", ".json:"))
                .collect();
            assert_eq!(hcl_warnings, json_warnings, "{hcl}");
        }
    }

    #[test]
    fn hcl_numbers_like_json() {
        let numbers = [
            ("1", "1"),
            ("-3", "-3"),
            ("1.0", "1.0"),
            ("2e3", "2e3"),
            ("-0.5", "-0.5"),
        ];
        for (hcl, json) in numbers {
            let from_hcl = hcl_to_json(&format!("x = {hcl}")).unwrap();
            let from_json: Value = serde_json::from_str(&format!("{{\"x\": {json}}}")).unwrap();
            assert_eq!(from_hcl, from_json, "{hcl}");
        }
        let v = hcl_to_json("big = 18446744073709551615\nsmall = -9223372036854775808").unwrap();
        assert_eq!(v, json!({"big": u64::MAX, "small": i64::MIN}));
    }

    #[test]
    fn mixed_dir_merges_in_lexical_order() {
        let d = tmpdir("mixed");
        write(
            &d,
            "c.json",
            r#"{"node_name": "c", "retry_join": ["c"], "ports": {"dns": 3}}"#,
        );
        write(
            &d,
            "a.json",
            r#"{"node_name": "a", "retry_join": ["a"], "ports": {"http": 1}}"#,
        );
        let hcl =
            "node_name = \"b\"\nretry_join = [\"b\"]\nports {\n  dns = 2\n  serf_lan = 2\n}\n\
                   datacenter = \"b\"\n";
        write(&d, "b.hcl", hcl);
        let opts = LoadOptions {
            sources: vec![Source::Dir(d)],
            dev: true,
            ..Default::default()
        };
        let (cfg, warnings) = load(&opts).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.node_name, "c");
        assert_eq!(cfg.datacenter, "b");
        assert_eq!(cfg.retry_join, vec!["a", "b", "c"]);
        assert_eq!((cfg.http_port, cfg.dns_port, cfg.serf_lan_port), (1, 3, 2));
    }

    #[test]
    fn hcl_errors_name_file_line_and_key() {
        let d = tmpdir("hclbad");
        let syntax = [
            (
                "datacenter = \"dc1\"\n\nports {\n  http = \n}\n",
                "line 4 column 10",
            ),
            ("server = true\nserver = false\n", "line 2 column 1"),
            ("service { name = \"web\" port = 80 }", "line 1 column 24"),
            ("ports {\n  http = 80\n", "line 2"),
            ("datacenter = dc1", "line 1 column 14"),
            ("node_meta {\n  k = upper(\"v\")\n}", "line 2 column 7"),
            ("ports = 1\nports {\n  http = 1\n}", "line 2 column 1"),
        ];
        for (text, place) in syntax {
            let p = write(&d, "bad.hcl", text);
            let err = load_files(true, vec![p]).unwrap_err().to_string();
            assert!(
                err.starts_with("Error parsing ") && err.contains("bad.hcl"),
                "{text}: {err}"
            );
            assert!(err.contains(place), "{text}: {err}");
        }
        let values = [
            ("ports { http = \"eighty\" }", "ports.http"),
            ("ports {\n  http = 70000\n}", "ports.http"),
            ("server = \"yes\"", "server"),
            ("retry_join = \"a\"", "retry_join"),
            (
                "performance { raft_multiplier = 11 }",
                "performance.raft_multiplier",
            ),
            (
                "limits { kv_max_value_size = -1 }",
                "limits.kv_max_value_size",
            ),
            ("watches = \"x\"", "watches"),
            ("datacenter = \"a b\"", "datacenter"),
        ];
        for (text, key) in values {
            let p = write(&d, "wrong.hcl", text);
            let err = load_files(true, vec![p]).unwrap_err().to_string();
            assert!(
                err.starts_with("Error in ") && err.contains("wrong.hcl"),
                "{text}: {err}"
            );
            assert!(err.contains(&format!(": {key}: ")), "{text}: {err}");
        }
        let p = write(&d, "unknown.hcl", "no_such_key { a = 1 }");
        let (_, warnings) = load_files(true, vec![p]).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("unknown.hcl") && warnings[0].contains("no_such_key"));
    }

    #[test]
    fn config_format_decides_how_files_are_read() {
        let d = tmpdir("format");
        let conf = write(&d, "agent.conf", "datacenter = \"conf\"");
        let opts = |format, sources| LoadOptions {
            sources,
            format,
            dev: true,
            ..Default::default()
        };
        // A file named neither .json nor .hcl needs -config-format, as in Consul.
        let err = load(&opts(None, vec![Source::File(conf.clone())]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent.conf") && err.contains("-config-format"),
            "{err}"
        );
        let (cfg, _) = load(&opts(Some(Format::Hcl), vec![Source::File(conf.clone())])).unwrap();
        assert_eq!(cfg.datacenter, "conf");
        let err = load(&opts(Some(Format::Json), vec![Source::File(conf)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Error parsing ") && err.contains("agent.conf"),
            "{err}"
        );
        // The flag names the format of every file, a directory's too, whatever its name.
        let sub = d.join("dir");
        std::fs::create_dir_all(&sub).unwrap();
        write(&sub, "a.hcl", r#"{"node_name": "from-json"}"#);
        write(&sub, "b.txt", r#"{"datacenter": "txt"}"#);
        let json_dir = opts(Some(Format::Json), vec![Source::Dir(sub.clone())]);
        let (cfg, warnings) = load(&json_dir).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            (cfg.node_name.as_str(), cfg.datacenter.as_str()),
            ("from-json", "txt")
        );
        write(&sub, "c.json", "datacenter = \"hcl\"");
        let err = load(&json_dir).unwrap_err().to_string();
        assert!(err.contains("c.json"), "{err}");
        let (cfg, _) = load(&opts(Some(Format::Hcl), vec![Source::Dir(sub)])).unwrap();
        assert_eq!(cfg.datacenter, "hcl");
    }

    #[test]
    fn files_in_command_line_order() {
        let d = tmpdir("files");
        let one = write(&d, "1.json", r#"{"node_name":"first","dev_unknown":1}"#);
        let two = write(&d, "0.json", r#"{"node_name":"second"}"#);
        let (cfg, warnings) = load(&LoadOptions {
            sources: vec![Source::File(one), Source::File(two)],
            dev: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.node_name, "second");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("1.json") && warnings[0].contains("dev_unknown"),
            "{warnings:?}"
        );
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
            (
                r#"{"performance":{"raft_multiplier":11}}"#,
                "performance.raft_multiplier",
            ),
            (
                r#"{"limits":{"kv_max_value_size":-1}}"#,
                "limits.kv_max_value_size",
            ),
            (r#"{"datacenter":"a b"}"#, "datacenter"),
        ];
        for (text, key) in cases {
            let p = write(&d, "bad.json", text);
            let err = load(&LoadOptions {
                sources: vec![Source::File(p)],
                dev: true,
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("bad.json") && err.contains(key),
                "{text}: {err}"
            );
        }
        let p = write(&d, "syntax.json", "{ nope");
        let err = load(&LoadOptions {
            sources: vec![Source::File(p)],
            dev: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("syntax.json"), "{err}");
        let err = load(&LoadOptions {
            sources: vec![Source::Dir(d.join("missing"))],
            dev: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn cross_checks() {
        let mut flags = Map::new();
        flags.insert("bootstrap".into(), json!(true));
        flags.insert("bootstrap_expect".into(), json!(3));
        flags.insert("server".into(), json!(true));
        assert!(load(&LoadOptions {
            flags,
            dev: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string()
        .contains("mutually exclusive"));
        assert!(load(&LoadOptions::default())
            .unwrap_err()
            .to_string()
            .contains("data_dir"));
        let (dev, _) = load(&LoadOptions {
            dev: true,
            ..Default::default()
        })
        .unwrap();
        assert!(dev.server && dev.bootstrap);
        assert_eq!(dev.bind_addr, "127.0.0.1");
        assert_eq!(dev.http_listen(), "127.0.0.1:8500");
        assert_eq!(dev.kv_max_value_size, 524288);
    }

    #[test]
    fn dns_addresses_and_settings() {
        let dev = |frag: Value| {
            let Value::Object(flags) = frag else {
                unreachable!()
            };
            load(&LoadOptions {
                flags,
                dev: true,
                ..Default::default()
            })
            .map(|(c, _)| c)
        };
        let cfg = dev(json!({
            "client_addr": "127.0.0.1 ::1",
            "dns_config": {"node_ttl": "10s", "service_ttl": {"*": "5s", "Web": "1m"}}
        }))
        .unwrap();
        assert_eq!(cfg.dns_listen(), vec!["127.0.0.1:8600", "[::1]:8600"]);
        assert_eq!(
            (
                cfg.dns.enable_truncate,
                cfg.dns.udp_answer_limit,
                cfg.dns.node_ttl
            ),
            (false, 3, Duration::from_secs(10))
        );
        assert_eq!(
            cfg.dns.service_ttl,
            vec![
                ("*".to_string(), Duration::from_secs(5)),
                ("web".to_string(), Duration::from_secs(60))
            ]
        );
        let cfg = dev(json!({
            "addresses": {"dns": "127.0.0.2"}, "ports": {"dns": 53},
            "dns_config": {"enable_truncate": true}
        }))
        .unwrap();
        assert_eq!(
            (cfg.dns_listen(), cfg.dns.enable_truncate),
            (vec!["127.0.0.2:53".to_string()], true)
        );
        let err = dev(json!({"dns_config": {"service_ttl": {"web": "soon"}}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns_config.service_ttl.web"), "{err}");
        // Consul's defaults, then every DNS key set.
        let cfg = dev(json!({})).unwrap();
        let want = DnsConfig::default();
        assert_eq!(
            (
                cfg.dns.only_passing,
                cfg.dns.a_record_limit,
                cfg.dns.node_meta_txt
            ),
            (false, 0, true)
        );
        assert_eq!((cfg.dns.soa, want.soa.refresh), (want.soa, 3600));
        assert_eq!(cfg.dns.recursor_timeout, Duration::from_secs(2));
        assert!(cfg.dns.recursors.is_empty());
        let cfg = dev(json!({
            "recursors": ["10.0.0.53", "10.0.0.54:5353", "::1", "[::2]:54"],
            "dns_config": {"only_passing": true, "a_record_limit": 2,
                "enable_additional_node_meta_txt": false, "recursor_timeout": "300ms",
                "soa": {"refresh": 1, "retry": 2, "expire": 3, "min_ttl": 4}}
        }))
        .unwrap();
        assert_eq!(
            cfg.dns.recursors,
            ["10.0.0.53:53", "10.0.0.54:5353", "[::1]:53", "[::2]:54"]
                .map(|a| a.parse::<std::net::SocketAddr>().unwrap())
        );
        assert_eq!(
            (
                cfg.dns.only_passing,
                cfg.dns.a_record_limit,
                cfg.dns.node_meta_txt
            ),
            (true, 2, false)
        );
        assert_eq!(cfg.dns.recursor_timeout, Duration::from_millis(300));
        assert_eq!(
            cfg.dns.soa,
            SoaConfig {
                refresh: 1,
                retry: 2,
                expire: 3,
                min_ttl: 4
            }
        );
        let err = dev(json!({"recursors": ["not an address"]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Invalid recursor address"), "{err}");
        let err = dev(json!({"dns_config": {"soa": {"refresh": -1}}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("refresh"), "{err}");
    }

    #[test]
    fn errors_say_what_to_fix() {
        let d = tmpdir("kinds");
        let missing = load_files(true, vec![d.join("none.json")]);
        assert!(
            matches!(missing, Err(ConfigError::Unreadable { what: "file", .. })),
            "{missing:?}"
        );
        let odd = load_files(true, vec![write(&d, "agent.conf", "{}")]);
        assert!(
            matches!(odd, Err(ConfigError::UnknownFormat { .. })),
            "{odd:?}"
        );
        let syntax = load_files(true, vec![write(&d, "a.json", "{")]);
        assert!(
            matches!(syntax, Err(ConfigError::Syntax { .. })),
            "{syntax:?}"
        );
        let bad = load_files(true, vec![write(&d, "b.json", r#"{"server": 1}"#)]);
        assert!(
            matches!(&bad, Err(ConfigError::BadValue { key, .. }) if key == "server"),
            "{bad:?}"
        );
        let both = write(
            &d,
            "c.json",
            r#"{"bootstrap": true, "bootstrap_expect": 3}"#,
        );
        let both = load_files(true, vec![both]);
        assert!(matches!(both, Err(ConfigError::Invalid(_))), "{both:?}");
        let dir = load(&LoadOptions {
            sources: vec![Source::Dir(d.join("nope"))],
            dev: true,
            ..Default::default()
        });
        assert!(
            matches!(
                dir,
                Err(ConfigError::Unreadable {
                    what: "directory",
                    ..
                })
            ),
            "{dir:?}"
        );
    }
}
