//! Consul's DNS interface on `ports.dns` (8600), UDP and TCP, for the `domain` zone
//! (default `consul.`), answered from local state (a [`Directory`]; never one server RPC
//! per query):
//!
//! - `[<tag>.]<service>.service[.<dc>].<domain>`: A/AAAA of the healthy instances (the
//!   service's address, else its node's; a CNAME when it is a host name), and SRV when
//!   asked; RFC 2782 `_<service>._<tag>[.service][.<dc>].<domain>` (`_tcp`: any tag) for
//!   SRV. An SRV target is `<node>.node.<dc>.<domain>`, or `<hex>.addr.<dc>.<domain>` for
//!   an instance with an address of its own; the targets' addresses are additional
//!   records. An instance with a critical check (its own or its node's) is left out; with
//!   `dns_config.only_passing`, one with a warning too; the SRV weight is the instance's
//!   `Weights` for its health. Answers are shuffled; `dns_config.a_record_limit` caps the
//!   A/AAAA answers (0: no cap).
//! - `<node>.node[.<dc>].<domain>` (A, AAAA, ANY, TXT; other types NODATA): the catalog's
//!   node (else a LAN gossip member), with its meta as TXT records (Consul's RFC 1464
//!   `key=value`, the bare value for `rfc1035-` keys): the answers for TXT and ANY,
//!   additional records of A/AAAA (and of SRV answers for their nodes) while
//!   `dns_config.enable_additional_node_meta_txt` is on (default).
//! - `<hex>.addr[.<dc>].<domain>`: the address spelled in 8 (IPv4) or 32 (IPv6) hex digits
//!   (asked for another type: NODATA, the address an additional record, as Consul).
//! - PTR in `in-addr.arpa` and `ip6.arpa`: the node with that address, else the service
//!   with that service address.
//! - SOA and NS at the zone's apex; `consul.service` also from the LAN pool's servers when
//!   no catalog holds it.
//!
//! TTLs: `dns_config.node_ttl` for node and `.addr` answers, `service_ttl` per service name
//! (an exact name, else the longest `prefix*`, `"*"` for any), 0 by default; AA is set.
//! The SOA is `ns.<domain>`, `hostmaster.<domain>`, the current Unix time as serial, and
//! `dns_config.soa`'s `refresh` (3600), `retry` (600), `expire` (86400) and `min_ttl` (0),
//! which is also its own TTL. A name in the zone that does not exist, or a service without
//! an instance to answer with, gets NXDOMAIN; an existing name without records of the
//! asked type NOERROR with no answer (NODATA); both with the SOA in the authority section.
//!
//! Names outside the zone are REFUSED, unless top-level `recursors` are set: then the
//! query is forwarded to each in order (over UDP, or TCP for a query that came over TCP, as
//! Consul), given `dns_config.recursor_timeout` (2s) each, and the first NOERROR or
//! NXDOMAIN answer is relayed; SERVFAIL if all fail. A reverse name not found locally goes
//! to the recursors too. A client agent's service lookup that its view cannot answer (no
//! server answered within the first fill's wait) gets SERVFAIL. Malformed and oversize
//! packets are dropped and counted.
//!
//! Bounds: queries of at most [`QUERY_BYTES_MAX`]; at most [`ANSWERS_MAX`] answer records;
//! a UDP response fits in 512 bytes, or in the query's EDNS size up to [`UDP_BYTES_MAX`]
//! (without EDNS, at most `dns_config.udp_answer_limit` answers, as Consul), with TC set
//! when answers were cut and `dns_config.enable_truncate` is on; a TCP response in 65,535
//! bytes; [`UDP_INFLIGHT_MAX`] UDP queries being answered at once (more are dropped);
//! [`RECURSE_MAX`] forwards to recursors at once (more get SERVFAIL); [`TCP_CONNS_MAX`]
//! TCP connections, each closed after [`TCP_IDLE`] without a query answered.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use hickory_proto::op::Edns;
use hickory_proto::op::Message;
use hickory_proto::op::MessageType;
use hickory_proto::op::OpCode;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::Name;
use hickory_proto::rr::RData;
use hickory_proto::rr::Record;
use hickory_proto::rr::RecordType;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tribune_core::catalog::Catalog;
use tribune_core::catalog::Health;

use crate::config::Config;
use crate::config::DnsConfig;
use crate::directory::Directory;
use crate::metrics::Metrics;

/// Largest query read, on either transport; longer ones are dropped.
pub const QUERY_BYTES_MAX: usize = 4096;
/// Largest UDP response, whatever EDNS size a query offers.
pub const UDP_BYTES_MAX: usize = 4096;
/// The UDP response size for a query without EDNS.
const UDP_BYTES_PLAIN: usize = 512;
/// Largest TCP response (its length prefix is 2 bytes).
const TCP_BYTES_MAX: usize = 65_535;
/// Answer records in one response, before trimming to the transport's size.
pub const ANSWERS_MAX: usize = 128;
/// Consul's ceiling on `udp_answer_limit`.
const UDP_ANSWER_LIMIT_MAX: usize = 8;
/// TCP connections served at once; further ones are closed when accepted.
pub const TCP_CONNS_MAX: usize = 128;
/// A TCP connection is closed when a query does not arrive and get answered within this.
pub const TCP_IDLE: Duration = Duration::from_secs(8);
/// UDP queries being answered at once (a service's first fill on a client agent, or a
/// recursor, can keep one waiting); more are dropped.
pub const UDP_INFLIGHT_MAX: usize = 256;
/// Forwards to recursors in flight at once; a query beyond gets SERVFAIL.
pub const RECURSE_MAX: usize = 64;
/// Servers named in an NS answer.
const NAMESERVERS_MAX: usize = 3;

