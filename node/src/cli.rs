//! The client verbs: they talk only to an agent's HTTP API (`-http-addr`,
//! `CONSUL_HTTP_ADDR`, default `127.0.0.1:8500`), with Consul's messages and exit codes.

use std::io::Read;
use std::io::Write;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::client;
use crate::client::escape_key;
use crate::client::ClientError;
use crate::client::HttpResponse;
use crate::flags;
use crate::flags::FlagError;
use crate::flags::Kind;
use crate::flags::Parsed;

const HTTP_FLAGS: &[(&str, Kind)] = &[
    ("http-addr", Kind::Value),
    ("token", Kind::Value),
    ("token-file", Kind::Value),
    ("datacenter", Kind::Value),
    ("stale", Kind::Bool),
    ("ca-file", Kind::Value),
    ("ca-path", Kind::Value),
    ("client-cert", Kind::Value),
    ("client-key", Kind::Value),
    ("tls-server-name", Kind::Value),
];

const TIMEOUT: Duration = Duration::from_secs(60);

fn err(msg: impl AsRef<str>) -> i32 {
    eprintln!("{}", msg.as_ref());
    1
}

fn parse_or_exit(specs: &[(&str, Kind)], argv: &[String], usage: &str) -> Result<Parsed, i32> {
    let mut all: Vec<(&str, Kind)> = HTTP_FLAGS.to_vec();
    all.extend_from_slice(specs);
    match flags::parse(&all, argv) {
        Ok(p) => Ok(p),
        Err(FlagError::Help) => {
            println!("{usage}");
            Err(0)
        }
        Err(FlagError::Bad(m)) => {
            eprintln!("{m}\n\n{usage}");
            Err(1)
        }
    }
}

struct Http {
    addr: String,
    dc: Option<String>,
    stale: bool,
    token: Option<String>,
}

