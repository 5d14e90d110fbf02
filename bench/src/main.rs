//! tribune-bench: drives Tribune's Consul KV API or etcd's v3 JSON gateway with the same
//! closed-loop HTTP/1.1 keep-alive load and prints one machine-readable RESULT line.
//!
//!   tribune-bench --target tribune|etcd --endpoints A,B,C --op put|get|fill|failover
//!                 [--clients N] [--duration-secs S] [--max-requests M]
//!                 [--value-bytes 128] [--keys 10000] [--scenario NAME] [--since-ns T]
//!                 [--slow-ms MS]
//!
//! put/get: N clients (one TCP connection each, round-robin over the endpoints) issue
//! requests back to back on random keys bench/0000.. until S seconds or M requests.
//! fill: writes every key once (for read scenarios). failover: PUTs until one succeeds
//! and reports the time since --since-ns (the wall clock, ns, when the leader was killed).
//! --slow-ms: every request slower than MS is printed to stderr as `# slow` with the wall
//! clock (ms since the epoch) it ended at, its endpoint and latency, to line up a latency
//! tail with what the servers did at that moment.

mod hist;
mod http;

use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use base64::Engine;

use crate::hist::Histogram;
use crate::http::Conn;
use crate::http::Response;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    Tribune,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Put,
    Get,
    Fill,
    Failover,
}

#[derive(Debug)]
struct Args {
    target: Target,
    endpoints: Vec<String>,
    op: Op,
    clients: usize,
    duration: Duration,
    max_requests: u64,
    value_bytes: usize,
    keys: usize,
    scenario: Option<String>,
    since_ns: Option<u128>,
    slow_ms: Option<u64>,
}

fn usage() -> String {
    "usage: tribune-bench --target tribune|etcd --endpoints HOST:PORT[,...] \
     --op put|get|fill|failover [--clients N] [--duration-secs S] [--max-requests M] \
     [--value-bytes B] [--keys K] [--scenario NAME] [--since-ns T] [--slow-ms MS]"
        .to_string()
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        target: Target::Tribune,
        endpoints: Vec::new(),
        op: Op::Put,
        clients: 1,
        duration: Duration::from_secs(10),
        max_requests: 1_000_000,
        value_bytes: 128,
        keys: 10_000,
        scenario: None,
        since_ns: None,
        slow_ms: None,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(usage());
        }
        let v = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))?,
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match name {
            "--target" => {
                a.target = match v.as_str() {
                    "tribune" => Target::Tribune,
                    "etcd" => Target::Etcd,
                    _ => return Err(format!("--target: tribune or etcd, not {v}")),
                }
            }
            "--endpoints" => {
                a.endpoints = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_start_matches("http://").to_string())
                    .collect()
            }
            "--op" => {
                a.op = match v.as_str() {
                    "put" => Op::Put,
                    "get" => Op::Get,
                    "fill" => Op::Fill,
                    "failover" => Op::Failover,
                    _ => return Err(format!("--op: put, get, fill or failover, not {v}")),
                }
            }
            "--clients" => a.clients = num(&v)?.max(1) as usize,
            "--duration-secs" => {
                a.duration =
                    Duration::from_secs_f64(v.parse::<f64>().map_err(|_| format!("{name}: {v}"))?)
            }
            "--max-requests" => a.max_requests = num(&v)?,
            "--value-bytes" => a.value_bytes = num(&v)? as usize,
            "--keys" => a.keys = num(&v)?.max(1) as usize,
            "--scenario" => a.scenario = Some(v),
            "--since-ns" => a.since_ns = Some(v.parse().map_err(|_| format!("{name}: {v}"))?),
            "--slow-ms" => a.slow_ms = Some(num(&v)?),
            _ => return Err(format!("unknown flag {name}\n{}", usage())),
        }
    }
    if a.endpoints.is_empty() {
        return Err(format!("--endpoints is required\n{}", usage()));
    }
    Ok(a)
}

fn key_name(i: usize) -> String {
    format!("bench/{i:04}")
}

/// The serialized request for key `i` (prebuilt so the load loop only writes bytes).
fn build(target: Target, op: Op, i: usize, value: &[u8]) -> Vec<u8> {
    let key = key_name(i);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match (target, op) {
        (Target::Tribune, Op::Get) => {
            http::build_request("GET", &format!("/v1/kv/{key}?consistent"), None, b"")
        }
        (Target::Tribune, _) => http::build_request("PUT", &format!("/v1/kv/{key}"), None, value),
        (Target::Etcd, Op::Get) => {
            let body = format!("{{\"key\":\"{}\"}}", b64(key.as_bytes()));
            http::build_request(
                "POST",
                "/v3/kv/range",
                Some("application/json"),
                body.as_bytes(),
            )
        }
        (Target::Etcd, _) => {
            let body = format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                b64(key.as_bytes()),
                b64(value)
            );
            http::build_request(
                "POST",
                "/v3/kv/put",
                Some("application/json"),
                body.as_bytes(),
            )
        }
    }
}