/// Why the DNS interface did not start: fix the setting it names.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// `domain` does not make a DNS name.
    #[error("invalid domain {domain:?}: {source}")]
    BadDomain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// A DNS address cannot be bound (in use, not local, not permitted): see
    /// `addresses.dns` and `ports.dns`.
    #[error("Error starting agent: Failed to start DNS server on {addr} ({net}): {source}")]
    Bind {
        addr: String,
        /// `udp` or `tcp`.
        net: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What a name below the zone's apex asks for.
#[derive(Debug, PartialEq)]
enum Lookup {
    Apex,
    Node(String),
    Service {
        name: String,
        tag: Option<String>,
    },
    /// `<hex>.addr`: the address spelled in hex.
    Addr(IpAddr),
    /// Not a name that can exist: NXDOMAIN.
    Invalid,
}

/// An address spelled as Consul's `.addr` names spell it: 8 hex digits for IPv4, 32 for
/// IPv6.
fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    match hex.len() {
        8 => {
            let b: Option<Vec<u8>> = (0..4).map(|i| byte(2 * i)).collect();
            let b: [u8; 4] = b?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        32 => {
            let b: Option<Vec<u8>> = (0..16).map(|i| byte(2 * i)).collect();
            let b: [u8; 16] = b?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// `ip` as an `.addr` label (IPv4 in 8 hex digits, IPv6 in 32).
fn hex_ip(ip: IpAddr) -> String {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa`, or 32 nibbles of `ip6.arpa`) is
/// about; `None` if it is not a whole address. `labels` are lowercase.
fn parse_arpa(labels: &[String]) -> Option<IpAddr> {
    match labels {
        [octets @ .., a, b] if a == "in-addr" && b == "arpa" && octets.len() == 4 => {
            let mut ip = [0u8; 4];
            for (k, o) in octets.iter().rev().enumerate() {
                ip[k] = o.parse().ok()?;
            }
            Some(IpAddr::from(ip))
        }
        [nibbles @ .., a, b] if a == "ip6" && b == "arpa" && nibbles.len() == 32 => {
            let mut ip = 0u128;
            for n in nibbles.iter().rev() {
                if n.len() != 1 {
                    return None;
                }
                ip = (ip << 4) | u128::from(u8::from_str_radix(n, 16).ok()?);
            }
            Some(IpAddr::from(ip.to_be_bytes()))
        }
        _ => None,
    }
}

/// Whether a name (lowercase labels) is in the reverse zones.
fn is_arpa(labels: &[String]) -> bool {
    labels.last().is_some_and(|l| l == "arpa")
}

/// Parse a name's labels (lowercase, without the domain) as Consul does: the last kind
/// label (`node`, `service`, ...) splits the name's own labels from an optional
/// datacenter; for SRV, an RFC 2782 `_service._tag` name needs no `service` label.
fn parse(labels: &[String], srv: bool, datacenter: &str) -> Lookup {
    if labels.is_empty() {
        return Lookup::Apex;
    }
    let found = (0..labels.len())
        .rev()
        .find_map(|i| match labels[i].as_str() {
            kind @ ("node" | "service" | "query" | "addr" | "connect" | "virtual" | "ingress") => {
                Some((kind, &labels[..i], &labels[i + 1..]))
            }
            l if srv && l.starts_with('_') => Some(("service", &labels[..=i], &labels[i + 1..])),
            _ => None,
        });
    let Some((kind, parts, suffix)) = found else {
        return Lookup::Invalid;
    };
    match suffix {
        [] => {}
        [dc] if dc == datacenter => {}
        _ => return Lookup::Invalid,
    }
    match (kind, parts) {
        ("node", [_, ..]) => Lookup::Node(parts.join(".")),
        ("service", [service, tag]) if service.starts_with('_') && tag.starts_with('_') => {
            Lookup::Service {
                name: service[1..].to_string(),
                tag: Some(tag[1..].to_string()).filter(|t| t != "tcp"),
            }
        }
        ("service", [tags @ .., service]) => Lookup::Service {
            name: service.clone(),
            tag: (!tags.is_empty()).then(|| tags.join(".")),
        },
        ("addr", [hex]) => parse_hex_ip(hex).map_or(Lookup::Invalid, Lookup::Addr),
        _ => Lookup::Invalid,
    }
}

/// A service instance as DNS answers with it: healthy enough to be in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instance {
    node: String,
    node_address: String,
    node_meta: BTreeMap<String, String>,
    /// The service's own address; empty: the node's.
    address: String,
    port: u16,
    /// The SRV weight for its health (Consul's `Weights.Passing` or `Weights.Warning`).
    weight: u16,
}

/// The instances of service `name` (with `tag`, case-insensitively) that DNS answers
/// with, as Consul filters them: any critical check (the instance's own or its node's)
/// leaves an instance out, and with `only_passing` so does any warning.
fn instances(c: &Catalog, name: &str, tag: Option<&str>, only_passing: bool) -> Vec<Instance> {
    c.instances(name)
        .filter(|s| tag.is_none_or(|t| s.info.tags.iter().any(|x| x.eq_ignore_ascii_case(t))))
        .filter_map(|s| {
            let node = c.node(&s.node)?;
            let worst = c
                .instance_checks(&s.node, &s.info.id)
                .map(|ch| ch.info.status)
                .max()
                .unwrap_or(Health::Passing);
            let weight = match worst {
                Health::Critical => return None,
                Health::Warning if only_passing => return None,
                Health::Warning => s.info.weights.warning,
                Health::Passing => s.info.weights.passing,
            };
            Some(Instance {
                node: node.info.name.clone(),
                node_address: node.info.address.clone(),
                node_meta: node.info.meta.clone(),
                address: s.info.address.clone(),
                port: s.info.port,
                weight: u16::try_from(weight).unwrap_or(u16::MAX),
            })
        })
        .collect()
}

/// A node as DNS answers with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeRecord {
    name: String,
    /// An IP address, or a host name (answered with a CNAME).
    address: String,
    meta: BTreeMap<String, String>,
}

fn catalog_node(c: &Catalog, name: &str) -> Option<NodeRecord> {
    let n = c.node(name)?;
    Some(NodeRecord {
        name: n.info.name.clone(),
        address: n.info.address.clone(),
        meta: n.info.meta.clone(),
    })
}

/// What a reverse lookup of `ip` names, as Consul's: the node with that address, or else
/// the service with that service address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reverse {
    Node(String),
    Service(String),
}

fn reverse(c: &Catalog, ip: IpAddr) -> Option<Reverse> {
    let is = |a: &str| a.parse::<IpAddr>().is_ok_and(|a| a == ip);
    if let Some(n) = c.nodes().find(|n| is(&n.info.address)) {
        return Some(Reverse::Node(n.info.name.clone()));
    }
    c.service_names().into_keys().find_map(|name| {
        c.instances(&name)
            .find(|s| is(&s.info.address))
            .map(|s| Reverse::Service(s.info.name.clone()))
    })
}

/// Consul's TXT records of node meta: `key=value` as RFC 1464 escapes it, or the bare
/// value for a key starting `rfc1035-`.
fn meta_txt(meta: &BTreeMap<String, String>) -> Vec<String> {
    meta.iter()
        .map(|(k, v)| {
            if k.to_ascii_lowercase().starts_with("rfc1035-") {
                return v.clone();
            }
            let mut key = k.replace('`', "``").replace('=', "`=");
            let lead = key.len() - key.trim_start_matches(' ').len();
            let trail = key.len() - key.trim_end_matches(' ').len();
            if lead == key.len() {
                key = "` ".repeat(lead);
            } else if lead + trail > 0 {
                let mid = key[lead..key.len() - trail].to_string();
                key = format!("{}{mid}{}", "` ".repeat(lead), "` ".repeat(trail));
            }
            format!("{key}={}", v.replace('`', "``"))
        })
        .collect()
}

/// The zone and where its answers come from.
pub(crate) struct Zone {
    /// The domain's labels, lowercase (`["consul"]`).
    domain: Vec<String>,
    origin: Name,
    mname: Name,
    rname: Name,
    datacenter: String,
    /// `node.<dc>.<domain>.`, which node names are put in front of (None if the
    /// datacenter makes no DNS name).
    node_suffix: Option<Name>,
    directory: Arc<dyn Directory>,
    settings: DnsConfig,
    metrics: Arc<Metrics>,
    /// Forwards to recursors in flight ([`RECURSE_MAX`]).
    recursing: Semaphore,
}

fn ttl_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The A or AAAA record of `ip` named `name`, if `qtype` asks for that family.
fn address(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    match ip {
        IpAddr::V4(v4) if matches!(qtype, RecordType::A | RecordType::ANY) => {
            Some(Record::from_rdata(name.clone(), ttl, RData::A(A(v4))))
        }
        IpAddr::V6(v6) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
            Some(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))))
        }
        _ => None,
    }
}

