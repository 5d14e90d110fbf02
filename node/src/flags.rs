//! Go `flag`-style command-line parsing (`-name=v`, `-name v`, `--name=v`, bare booleans,
//! parsing stops at the first non-flag argument or `--`), and Go duration syntax.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Value,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// (name, value) in command-line order; booleans hold "true"/"false".
    pub values: Vec<(String, String)>,
    /// Positional arguments after the flags.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagError {
    Help,
    Bad(String),
}

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlagError::Help => f.write_str("help requested"),
            FlagError::Bad(s) => f.write_str(s),
        }
    }
}

pub fn parse(specs: &[(&str, Kind)], argv: &[String]) -> Result<Parsed, FlagError> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let body = a.strip_prefix("--").unwrap_or(&a[1..]);
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(FlagError::Bad(format!("bad flag syntax: {a}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some((_, kind)) = specs.iter().find(|(n, _)| *n == name) else {
            if name == "h" || name == "help" {
                return Err(FlagError::Help);
            }
            return Err(FlagError::Bad(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let value = match (kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => match parse_bool(&v) {
                Some(b) => b.to_string(),
                None => {
                    return Err(FlagError::Bad(format!(
                        "invalid boolean value {v:?} for -{name}"
                    )))
                }
            },
            (Kind::Value, Some(v)) => v,
            (Kind::Value, None) => {
                i += 1;
                match argv.get(i) {
                    Some(v) => v.clone(),
                    None => return Err(FlagError::Bad(format!("flag needs an argument: -{name}"))),
                }
            }
        };
        out.values.push((name.to_string(), value));
        i += 1;
    }
    out.args = argv[i..].to_vec();
    Ok(out)
}

#[allow(dead_code)]
impl Parsed {
    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The value of `name` as an unsigned integer, if given.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, FlagError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                FlagError::Bad(format!(
                    "invalid value {v:?} for -{name}: expected an unsigned integer"
                ))
            }),
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`: `300ms`, `1.5h`, `2h45m`, `9.99s`; a bare `0` is zero.
/// Negative durations are refused (nothing here uses them).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * nanos;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    const SPECS: &[(&str, Kind)] = &[
        ("node", Kind::Value),
        ("dev", Kind::Bool),
        ("join", Kind::Value),
        ("recurse", Kind::Bool),
    ];

    #[test]
    fn go_flag_forms() {
        for form in [
            &["-node=n1"][..],
            &["-node", "n1"],
            &["--node=n1"],
            &["--node", "n1"],
        ] {
            let p = parse(SPECS, &argv(form)).unwrap();
            assert_eq!(p.get("node"), Some("n1"), "{form:?}");
        }
        let p = parse(
            SPECS,
            &argv(&[
                "-dev",
                "-recurse=false",
                "-join=a",
                "-join",
                "b",
                "key",
                "-node=x",
            ]),
        )
        .unwrap();
        assert!(p.flag("dev"));
        assert!(!p.flag("recurse"));
        assert_eq!(p.all("join"), vec!["a", "b"]);
        // Parsing stops at the first positional argument.
        assert_eq!(p.args, vec!["key", "-node=x"]);
        assert_eq!(p.get("node"), None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(SPECS, &argv(&["-nope"])),
            Err(FlagError::Bad(
                "flag provided but not defined: -nope".into()
            ))
        );
        assert!(matches!(
            parse(SPECS, &argv(&["-node"])),
            Err(FlagError::Bad(m)) if m.contains("needs an argument"),
        ));
        assert!(matches!(
            parse(SPECS, &argv(&["-dev=maybe"])),
            Err(FlagError::Bad(_))
        ));
        assert_eq!(parse(SPECS, &argv(&["-h"])), Err(FlagError::Help));
        // "-" and "--" handling.
        assert_eq!(
            parse(SPECS, &argv(&["-dev", "-", "x"])).unwrap().args,
            vec!["-", "x"]
        );
        assert_eq!(
            parse(SPECS, &argv(&["--", "-dev"])).unwrap().args,
            vec!["-dev"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("9.99s"), Some(Duration::from_millis(9990)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "1x", "1.2.3s", "-5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
