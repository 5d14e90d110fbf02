//! The agent's counters, beneath everything that counts: the HTTP API's (responses by
//! status, blocking queries, watch fires) and the DNS interface's (queries by response code,
//! packets dropped), and the shape every part exports its metrics in ([`Metric`]).
//! `/v1/agent/metrics` (in `http`) renders them.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::sync::PoisonError;

use hickory_proto::op::ResponseCode;

/// One exported metric: name (dotted), labels, value.
pub type Metric = (&'static str, Vec<(&'static str, String)>, u64);

/// The agent's own counters.
#[derive(Default)]
pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    pub blocking_open: AtomicI64,
    /// Times a waiting blocking query was woken by a write (whether or not its result moved).
    pub blocking_wakeups: AtomicU64,
    pub watch_fires: AtomicU64,
    pub dns: DnsCounters,
}

impl Metrics {
    /// Count an HTTP response by its status.
    pub fn count(&self, status: u16) {
        *self
            .by_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(status)
            .or_default() += 1;
    }

    /// HTTP responses so far, by status.
    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        self.by_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// DNS response codes counted, with their names in the metrics.
const RCODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
];

/// DNS queries answered by response code, and packets dropped.
#[derive(Default)]
pub struct DnsCounters {
    answered: [AtomicU64; RCODES.len()],
    malformed: AtomicU64,
    oversize: AtomicU64,
}

impl DnsCounters {
    /// A query answered with `rcode`.
    pub fn answered(&self, rcode: ResponseCode) {
        if let Some(i) = RCODES.iter().position(|(r, _)| *r == rcode) {
            self.answered[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A packet dropped because it was not a query.
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// A packet dropped because it was too large.
    pub fn oversize(&self) {
        self.oversize.fetch_add(1, Ordering::Relaxed);
    }

    /// (metric name, labels, value): queries by rcode and packets dropped by reason.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out: Vec<_> = RCODES
            .iter()
            .zip(&self.answered)
            .map(|((_, name), n)| {
                (
                    "dns.queries",
                    vec![("rcode", name.to_string())],
                    n.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.push((
            "dns.dropped",
            vec![("reason", "malformed".to_string())],
            self.malformed.load(Ordering::Relaxed),
        ));
        out.push((
            "dns.dropped",
            vec![("reason", "oversize".to_string())],
            self.oversize.load(Ordering::Relaxed),
        ));
        out
    }
}
