//! Consul's DNS interface on `ports.dns` (8600), UDP and TCP, for the `domain` zone
//! (default `consul.`): `<node>.node[.<dc>].<domain>`, `consul.service[.<dc>].<domain>`
//! (also RFC 2782 `_consul._tcp`), SOA and NS at the zone's apex.
//!
//! Answers come from a [`Directory`] of nodes (today this agent and the alive members of its
//! LAN gossip pool: [`crate::directory::LanDirectory`]), with TTL
//! `dns_config.node_ttl` / `service_ttl` (0 by default) and AA set. A name in the zone
//! that does not exist gets NXDOMAIN, an existing name without records of the asked type
//! NOERROR; both with the zone's SOA in the authority section. Names outside the zone are
//! REFUSED (there are no recursors). Malformed and oversize packets are dropped and counted.
//!
//! Bounds: queries of at most [`QUERY_BYTES_MAX`]; at most [`ANSWERS_MAX`] answer records;
//! a UDP response fits in 512 bytes, or in the query's EDNS size up to [`UDP_BYTES_MAX`]
//! (without EDNS, at most `dns_config.udp_answer_limit` answers, as Consul); a TCP response
//! in 65,535 bytes; [`TCP_CONNS_MAX`] TCP connections, each closed after [`TCP_IDLE`] without
//! a query answered.

use std::net::IpAddr;
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
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::rdata::SRV;
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
    /// Not a name that can exist: NXDOMAIN.
    Invalid,
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
        _ => Lookup::Invalid,
    }
}

/// The zone and where its answers come from.
pub(crate) struct Zone {
    /// The domain's labels, lowercase (`["consul"]`).
    domain: Vec<String>,
    origin: Name,
    mname: Name,
    rname: Name,
    datacenter: String,
    directory: Arc<dyn Directory>,
    settings: DnsConfig,
    metrics: Arc<Metrics>,
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

fn encoded_len(m: &Message) -> usize {
    m.to_vec().map_or(usize::MAX, |b| b.len())
}

/// Keep only the additional records that an answer or authority record points at.
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
        .collect();
    resp.additionals.retain(|r| targets.contains(&r.name));
}