/// A host name as an absolute DNS name, if it is one.
fn host_name(host: &str) -> Option<Name> {
    let fqdn = if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    };
    Name::from_ascii(fqdn).ok()
}

/// Shuffle in place (Consul shuffles answers per query to spread the load).
fn shuffle<T>(v: &mut [T]) {
    let mut x = getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Keep only the additional records that an answer or authority record points at (an
/// SRV or NS target), or that are about an answer's own name (a node's meta TXT).
fn sync_additionals(resp: &mut Message) {
    let targets: Vec<Name> = resp
        .answers
        .iter()
        .chain(&resp.authorities)
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.clone()),
            RData::NS(ns) => Some(ns.0.clone()),
            _ => None,
        })
        .chain(resp.answers.iter().map(|r| r.name.clone()))
        .collect();
    resp.additionals.retain(|r| targets.contains(&r.name));
}

/// Fit `resp` into `max` bytes after keeping at most `answers_max` answers, as Consul does:
/// the authority section goes first, then answers from the end (down to one, with the
/// additional records only they pointed at), then additional records. Returns whether
/// answers were dropped, and `resp` as last encoded (None if it cannot be), so that a
/// response that fits is encoded once.
fn trim(resp: &mut Message, max: usize, answers_max: usize) -> (bool, Option<Vec<u8>>) {
    let before = resp.answers.len();
    if before > answers_max {
        resp.answers.truncate(answers_max);
        sync_additionals(resp);
    }
    let mut wire = resp.to_vec().ok();
    while wire.as_ref().map_or(usize::MAX, Vec::len) > max {
        if !resp.answers.is_empty() && !resp.authorities.is_empty() {
            resp.authorities.clear();
            sync_additionals(resp);
        } else if resp.answers.len() > 1 {
            resp.answers.pop();
            sync_additionals(resp);
        } else if resp.additionals.pop().is_none() {
            break;
        }
        wire = resp.to_vec().ok();
    }
    (resp.answers.len() < before, wire)
}

/// Where a query goes before it is answered.
#[derive(Debug, PartialEq)]
enum Route {
    /// Answered from local state as it is.
    Local,
    /// A service lookup: the directory may need to make the name local first.
    Service(String),
    /// Outside the domain, with recursors set: forwarded.
    Recurse,
}

