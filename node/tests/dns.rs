//! The DNS interface of a real `tribune agent`, over real UDP and TCP sockets.

mod common;

use std::io::Read;
use std::io::Write;
use std::net::IpAddr;
use std::net::TcpStream;
use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use hickory_proto::op::Edns;
use hickory_proto::op::Message;
use hickory_proto::op::Query;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::Name;
use hickory_proto::rr::RData;
use hickory_proto::rr::Record;
use hickory_proto::rr::RecordType;

/// A port free for both TCP and UDP on 127.0.0.1.
fn free_dns_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A `-dev` agent named n1, advertising 127.0.0.42, with DNS on a free port, plus `extra`.
fn dev(extra: &[&str]) -> (Agent, u16) {
    let dns = free_dns_port();
    let mut args = vec![
        "-node=n1".to_string(),
        "-advertise=127.0.0.42".to_string(),
        format!("-dns-port={dns}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Agent::dev(&args), dns)
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

/// Send `bytes` over UDP; the reply, if one comes within `wait`.
fn udp_raw(port: u16, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, ("127.0.0.1", port)).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn udp(port: u16, q: &Message) -> Message {
    let reply = udp_raw(port, &q.to_vec().unwrap(), Duration::from_secs(5)).expect("a UDP answer");
    let r = Message::from_vec(&reply).unwrap();
    assert_eq!(r.metadata.id, q.metadata.id);
    r
}

fn ask(port: u16, name: &str, qtype: RecordType) -> Message {
    udp(port, &query(name, qtype))
}

/// Send length-prefixed frames on one TCP connection and read `answers` replies.
fn tcp(port: u16, frames: &[Vec<u8>], answers: usize) -> Vec<Message> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for f in frames {
        s.write_all(&(f.len() as u16).to_be_bytes()).unwrap();
        s.write_all(f).unwrap();
    }
    (0..answers)
        .map(|_| {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).unwrap();
            Message::from_vec(&buf).unwrap()
        })
        .collect()
}

/// The IPv4 addresses of A records.
fn a_records(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(IpAddr::V4(ip)),
            _ => None,
        })
        .collect()
}

/// The zone's SOA as the only authority record, as Consul sends with NXDOMAIN and NODATA.
fn assert_soa(m: &Message, domain: &str) {
    assert_eq!(m.authorities.len(), 1, "{m:?}");
    let RData::SOA(soa) = &m.authorities[0].data else {
        panic!("no SOA in {m:?}")
    };
    assert_eq!(m.authorities[0].name.to_ascii(), format!("{domain}."));
    assert_eq!(soa.mname.to_ascii(), format!("ns.{domain}."));
    assert_eq!(soa.rname.to_ascii(), format!("hostmaster.{domain}."));
}