impl Http {
    fn new(p: &Parsed) -> Result<Http, ClientError> {
        let url = p
            .get("http-addr")
            .map(str::to_string)
            .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok())
            .unwrap_or_else(|| "127.0.0.1:8500".into());
        let (addr, _) = client::split_url(&url)?;
        let token = p
            .get("token")
            .map(str::to_string)
            .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
            .filter(|t| !t.is_empty());
        Ok(Http {
            addr,
            dc: p.get("datacenter").map(str::to_string),
            stale: p.flag("stale"),
            token,
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<HttpResponse, ClientError> {
        let mut path = path.to_string();
        let mut add = |kv: String| {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(&kv);
        };
        if let Some(dc) = &self.dc {
            add(format!("dc={dc}"));
        }
        if self.stale && method == "GET" {
            add("stale".into());
        }
        let headers: Vec<(String, String)> = self
            .token
            .iter()
            .map(|t| ("X-Consul-Token".to_string(), t.clone()))
            .collect();
        client::request(&self.addr, method, &path, &headers, body, TIMEOUT).await
    }
}

fn unexpected(r: &HttpResponse) -> String {
    format!(
        "Unexpected response code: {} ({})",
        r.status,
        r.text().trim()
    )
}

pub async fn kv(argv: &[String]) -> i32 {
    let usage = "Usage: tribune kv <subcommand> [options] [args]\n\n\
                 \x20 get     Retrieve or list data\n\
                 \x20 put     Set or update data\n\
                 \x20 delete  Remove data\n\
                 \x20 export  Exports a tree as JSON\n\
                 \x20 import  Imports a tree stored as JSON";
    match argv.first().map(String::as_str) {
        Some("put") => kv_put(&argv[1..]).await,
        Some("get") => kv_get(&argv[1..]).await,
        Some("delete") => kv_delete(&argv[1..]).await,
        Some("export") => kv_export(&argv[1..]).await,
        Some("import") => kv_import(&argv[1..]).await,
        Some("-h" | "-help" | "--help") => {
            println!("{usage}");
            0
        }
        Some(other) => err(format!("Unknown kv subcommand: {other}\n\n{usage}")),
        None => err(usage),
    }
}

async fn kv_put(argv: &[String]) -> i32 {
    let usage = "Usage: tribune kv put [options] KEY [DATA]\n\n\
                 \x20 DATA may be @file, - (stdin) or a literal; -base64 decodes it.\n\
                 \x20 -flags=N  -cas -modify-index=N  -acquire -release -session=ID  -base64";
    let specs = [
        ("flags", Kind::Value),
        ("cas", Kind::Bool),
        ("modify-index", Kind::Value),
        ("acquire", Kind::Bool),
        ("release", Kind::Bool),
        ("session", Kind::Value),
        ("base64", Kind::Bool),
    ];
    let p = match parse_or_exit(&specs, argv, usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let key = match p.args.as_slice() {
        [] => return err("Error! Missing KEY argument"),
        [k] | [k, _] => k.clone(),
        _ => {
            return err(format!(
                "Too many arguments (expected 1 or 2, got {})",
                p.args.len()
            ))
        }
    };
    let key = key.trim_start_matches('/').to_string();
    let mut data: Vec<u8> = match p.args.get(1).map(String::as_str) {
        None => Vec::new(),
        Some("-") => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                return err(format!("Error! Failed to read stdin: {e}"));
            }
            buf
        }
        Some(d) if d.starts_with('@') => match std::fs::read(&d[1..]) {
            Ok(b) => b,
            Err(e) => return err(format!("Failed to read file: {e}")),
        },
        Some(d) => d.as_bytes().to_vec(),
    };
    if p.flag("base64") {
        let text = String::from_utf8_lossy(&data).trim().to_string();
        data = match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(b) => b,
            Err(e) => return err(format!("Error! Cannot base 64 decode data: {e}")),
        };
    }
    let flags = match p.u64("flags") {
        Ok(f) => f.unwrap_or(0),
        Err(e) => return err(e.to_string()),
    };
    let modify_index = match p.u64("modify-index") {
        Ok(m) => m,
        Err(e) => return err(e.to_string()),
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let mut path = format!("/v1/kv/{}?flags={flags}", escape_key(&key));
    if p.flag("cas") {
        let Some(mi) = modify_index else {
            return err("Must specify -modify-index with -cas!");
        };
        path.push_str(&format!("&cas={mi}"));
    }
    for lock in ["acquire", "release"] {
        if p.flag(lock) {
            let Some(s) = p.get("session") else {
                return err(format!("Error! Missing -session (required with -{lock})"));
            };
            path.push_str(&format!("&{lock}={s}"));
        }
    }
    let r = match http.call("PUT", &path, &data).await {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return err(format!("Error! Failed writing data: {}", unexpected(&r))),
        Err(e) => return err(format!("Error! Failed writing data: {e}")),
    };
    let ok = r.text().trim() == "true";
    match (ok, p.flag("acquire"), p.flag("release"), p.flag("cas")) {
        (true, true, _, _) => println!("Success! Lock acquired on: {key}"),
        (true, _, true, _) => println!("Success! Lock released on: {key}"),
        (true, ..) => println!("Success! Data written to: {key}"),
        (false, true, _, _) => return err(format!("Error! Did not acquire lock on: {key}")),
        (false, _, true, _) => return err(format!("Error! Did not release lock on: {key}")),
        (false, _, _, true) => return err(format!("Error! Did not write to {key}: CAS failed")),
        (false, ..) => return err(format!("Error! Failed writing data to: {key}")),
    }
    0
}

fn entry_value(e: &Value) -> Vec<u8> {
    e.get("Value")
        .and_then(Value::as_str)
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .unwrap_or_default()
}

async fn kv_get(argv: &[String]) -> i32 {
    let usage = "Usage: tribune kv get [options] [KEY_OR_PREFIX]\n\n\
                 \x20 -recurse  -keys  -separator=S  -detailed  -base64";
    let specs = [
        ("recurse", Kind::Bool),
        ("keys", Kind::Bool),
        ("separator", Kind::Value),
        ("detailed", Kind::Bool),
        ("base64", Kind::Bool),
    ];
    let p = match parse_or_exit(&specs, argv, usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let key = match p.args.as_slice() {
        [] => String::new(),
        [k] => k.clone(),
        _ => {
            return err(format!(
                "Too many arguments (expected 1, got {})",
                p.args.len()
            ))
        }
    };
    let key = key.trim_start_matches('/').to_string();
    let (recurse, keys) = (p.flag("recurse"), p.flag("keys"));
    if key.is_empty() && !recurse && !keys {
        return err("Error! Missing KEY argument");
    }
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let show = |v: &[u8]| -> Vec<u8> {
        if p.flag("base64") {
            crate::http::b64(v).into_bytes()
        } else {
            v.to_vec()
        }
    };
    if keys {
        let sep = p.get("separator").unwrap_or("/");
        let path = format!(
            "/v1/kv/{}?keys&separator={}",
            escape_key(&key),
            escape_key(sep).replace('/', "%2F")
        );
        let r = match http.call("GET", &path, b"").await {
            Ok(r) if r.status == 200 || r.status == 404 => r,
            Ok(r) => return err(format!("Error querying Consul agent: {}", unexpected(&r))),
            Err(e) => return err(format!("Error querying Consul agent: {e}")),
        };
        let list: Vec<String> = if r.status == 404 {
            vec![]
        } else {
            serde_json::from_slice(&r.body).unwrap_or_default()
        };
        for k in list {
            let _ = writeln!(out, "{k}");
        }
        return 0;
    }
    if recurse {
        let r = match http
            .call("GET", &format!("/v1/kv/{}?recurse", escape_key(&key)), b"")
            .await
        {
            Ok(r) if r.status == 200 || r.status == 404 => r,
            Ok(r) => return err(format!("Error querying Consul agent: {}", unexpected(&r))),
            Err(e) => return err(format!("Error querying Consul agent: {e}")),
        };
        let list: Vec<Value> = if r.status == 404 {
            vec![]
        } else {
            serde_json::from_slice(&r.body).unwrap_or_default()
        };
        for (i, e) in list.iter().enumerate() {
            if p.flag("detailed") {
                if i > 0 {
                    let _ = writeln!(out);
                }
                let _ = out.write_all(&detailed(e, &show));
            } else {
                let _ = write!(
                    out,
                    "{}:",
                    e.get("Key").and_then(Value::as_str).unwrap_or("")
                );
                let _ = out.write_all(&show(&entry_value(e)));
                let _ = writeln!(out);
            }
        }
        return 0;
    }
    let r = match http
        .call("GET", &format!("/v1/kv/{}", escape_key(&key)), b"")
        .await
    {
        Ok(r) if r.status == 200 => r,
        Ok(r) if r.status == 404 => return err(format!("Error! No key exists at: {key}")),
        Ok(r) => return err(format!("Error querying Consul agent: {}", unexpected(&r))),
        Err(e) => return err(format!("Error querying Consul agent: {e}")),
    };
    let list: Vec<Value> = serde_json::from_slice(&r.body).unwrap_or_default();
    let Some(e) = list.first() else {
        return err(format!("Error! No key exists at: {key}"));
    };
    if p.flag("detailed") {
        let _ = out.write_all(&detailed(e, &show));
    } else {
        let _ = out.write_all(&show(&entry_value(e)));
        let _ = writeln!(out);
    }
    0
}

fn detailed(e: &Value, show: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let num = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
    let session = e
        .get("Session")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("-")
        .to_string();
    let rows = [
        ("CreateIndex", num("CreateIndex")),
        ("Flags", num("Flags")),
        (
            "Key",
            e.get("Key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        ("LockIndex", num("LockIndex")),
        ("ModifyIndex", num("ModifyIndex")),
        ("Session", session),
    ];
    let mut out = Vec::new();
    for (k, v) in rows {
        out.extend_from_slice(format!("{k:<12}{v}\n").as_bytes());
    }
    out.extend_from_slice(format!("{:<12}", "Value").as_bytes());
    out.extend_from_slice(&show(&entry_value(e)));
    out.push(b'\n');
    out
}

async fn kv_delete(argv: &[String]) -> i32 {
    let usage =
        "Usage: tribune kv delete [options] KEY_OR_PREFIX\n\n  -recurse  -cas -modify-index=N";
    let specs = [
        ("recurse", Kind::Bool),
        ("cas", Kind::Bool),
        ("modify-index", Kind::Value),
    ];
    let p = match parse_or_exit(&specs, argv, usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let key = match p.args.as_slice() {
        [] => String::new(),
        [k] => k.clone(),
        _ => {
            return err(format!(
                "Too many arguments (expected 1, got {})",
                p.args.len()
            ))
        }
    };
    let key = key.trim_start_matches('/').to_string();
    let recurse = p.flag("recurse");
    if recurse && p.flag("cas") {
        return err("Cannot specify both -cas and -recurse!");
    }
    if key.is_empty() && !recurse {
        return err("Error! Missing KEY argument");
    }
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let mut path = format!("/v1/kv/{}", escape_key(&key));
    if recurse {
        path.push_str("?recurse");
    } else if p.flag("cas") {
        let mi = match p.u64("modify-index") {
            Ok(Some(m)) => m,
            Ok(None) => return err("Must specify -modify-index with -cas!"),
            Err(e) => return err(e.to_string()),
        };
        path.push_str(&format!("?cas={mi}"));
    }
    let r = match http.call("DELETE", &path, b"").await {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return err(format!("Error! Failed deleting data: {}", unexpected(&r))),
        Err(e) => return err(format!("Error! Failed deleting data: {e}")),
    };
    if r.text().trim() != "true" {
        return err(format!("Error! Did not delete key {key}: CAS failed"));
    }
    if recurse {
        println!("Success! Deleted keys with prefix: {key}");
    } else {
        println!("Success! Deleted key: {key}");
    }
    0
}

async fn kv_export(argv: &[String]) -> i32 {
    let p = match parse_or_exit(&[], argv, "Usage: tribune kv export [options] [PREFIX]") {
        Ok(p) => p,
        Err(c) => return c,
    };
    let prefix = p.args.first().cloned().unwrap_or_default();
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let r = match http
        .call(
            "GET",
            &format!("/v1/kv/{}?recurse", escape_key(&prefix)),
            b"",
        )
        .await
    {
        Ok(r) if r.status == 200 || r.status == 404 => r,
        Ok(r) => return err(format!("Error querying Consul agent: {}", unexpected(&r))),
        Err(e) => return err(format!("Error querying Consul agent: {e}")),
    };
    let list: Vec<Value> = if r.status == 404 {
        vec![]
    } else {
        serde_json::from_slice(&r.body).unwrap_or_default()
    };
    let out: Vec<Value> = list
        .iter()
        .map(|e| {
            let value = e.get("Value").and_then(Value::as_str).unwrap_or("");
            serde_json::json!({"key": e["Key"], "flags": e["Flags"], "value": value})
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("JSON values serialize")
    );
    0
}

async fn kv_import(argv: &[String]) -> i32 {
    let usage = "Usage: tribune kv import [options] [DATA]\n\n\
                 \x20 DATA is @file, - (stdin) or literal JSON from `kv export`";
    let p = match parse_or_exit(&[("prefix", Kind::Value)], argv, usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let data = match p.args.first().map(String::as_str) {
        None | Some("-") => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                return err(format!("Error! Failed to read stdin: {e}"));
            }
            buf
        }
        Some(d) if d.starts_with('@') => match std::fs::read(&d[1..]) {
            Ok(b) => b,
            Err(e) => return err(format!("Failed to read file: {e}")),
        },
        Some(d) => d.as_bytes().to_vec(),
    };
    let entries: Vec<Value> = match serde_json::from_slice(&data) {
        Ok(v) => v,
        Err(e) => return err(format!("Cannot unmarshal data: {e}")),
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let prefix = p.get("prefix").unwrap_or("");
    for e in entries {
        let key = format!(
            "{prefix}{}",
            e.get("key").and_then(Value::as_str).unwrap_or("")
        );
        let flags = e.get("flags").and_then(Value::as_u64).unwrap_or(0);
        let value = match base64::engine::general_purpose::STANDARD
            .decode(e.get("value").and_then(Value::as_str).unwrap_or(""))
        {
            Ok(v) => v,
            Err(e) => return err(format!("Error base 64 decoding value for key {key}: {e}")),
        };
        match http
            .call(
                "PUT",
                &format!("/v1/kv/{}?flags={flags}", escape_key(&key)),
                &value,
            )
            .await
        {
            Ok(r) if r.status == 200 => println!("Imported: {key}"),
            Ok(r) => {
                return err(format!(
                    "Error! Failed writing data for key {key}: {}",
                    unexpected(&r)
                ))
            }
            Err(e) => return err(format!("Error! Failed writing data for key {key}: {e}")),
        }
    }
    0
}

pub fn keygen() -> i32 {
    let mut key = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut key) {
        return err(format!("Error reading random data: {e}"));
    }
    println!("{}", crate::http::b64(&key));
    0
}

pub fn version(argv: &[String]) -> i32 {
    let p = match flags::parse(&[("format", Kind::Value)], argv) {
        Ok(p) => p,
        Err(e) => return err(e.to_string()),
    };
    let v = crate::http::VERSION;
    if p.get("format") == Some("json") {
        let j = serde_json::json!({
            "Version": v, "Revision": crate::http::REVISION, "Prerelease": "", "BuildDate": "",
            "RPC": {"Default": 2, "Min": 2, "Max": 3}
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("JSON values serialize")
        );
    } else {
        println!("Tribune v{v}");
        println!("Revision {}", crate::http::REVISION);
        println!(
            "Protocol 2 spoken by default, understands 2 to 3 (agent will automatically use \
            protocol >2 when speaking to compatible agents)",
        );
    }
    0
}

/// Align columns with a two-space gutter.
pub fn columnize(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub async fn members(argv: &[String]) -> i32 {
    let usage =
        "Usage: tribune members [options]\n\n  -detailed  -status=<regexp>  -wan  -segment=<name>";
    let specs = [
        ("detailed", Kind::Bool),
        ("status", Kind::Value),
        ("wan", Kind::Bool),
        ("segment", Kind::Value),
    ];
    let p = match parse_or_exit(&specs, argv, usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let status_re = match p
        .get("status")
        .map(|s| regex::Regex::new(&format!("^(?:{s})$")))
    {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => return err(format!("Failed to compile status regexp: {e}")),
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let path = if p.flag("wan") {
        "/v1/agent/members?wan"
    } else {
        "/v1/agent/members"
    };
    let r = match http.call("GET", path, b"").await {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return err(format!("Error retrieving members: {}", unexpected(&r))),
        Err(e) => return err(format!("Error retrieving members: {e}")),
    };
    let mut list: Vec<Value> = serde_json::from_slice(&r.body).unwrap_or_default();
    let tag = |m: &Value, t: &str| {
        m.get("Tags")
            .and_then(|tags| tags.get(t))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let status_name = |m: &Value| match m.get("Status").and_then(Value::as_u64).unwrap_or(0) {
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "none",
    };
    list.retain(|m| {
        status_re
            .as_ref()
            .is_none_or(|re| re.is_match(status_name(m)))
    });
    if list.is_empty() {
        return 2;
    }
    let is_server = |m: &Value| tag(m, "role").as_deref() == Some("consul");
    list.sort_by_key(|m| {
        (
            !is_server(m),
            m.get("Name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    });
    let addr = |m: &Value| {
        format!(
            "{}:{}",
            m.get("Addr").and_then(Value::as_str).unwrap_or(""),
            m.get("Port").and_then(Value::as_u64).unwrap_or(0)
        )
    };
    let name = |m: &Value| {
        m.get("Name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut rows = Vec::new();
    if p.flag("detailed") {
        rows.push(vec![
            "Node".into(),
            "Address".into(),
            "Status".into(),
            "Tags".into(),
        ]);
        for m in &list {
            let mut tags: Vec<String> = m
                .get("Tags")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            tags.sort();
            rows.push(vec![
                name(m),
                addr(m),
                status_name(m).into(),
                tags.join(","),
            ]);
        }
    } else {
        rows.push(
            [
                "Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Segment",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        for m in &list {
            let ty = match tag(m, "role").as_deref() {
                Some("consul") => "server",
                Some("node") => "client",
                _ => "unknown",
            };
            let build = tag(m, "build")
                .map(|b| b.split(':').next().unwrap_or("").to_string())
                .unwrap_or_else(|| "< 0.3".into());
            let segment = if ty == "server" {
                "<all>".to_string()
            } else {
                tag(m, "segment")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<default>".into())
            };
            rows.push(vec![
                name(m),
                addr(m),
                status_name(m).into(),
                ty.into(),
                build,
                tag(m, "vsn").unwrap_or_default(),
                tag(m, "dc").unwrap_or_default(),
                segment,
            ]);
        }
    }
    print!("{}", columnize(&rows));
    0
}

async fn simple_put(argv: &[String], path: &str, ok_msg: &str, what: &str) -> i32 {
    let p = match parse_or_exit(&[], argv, &format!("Usage: tribune {what} [options]")) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    match http.call("PUT", path, b"").await {
        Ok(r) if r.status == 200 => {
            println!("{ok_msg}");
            0
        }
        Ok(r) => err(format!("Error {what}: {}", unexpected(&r))),
        Err(e) => err(format!("Error {what}: {e}")),
    }
}

pub async fn leave(argv: &[String]) -> i32 {
    simple_put(argv, "/v1/agent/leave", "Graceful leave complete", "leave").await
}

pub async fn reload(argv: &[String]) -> i32 {
    simple_put(
        argv,
        "/v1/agent/reload",
        "Configuration reload triggered",
        "reload",
    )
    .await
}

pub async fn join(argv: &[String]) -> i32 {
    let p = match parse_or_exit(
        &[("wan", Kind::Bool)],
        argv,
        "Usage: tribune join [options] address ...",
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    if p.args.is_empty() {
        return err("At least one address to join must be specified.");
    }
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let mut joined = 0;
    for a in &p.args {
        let path = format!(
            "/v1/agent/join/{}{}",
            escape_key(a),
            if p.flag("wan") { "?wan" } else { "" }
        );
        match http.call("PUT", &path, b"").await {
            Ok(r) if r.status == 200 => joined += 1,
            Ok(r) => eprintln!("Error joining address '{a}': {}", unexpected(&r)),
            Err(e) => eprintln!("Error joining address '{a}': {e}"),
        }
    }
    if joined == 0 {
        return err("Failed to join any nodes.");
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    0
}

pub async fn force_leave(argv: &[String]) -> i32 {
    let p = match parse_or_exit(
        &[("prune", Kind::Bool), ("wan", Kind::Bool)],
        argv,
        "Usage: tribune force-leave [options] name",
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [node] = p.args.as_slice() else {
        return err("A single node name must be specified to force leave.");
    };
    let mut q = Vec::new();
    if p.flag("prune") {
        q.push("prune");
    }
    if p.flag("wan") {
        q.push("wan");
    }
    let path = format!(
        "/v1/agent/force-leave/{}{}{}",
        escape_key(node),
        if q.is_empty() { "" } else { "?" },
        q.join("&")
    );
    simple_put(&[], &path, "", "force leaving").await
}

pub async fn info(argv: &[String]) -> i32 {
    let p = match parse_or_exit(&[], argv, "Usage: tribune info [options]") {
        Ok(p) => p,
        Err(c) => return c,
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let r = match http.call("GET", "/v1/agent/self", b"").await {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return err(format!("Error querying agent: {}", unexpected(&r))),
        Err(e) => return err(format!("Error querying agent: {e}")),
    };
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let Some(stats) = v.get("Stats").and_then(Value::as_object) else {
        return err("Error querying agent: no Stats");
    };
    let mut sections: Vec<_> = stats.iter().collect();
    sections.sort_by(|a, b| a.0.cmp(b.0));
    for (name, kv) in sections {
        println!("{name}:");
        let mut pairs: Vec<_> = kv
            .as_object()
            .map(|o| o.iter().collect())
            .unwrap_or_default();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        for (k, val) in pairs {
            println!(
                "\t{k} = {}",
                val.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| val.to_string())
            );
        }
    }
    0
}

pub async fn operator(argv: &[String]) -> i32 {
    let usage = "Usage: tribune operator raft list-peers [options]";
    match (
        argv.first().map(String::as_str),
        argv.get(1).map(String::as_str),
    ) {
        (Some("raft"), Some("list-peers")) => {}
        (Some("raft"), Some(other)) => {
            return err(format!(
                "Unknown operator raft subcommand: {other}\n\n{usage}"
            ))
        }
        _ => return err(usage),
    }
    let p = match parse_or_exit(&[], &argv[2..], usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    let r = match http
        .call("GET", "/v1/operator/raft/configuration", b"")
        .await
    {
        Ok(r) if r.status == 200 => r,
        Ok(r) => return err(format!("Error getting peers: {}", unexpected(&r))),
        Err(e) => return err(format!("Error getting peers: {e}")),
    };
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let mut rows = vec![["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for s in v
        .get("Servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = |k: &str| {
            s.get(k)
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .unwrap_or_default()
        };
        let state = if s.get("Leader").and_then(Value::as_bool) == Some(true) {
            "leader"
        } else {
            "follower"
        };
        rows.push(vec![
            f("Node"),
            f("ID"),
            f("Address"),
            state.into(),
            f("Voter"),
            f("ProtocolVersion"),
        ]);
    }
    print!("{}", columnize(&rows));
    0
}

pub async fn watch(argv: &[String]) -> i32 {
    let usage = "Usage: tribune watch [options] [child...]\n\n\
                 \x20 -type=key|keyprefix  -key=KEY  -prefix=PREFIX  -shell=true  -stale";
    let specs = [
        ("type", Kind::Value),
        ("key", Kind::Value),
        ("prefix", Kind::Value),
        ("service", Kind::Value),
        ("tag", Kind::Value),
        ("passingonly", Kind::Bool),
        ("state", Kind::Value),
        ("name", Kind::Value),
        ("filter", Kind::Value),
        ("shell", Kind::Bool),
    ];
    let p = match parse_or_exit(&specs, argv, usage) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let kind = match p.get("type") {
        None => return err(format!("Watch type must be specified\n\n{usage}")),
        Some("key") => match p.get("key") {
            Some(k) => crate::watch_spec::WatchKind::Key(k.to_string()),
            None => return err("Must specify a single key to watch"),
        },
        Some("keyprefix") => match p.get("prefix") {
            Some(k) => crate::watch_spec::WatchKind::KeyPrefix(k.to_string()),
            None => return err("Must specify a single prefix to watch"),
        },
        Some(t @ ("services" | "nodes" | "service" | "checks" | "event")) => {
            return err(format!("Error: watch type {t:?} is not supported yet"))
        }
        Some(t) => return err(format!("Unsupported watch type: {t}")),
    };
    let http = match Http::new(&p) {
        Ok(h) => h,
        Err(e) => return err(format!("Error! {e}")),
    };
    match http.call("GET", "/v1/agent/self", b"").await {
        Ok(r) if r.status == 200 => {}
        Ok(r) => return err(format!("Error querying Consul agent: {}", unexpected(&r))),
        Err(e) => return err(format!("Error querying Consul agent: {e}")),
    }
    let handler = if p.args.is_empty() {
        crate::watch_spec::Handler::Stdout
    } else {
        crate::watch_spec::Handler::Script {
            args: p.args.clone(),
            shell: p.get("shell") != Some("false"),
            inherit_output: true,
        }
    };
    let spec = crate::watch_spec::WatchSpec {
        kind,
        handler,
        stale: http.stale,
    };
    crate::watch::run(spec, crate::watch::Source::Remote(http.addr.clone())).await;
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_with_two_spaces() {
        let rows = vec![
            vec![
                "Node".to_string(),
                "Address".to_string(),
                "Status".to_string(),
            ],
            vec!["consul01".into(), "1.2.3.4:8301".into(), "alive".into()],
        ];
        assert_eq!(
            columnize(&rows),
            "Node      Address       Status\nconsul01  1.2.3.4:8301  alive\n"
        );
    }
}