/// Did the server do what was asked? (Status alone is not enough: Consul answers a
/// failed CAS/lock with 200 `false`; a GET must find the pre-populated key.)
fn accepted(target: Target, op: Op, r: &Response) -> bool {
    if r.status != 200 {
        return false;
    }
    let body = String::from_utf8_lossy(&r.body);
    match (target, op) {
        (Target::Tribune, Op::Get) => body.trim_start().starts_with('['),
        (Target::Tribune, _) => body.trim() == "true",
        (Target::Etcd, Op::Get) => body.contains("\"kvs\""),
        (Target::Etcd, _) => body.contains("\"header\""),
    }
}

/// xorshift64*: a per-client key sequence without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Default)]
struct ClientStats {
    hist: Histogram,
    errors: u64,
    first_error: Option<String>,
}

struct Shared {
    requests: Vec<Vec<u8>>,
    endpoints: Vec<String>,
    target: Target,
    op: Op,
    issued: AtomicU64,
    max_requests: u64,
    deadline: Instant,
    slow_us: Option<u64>,
}

async fn client(id: usize, s: Arc<Shared>) -> ClientStats {
    let mut st = ClientStats::default();
    let addr = s.endpoints[id % s.endpoints.len()].clone();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1000_0001));
    let mut conn: Option<Conn> = None;
    loop {
        let now = Instant::now();
        if now >= s.deadline {
            break;
        }
        let n = s.issued.fetch_add(1, Ordering::Relaxed);
        if n >= s.max_requests {
            break;
        }
        let key = if s.op == Op::Fill {
            n as usize
        } else {
            (rng.next() % s.requests.len() as u64) as usize
        };
        // No request may outlive the run by more than a little.
        let budget = s.deadline.saturating_duration_since(now) + Duration::from_secs(2);
        let t0 = Instant::now();
        let res = tokio::time::timeout(budget, async {
            if conn.as_ref().is_none_or(|c| !c.reusable()) {
                conn = Some(Conn::connect(&addr).await?);
            }
            conn.as_mut().unwrap().round_trip(&s.requests[key]).await
        })
        .await;
        let err = match res {
            Ok(Ok(r)) if accepted(s.target, s.op, &r) => {
                let us = t0.elapsed().as_micros() as u64;
                st.hist.record(us);
                if s.slow_us.is_some_and(|slow| us > slow) {
                    let wall = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    eprintln!(
                        "# slow at_ms={} endpoint={addr} ms={:.1}",
                        wall.as_millis(),
                        us as f64 / 1e3
                    );
                }
                continue;
            }
            Ok(Ok(r)) => {
                format!(
                    "status {} body {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(120)])
                )
            }
            Ok(Err(e)) => {
                conn = None;
                format!("{addr}: {e}")
            }
            Err(_) => {
                conn = None;
                format!("{addr}: timed out after {budget:?}")
            }
        };
        st.errors += 1;
        st.first_error.get_or_insert(err);
        if conn.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await; // do not spin on a dead endpoint
        }
    }
    st
}

fn ms(us: Option<u64>) -> String {
    us.map(|v| format!("{:.3}", v as f64 / 1000.0))
        .unwrap_or_else(|| "nan".into())
}

fn system_name(t: Target) -> &'static str {
    match t {
        Target::Tribune => "tribune",
        Target::Etcd => "etcd",
    }
}

