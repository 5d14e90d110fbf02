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
    let _server = spawn(&server_args, server_http);
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
