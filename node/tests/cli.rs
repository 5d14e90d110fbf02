//! The CLI verbs against a real agent: outputs and exit codes as Consul's.

mod common;

use std::io::Read;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::json;
use serde_json::Value;

#[test]
fn kv_put_get_delete_messages_and_exit_codes() {
    let a = Agent::dev(&[]);
    let o = a.cli(&["kv", "put", "redis/config/connections", "5"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (
            Some(0),
            "Success! Data written to: redis/config/connections\n"
        )
    );
    a.cli(&["kv", "put", "redis/config/cpu", "128"]);
    a.cli(&["kv", "put", "-flags=9", "redis/config/memory", "512"]);
    let o = a.cli(&["kv", "get", "redis/config/connections"]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "5\n"));
    let o = a.cli(&["kv", "get", "-recurse", "redis/config"]);
    assert_eq!(
        stdout(&o),
        "redis/config/connections:5\nredis/config/cpu:128\nredis/config/memory:512\n"
    );
    let o = a.cli(&["kv", "get", "-keys", "redis/"]);
    assert_eq!(stdout(&o), "redis/config/\n");
    let o = a.cli(&["kv", "get", "-detailed", "redis/config/memory"]);
    let out = stdout(&o);
    assert!(
        out.contains("Flags       9\n")
            && out.contains("Session     -\n")
            && out.ends_with("Value       512\n"),
        "{out}"
    );
    let o = a.cli(&["kv", "get", "-base64", "redis/config/cpu"]);
    assert_eq!(stdout(&o), "MTI4\n");
    // Missing key.
    let o = a.cli(&["kv", "get", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "Error! No key exists at: nope\n");
    // CAS.
    let idx = a.http("GET", "/v1/kv/redis/config/cpu", b"").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let o = a.cli(&[
        "kv",
        "put",
        "-cas",
        &format!("-modify-index={}", idx + 7),
        "redis/config/cpu",
        "1",
    ]);
    assert_eq!(
        (o.status.code(), stderr(&o).as_str()),
        (
            Some(1),
            "Error! Did not write to redis/config/cpu: CAS failed\n"
        )
    );
    let o = a.cli(&[
        "kv",
        "put",
        "-cas",
        "-modify-index",
        &idx.to_string(),
        "redis/config/cpu",
        "256",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = a.cli(&[
        "kv",
        "delete",
        "-cas",
        "-modify-index=1",
        "redis/config/cpu",
    ]);
    assert_eq!(
        (o.status.code(), stderr(&o).as_str()),
        (
            Some(1),
            "Error! Did not delete key redis/config/cpu: CAS failed\n"
        )
    );
    let o = a.cli(&["kv", "delete", "-cas", "-recurse", "redis"]);
    assert_eq!(
        (o.status.code(), stderr(&o).as_str()),
        (Some(1), "Cannot specify both -cas and -recurse!\n")
    );
    // stdin, @file and -base64 input.
    let o = a.cli_stdin(&["kv", "put", "in/stdin", "-"], b"from stdin");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        a.http("GET", "/v1/kv/in/stdin?raw", b"").body,
        b"from stdin"
    );
    let f = temp_dir("putfile").join("v.bin");
    std::fs::write(&f, b"file\x00data").unwrap();
    a.cli(&["kv", "put", "in/file", &format!("@{}", f.display())]);
    assert_eq!(
        a.http("GET", "/v1/kv/in/file?raw", b"").body,
        b"file\x00data"
    );
    a.cli(&["kv", "put", "-base64", "in/b64", "Nw=="]);
    assert_eq!(a.http("GET", "/v1/kv/in/b64?raw", b"").body, b"7");
    // Deletes.
    let o = a.cli(&["kv", "delete", "redis/config/connections"]);
    assert_eq!(
        stdout(&o),
        "Success! Deleted key: redis/config/connections\n"
    );
    let o = a.cli(&["kv", "delete", "never/existed"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "Success! Deleted key: never/existed\n")
    );
    let o = a.cli(&["kv", "delete", "-recurse", "redis"]);
    assert_eq!(stdout(&o), "Success! Deleted keys with prefix: redis\n");
    assert_eq!(stdout(&a.cli(&["kv", "get", "-recurse", "redis"])), "");
    // Flags in any Go form.
    let o = a.cli(&["kv", "put", "--flags", "3", "g/k", "v"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        a.http("GET", "/v1/kv/g/k", b"").json()[0]["Flags"],
        json!(3)
    );
    let o = a.cli(&["kv", "put", "-bogus", "k", "v"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("flag provided but not defined: -bogus"));
}

#[test]
fn cli_errors_when_agent_is_unreachable() {
    let port = free_port();
    let o = Command::new(BIN)
        .args(["kv", "get", "k"])
        .env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Error querying Consul agent"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(BIN)
        .args([
            "kv",
            "get",
            &format!("-http-addr=http://127.0.0.1:{port}"),
            "k",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn keygen_version_members_info() {
    let o = Command::new(BIN).arg("keygen").output().unwrap();
    let key = stdout(&o);
    let key = key.trim_end();
    assert_eq!(key.len(), 44);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap()
            .len(),
        32
    );
    let other = stdout(&Command::new(BIN).arg("keygen").output().unwrap());
    assert_ne!(key, other.trim_end());
    let o = Command::new(BIN).arg("version").output().unwrap();
    let v = stdout(&o);
    assert!(v.starts_with("Tribune v0.1.0\n"), "{v}");
    assert!(
        v.contains("\nProtocol 2 spoken by default, understands 2 to 3"),
        "{v}"
    );

    let a = Agent::dev(&["-node=consul01"]);
    let o = a.cli(&["members"]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Segment"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "consul01",
            "127.0.0.1:8301",
            "alive",
            "server",
            "0.1.0",
            "2",
            "dc1",
            "<all>"
        ]
    );
    // Columns are aligned: every header starts where its values start.
    assert_eq!(lines[0].find("Address"), lines[1].find("127.0.0.1"));
    assert_eq!(a.cli(&["members", "-status=failed"]).status.code(), Some(2));
    let info = stdout(&a.cli(&["info"]));
    assert!(
        info.contains("raft:\n") && info.contains("\tapplied_index = "),
        "{info}"
    );
    let peers = stdout(&a.cli(&["operator", "raft", "list-peers"]));
    let rows: Vec<Vec<&str>> = peers
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
    );
    assert_eq!(
        (rows[1][0], rows[1][2], rows[1][3], rows[1][4]),
        ("consul01", "127.0.0.1:8300", "leader", "true")
    );
    let o = a.cli(&["reload"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "Configuration reload triggered\n")
    );
}

fn read_json_file(path: &std::path::Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[test]
fn watch_cli_runs_script_handler_with_json_on_stdin() {
    let a = Agent::dev(&[]);
    let dir = temp_dir("watchcli");
    let out = dir.join("out.json");
    let handler = dir.join("handler.sh");
    std::fs::write(
        &handler,
        format!(
            "#!/bin/sh\ncat > {0}.tmp\necho \"$CONSUL_INDEX\" > {0}.idx\nmv {0}.tmp {0}\n",
            out.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&handler)
        .status()
        .unwrap();
    let mut w = Command::new(BIN)
        .args([
            "watch",
            "-type=key",
            "-key=redis/config/connections",
            handler.to_str().unwrap(),
        ])
        .env("CONSUL_HTTP_ADDR", a.addr())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // First result (missing key) fires with null.
    let first = eventually(Duration::from_secs(10), || read_json_file(&out));
    assert_eq!(first, Some(Value::Null));
    let o = a.cli(&["kv", "put", "redis/config/connections", "7"]);
    assert_eq!(o.status.code(), Some(0));
    let got = eventually(Duration::from_secs(10), || {
        read_json_file(&out).filter(|v| !v.is_null())
    });
    let _ = w.kill();
    let _ = w.wait();
    let mut err = String::new();
    w.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let got = got.unwrap_or_else(|| panic!("handler never saw the write; watch stderr: {err}"));
    assert_eq!(got["Key"], json!("redis/config/connections"));
    assert_eq!(got["Value"], json!("Nw=="));
    assert_eq!(got["Session"], json!(""));
    assert_eq!(got["LockIndex"], json!(0));
    let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "Key",
            "CreateIndex",
            "ModifyIndex",
            "LockIndex",
            "Flags",
            "Value",
            "Session"
        ]
    );
    let idx: u64 = std::fs::read_to_string(dir.join("out.json.idx"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(json!(idx), got["ModifyIndex"]);
}

#[test]
fn watch_cli_without_handler_prints_json() {
    let a = Agent::dev(&[]);
    a.http("PUT", "/v1/kv/p/one", b"1");
    let mut w = Command::new(BIN)
        .args(["watch", "-type=keyprefix", "-prefix=p/"])
        .env("CONSUL_HTTP_ADDR", a.addr())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = w.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let v = eventually(Duration::from_secs(10), || {
        serde_json::from_slice::<Value>(&seen.lock().unwrap()).ok()
    });
    let _ = w.kill();
    let _ = w.wait();
    let v = v.expect("watch printed the JSON result");
    assert_eq!(v[0]["Key"], json!("p/one"));
    assert_eq!(v[0]["Value"], json!("MQ=="));
}

/// A one-shot HTTP server recording the first request it gets.
fn record_one_request() -> (u16, std::thread::JoinHandle<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&buf).into_owned()
    });
    (port, h)
}

#[test]
fn agent_config_watches_script_and_http_handlers() {
    let dir = temp_dir("cfgwatch");
    let out = dir.join("script.json");
    let (hport, recorded) = record_one_request();
    let cfg = json!({
        "watches": [
            {"type": "key", "key": "cfg/k", "handler_type": "script",
             "args": ["/bin/sh", "-c", format!("cat > {0}.tmp && mv {0}.tmp {0}", out.display())]},
            {"type": "keyprefix", "prefix": "cfg/", "handler_type": "http",
             "http_handler_config": {"path": format!("http://127.0.0.1:{hport}/hook"),
               "method": "POST", "header": {"x-foo": ["bar"]}, "timeout": "5s"}}
        ]
    });
    std::fs::write(dir.join("watches.json"), cfg.to_string()).unwrap();
    let a = Agent::dev(&[&format!(
        "-config-file={}",
        dir.join("watches.json").display()
    )]);
    // The prefix watch fires at start (first result) with an empty list: the one-shot server
    // records that request.
    let req = recorded.join().unwrap();
    assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
    let lower = req.to_ascii_lowercase();
    assert!(
        lower.contains("x-consul-index: ")
            && lower.contains("x-foo: bar")
            && lower.contains("content-type: application/json"),
        "{req}"
    );
    assert!(req.ends_with("[]"), "{req}");
    // The key watch fires at start with null, then with the entry after a write.
    assert_eq!(
        eventually(Duration::from_secs(10), || read_json_file(&out)),
        Some(Value::Null)
    );
    a.http("PUT", "/v1/kv/cfg/k", b"hi");
    let v = eventually(Duration::from_secs(10), || {
        read_json_file(&out).filter(|v| !v.is_null())
    })
    .expect("script handler fired");
    assert_eq!(v["Value"], json!("aGk="));
}

#[test]
fn agent_startup_errors() {
    // A bad value names the file and the key.
    let dir = temp_dir("badcfg");
    std::fs::write(dir.join("10-ports.json"), r#"{"ports":{"http":"x"}}"#).unwrap();
    let o = Command::new(BIN)
        .args(["agent", "-dev", &format!("-config-dir={}", dir.display())])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("10-ports.json") && err.contains("ports.http"),
        "{err}"
    );
    // A bad HCL file: the file, the line and the column.
    let dir = temp_dir("badhcl");
    let hcl = "datacenter = \"dc1\"\nports {\n  http = \n}\n";
    std::fs::write(dir.join("consul.hcl"), hcl).unwrap();
    let config_dir = format!("-config-dir={}", dir.display());
    let o = Command::new(BIN)
        .args(["agent", "-dev", &config_dir])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("consul.hcl") && err.contains("at line 3 column 10"),
        "{err}"
    );
    // Non-dev without a data_dir.
    let o = Command::new(BIN)
        .args(["agent", "-server"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("data_dir"), "{}", stderr(&o));
    // A second agent on the same data_dir exits with a clear error.
    let data = temp_dir("datadir");
    let port = free_port();
    // A bootstrapping server on `data`; not the default server/gossip ports: other tests
    // run real clusters on them.
    let server_args = |http_port: u16| -> Vec<String> {
        let mut a: Vec<String> = [
            "agent",
            "-server",
            "-bootstrap",
            "-bind=127.0.0.1",
            "-dns-port=-1",
        ]
        .map(String::from)
        .to_vec();
        a.push(format!("-data-dir={}", data.display()));
        a.push(format!("-http-port={http_port}"));
        for flag in ["server-port", "serf-lan-port", "serf-wan-port"] {
            a.push(format!("-{flag}={}", free_port()));
        }
        a
    };
    let mut first = Agent {
        child: Command::new(BIN)
            .args(server_args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        port,
    };
    first.wait_ready();
    let o = Command::new(BIN)
        .args(server_args(free_port()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("in use by another agent"),
        "{}",
        stderr(&o)
    );
    // Unknown keys warn but start.
    let warn = temp_dir("warncfg");
    std::fs::write(warn.join("x.json"), r#"{"no_such_key": 1}"#).unwrap();
    let port = free_port();
    let o = Command::new(BIN)
        .args([
            "agent",
            "-dev",
            &format!("-http-port={port}"),
            "-dns-port=-1",
            &format!("-config-dir={}", warn.display()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ag = Agent { child: o, port };
    ag.wait_ready();
    ag.http("PUT", "/v1/agent/leave", b"");
    let out = ag.child.stdout.take().unwrap();
    let mut s = String::new();
    let _ = std::io::BufReader::new(out).read_to_string(&mut s);
    assert!(s.contains("no_such_key"), "{s}");
}

/// Every way the agent fails to start prints the same way, as Consul's agent does: one
/// `==> ` line on stderr with what failed and why, and exit code 1.
#[test]
fn agent_startup_failures_print_one_way() {
    let dir = temp_dir("oneway");
    let not_a_dir = dir.join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["-dev".into(), "-encrypt=not-base64".into()],
            "==> Error in command-line flags: encrypt: the key is not valid base64".into(),
        ),
        (
            vec![
                "-server".into(),
                "-bootstrap".into(),
                format!("-data-dir={}", not_a_dir.join("data").display()),
            ],
            format!(
                "==> Error creating data_dir {}: ",
                not_a_dir.join("data").display()
            ),
        ),
        (
            vec![
                "-dev".into(),
                format!("-pid-file={}", not_a_dir.join("agent.pid").display()),
            ],
            format!(
                "==> Error writing pid file {}: ",
                not_a_dir.join("agent.pid").display()
            ),
        ),
        (
            vec![
                "-dev".into(),
                "-dns-port=-1".into(),
                format!("-http-port={busy_port}"),
            ],
            format!(
                "==> Error starting agent: Failed to start HTTP listener on \
                 127.0.0.1:{busy_port}: "
            ),
        ),
    ];
    for (args, want) in cases {
        let o = Command::new(BIN).arg("agent").args(&args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line on stderr: {err}");
        assert!(lines[0].starts_with(&want), "{args:?}: {err}");
        assert!(
            !stdout(&o).contains("==> Tribune agent running!"),
            "{args:?}: {}",
            stdout(&o)
        );
    }
    drop(busy);
}

#[test]
fn kv_export_import_round_trip() {
    let a = Agent::dev(&[]);
    a.http("PUT", "/v1/kv/ex/a?flags=5", b"one");
    a.http("PUT", "/v1/kv/ex/b", &[0, 1, 2]);
    let o = a.cli(&["kv", "export", "ex/"]);
    assert_eq!(o.status.code(), Some(0));
    let exported: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        exported,
        json!([
            {"key": "ex/a", "flags": 5, "value": "b25l"},
            {"key": "ex/b", "flags": 0, "value": "AAEC"}
        ])
    );
    let o = a.cli_stdin(&["kv", "import", "-prefix=copy/", "-"], &o.stdout);
    assert_eq!(stdout(&o), "Imported: copy/ex/a\nImported: copy/ex/b\n");
    assert_eq!(
        a.http("GET", "/v1/kv/copy/ex/b?raw", b"").body,
        vec![0, 1, 2]
    );
    assert_eq!(
        a.http("GET", "/v1/kv/copy/ex/a", b"").json()[0]["Flags"],
        json!(5)
    );
}

#[test]
fn walkthrough_config_dir_starts_an_agent() {
    let key = stdout(&Command::new(BIN).arg("keygen").output().unwrap())
        .trim()
        .to_string();
    let etc = temp_dir("consul.d");
    let data = temp_dir("varlib");
    let port = free_port();
    let (server_port, serf_port) = (free_port(), free_port());
    let cfg = json!({
        "bootstrap_expect": 1, "client_addr": "127.0.0.1", "bind_addr": "127.0.0.1",
        "datacenter": "KE-DC", "data_dir": data, "domain": "consul",
        "enable_script_checks": true, "dns_config": {"enable_truncate": true, "only_passing": true},
        "enable_syslog": true, "encrypt": key, "leave_on_terminate": true, "log_level": "INFO",
        "rejoin_after_leave": true, "retry_join": ["consul01", "consul02", "consul03"],
        "server": true,
        "start_join": ["consul01", "consul02", "consul03"], "ui": true,
        // Not the default server/gossip ports: other tests run real clusters on them.
        "ports": {
            "http": port, "server": server_port, "serf_lan": serf_port,
            "serf_wan": free_port(), "dns": -1
        },
        "watches": [{"type": "key", "key": "foo/bar/baz", "handler_type": "http",
            "http_handler_config": {"path": "https://localhost:8000/watch", "method": "POST",
              "header": {"x-foo": ["bar", "baz"]}, "timeout": "10s", "tls_skip_verify": false}}]
    });
    std::fs::write(
        etc.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args([
            "agent",
            "-node=consul01",
            &format!("-config-dir={}", etc.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut a = Agent { child, port };
    a.wait_ready();
    let out = stdout(&a.cli(&["members"]));
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    let addr = format!("127.0.0.1:{serf_port}");
    assert_eq!(
        row,
        [
            "consul01",
            addr.as_str(),
            "alive",
            "server",
            "0.1.0",
            "2",
            "ke-dc",
            "<all>"
        ]
    );
    let leader = a.http("GET", "/v1/status/leader", b"").json();
    assert_eq!(leader, json!(format!("127.0.0.1:{server_port}")));
    assert_eq!(
        stdout(&a.cli(&["kv", "put", "redis/config/connections", "5"])),
        "Success! Data written to: redis/config/connections\n"
    );
    assert_eq!(
        stdout(&a.cli(&["kv", "get", "redis/config/connections"])),
        "5\n"
    );
    // The gossip key is not shown back.
    let me = a.http("GET", "/v1/agent/self", b"").json();
    assert_eq!(me["DebugConfig"]["EncryptKey"], json!("hidden"));
    assert!(std::fs::read_to_string(data.join("node-id")).unwrap().len() == 36);
    let _ = a.cli(&["leave"]);
    let exited = eventually(Duration::from_secs(5), || a.child.try_wait().unwrap());
    assert!(exited.is_some(), "agent did not stop after `tribune leave`");
}

#[test]
fn syslog_and_json_logs() {
    let dir = temp_dir("syslog");
    let sock_path = dir.join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "agent",
            "-dev",
            &format!("-http-port={port}"),
            "-dns-port=-1",
            "-syslog",
            "-log-json",
        ])
        .env("TRIBUNE_SYSLOG_SOCKET", &sock_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut a = Agent { child, port };
    a.wait_ready();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a log line arrives on the syslog socket");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(line.starts_with("<134>tribune: {"), "{line}");
    a.http("PUT", "/v1/agent/leave", b"");
    let mut out = String::new();
    a.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let json_lines: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        json_lines.iter().any(|v| v["level"] == json!("INFO")),
        "{out}"
    );
    // Without a syslog socket the agent warns and keeps going.
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "agent",
            "-dev",
            &format!("-http-port={port}"),
            "-dns-port=-1",
            "-syslog",
        ])
        .env("TRIBUNE_SYSLOG_SOCKET", dir.join("missing.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut a = Agent { child, port };
    a.wait_ready();
    a.http("PUT", "/v1/agent/leave", b"");
    let mut out = String::new();
    a.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("missing.sock does not exist"), "{out}");
}

#[test]
fn per_client_connection_cap() {
    let dir = temp_dir("conncap");
    std::fs::write(
        dir.join("l.json"),
        r#"{"limits":{"http_max_conns_per_client":3}}"#,
    )
    .unwrap();
    let a = Agent::dev(&[&format!("-config-dir={}", dir.display())]);
    let mut held = Vec::new();
    for _ in 0..3 {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        s.write_all(b"GET /v1/kv/x?index=99&wait=1m HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        held.push(s);
    }
    let capped = eventually(Duration::from_secs(5), || {
        let r = try_http(a.port, "GET", "/v1/status/leader", b"").ok()?;
        (r.status == 429).then_some(r)
    });
    assert!(capped
        .expect("a 4th connection is refused")
        .text()
        .contains("too many concurrent connections"));
    drop(held);
    assert!(eventually(Duration::from_secs(5), || (try_http(
        a.port,
        "GET",
        "/v1/status/leader",
        b""
    )
    .ok()?
    .status
        == 200)
        .then_some(()))
    .is_some());
}

/// The same settings as `.hcl` files (the forms Consul's docs and packages use) and as `.json`
/// files give the same agent.
#[test]
fn hcl_config_dir_gives_the_same_agent_as_json() {
    let (http, server, lan, wan) = (free_port(), free_port(), free_port(), free_port());
    let json_dir = temp_dir("cfg-json");
    let agent = json!({
        "datacenter": "hcl-dc", "node_name": "from-files", "server": true, "log_level": "WARN",
        "ports": {"http": http, "dns": -1, "server": server, "serf_lan": lan, "serf_wan": wan},
        "addresses": {"http": "127.0.0.1"}, "performance": {"raft_multiplier": 1},
        "dns_config": {"enable_truncate": true, "service_ttl": {"*": "5s"}},
        "limits": {"http_max_conns_per_client": 50}, "node_meta": {"rack": "r1"},
    });
    std::fs::write(json_dir.join("10-agent.json"), agent.to_string()).unwrap();
    let watches = json!({
        "watches": [{"type": "key", "key": "a/b", "args": ["true"]},
                    {"type": "keyprefix", "prefix": "p/", "args": ["true"]}],
        "ports": {"grpc": -1},
    });
    std::fs::write(json_dir.join("20-watches.json"), watches.to_string()).unwrap();
    let hcl_dir = temp_dir("cfg-hcl");
    let agent = format!(
        r#"# As in Consul's packaged consul.hcl.
datacenter = "hcl-dc"
node_name  = "from-files"
server     = true
log_level  = "WARN"

ports {{
  http     = {http}
  dns      = -1
  server   = {server}
  serf_lan = {lan}
}}
ports {{
  serf_wan = {wan}
}}
addresses {{
  http = "127.0.0.1"
}}
performance {{
  raft_multiplier = 1
}}
dns_config {{
  enable_truncate = true
  service_ttl = {{ "*" = "5s" }}
}}
limits {{
  http_max_conns_per_client = 50
}}
node_meta {{
  rack = "r1"
}}
"#
    );
    std::fs::write(hcl_dir.join("10-agent.hcl"), agent).unwrap();
    let watches = r#"
watches = [
  {
    type = "key"
    key  = "a/b"
    args = ["true"]
  }
]
watches {
  type   = "keyprefix"
  prefix = "p/"
  args   = ["true"]
}
ports {
  grpc = -1
}
"#;
    std::fs::write(hcl_dir.join("20-watches.hcl"), watches).unwrap();
    // One after the other, on the same ports.
    let agent_self = |dir: &std::path::Path| {
        let child = Command::new(BIN)
            .args(["agent", "-dev", &format!("-config-dir={}", dir.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut a = Agent { child, port: http };
        a.wait_ready();
        a.http("GET", "/v1/agent/self", b"").json()
    };
    let from_json = agent_self(&json_dir);
    let from_hcl = agent_self(&hcl_dir);
    assert_eq!(from_hcl["DebugConfig"], from_json["DebugConfig"]);
    for key in ["Datacenter", "NodeName", "Server"] {
        assert_eq!(from_hcl["Config"][key], from_json["Config"][key], "{key}");
    }
    assert_eq!(from_hcl["Config"]["Datacenter"], json!("hcl-dc"));
    assert_eq!(from_hcl["Config"]["NodeName"], json!("from-files"));
    let member = &from_hcl["Member"];
    assert_eq!(member["Port"], json!(lan));
    assert_eq!(member["Tags"]["port"], json!(server.to_string()));
    let debug = &from_hcl["DebugConfig"];
    assert_eq!(debug["SerfPortWAN"], json!(wan));
    assert_eq!(debug["Watches"][1]["prefix"], json!("p/"));
}