async fn run_load(a: &Args) -> ExitCode {
    let value = vec![b'v'; a.value_bytes];
    let requests: Vec<Vec<u8>> = (0..a.keys)
        .map(|i| build(a.target, a.op, i, &value))
        .collect();
    let max_requests = if a.op == Op::Fill {
        a.max_requests.min(a.keys as u64)
    } else {
        a.max_requests
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        requests,
        endpoints: a.endpoints.clone(),
        target: a.target,
        op: a.op,
        issued: AtomicU64::new(0),
        max_requests,
        deadline: start + a.duration,
        slow_us: a.slow_ms.map(|ms| ms * 1000),
    });
    let tasks: Vec<_> = (0..a.clients)
        .map(|id| tokio::spawn(client(id, shared.clone())))
        .collect();
    let mut hist = Histogram::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let st = t.await.expect("client task panicked");
        hist.merge(&st.hist);
        errors += st.errors;
        if first_error.is_none() {
            first_error = st.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = hist.len();
    let scenario = a
        .scenario
        .clone()
        .unwrap_or_else(|| format!("{:?}", a.op).to_lowercase());
    println!(
        "RESULT system={} scenario={} clients={} n={} rps={:.0} p50_ms={} p99_ms={} p999_ms={} \
        max_ms={} errors={} elapsed_s={:.2}",
        system_name(a.target),
        scenario,
        a.clients,
        n,
        n as f64 / elapsed,
        ms(hist.quantile(0.5)),
        ms(hist.quantile(0.99)),
        ms(hist.quantile(0.999)),
        ms((n > 0).then(|| hist.max())),
        errors,
        elapsed
    );
    if let Some(e) = first_error {
        eprintln!("# {} {scenario}: first error: {e}", system_name(a.target));
    }
    if n == 0 {
        eprintln!(
            "# {} {scenario}: no request succeeded",
            system_name(a.target)
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One PUT of bench/0000 on a fresh connection.
async fn failover_attempt(
    target: Target,
    addr: String,
    request: Arc<Vec<u8>>,
) -> Result<String, String> {
    let mut c = Conn::connect(&addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let r = c
        .round_trip(&request)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    if accepted(target, Op::Put, &r) {
        Ok(addr)
    } else {
        Err(format!(
            "{addr}: status {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(120)])
        ))
    }
}

/// PUTs bench/0000 through the endpoints until one succeeds, and reports the time since
/// --since-ns. A new attempt starts every 100 ms (round-robin over the endpoints, at most
/// 64 in flight, each on its own connection with a 10 s timeout) without waiting for
/// earlier ones, so a request stuck on a dead leader does not hide the moment the
/// cluster accepts writes again.
async fn run_failover(a: &Args) -> ExitCode {
    let since = a.since_ns.unwrap_or_else(now_ns);
    let request = Arc::new(build(a.target, Op::Put, 0, &vec![b'f'; a.value_bytes]));
    let deadline = Instant::now() + a.duration;
    let mut tasks: tokio::task::JoinSet<Result<String, String>> = tokio::task::JoinSet::new();
    let mut attempts = 0u64;
    let mut in_flight = 0usize;
    let mut last_err = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= deadline {
                    break;
                }
                if in_flight < 64 {
                    let addr = a.endpoints[attempts as usize % a.endpoints.len()].clone();
                    attempts += 1;
                    in_flight += 1;
                    let (req, target) = (request.clone(), a.target);
                    tasks.spawn(async move {
                        let attempt = failover_attempt(target, addr.clone(), req);
                        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                            Ok(r) => r,
                            Err(_) => Err(format!("{addr}: timed out after 10s")),
                        }
                    });
                }
            }
            Some(r) = tasks.join_next() => {
                in_flight -= 1;
                match r.unwrap_or_else(|e| Err(format!("attempt task failed: {e}"))) {
                    Ok(addr) => {
                        let ms = now_ns().saturating_sub(since) as f64 / 1e6;
                        println!(
                            "RESULT system={} scenario=failover failover_ms={ms:.0} \
                            attempts={attempts} via={addr}",
                            system_name(a.target)
                        );
                        if !last_err.is_empty() {
                            eprintln!(
                                "# {} failover: last error before success: {last_err}",
                                system_name(a.target),
                            );
                        }
                        return ExitCode::SUCCESS;
                    }
                    Err(e) => last_err = e,
                }
            }
        }
    }
    println!(
        "RESULT system={} scenario=failover failover_ms=timeout attempts={attempts}",
        system_name(a.target)
    );
    eprintln!(
        "# failover: no write succeeded within {:?}; last error: {last_err}",
        a.duration
    );
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match a.op {
        Op::Failover => run_failover(&a).await,
        _ => run_load(&a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_put_body_is_base64_json() {
        let r = String::from_utf8(build(Target::Etcd, Op::Put, 7, b"ab")).unwrap();
        assert!(r.starts_with("POST /v3/kv/put HTTP/1.1\r\n"), "{r}");
        assert!(
            r.ends_with("\r\n\r\n{\"key\":\"YmVuY2gvMDAwNw==\",\"value\":\"YWI=\"}"),
            "{r}"
        );
        let g = String::from_utf8(build(Target::Tribune, Op::Get, 42, b"")).unwrap();
        assert!(
            g.starts_with("GET /v1/kv/bench/0042?consistent HTTP/1.1\r\n"),
            "{g}"
        );
    }

    #[test]
    fn args_parse() {
        let v: Vec<String> =
            "--target etcd --endpoints http://127.0.0.1:1,127.0.0.1:2 --op get --clients=64 \
            --duration-secs 1.5"
                .split(' ')
                .map(String::from)
                .collect();
        let a = parse_args(&v).unwrap();
        assert_eq!((a.target, a.op, a.clients), (Target::Etcd, Op::Get, 64));
        assert_eq!(a.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(a.duration, Duration::from_millis(1500));
        assert!(parse_args(&["--op".into(), "x".into()]).is_err());
    }
}