/// Fit `resp` into `max` bytes after keeping at most `answers_max` answers, as Consul does:
/// the authority section goes first, then answers from the end (down to one, with the
/// additional records only they pointed at), then additional records. Returns whether
/// answers were dropped.
fn trim(resp: &mut Message, max: usize, answers_max: usize) -> bool {
    let before = resp.answers.len();
    if before > answers_max {
        resp.answers.truncate(answers_max);
        sync_additionals(resp);
    }
    while encoded_len(resp) > max {
        if !resp.answers.is_empty() && !resp.authorities.is_empty() {
            resp.authorities.clear();
            sync_additionals(resp);
        } else if resp.answers.len() > 1 {
            resp.answers.pop();
            sync_additionals(resp);
        } else if resp.additionals.pop().is_none() {
            break;
        }
    }
    resp.answers.len() < before
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
            directory,
            settings,
            metrics,
        })
    }

    fn soa(&self) -> Record {
        let serial = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        Record::from_rdata(
            self.origin.clone(),
            0,
            RData::SOA(SOA::new(
                self.mname.clone(),
                self.rname.clone(),
                serial,
                3600,
                600,
                86400,
                0,
            )),
        )
    }

    /// `<node>.node.<dc>.<domain>.`, when the node's name makes a valid DNS name.
    fn node_fqdn(&self, node: &str) -> Option<Name> {
        Name::from_ascii(format!("{node}.node.{}.{}", self.datacenter, self.origin)).ok()
    }

    fn service_ttl(&self, service: &str) -> u32 {
        let ttls = &self.settings.service_ttl;
        ttls.iter()
            .find(|(n, _)| n == service)
            .or_else(|| ttls.iter().find(|(n, _)| n == "*"))
            .map_or(0, |(_, t)| ttl_secs(*t))
    }

    /// NS records for up to [`NAMESERVERS_MAX`] servers, and their addresses.
    fn nameservers(&self, dir: &dyn Directory) -> (Vec<Record>, Vec<Record>) {
        let mut servers = dir.servers();
        shuffle(&mut servers);
        let (mut ns, mut glue) = (Vec::new(), Vec::new());
        for n in servers {
            let Some(fqdn) = self.node_fqdn(&n.name) else {
                continue;
            };
            glue.extend(address(&fqdn, n.ip, RecordType::ANY, 0));
            ns.push(Record::from_rdata(
                self.origin.clone(),
                0,
                RData::NS(NS(fqdn)),
            ));
            if ns.len() == NAMESERVERS_MAX {
                break;
            }
        }
        (ns, glue)
    }

    /// The response to `req` from `dir`, fitted to its transport.
    fn respond(&self, req: &Message, dir: &dyn Directory, udp: bool) -> Message {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
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
            if trim(&mut resp, max, answers_max) && self.settings.enable_truncate {
                resp.metadata.truncation = true;
            }
        } else {
            trim(&mut resp, TCP_BYTES_MAX, ANSWERS_MAX);
        }
        resp
    }

    /// Fill the sections of `resp` and return its response code.
    fn fill(&self, req: &Message, dir: &dyn Directory, resp: &mut Message) -> ResponseCode {
        if req.metadata.op_code != OpCode::Query {
            return ResponseCode::NotImp;
        }
        let [q] = req.queries.as_slice() else {
            return ResponseCode::FormErr;
        };
        let labels: Vec<String> = q
            .name()
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let Some(labels) = labels.strip_suffix(self.domain.as_slice()) else {
            return ResponseCode::Refused;
        };
        resp.metadata.authoritative = true;
        let qtype = q.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return ResponseCode::NotImp;
        }
        match parse(labels, qtype == RecordType::SRV, &self.datacenter) {
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
                let Some(node) = dir.node(&name) else {
                    resp.authorities.push(self.soa());
                    return ResponseCode::NXDomain;
                };
                resp.answers.extend(address(
                    q.name(),
                    node.ip,
                    qtype,
                    ttl_secs(self.settings.node_ttl),
                ));
            }
            Lookup::Service { name, tag } => {
                // Only servers' `consul` service exists, without tags.
                let mut servers = dir.servers();
                if name != "consul" || tag.is_some() || servers.is_empty() {
                    resp.authorities.push(self.soa());
                    return ResponseCode::NXDomain;
                }
                shuffle(&mut servers);
                servers.truncate(ANSWERS_MAX);
                let ttl = self.service_ttl(&name);
                for n in servers {
                    if qtype != RecordType::SRV {
                        resp.answers.extend(address(q.name(), n.ip, qtype, ttl));
                        continue;
                    }
                    let (Some(target), Some(port)) = (self.node_fqdn(&n.name), n.server_port)
                    else {
                        continue;
                    };
                    resp.additionals
                        .extend(address(&target, n.ip, RecordType::ANY, ttl));
                    resp.answers.push(Record::from_rdata(
                        q.name().clone(),
                        ttl,
                        RData::SRV(SRV::new(1, 1, port, target)),
                    ));
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

    /// Answer one query packet; `None` drops it (malformed or oversize, counted).
    pub(crate) fn handle(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let counters = &self.metrics.dns;
        if packet.len() > QUERY_BYTES_MAX {
            counters.oversize();
            return None;
        }
        let req = match Message::from_vec(packet) {
            Ok(m) if m.metadata.message_type == MessageType::Query => m,
            _ => {
                counters.malformed();
                return None;
            }
        };
        let resp = self.respond(&req, &*self.directory, udp);
        let (bytes, rcode) = match resp.to_vec() {
            Ok(b) => (b, resp.metadata.response_code),
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot encode a response");
                let fail = Message::error_msg(
                    req.metadata.id,
                    req.metadata.op_code,
                    ResponseCode::ServFail,
                );
                (fail.to_vec().ok()?, ResponseCode::ServFail)
            }
        };
        counters.answered(rcode);
        Some(bytes)
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>) {
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
        if let Some(out) = zone.handle(&buf[..n], true) {
            let _ = socket.send_to(&out, from).await;
        }
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
            if let Some(out) = zone.handle(&query, false) {
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
        assert_eq!(p("7f000001.addr.dc1", false), Lookup::Invalid);
    }

    fn settings() -> DnsConfig {
        DnsConfig {
            addr: None,
            enable_truncate: true,
            udp_answer_limit: 3,
            node_ttl: Duration::ZERO,
            service_ttl: vec![("*".into(), Duration::from_secs(5))],
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
    fn srv_answers_point_at_nodes_with_addresses() {
        let z = zone(settings());
        let r = z.respond(
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
        let r = z.respond(
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
        let r = z8.respond(
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
        let r = z.respond(
            &query("consul.service.consul.", RecordType::A, Some(4096)),
            &servers(10),
            true,
        );
        assert_eq!((r.answers.len(), r.metadata.truncation), (10, false));
        let r = z.respond(
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
        let r = z.respond(
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