impl Zone {
    pub(crate) fn new(
        domain: &str,
        datacenter: &str,
        directory: Arc<dyn Directory>,
        settings: DnsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Zone, DnsError> {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let name = |prefix: &str| {
            Name::from_ascii(format!("{prefix}{domain}.")).map_err(|source| DnsError::BadDomain {
                domain: domain.clone(),
                source,
            })
        };
        Ok(Zone {
            origin: name("")?,
            mname: name("ns.")?,
            rname: name("hostmaster.")?,
            domain: domain.split('.').map(str::to_string).collect(),
            datacenter: datacenter.to_ascii_lowercase(),
            node_suffix: name(&format!("node.{}.", datacenter.to_ascii_lowercase())).ok(),
            directory,
            settings,
            metrics,
            recursing: Semaphore::new(RECURSE_MAX),
        })
    }

    /// The zone's SOA record, with `dns_config.soa`'s timers; its TTL is `min_ttl`, as
    /// Consul's.
    fn soa(&self) -> Record {
        let serial = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let t = self.settings.soa;
        Record::from_rdata(
            self.origin.clone(),
            t.min_ttl,
            RData::SOA(SOA::new(
                self.mname.clone(),
                self.rname.clone(),
                serial,
                t.refresh as i32,
                t.retry as i32,
                t.expire as i32,
                t.min_ttl,
            )),
        )
    }

    /// `<node>.node.<dc>.<domain>.`, when the node's name makes a valid DNS name.
    fn node_fqdn(&self, node: &str) -> Option<Name> {
        match &self.node_suffix {
            // A relative name in front of the suffix: no text formatted and parsed whole
            // per instance of an answer.
            Some(suffix) if !node.is_empty() && !node.ends_with('.') => {
                Name::from_ascii(node).ok()?.append_domain(suffix).ok()
            }
            _ => Name::from_ascii(format!("{node}.node.{}.{}", self.datacenter, self.origin)).ok(),
        }
    }

    /// `<hex>.addr.<dc>.<domain>.`: the SRV target of an instance with its own address.
    fn addr_fqdn(&self, ip: IpAddr) -> Option<Name> {
        Name::from_ascii(format!(
            "{}.addr.{}.{}",
            hex_ip(ip),
            self.datacenter,
            self.origin
        ))
        .ok()
    }

    /// Consul's `service_ttl`: the exact name, else the longest `prefix*` that matches.
    fn service_ttl(&self, service: &str) -> u32 {
        let ttls = &self.settings.service_ttl;
        let exact = ttls.iter().find(|(n, _)| n == service);
        let prefix = || {
            ttls.iter()
                .filter_map(|(n, t)| Some((n.strip_suffix('*')?, t)))
                .filter(|(p, _)| service.starts_with(p))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, t)| t)
        };
        exact
            .map(|(_, t)| t)
            .or_else(prefix)
            .map_or(0, |t| ttl_secs(*t))
    }

    /// NS records for up to [`NAMESERVERS_MAX`] servers, and their addresses (with
    /// `node_ttl`, as Consul's).
    fn nameservers(&self, dir: &dyn Directory) -> (Vec<Record>, Vec<Record>) {
        let mut servers = dir.servers();
        shuffle(&mut servers);
        let ttl = ttl_secs(self.settings.node_ttl);
        let (mut ns, mut glue) = (Vec::new(), Vec::new());
        for n in servers {
            let Some(fqdn) = self.node_fqdn(&n.name) else {
                continue;
            };
            glue.extend(address(&fqdn, n.ip, RecordType::ANY, ttl));
            ns.push(Record::from_rdata(
                self.origin.clone(),
                ttl,
                RData::NS(NS(fqdn)),
            ));
            if ns.len() == NAMESERVERS_MAX {
                break;
            }
        }
        (ns, glue)
    }

    /// The question's name as lowercase labels, if there is exactly one question.
    fn labels(req: &Message) -> Option<Vec<String>> {
        let [q] = req.queries.as_slice() else {
            return None;
        };
        let labels = q
            .name()
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        Some(labels)
    }

    /// Where `req` goes (see [`Route`]).
    fn route(&self, req: &Message) -> Route {
        let Some(labels) = Self::labels(req) else {
            return Route::Local;
        };
        if req.metadata.op_code != OpCode::Query {
            return Route::Local;
        }
        match labels.strip_suffix(self.domain.as_slice()) {
            Some(own) => {
                let srv = req.queries.first().map(|q| q.query_type()) == Some(RecordType::SRV);
                match parse(own, srv, &self.datacenter) {
                    Lookup::Service { name, .. } => Route::Service(name),
                    _ => Route::Local,
                }
            }
            None if is_arpa(&labels) || self.settings.recursors.is_empty() => Route::Local,
            None => Route::Recurse,
        }
    }

    /// The response to `req` from `dir`, fitted to its transport, and its encoding when
    /// fitting it made one that still holds.
    fn respond(&self, req: &Message, dir: &dyn Directory, udp: bool) -> (Message, Option<Vec<u8>>) {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = !self.settings.recursors.is_empty();
        // One question at most is echoed: a FORMERR for many questions must still fit in
        // a plain UDP reply, and no client sends more than one.
        resp.queries = req.queries.iter().take(1).cloned().collect();
        if req.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_BYTES_MAX as u16);
            resp.set_edns(edns);
        }
        resp.metadata.response_code = self.fill(req, dir, &mut resp);
        if udp {
            let max = req.edns.as_ref().map_or(UDP_BYTES_PLAIN, |e| {
                usize::from(e.max_payload()).clamp(UDP_BYTES_PLAIN, UDP_BYTES_MAX)
            });
            let answers_max = if max == UDP_BYTES_PLAIN {
                self.settings.udp_answer_limit.min(UDP_ANSWER_LIMIT_MAX)
            } else {
                ANSWERS_MAX
            };
            let (cut, wire) = trim(&mut resp, max, answers_max);
            if cut && self.settings.enable_truncate {
                // The header changes: encoded again.
                resp.metadata.truncation = true;
                return (resp, None);
            }
            (resp, wire)
        } else {
            let (_, wire) = trim(&mut resp, TCP_BYTES_MAX, ANSWERS_MAX);
            (resp, wire)
        }
    }

    /// The node named `name`: from a catalog, else from the LAN pool.
    fn find_node(&self, dir: &dyn Directory, name: &str) -> Option<NodeRecord> {
        let mut found = None;
        dir.with_catalogs(None, &mut |c| {
            if found.is_none() {
                found = catalog_node(c, name);
            }
        });
        found.or_else(|| {
            dir.node(name).map(|n| NodeRecord {
                name: n.name,
                address: n.ip.to_string(),
                meta: BTreeMap::new(),
            })
        })
    }

    /// The instances of a service; for `consul` without instances in any catalog (a
    /// client agent's view not filled yet, or no catalog at all), the LAN pool's servers.
    fn find_instances(&self, dir: &dyn Directory, name: &str, tag: Option<&str>) -> Vec<Instance> {
        let (mut found, mut known) = (Vec::new(), false);
        let only_passing = self.settings.only_passing;
        dir.with_catalogs(Some(name), &mut |c| {
            known |= c.instances(name).next().is_some();
            if found.is_empty() {
                found = instances(c, name, tag, only_passing);
            }
        });
        if found.is_empty() && !known && name == "consul" && tag.is_none() {
            found = dir
                .servers()
                .into_iter()
                .filter_map(|n| {
                    Some(Instance {
                        port: n.server_port?,
                        node: n.name,
                        node_address: n.ip.to_string(),
                        node_meta: BTreeMap::new(),
                        address: String::new(),
                        weight: 1,
                    })
                })
                .collect();
        }
        found
    }

    /// A node's answers: its address (or a CNAME to its host name) unless TXT is asked,
    /// and its meta as TXT (answers for TXT and ANY, else additional records when
    /// `enable_additional_node_meta_txt`).
    fn node_answers(&self, qname: &Name, qtype: RecordType, node: &NodeRecord, resp: &mut Message) {
        // Consul answers nodes for these types only; any other is NODATA.
        let answered = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::TXT,
        ];
        if !answered.contains(&qtype) {
            return;
        }
        let ttl = ttl_secs(self.settings.node_ttl);
        if qtype != RecordType::TXT {
            match node.address.parse::<IpAddr>() {
                Ok(ip) => resp.answers.extend(address(qname, ip, qtype, ttl)),
                Err(_) => {
                    if let Some(target) = host_name(&node.address) {
                        let cname = RData::CNAME(CNAME(target));
                        resp.answers
                            .push(Record::from_rdata(qname.clone(), ttl, cname));
                    }
                }
            }
        }
        let as_answers = matches!(qtype, RecordType::TXT | RecordType::ANY);
        if as_answers || self.settings.node_meta_txt {
            let txt = meta_txt(&node.meta)
                .into_iter()
                .map(|t| Record::from_rdata(qname.clone(), ttl, RData::TXT(TXT::new(vec![t]))));
            if as_answers {
                resp.answers.extend(txt);
            } else {
                resp.additionals.extend(txt);
            }
        }
    }

    /// A service's answers: SRV records with their targets' addresses as additional
    /// records, or the instances' addresses (at most `a_record_limit` of them; a CNAME to
    /// a host name only when no instance has an address of the asked family).
    fn service_answers(
        &self,
        qname: &Name,
        qtype: RecordType,
        name: &str,
        mut list: Vec<Instance>,
        resp: &mut Message,
    ) {
        shuffle(&mut list);
        list.truncate(ANSWERS_MAX);
        let ttl = self.service_ttl(name);
        let mut seen = std::collections::HashSet::new();
        if qtype == RecordType::SRV {
            for i in list {
                if !seen.insert((i.node.clone(), i.address.clone(), i.port)) {
                    continue;
                }
                let own = if i.address.is_empty() {
                    &i.node_address
                } else {
                    &i.address
                };
                let (target, ip) = match own.parse::<IpAddr>() {
                    Ok(ip) if i.address.is_empty() => (self.node_fqdn(&i.node), Some(ip)),
                    Ok(ip) => (self.addr_fqdn(ip), Some(ip)),
                    Err(_) => (host_name(own), None),
                };
                let Some(target) = target else {
                    continue;
                };
                if let Some(ip) = ip {
                    resp.additionals
                        .extend(address(&target, ip, RecordType::ANY, ttl));
                }
                if self.settings.node_meta_txt && !i.node_meta.is_empty() {
                    // The target, unless the instance has an address of its own.
                    let node_name = if i.address.is_empty() && ip.is_some() {
                        Some(target.clone())
                    } else {
                        self.node_fqdn(&i.node)
                    };
                    if let Some(node_name) = node_name {
                        resp.additionals
                            .extend(meta_txt(&i.node_meta).into_iter().map(|t| {
                                Record::from_rdata(
                                    node_name.clone(),
                                    ttl,
                                    RData::TXT(TXT::new(vec![t])),
                                )
                            }));
                    }
                }
                let srv = SRV::new(1, i.weight, i.port, target);
                resp.answers
                    .push(Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)));
            }
            return;
        }
        let limit = match self.settings.a_record_limit {
            0 => usize::MAX,
            n => n,
        };
        let mut cname = None;
        let mut seen = std::collections::HashSet::new();
        for i in list {
            let own = if i.address.is_empty() {
                &i.node_address
            } else {
                &i.address
            };
            match own.parse::<IpAddr>() {
                Ok(ip) => {
                    if resp.answers.len() >= limit || !seen.insert(ip) {
                        continue;
                    }
                    resp.answers.extend(address(qname, ip, qtype, ttl));
                }
                Err(_) if cname.is_none() => cname = host_name(own),
                Err(_) => {}
            }
        }
        if resp.answers.is_empty() {
            if let Some(target) = cname {
                let cname = RData::CNAME(CNAME(target));
                resp.answers
                    .push(Record::from_rdata(qname.clone(), ttl, cname));
            }
        }
    }

    /// A reverse lookup's answer: a PTR to the node, or to the service.
    fn reverse_answers(&self, dir: &dyn Directory, qname: &Name, ip: IpAddr, resp: &mut Message) {
        let mut found = None;
        dir.with_catalogs(None, &mut |c| {
            if found.is_none() {
                found = reverse(c, ip);
            }
        });
        let target = match found {
            Some(Reverse::Node(n)) => self.node_fqdn(&n),
            Some(Reverse::Service(s)) => {
                Name::from_ascii(format!("{s}.service.{}.{}", self.datacenter, self.origin)).ok()
            }
            None => None,
        };
        if let Some(t) = target {
            resp.answers
                .push(Record::from_rdata(qname.clone(), 0, RData::PTR(PTR(t))));
        }
    }

    /// Fill the sections of `resp` and return its response code.
    fn fill(&self, req: &Message, dir: &dyn Directory, resp: &mut Message) -> ResponseCode {
        if req.metadata.op_code != OpCode::Query {
            return ResponseCode::NotImp;
        }
        let (Some(labels), [q]) = (Self::labels(req), req.queries.as_slice()) else {
            return ResponseCode::FormErr;
        };
        let qtype = q.query_type();
        let Some(own) = labels.strip_suffix(self.domain.as_slice()) else {
            if !is_arpa(&labels) {
                return ResponseCode::Refused;
            }
            resp.metadata.authoritative = true;
            if let Some(ip) = parse_arpa(&labels) {
                if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    self.reverse_answers(dir, q.name(), ip, resp);
                }
            }
            if resp.answers.is_empty() {
                resp.authorities.push(self.soa());
                return ResponseCode::NXDomain;
            }
            return ResponseCode::NoError;
        };
        resp.metadata.authoritative = true;
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return ResponseCode::NotImp;
        }
        match parse(own, qtype == RecordType::SRV, &self.datacenter) {
            Lookup::Apex => {
                let (ns, glue) = self.nameservers(dir);
                match qtype {
                    RecordType::SOA => {
                        resp.answers.push(self.soa());
                        resp.authorities.extend(ns);
                    }
                    RecordType::NS => resp.answers.extend(ns),
                    RecordType::ANY => {
                        resp.answers.push(self.soa());
                        resp.answers.extend(ns);
                    }
                    _ => {}
                }
                resp.additionals.extend(glue);
                sync_additionals(resp);
            }
            Lookup::Node(name) => {
                let Some(node) = self.find_node(dir, &name) else {
                    resp.authorities.push(self.soa());
                    return ResponseCode::NXDomain;
                };
                self.node_answers(q.name(), qtype, &node, resp);
            }
            Lookup::Service { name, tag } => {
                let list = self.find_instances(dir, &name, tag.as_deref());
                if list.is_empty() {
                    resp.authorities.push(self.soa());
                    return ResponseCode::NXDomain;
                }
                self.service_answers(q.name(), qtype, &name, list, resp);
            }
            Lookup::Addr(ip) => {
                // Another type than the address's: NODATA, with the address as an
                // additional record, as Consul sends it.
                let ttl = ttl_secs(self.settings.node_ttl);
                match address(q.name(), ip, qtype, ttl) {
                    Some(r) => resp.answers.push(r),
                    None => resp
                        .additionals
                        .extend(address(q.name(), ip, RecordType::ANY, ttl)),
                }
            }
            Lookup::Invalid => {
                resp.authorities.push(self.soa());
                return ResponseCode::NXDomain;
            }
        }
        if resp.answers.is_empty() {
            resp.authorities.push(self.soa());
        }
        ResponseCode::NoError
    }

    /// The query in `packet`; `None` drops it (malformed or oversize, counted).
    fn decode(&self, packet: &[u8]) -> Option<Message> {
        let counters = &self.metrics.dns;
        if packet.len() > QUERY_BYTES_MAX {
            counters.oversize();
            return None;
        }
        match Message::from_vec(packet) {
            Ok(m) if m.metadata.message_type == MessageType::Query => Some(m),
            _ => {
                counters.malformed();
                None
            }
        }
    }

    /// `resp` on the wire (a SERVFAIL if it cannot be encoded), counted.
    fn encode(&self, req: &Message, resp: &Message) -> Option<Vec<u8>> {
        let (bytes, rcode) = match resp.to_vec() {
            Ok(b) => (b, resp.metadata.response_code),
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot encode a response");
                (self.servfail(req).to_vec().ok()?, ResponseCode::ServFail)
            }
        };
        self.metrics.dns.answered(rcode);
        Some(bytes)
    }

    /// A response of [`Zone::respond`] on the wire: the encoding that fitting it made,
    /// else [`Zone::encode`]'s.
    fn fitted(&self, req: &Message, (resp, wire): (Message, Option<Vec<u8>>)) -> Option<Vec<u8>> {
        let Some(bytes) = wire else {
            return self.encode(req, &resp);
        };
        self.metrics.dns.answered(resp.metadata.response_code);
        Some(bytes)
    }

    fn servfail(&self, req: &Message) -> Message {
        let mut m = Message::error_msg(
            req.metadata.id,
            req.metadata.op_code,
            ResponseCode::ServFail,
        );
        m.queries = req.queries.iter().take(1).cloned().collect();
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = !self.settings.recursors.is_empty();
        m
    }

    /// Answer one query packet from local state as it is, without waiting (no recursion,
    /// no first fill of a client agent's view); `None` drops it (malformed or oversize,
    /// counted).
    pub(crate) fn handle(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let req = self.decode(packet)?;
        let resp = self.respond(&req, &*self.directory, udp);
        self.fitted(&req, resp)
    }

    /// Answer one query packet as the servers do: a service lookup first lets the
    /// directory make the name local, a name outside the domain goes to the recursors
    /// (and so does a reverse name that is not found, when there are recursors).
    pub(crate) async fn serve(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let req = self.decode(packet)?;
        match self.route(&req) {
            Route::Recurse => return self.recurse(packet, &req, udp).await,
            Route::Service(name) => {
                // `consul` can still be answered from the LAN pool's servers.
                if !self.directory.prepare(&name).await && name != "consul" {
                    return self.encode(&req, &self.servfail(&req));
                }
            }
            Route::Local => {}
        }
        let resp = self.respond(&req, &*self.directory, udp);
        let unknown_reverse = resp.0.metadata.response_code == ResponseCode::NXDomain
            && Self::labels(&req).is_some_and(|l| is_arpa(&l));
        if unknown_reverse && !self.settings.recursors.is_empty() {
            return self.recurse(packet, &req, udp).await;
        }
        self.fitted(&req, resp)
    }

    /// Forward the query to the recursors in order, each given `recursor_timeout`, over
    /// the client's transport (as Consul: UDP, or TCP for a TCP client); the first answer
    /// that is NOERROR or NXDOMAIN (or truncated) is relayed as it came. SERVFAIL when all
    /// fail, or when [`RECURSE_MAX`] forwards are in flight already.
    async fn recurse(&self, packet: &[u8], req: &Message, udp: bool) -> Option<Vec<u8>> {
        let Ok(_permit) = self.recursing.try_acquire() else {
            tracing::debug!("dns: too many recursive queries in flight");
            return self.encode(req, &self.servfail(req));
        };
        for &recursor in &self.settings.recursors {
            let timeout = self.settings.recursor_timeout;
            let asked = async {
                if udp {
                    exchange_udp(recursor, packet).await
                } else {
                    exchange_tcp(recursor, packet).await
                }
            };
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok((bytes, m)))
                    if m.metadata.id == req.metadata.id
                        && (matches!(
                            m.metadata.response_code,
                            ResponseCode::NoError | ResponseCode::NXDomain
                        ) || m.metadata.truncation) =>
                {
                    self.metrics.dns.answered(m.metadata.response_code);
                    return Some(bytes);
                }
                Ok(Ok((_, m))) => tracing::debug!(
                    %recursor, rcode = %m.metadata.response_code, "dns: recursor failed"
                ),
                Ok(Err(e)) => tracing::debug!(%recursor, error = %e, "dns: recursor failed"),
                Err(_) => tracing::debug!(%recursor, "dns: recursor timed out"),
            }
        }
        tracing::warn!("dns: all recursors failed");
        self.encode(req, &self.servfail(req))
    }
}