#[test]
fn node_lookups_by_name_datacenter_and_case() {
    let (_a, dns) = dev(&["-datacenter=west"]);
    let ip: IpAddr = "127.0.0.42".parse().unwrap();
    for name in [
        "n1.node.consul.",
        "n1.node.west.consul.",
        "N1.NODE.West.CONSUL.",
    ] {
        let r = ask(dns, name, RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(r.metadata.authoritative, "{name}");
        assert_eq!(a_records(&r.answers), vec![ip], "{name}");
        assert_eq!(
            (r.answers[0].ttl, r.answers[0].name.to_ascii()),
            (0, name.to_string())
        );
    }
    assert_eq!(
        a_records(&ask(dns, "n1.node.consul.", RecordType::ANY).answers),
        vec![ip]
    );
    // AAAA for an IPv4 node: the name exists, no records.
    let r = ask(dns, "n1.node.consul.", RecordType::AAAA);
    assert_eq!(
        (r.metadata.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_soa(&r, "consul");
    // Unknown node, another datacenter, a name without a kind: NXDOMAIN with the SOA.
    for name in ["n2.node.consul.", "n1.node.east.consul.", "n1.consul."] {
        let r = ask(dns, name, RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(r.metadata.authoritative);
        assert_soa(&r, "consul");
    }
    // EDNS is answered with EDNS.
    let mut q = query("n1.node.consul.", RecordType::A);
    q.set_edns(Edns::new());
    assert!(udp(dns, &q).edns.is_some());
    // TCP: two queries on one connection, answered in order.
    let frames = [
        query("n1.node.west.consul.", RecordType::A),
        query("nope.node.consul.", RecordType::A),
    ]
    .map(|q| q.to_vec().unwrap());
    let r = tcp(dns, &frames, 2);
    assert_eq!(
        (r[0].metadata.response_code, a_records(&r[0].answers)),
        (ResponseCode::NoError, vec![ip])
    );
    assert_eq!(r[1].metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn consul_service_a_and_srv() {
    let server_port = free_port();
    let (_a, dns) = dev(&[&format!("-server-port={server_port}")]);
    let ip: IpAddr = "127.0.0.42".parse().unwrap();
    for name in [
        "consul.service.consul.",
        "consul.service.dc1.consul.",
        "CONSUL.Service.Consul.",
    ] {
        let r = ask(dns, name, RecordType::A);
        assert_eq!(
            (r.metadata.response_code, a_records(&r.answers)),
            (ResponseCode::NoError, vec![ip]),
            "{name}"
        );
    }
    for name in [
        "consul.service.consul.",
        "_consul._tcp.service.consul.",
        "_consul._tcp.consul.",
    ] {
        let r = ask(dns, name, RecordType::SRV);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        let [answer] = r.answers.as_slice() else {
            panic!("{r:?}")
        };
        let RData::SRV(srv) = &answer.data else {
            panic!("{r:?}")
        };
        assert_eq!((srv.priority, srv.weight, srv.port), (1, 1, server_port));
        assert_eq!(srv.target.to_ascii(), "n1.node.dc1.consul.");
        let [extra] = r.additionals.as_slice() else {
            panic!("{r:?}")
        };
        assert_eq!(
            (extra.name.to_ascii(), &extra.data),
            (
                "n1.node.dc1.consul.".to_string(),
                &RData::A(A("127.0.0.42".parse().unwrap()))
            )
        );
    }
    for name in [
        "web.service.consul.",
        "primary.consul.service.consul.",
        "consul.service.dc2.consul.",
    ] {
        let r = ask(dns, name, RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_soa(&r, "consul");
    }
}

#[test]
fn soa_ns_refused_and_a_configured_domain() {
    let (_a, dns) = dev(&["-domain=Tribune"]);
    let r = ask(dns, "tribune.", RecordType::SOA);
    assert_eq!(
        (r.metadata.response_code, r.metadata.authoritative),
        (ResponseCode::NoError, true)
    );
    let RData::SOA(soa) = &r.answers[0].data else {
        panic!("{r:?}")
    };
    assert_eq!(
        (soa.mname.to_ascii(), soa.rname.to_ascii(), soa.minimum),
        (
            "ns.tribune.".to_string(),
            "hostmaster.tribune.".to_string(),
            0
        )
    );
    let r = ask(dns, "tribune.", RecordType::NS);
    let RData::NS(ns) = &r.answers[0].data else {
        panic!("{r:?}")
    };
    assert_eq!(ns.0.to_ascii(), "n1.node.dc1.tribune.");
    assert_eq!(
        a_records(&r.additionals),
        vec!["127.0.0.42".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        a_records(&ask(dns, "n1.node.tribune.", RecordType::A).answers),
        vec!["127.0.0.42".parse::<IpAddr>().unwrap()]
    );
    // Outside the domain (the default one included): refused, not authoritative.
    for name in ["n1.node.consul.", "example.com.", "tribune.example.com."] {
        let r = ask(dns, name, RecordType::A);
        assert_eq!(
            (
                r.metadata.response_code,
                r.metadata.authoritative,
                r.answers.len()
            ),
            (ResponseCode::Refused, false, 0),
            "{name}"
        );
    }
}

/// A gauge of `/v1/agent/metrics` by name and one label.
fn gauge(a: &Agent, name: &str, label: (&str, &str)) -> f64 {
    let m = a.http("GET", "/v1/agent/metrics", b"").json();
    m["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == name && g["Labels"][label.0] == label.1)
        .unwrap_or_else(|| panic!("no {name} {label:?} in {m}"))["Value"]
        .as_f64()
        .unwrap()
}

#[test]
fn garbage_is_dropped_counted_and_answering_goes_on() {
    let (a, dns) = dev(&[]);
    assert_eq!(
        gauge(&a, "consul.dns.dropped", ("reason", "malformed")),
        0.0
    );
    // UDP: no reply to garbage, then a normal answer.
    assert_eq!(
        udp_raw(
            dns,
            b"\x13\x37not a dns message",
            Duration::from_millis(500)
        ),
        None
    );
    assert_eq!(
        a_records(&ask(dns, "n1.node.consul.", RecordType::A).answers).len(),
        1
    );
    // TCP: a garbage frame is skipped and the next query on the connection answered.
    let r = tcp(
        dns,
        &[
            b"\xff\xff\xff".to_vec(),
            query("n1.node.consul.", RecordType::A).to_vec().unwrap(),
        ],
        1,
    );
    assert_eq!(a_records(&r[0].answers).len(), 1);
    assert_eq!(
        gauge(&a, "consul.dns.dropped", ("reason", "malformed")),
        2.0
    );
    assert_eq!(gauge(&a, "consul.dns.queries", ("rcode", "NOERROR")), 2.0);
    ask(dns, "missing.node.consul.", RecordType::A);
    ask(dns, "example.com.", RecordType::A);
    let prom = a
        .http("GET", "/v1/agent/metrics?format=prometheus", b"")
        .text();
    for line in [
        "consul_dns_dropped{reason=\"malformed\"} 2",
        "consul_dns_queries{rcode=\"NXDOMAIN\"} 1",
        "consul_dns_queries{rcode=\"REFUSED\"} 1",
    ] {
        assert!(prom.lines().any(|l| l == line), "no {line} in:\n{prom}");
    }
}

/// Local ports the process listens on: (TCP listeners, UDP sockets), from /proc.
fn listening(pid: u32) -> (Vec<u16>, Vec<u16>) {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let ports = |files: &[&str], state: &str| -> Vec<u16> {
        let mut out: Vec<u16> = files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(format!("/proc/net/{f}"))
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
                (cols.get(3) == Some(&state)
                    && inodes.iter().any(|i| Some(&i.as_str()) == cols.get(9)))
                .then_some(port)
            })
            .collect();
        out.sort();
        out
    };
    (ports(&["tcp", "tcp6"], "0A"), ports(&["udp", "udp6"], "07"))
}

#[test]
fn dns_listens_on_its_port_only_and_minus_one_turns_it_off() {
    let (a, dns) = dev(&[]);
    let mut tcp = vec![a.port, dns];
    tcp.sort();
    assert_eq!(listening(a.child.id()), (tcp, vec![dns]));
    let r = ask(dns, "n1.node.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let off = Agent::dev(&["-node=n1", "-dns-port=-1"]);
    assert_eq!(listening(off.child.id()), (vec![off.port], vec![]));
}

#[test]
fn gossip_members_are_answered_while_alive() {
    // A server and a client agent gossiping on their own loopback addresses; HTTP and DNS
    // on 127.0.0.1.
    let ports = |ip: &str, server: bool| {
        let data = temp_dir(&format!("dns-{ip}"));
        let (http, dns) = (free_port(), free_dns_port());
        let mut args = vec![
            "agent".to_string(),
            format!("-bind={ip}"),
            format!("-data-dir={}", data.display()),
            format!("-http-port={http}"),
            format!("-dns-port={dns}"),
            format!("-server-port={}", free_port()),
            format!("-serf-lan-port={}", free_port()),
            format!("-serf-wan-port={}", free_port()),
        ];
        if server {
            args.extend([
                "-server".to_string(),
                "-bootstrap".to_string(),
                "-node=s1".to_string(),
            ]);
        } else {
            args.push("-node=c1".to_string());
        }
        (args, http, dns)
    };
    let spawn = |args: &[String], http: u16| {
        let child = std::process::Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut a = Agent { child, port: http };
        a.wait_ready();
        a
    };
    let (server_args, server_http, server_dns) = ports("127.0.21.1", true);
    let server = spawn(&server_args, server_http);
    let serf = server_args
        .iter()
        .find_map(|a| a.strip_prefix("-serf-lan-port="))
        .unwrap()
        .to_string();
    let (mut client_args, client_http, client_dns) = ports("127.0.21.2", false);
    client_args.push(format!("-retry-join=127.0.21.1:{serf}"));
    let client = spawn(&client_args, client_http);

    let c1: IpAddr = "127.0.21.2".parse().unwrap();
    let s1: IpAddr = "127.0.21.1".parse().unwrap();
    let joined = eventually(Duration::from_secs(15), || {
        (a_records(&ask(server_dns, "c1.node.consul.", RecordType::A).answers) == vec![c1])
            .then_some(())
    });
    assert!(joined.is_some(), "the server never answered for the client");
    // Only servers are the consul service; a client learns them from gossip.
    for dns in [server_dns, client_dns] {
        assert_eq!(
            a_records(&ask(dns, "consul.service.consul.", RecordType::A).answers),
            vec![s1]
        );
        assert_eq!(
            a_records(&ask(dns, "s1.node.consul.", RecordType::A).answers),
            vec![s1]
        );
    }
    // Services: the client agent answers from its view of the servers' catalog, filled on
    // the first lookup of a name and kept current by its blocking query.
    let meta = serde_json::json!({"zone": "a"});
    register(
        &server,
        "api1",
        "10.5.0.1",
        meta,
        "api",
        &["v2"],
        "",
        9000,
        "passing",
    );
    let r = ask(client_dns, "api.service.consul.", RecordType::A);
    assert_eq!(
        (r.metadata.response_code, sorted_ips(&r.answers)),
        (ResponseCode::NoError, vec!["10.5.0.1".to_string()]),
        "the first lookup waits for the view's first fill"
    );
    let l = resolve(
        client_dns,
        true,
        "_api._v2.service.consul.",
        RecordType::SRV,
    )
    .unwrap();
    let RData::SRV(srv) = &l.answers()[0].data else {
        panic!("{l:?}")
    };
    assert_eq!(
        (srv.port, srv.target.to_ascii()),
        (9000, "api1.node.dc1.consul.".into())
    );
    // Nodes of the services it keeps are answered too.
    let r = ask(client_dns, "api1.node.consul.", RecordType::A);
    assert_eq!(sorted_ips(&r.answers), ["10.5.0.1"]);
    let none = serde_json::json!({});
    register(
        &server,
        "api2",
        "10.5.0.2",
        none.clone(),
        "api",
        &[],
        "",
        9000,
        "passing",
    );
    register(
        &server,
        "api1",
        "10.5.0.1",
        none,
        "api",
        &["v2"],
        "",
        9000,
        "critical",
    );
    let current = eventually(Duration::from_secs(10), || {
        let r = ask(client_dns, "api.service.consul.", RecordType::A);
        (sorted_ips(&r.answers) == ["10.5.0.2"]).then_some(())
    });
    assert!(
        current.is_some(),
        "the client's view did not follow the catalog"
    );
    let r = ask(client_dns, "nothing.service.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // After the client leaves it is no longer answered.
    client.http("PUT", "/v1/agent/leave", b"");
    let gone = eventually(Duration::from_secs(15), || {
        (ask(server_dns, "c1.node.consul.", RecordType::A)
            .metadata
            .response_code
            == ResponseCode::NXDomain)
            .then_some(())
    });
    assert!(gone.is_some(), "a member that left is still answered");
}

// ----- services from the catalog ------------------------------------------------------------

/// A `-dev` agent (node n1, 127.0.0.42) with DNS on a free port and `config` as a JSON
/// config file.
fn dev_with(name: &str, config: serde_json::Value) -> (Agent, u16) {
    let dir = temp_dir(name);
    let file = dir.join("dns.json");
    std::fs::write(&file, config.to_string()).unwrap();
    dev(&[&format!("-config-file={}", file.display())])
}

/// `PUT /v1/catalog/register` of node `node` at `address` (with `meta`) and one instance of
/// service `service` with `tags`, its own `service_address` and `port`, and a check of
/// `status` unless it is empty.
#[allow(clippy::too_many_arguments)]
fn register(
    a: &Agent,
    node: &str,
    address: &str,
    meta: serde_json::Value,
    service: &str,
    tags: &[&str],
    service_address: &str,
    port: u16,
    status: &str,
) {
    let id = format!("{service}-{node}");
    let mut body = serde_json::json!({
        "Node": node, "Address": address, "NodeMeta": meta,
        "Service": {"ID": id, "Service": service, "Tags": tags, "Address": service_address,
                    "Port": port, "Weights": {"Passing": 10, "Warning": 1}},
    });
    if !status.is_empty() {
        body["Check"] = serde_json::json!({
            "CheckID": format!("{id}-check"), "Name": "check", "Status": status,
            "ServiceID": id,
        });
    }
    let r = a.http("PUT", "/v1/catalog/register", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// web on four nodes: web1 passing (tag primary, meta rack=r1), web2 warning (secondary),
/// web3 critical (primary), web4 passing with its own address 192.168.0.4.
fn register_web(a: &Agent) {
    let meta = serde_json::json!({"rack": "r1"});
    register(
        a,
        "web1",
        "10.0.0.1",
        meta,
        "web",
        &["primary"],
        "",
        8081,
        "passing",
    );
    let none = serde_json::json!({});
    register(
        a,
        "web2",
        "10.0.0.2",
        none.clone(),
        "web",
        &["secondary"],
        "",
        8082,
        "warning",
    );
    register(
        a,
        "web3",
        "10.0.0.3",
        none.clone(),
        "web",
        &["primary"],
        "",
        8083,
        "critical",
    );
    register(
        a,
        "web4",
        "10.0.0.4",
        none,
        "web",
        &[],
        "192.168.0.4",
        8084,
        "passing",
    );
}

/// A stub resolver asking only the agent's DNS port on 127.0.0.1: over UDP (falling back
/// to TCP on a truncated answer), or over TCP alone.
fn resolver(port: u16, tcp_only: bool) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::ConnectionConfig;
    use hickory_resolver::config::NameServerConfig;
    use hickory_resolver::config::ResolverConfig;
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut ns = NameServerConfig::udp_and_tcp("127.0.0.1".parse().unwrap());
    if tcp_only {
        ns.connections = vec![ConnectionConfig::tcp()];
    }
    for c in &mut ns.connections {
        c.port = port;
    }
    let config = ResolverConfig::from_name_servers(vec![ns]);
    let mut b =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    b.options_mut().cache_size = 0;
    b.options_mut().attempts = 1;
    b.options_mut().timeout = Duration::from_secs(5);
    b.build().unwrap()
}

/// One lookup through a real resolver.
fn resolve(
    port: u16,
    tcp_only: bool,
    name: &str,
    qtype: RecordType,
) -> Result<hickory_resolver::lookup::Lookup, hickory_resolver::net::NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { resolver(port, tcp_only).lookup(name, qtype).await })
}

fn sorted_ips(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// `dig @127.0.0.1 -p PORT ARGS...`'s output, or None (said on stderr) without dig.
fn dig(port: u16, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output();
    match out {
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => {
            eprintln!("SKIPPING the dig checks: dig cannot run ({e}); install bind9-dnsutils");
            None
        }
    }
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn services_answered_over_udp_and_tcp_to_a_resolver_and_dig() {
    let (a, dns) = dev_with(
        "dns-services",
        serde_json::json!({"dns_config": {
            "service_ttl": {"web": "10s"},
            "soa": {"refresh": 77, "min_ttl": 30}
        }}),
    );
    register_web(&a);
    // A: the critical instance is left out, the own address used.
    let want = ["10.0.0.1", "10.0.0.2", "192.168.0.4"];
    for tcp_only in [false, true] {
        let l = resolve(dns, tcp_only, "web.service.consul.", RecordType::A).unwrap();
        assert_eq!(sorted_ips(l.answers()), want, "tcp only: {tcp_only}");
        assert!(l.answers().iter().all(|r| r.ttl == 10), "{:?}", l.answers());
    }
    // Tags, both name forms.
    let l = resolve(dns, false, "primary.web.service.consul.", RecordType::A).unwrap();
    assert_eq!(sorted_ips(l.answers()), ["10.0.0.1"]);
    let l = resolve(
        dns,
        true,
        "_web._secondary.service.consul.",
        RecordType::SRV,
    )
    .unwrap();
    let RData::SRV(srv) = &l.answers()[0].data else {
        panic!("{l:?}")
    };
    assert_eq!(
        (srv.port, srv.weight),
        (8082, 1),
        "a warning instance's weight"
    );
    // SRV: node targets, an .addr target for the own address, each with its A record.
    let r = ask(dns, "_web._tcp.service.consul.", RecordType::SRV);
    let mut targets: Vec<(String, u16)> = r
        .answers
        .iter()
        .map(|a| match &a.data {
            RData::SRV(s) => (s.target.to_ascii(), s.port),
            _ => panic!("{a:?}"),
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            ("c0a80004.addr.dc1.consul.".to_string(), 8084),
            ("web1.node.dc1.consul.".to_string(), 8081),
            ("web2.node.dc1.consul.".to_string(), 8082),
        ]
    );
    for (target, ip) in [
        ("c0a80004.addr.dc1.consul.", "192.168.0.4"),
        ("web1.node.dc1.consul.", "10.0.0.1"),
        ("web2.node.dc1.consul.", "10.0.0.2"),
    ] {
        let extra = r.additionals.iter().find(|x| x.name.to_ascii() == target);
        assert_eq!(
            extra.map(|x| &x.data),
            Some(&RData::A(A(ip.parse().unwrap()))),
            "{r:?}"
        );
    }
    // NXDOMAIN and NODATA, each with the configured SOA.
    let e = resolve(dns, false, "nope.service.consul.", RecordType::A).unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");
    let soa = e.into_soa().expect("an SOA with NXDOMAIN");
    assert_eq!((soa.data.refresh, soa.data.minimum, soa.ttl), (77, 30, 30));
    let e = resolve(dns, true, "web.service.consul.", RecordType::AAAA).unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");
    assert!(e.into_soa().is_some(), "an SOA with NODATA");
    let r = ask(dns, "web.service.consul.", RecordType::AAAA);
    assert_eq!(
        (r.metadata.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_soa(&r, "consul");
    // Catalog nodes, their meta as TXT, .addr names and PTR.
    let l = resolve(dns, false, "web1.node.consul.", RecordType::TXT).unwrap();
    assert_eq!(l.answers()[0].data.to_string(), "rack=r1");
    let r = ask(dns, "web1.node.consul.", RecordType::A);
    assert_eq!(sorted_ips(&r.answers), ["10.0.0.1"]);
    assert!(matches!(r.additionals[0].data, RData::TXT(_)), "{r:?}");
    let l = resolve(dns, false, "c0a80004.addr.dc1.consul.", RecordType::A).unwrap();
    assert_eq!(sorted_ips(l.answers()), ["192.168.0.4"]);
    let l = resolve(dns, true, "1.0.0.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(l.answers()[0].data.to_string(), "web1.node.dc1.consul.");
    let l = resolve(dns, false, "4.0.168.192.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(l.answers()[0].data.to_string(), "web.service.dc1.consul.");
    let e = resolve(dns, false, "9.9.9.9.in-addr.arpa.", RecordType::PTR).unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");

    // The same through dig, over UDP and TCP.
    let Some(out) = dig(dns, &["+short", "web.service.consul"]) else {
        return;
    };
    assert_eq!(sorted_lines(&out), want);
    let out = dig(dns, &["+tcp", "+short", "primary.web.service.consul"]).unwrap();
    assert_eq!(sorted_lines(&out), ["10.0.0.1"]);
    let out = dig(dns, &["_web._primary.service.consul", "SRV"]).unwrap();
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("1 10 8081 web1.node.dc1.consul."), "{out}");
    let additional = out.split(";; ADDITIONAL SECTION:").nth(1).unwrap_or("");
    assert!(
        additional
            .lines()
            .any(|l| l.starts_with("web1.node.dc1.consul.")
                && l.contains("\tA\t")
                && l.ends_with("10.0.0.1")),
        "{out}"
    );
    let out = dig(dns, &["nope.service.consul"]).unwrap();
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("SOA\tns.consul. hostmaster.consul."), "{out}");
    let out = dig(dns, &["+tcp", "web.service.consul", "AAAA"]).unwrap();
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    assert!(out.contains("SOA\tns.consul."), "{out}");
    let out = dig(dns, &["+short", "-x", "10.0.0.1"]).unwrap();
    assert_eq!(out.trim(), "web1.node.dc1.consul.");
    let out = dig(dns, &["+short", "web1.node.consul", "TXT"]).unwrap();
    assert_eq!(out.trim(), "\"rack=r1\"");
}

#[test]
fn only_passing_leaves_out_warning_instances() {
    let (a, dns) = dev_with(
        "dns-passing",
        serde_json::json!({"dns_config": {"only_passing": true}}),
    );
    register_web(&a);
    let l = resolve(dns, false, "web.service.consul.", RecordType::A).unwrap();
    assert_eq!(sorted_ips(l.answers()), ["10.0.0.1", "192.168.0.4"]);
    let e = resolve(dns, false, "secondary.web.service.consul.", RecordType::A).unwrap_err();
    assert!(e.is_nx_domain(), "the only secondary is warning: {e:?}");
    if let Some(out) = dig(dns, &["+short", "web.service.consul"]) {
        assert_eq!(sorted_lines(&out), ["10.0.0.1", "192.168.0.4"]);
    }
    // A check turning critical takes the instance out at once.
    register(
        &a,
        "web1",
        "10.0.0.1",
        serde_json::json!({}),
        "web",
        &[],
        "",
        8081,
        "critical",
    );
    let l = resolve(dns, true, "web.service.consul.", RecordType::A).unwrap();
    assert_eq!(sorted_ips(l.answers()), ["192.168.0.4"]);
}

#[test]
fn big_answers_are_truncated_on_udp_and_whole_on_tcp() {
    let (a, dns) = dev_with(
        "dns-truncate",
        serde_json::json!({"dns_config": {"enable_truncate": true, "a_record_limit": 0}}),
    );
    for i in 1..=20 {
        let node = format!("big-node-with-a-long-name-{i}");
        let ip = format!("10.9.0.{i}");
        register(
            &a,
            &node,
            &ip,
            serde_json::json!({}),
            "big",
            &[],
            "",
            80,
            "passing",
        );
    }
    // Plain UDP: udp_answer_limit (3) answers and TC; SRV cut to 512 bytes and TC.
    let r = ask(dns, "big.service.consul.", RecordType::A);
    assert_eq!((r.answers.len(), r.metadata.truncation), (3, true));
    let q = query("big.service.consul.", RecordType::SRV);
    let bytes = udp_raw(dns, &q.to_vec().unwrap(), Duration::from_secs(5)).unwrap();
    assert!(bytes.len() <= 512, "{}", bytes.len());
    let r = Message::from_vec(&bytes).unwrap();
    assert!(r.metadata.truncation && r.answers.len() < 20, "{r:?}");
    assert_eq!(
        r.additionals.len(),
        r.answers.len(),
        "each kept answer keeps its A"
    );
    // TCP: all of them, no TC; a resolver retries a truncated UDP answer over TCP.
    let r = &tcp(dns, &[q.to_vec().unwrap()], 1)[0];
    assert_eq!((r.answers.len(), r.metadata.truncation), (20, false));
    let l = resolve(dns, false, "big.service.consul.", RecordType::SRV).unwrap();
    assert_eq!(l.answers().len(), 20);
    if let Some(out) = dig(dns, &["+ignore", "+noedns", "big.service.consul"]) {
        assert!(out.contains(" tc ") || out.contains(" tc;"), "{out}");
        let out = dig(dns, &["+tcp", "+short", "big.service.consul"]).unwrap();
        assert_eq!(out.lines().count(), 20, "{out}");
    }
}

/// The tiny upstream's answer: every A question 203.0.113.7, others NXDOMAIN.
fn upstream_answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.queries = q.queries.clone();
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    match q.queries.first() {
        Some(question) if question.query_type() == RecordType::A => {
            r.answers.push(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A("203.0.113.7".parse().unwrap())),
            ));
        }
        _ => r.metadata.response_code = ResponseCode::NXDomain,
    }
    r.to_vec().ok()
}

/// A tiny upstream DNS server on 127.0.0.1, over UDP and TCP on one port (see
/// [`upstream_answer`]). Runs until the test process ends.
fn upstream() -> u16 {
    let (udp, tcp) = loop {
        let port = free_dns_port();
        if let (Ok(u), Ok(t)) = (
            UdpSocket::bind(("127.0.0.1", port)),
            std::net::TcpListener::bind(("127.0.0.1", port)),
        ) {
            break (u, t);
        }
    };
    let port = udp.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(out) = upstream_answer(&buf[..n]) {
                let _ = udp.send_to(&out, from);
            }
        }
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            if let Some(out) = upstream_answer(&q) {
                let _ = s.write_all(&(out.len() as u16).to_be_bytes());
                let _ = s.write_all(&out);
            }
        }
    });
    port
}

/// A UDP port on 127.0.0.1 where nothing answers (the socket is kept, so no ICMP either).
fn silent() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

#[test]
fn names_outside_the_domain_go_to_the_recursors_in_order() {
    let live = upstream();
    let (_dead, dead) = silent();
    let (a, dns) = dev_with(
        "dns-recursors",
        serde_json::json!({
            "recursors": [format!("127.0.0.1:{dead}"), format!("127.0.0.1:{live}")],
            "dns_config": {"recursor_timeout": "300ms"}
        }),
    );
    // The silent one first: its timeout, then the answer of the live one.
    let started = std::time::Instant::now();
    let r = ask(dns, "www.example.test.", RecordType::A);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        (r.metadata.response_code, sorted_ips(&r.answers)),
        (ResponseCode::NoError, vec!["203.0.113.7".to_string()])
    );
    assert!(r.metadata.recursion_available);
    let r = &tcp(
        dns,
        &[query("x.example.test.", RecordType::A).to_vec().unwrap()],
        1,
    )[0];
    assert_eq!(sorted_ips(&r.answers), ["203.0.113.7"]);
    // NXDOMAIN from upstream is relayed; the domain itself is still answered locally.
    let r = ask(dns, "www.example.test.", RecordType::MX);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = ask(dns, "n1.node.consul.", RecordType::A);
    assert_eq!(sorted_ips(&r.answers), ["127.0.0.42"]);
    // A reverse name the catalog does not know goes upstream too.
    let r = ask(dns, "9.9.9.9.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let l = resolve(dns, false, "resolver.example.test.", RecordType::A).unwrap();
    assert_eq!(sorted_ips(l.answers()), ["203.0.113.7"]);
    let l = resolve(dns, true, "tcp.example.test.", RecordType::A).unwrap();
    assert_eq!(sorted_ips(l.answers()), ["203.0.113.7"]);
    if let Some(out) = dig(dns, &["+short", "dig.example.test"]) {
        assert_eq!(out.trim(), "203.0.113.7");
        let out = dig(dns, &["+tcp", "+short", "dig.example.test"]).unwrap();
        assert_eq!(out.trim(), "203.0.113.7");
    }
    drop(a);
    // Only silent recursors: SERVFAIL once each has had its time.
    let (_dead2, dead2) = silent();
    let (_b, dns) = dev_with(
        "dns-recursors-dead",
        serde_json::json!({
            "recursors": [format!("127.0.0.1:{dead}"), format!("127.0.0.1:{dead2}")],
            "dns_config": {"recursor_timeout": "200ms"}
        }),
    );
    let started = std::time::Instant::now();
    let r = ask(dns, "www.example.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() >= Duration::from_millis(400));
}
