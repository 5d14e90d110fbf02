//! The agent's command line: Consul's flags, each put where its config key would be, so
//! flags and config files merge as one more config source.

use std::path::PathBuf;

use serde_json::json;
use serde_json::Map;
use serde_json::Value;

use crate::config;
use crate::config::LoadOptions;
use crate::config::Source;
use crate::flags;
use crate::flags::FlagError;
use crate::flags::Kind;

/// Agent flags: (flag, kind, config key path, value type).
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    List,
}

const AGENT_FLAGS: &[(&str, Kind, &[&str], Ty)] = &[
    ("node", Kind::Value, &["node_name"], Ty::Str),
    ("node-id", Kind::Value, &["node_id"], Ty::Str),
    ("server", Kind::Bool, &["server"], Ty::Bool),
    ("bootstrap", Kind::Bool, &["bootstrap"], Ty::Bool),
    (
        "bootstrap-expect",
        Kind::Value,
        &["bootstrap_expect"],
        Ty::Int,
    ),
    ("bind", Kind::Value, &["bind_addr"], Ty::Str),
    ("advertise", Kind::Value, &["advertise_addr"], Ty::Str),
    ("client", Kind::Value, &["client_addr"], Ty::Str),
    ("data-dir", Kind::Value, &["data_dir"], Ty::Str),
    ("datacenter", Kind::Value, &["datacenter"], Ty::Str),
    ("domain", Kind::Value, &["domain"], Ty::Str),
    ("join", Kind::Value, &["retry_join"], Ty::List),
    ("retry-join", Kind::Value, &["retry_join"], Ty::List),
    ("retry-interval", Kind::Value, &["retry_interval"], Ty::Str),
    ("encrypt", Kind::Value, &["encrypt"], Ty::Str),
    ("log-level", Kind::Value, &["log_level"], Ty::Str),
    ("log-json", Kind::Bool, &["log_json"], Ty::Bool),
    ("syslog", Kind::Bool, &["enable_syslog"], Ty::Bool),
    ("rejoin", Kind::Bool, &["rejoin_after_leave"], Ty::Bool),
    ("ui", Kind::Bool, &["ui"], Ty::Bool),
    ("http-port", Kind::Value, &["ports", "http"], Ty::Int),
    ("dns-port", Kind::Value, &["ports", "dns"], Ty::Int),
    (
        "serf-lan-port",
        Kind::Value,
        &["ports", "serf_lan"],
        Ty::Int,
    ),
    (
        "serf-wan-port",
        Kind::Value,
        &["ports", "serf_wan"],
        Ty::Int,
    ),
    ("server-port", Kind::Value, &["ports", "server"], Ty::Int),
];

pub const USAGE: &str = concat!(
    "Usage: tribune agent [options]\n\n",
    "  Starts the Tribune agent and runs until an interrupt is received.\n\n",
    "  -dev  -node=NAME  -config-dir=DIR  -config-file=FILE  -config-format=json|hcl  -server\n",
    "  -bind=ADDR  -client=ADDR  -data-dir=DIR  -datacenter=DC  -bootstrap-expect=N  -join=ADDR\n",
    "  -retry-join=ADDR  -encrypt=KEY  -log-level=LEVEL  -log-json  -http-port=N  -dns-port=N\n",
    "  -serf-lan-port=N  -server-port=N",
);

/// Parse the agent's command line into config load options.
pub fn parse_args(argv: &[String]) -> Result<LoadOptions, FlagError> {
    let mut specs: Vec<(&str, Kind)> = AGENT_FLAGS.iter().map(|(n, k, _, _)| (*n, *k)).collect();
    specs.extend([
        ("dev", Kind::Bool),
        ("config-dir", Kind::Value),
        ("config-file", Kind::Value),
        ("config-format", Kind::Value),
        ("pid-file", Kind::Value),
    ]);
    let p = flags::parse(&specs, argv)?;
    if let Some(a) = p.args.first() {
        return Err(FlagError::Bad(format!("unexpected argument: {a}")));
    }
    // As in Consul: the format of every config file, whatever its name; empty is unset.
    let format = match p.get("config-format").filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => match config::Format::from_flag(f) {
            Some(format) => Some(format),
            None => {
                return Err(FlagError::Bad(format!(
                    "-config-format={f}: must be json or hcl"
                )));
            }
        },
    };
    let pid_file = p.get("pid-file").map(PathBuf::from);
    let mut opts = LoadOptions {
        dev: p.flag("dev"),
        pid_file,
        format,
        ..Default::default()
    };
    for (name, value) in &p.values {
        match name.as_str() {
            "config-dir" => opts.sources.push(Source::Dir(PathBuf::from(value))),
            "config-file" => opts.sources.push(Source::File(PathBuf::from(value))),
            _ => {}
        }
    }
    let mut frag = Value::Object(Map::new());
    for (name, value) in &p.values {
        let Some((_, _, path, ty)) = AGENT_FLAGS.iter().find(|(n, ..)| n == name) else {
            continue;
        };
        let v = match ty {
            Ty::Str => json!(value),
            Ty::Bool => json!(value == "true"),
            Ty::List => json!([value]),
            Ty::Int => match value.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => {
                    return Err(FlagError::Bad(format!(
                        "invalid value {value:?} for flag -{name}: expected an integer"
                    )))
                }
            },
        };
        let mut nested = v;
        for k in path.iter().rev() {
            let mut m = Map::new();
            m.insert(k.to_string(), nested);
            nested = Value::Object(m);
        }
        config::merge(&mut frag, nested);
    }
    if let Value::Object(m) = frag {
        opts.flags = m;
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_become_config() {
        let o = parse_args(&argv(&[
            "-dev",
            "-node=n1",
            "--http-port",
            "9001",
            "-join=a",
            "-retry-join",
            "b",
            "-config-dir=/etc/x",
            "-config-file",
            "/f.json",
            "-server",
        ]))
        .unwrap();
        assert!(o.dev);
        assert_eq!(
            o.sources,
            vec![Source::Dir("/etc/x".into()), Source::File("/f.json".into())]
        );
        assert_eq!(
            Value::Object(o.flags),
            json!({
                "node_name": "n1", "ports": {"http": 9001}, "retry_join": ["a", "b"],
                "server": true
            })
        );
        let bad = parse_args(&argv(&["-http-port=x"]));
        assert!(matches!(bad, Err(FlagError::Bad(m)) if m.contains("http-port")));
        assert!(matches!(
            parse_args(&argv(&["-bogus"])),
            Err(FlagError::Bad(_))
        ));
        assert!(matches!(
            parse_args(&argv(&["extra"])),
            Err(FlagError::Bad(_))
        ));
        assert_eq!(o.format, None);
    }

    #[test]
    fn config_format_flag() {
        let format = |args: &[&str]| parse_args(&argv(args)).map(|o| o.format);
        assert_eq!(
            format(&["-config-format=hcl"]),
            Ok(Some(config::Format::Hcl))
        );
        assert_eq!(
            format(&["-config-format", "json"]),
            Ok(Some(config::Format::Json))
        );
        assert_eq!(format(&["-config-format="]), Ok(None));
        let err = format(&["-config-format=yaml"]).unwrap_err();
        assert_eq!(
            err,
            FlagError::Bad("-config-format=yaml: must be json or hcl".into())
        );
    }
}