/// One TCP exchange with a recursor (a length-prefixed query and response): the
/// response's bytes and the parsed message.
async fn exchange_tcp(to: SocketAddr, packet: &[u8]) -> std::io::Result<(Vec<u8>, Message)> {
    let mut s = TcpStream::connect(to).await?;
    let len = u16::try_from(packet.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut frame = Vec::with_capacity(packet.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(packet);
    s.write_all(&frame).await?;
    let n = usize::from(s.read_u16().await?);
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    match Message::from_vec(&buf) {
        Ok(m) if m.metadata.message_type == MessageType::Response => Ok((buf, m)),
        _ => Err(std::io::Error::from(std::io::ErrorKind::InvalidData)),
    }
}

/// One UDP exchange with a recursor: the response's bytes and the parsed message.
async fn exchange_udp(to: SocketAddr, packet: &[u8]) -> std::io::Result<(Vec<u8>, Message)> {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(to).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; UDP_BYTES_MAX];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything that is not a response is ignored; the timeout ends the wait.
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.message_type == MessageType::Response {
                return Ok((buf[..n].to_vec(), m));
            }
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>) {
    let socket = Arc::new(socket);
    let inflight = Arc::new(Semaphore::new(UDP_INFLIGHT_MAX));
    // One byte more than the bound, to tell an oversize query from one that fits.
    let mut buf = vec![0u8; QUERY_BYTES_MAX + 1];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                continue;
            }
        };
        // Over the bound the query is dropped; its client asks again.
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            continue;
        };
        let (zone, socket, packet) = (zone.clone(), socket.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(out) = zone.serve(&packet, true).await {
                let _ = socket.send_to(&out, from).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>) {
    let conns = Arc::new(Semaphore::new(TCP_CONNS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dns: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the bound the connection is closed at once (dropped).
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let zone = zone.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_conn(stream, &zone).await;
        });
    }
}

/// Length-prefixed queries on one connection, each answered in turn.
async fn serve_conn(mut s: TcpStream, zone: &Zone) -> std::io::Result<()> {
    loop {
        let exchange = async {
            let len = usize::from(s.read_u16().await?);
            let mut query = vec![0u8; len];
            s.read_exact(&mut query).await?;
            if let Some(out) = zone.serve(&query, false).await {
                let mut frame = Vec::with_capacity(out.len() + 2);
                frame.extend_from_slice(&(out.len() as u16).to_be_bytes());
                frame.extend_from_slice(&out);
                s.write_all(&frame).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(TCP_IDLE, exchange)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    }
}

/// Start the DNS server on every DNS address (UDP and TCP), unless `ports.dns` is -1,
/// answering from `directory`.
pub async fn start(
    cfg: &Config,
    directory: Arc<dyn Directory>,
    metrics: Arc<Metrics>,
) -> Result<(), DnsError> {
    if cfg.dns_port < 0 {
        return Ok(());
    }
    let zone = Zone::new(
        &cfg.domain,
        &cfg.datacenter,
        directory,
        cfg.dns.clone(),
        metrics,
    )?;
    let zone = Arc::new(zone);
    for addr in cfg.dns_listen() {
        let failed = |net, source| DnsError::Bind {
            addr: addr.clone(),
            net,
            source,
        };
        let udp = UdpSocket::bind(&addr).await.map_err(|e| failed("udp", e))?;
        let tcp = TcpListener::bind(&addr)
            .await
            .map_err(|e| failed("tcp", e))?;
        tokio::spawn(serve_udp(udp, zone.clone()));
        tokio::spawn(serve_tcp(tcp, zone.clone()));
        tracing::info!(address = %addr, "agent: Started DNS server");
    }
    Ok(())
}

#[cfg(test)]
#[path = "dns_test.rs"]
mod catalog_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Node;
    use hickory_proto::op::Query;

    fn labels(name: &str) -> Vec<String> {
        name.split('.')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn node(name: &str) -> Lookup {
        Lookup::Node(name.to_string())
    }

    fn service(name: &str, tag: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.to_string(),
            tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn names_parse_as_consul_does() {
        let p = |name: &str, srv: bool| parse(&labels(name), srv, "dc1");
        assert_eq!(p("", false), Lookup::Apex);
        assert_eq!(p("n1.node", false), node("n1"));
        assert_eq!(p("n1.node.dc1", false), node("n1"));
        assert_eq!(
            p("web.01.node", false),
            node("web.01"),
            "node names may contain dots"
        );
        assert_eq!(p("node.node", false), node("node"));
        assert_eq!(
            p("n1.node.dc2", false),
            Lookup::Invalid,
            "another datacenter"
        );
        assert_eq!(p("n1.node.dc1.extra", false), Lookup::Invalid);
        assert_eq!(p("node", false), Lookup::Invalid, "no node name");
        assert_eq!(p("n1", false), Lookup::Invalid, "no kind label");
        assert_eq!(p("consul.service", false), service("consul", None));
        assert_eq!(p("consul.service.dc1", true), service("consul", None));
        assert_eq!(
            p("primary.consul.service", false),
            service("consul", Some("primary"))
        );
        assert_eq!(p("service", false), Lookup::Invalid);
        assert_eq!(p("_consul._tcp.service", true), service("consul", None));
        assert_eq!(
            p("_consul._udp.service.dc1", true),
            service("consul", Some("udp"))
        );
        assert_eq!(
            p("_consul._tcp", true),
            service("consul", None),
            "SRV needs no service label"
        );
        assert_eq!(p("_consul._tcp.dc1", true), service("consul", None));
        assert_eq!(p("_consul._tcp", false), Lookup::Invalid, "only for SRV");
        assert_eq!(p("x.query", false), Lookup::Invalid);
        assert_eq!(
            p("7f000001.addr.dc1", false),
            Lookup::Addr("127.0.0.1".parse().unwrap())
        );
        assert_eq!(p("7f000001.addr.dc2", false), Lookup::Invalid);
        assert_eq!(p("x.7f000001.addr", false), Lookup::Invalid);
    }

    fn settings() -> DnsConfig {
        DnsConfig {
            enable_truncate: true,
            service_ttl: vec![("*".into(), Duration::from_secs(5))],
            ..DnsConfig::default()
        }
    }

    fn zone(settings: DnsConfig) -> Zone {
        let own = Node {
            name: "n1".into(),
            ip: "10.0.0.1".parse().unwrap(),
            server_port: Some(8300),
        };
        let alone = Arc::new(vec![own]);
        Zone::new("Consul.", "dc1", alone, settings, Arc::default()).unwrap()
    }

    fn servers(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| Node {
                name: format!("server-{i}-with-a-name-long-enough-to-fill-a-packet-soon"),
                ip: format!("10.0.1.{i}").parse().unwrap(),
                server_port: Some(8300),
            })
            .collect()
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    /// `z.respond`, checking that the encoding it hands on, if any, is the response's
    /// (after trimming and the TC flag).
    fn respond(z: &Zone, req: &Message, dir: &dyn Directory, udp: bool) -> Message {
        let (r, wire) = z.respond(req, dir, udp);
        if let Some(w) = wire {
            assert_eq!(w, r.to_vec().unwrap(), "a stale encoding of {r:?}");
        }
        r
    }

    /// Through the wire format, as the UDP server does, for this node alone.
    fn ask(z: &Zone, name: &str, qtype: RecordType) -> Message {
        let bytes = z
            .handle(&query(name, qtype, None).to_vec().unwrap(), true)
            .expect("an answer");
        Message::from_vec(&bytes).unwrap()
    }

    #[test]
    fn own_node_soa_and_refused() {
        let z = zone(settings());
        let r = ask(&z, "N1.Node.DC1.consul.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A("10.0.0.1".parse().unwrap())));
        assert_eq!(r.answers[0].ttl, 0);
        let r = ask(&z, "n1.node.consul.", RecordType::AAAA);
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert!(matches!(r.authorities[0].data, RData::SOA(_)));
        let r = ask(&z, "nope.node.consul.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let RData::SOA(soa) = &r.authorities[0].data else {
            panic!("{r:?}")
        };
        assert_eq!(
            (soa.mname.to_ascii(), soa.rname.to_ascii()),
            ("ns.consul.".to_string(), "hostmaster.consul.".to_string())
        );
        let r = ask(&z, "example.com.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(!r.metadata.authoritative);
        let r = ask(&z, "consul.", RecordType::NS);
        let RData::NS(ns) = &r.answers[0].data else {
            panic!("{r:?}")
        };
        assert_eq!(ns.0.to_ascii(), "n1.node.dc1.consul.");
        assert_eq!(
            r.additionals[0].data,
            RData::A(A("10.0.0.1".parse().unwrap()))
        );
        let r = ask(&z, "consul.", RecordType::AXFR);
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn node_names_are_built_as_the_whole_text_parses() {
        let long = "x".repeat(63);
        let longest = [long.as_str(); 3].join(".");
        let too_long = [long.as_str(); 4].join(".");
        for dc in ["dc1", "DC-2", "bad dc"] {
            let z = Zone::new("Consul.", dc, Arc::new(vec![]), settings(), Arc::default());
            let z = z.unwrap();
            for node in [
                "n00", "Web-1", "a.b", "", ".", "x.", "a..b", "bad name", "a\\.b", &long, &longest,
                &too_long,
            ] {
                let whole = format!("{node}.node.{}.{}", z.datacenter, z.origin);
                let want = Name::from_ascii(whole).ok();
                let got = z.node_fqdn(node);
                assert_eq!(got, want, "{node:?} in {dc}");
                if let (Some(got), Some(want)) = (got, want) {
                    assert_eq!(got.to_string(), want.to_string());
                    assert!(got.iter().eq(want.iter()) && got.is_fqdn() && want.is_fqdn());
                }
            }
        }
    }

    #[test]
    fn srv_answers_point_at_nodes_with_addresses() {
        let z = zone(settings());
        let r = respond(
            &z,
            &query("_consul._tcp.service.consul.", RecordType::SRV, None),
            &servers(2),
            true,
        );
        assert_eq!(r.answers.len(), 2);
        for a in &r.answers {
            let RData::SRV(srv) = &a.data else {
                panic!("{a:?}")
            };
            assert_eq!((srv.port, a.ttl), (8300, 5));
            assert!(r.additionals.iter().any(|x| x.name == srv.target), "{r:?}");
        }
    }

    #[test]
    fn udp_answers_are_trimmed_and_flagged() {
        let z = zone(settings());
        // Without EDNS: Consul's udp_answer_limit (3) and TC.
        let r = respond(
            &z,
            &query("consul.service.consul.", RecordType::A, None),
            &servers(10),
            true,
        );
        assert_eq!(r.answers.len(), 3);
        assert!(r.metadata.truncation);
        // SRV with additional records, 8 answers allowed: cut to fit 512 bytes, each kept
        // answer with its address.
        let z8 = zone(DnsConfig {
            udp_answer_limit: 8,
            ..settings()
        });
        let r = respond(
            &z8,
            &query("consul.service.consul.", RecordType::SRV, None),
            &servers(8),
            true,
        );
        assert!(r.to_vec().unwrap().len() <= 512);
        assert!(
            (1..8).contains(&r.answers.len()) && r.metadata.truncation,
            "{}",
            r.answers.len()
        );
        assert_eq!(r.additionals.len(), r.answers.len());
        // EDNS with room: everything; TCP: everything, never TC.
        let r = respond(
            &z,
            &query("consul.service.consul.", RecordType::A, Some(4096)),
            &servers(10),
            true,
        );
        assert_eq!((r.answers.len(), r.metadata.truncation), (10, false));
        let r = respond(
            &z,
            &query("consul.service.consul.", RecordType::SRV, None),
            &servers(200),
            false,
        );
        assert_eq!(
            (r.answers.len(), r.metadata.truncation),
            (ANSWERS_MAX, false)
        );
        // Without enable_truncate the answer is cut silently.
        let z = zone(DnsConfig {
            enable_truncate: false,
            ..settings()
        });
        let r = respond(
            &z,
            &query("consul.service.consul.", RecordType::A, None),
            &servers(10),
            true,
        );
        assert_eq!((r.answers.len(), r.metadata.truncation), (3, false));
    }

    #[test]
    fn a_query_of_many_questions_gets_a_formerr_that_fits() {
        let z = zone(settings());
        let mut m = Message::query();
        for i in 0..40 {
            let name = format!("question-{i}-with-a-long-label-to-fill-the-packet.node.consul.");
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        }
        let packet = m.to_vec().unwrap();
        assert!(packet.len() > UDP_BYTES_PLAIN && packet.len() <= QUERY_BYTES_MAX);
        let bytes = z.handle(&packet, true).expect("an answer");
        assert!(bytes.len() <= UDP_BYTES_PLAIN, "{} bytes", bytes.len());
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.queries.len(), 1);
    }

    #[test]
    fn malformed_and_oversize_are_dropped_and_counted() {
        let z = zone(settings());
        assert_eq!(z.handle(b"\x12\x34garbage", true), None);
        let mut resp = query("n1.node.consul.", RecordType::A, None);
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(
            z.handle(&resp.to_vec().unwrap(), true),
            None,
            "a response is not a query"
        );
        assert_eq!(z.handle(&vec![0u8; QUERY_BYTES_MAX + 1], false), None);
        let m = z.metrics.dns.metrics();
        let get = |reason: &str| {
            m.iter()
                .find(|(n, l, _)| *n == "dns.dropped" && l[0].1 == reason)
                .unwrap()
                .2
        };
        assert_eq!((get("malformed"), get("oversize")), (2, 1));
        ask(&z, "x.consul.", RecordType::A);
        let m = z.metrics.dns.metrics();
        assert!(
            m.iter()
                .any(|(n, l, v)| *n == "dns.queries" && l[0].1 == "NXDOMAIN" && *v == 1),
            "{m:?}"
        );
    }
}
