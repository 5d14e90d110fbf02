//! Lookups over a catalog built in memory: a state machine with catalog registrations
//! applied, as a server's or `-dev` agent's DNS interface reads it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hickory_proto::op::Query;
use tribune_core::catalog::CatalogOp;
use tribune_core::catalog::CheckInfo;
use tribune_core::catalog::NodeInfo;
use tribune_core::catalog::Registration;
use tribune_core::catalog::ServiceInfo;
use tribune_core::catalog::Weights;
use tribune_core::fsm::Command;
use tribune_core::fsm::Request;
use tribune_core::fsm::StateMachine;

use super::*;
use crate::directory::Node;

/// A state machine as a directory, with no gossip pool behind it.
#[derive(Default)]
struct Sm(Mutex<(StateMachine, u64)>);

impl Directory for Sm {
    fn node(&self, _name: &str) -> Option<Node> {
        None
    }

    fn servers(&self) -> Vec<Node> {
        Vec::new()
    }

    fn with_catalogs(&self, _service: Option<&str>, f: &mut dyn FnMut(&Catalog)) {
        f(self.0.lock().unwrap().0.catalog());
    }
}

struct Reg<'a> {
    node: &'a str,
    address: &'a str,
    meta: &'a [(&'a str, &'a str)],
    service: Option<(&'a str, &'a [&'a str], &'a str, u16)>,
    /// (check id, status, whether it is the service's rather than the node's)
    checks: &'a [(&'a str, Health, bool)],
}

impl Sm {
    fn register(&self, r: Reg) {
        let mut g = self.0.lock().unwrap();
        let (sm, index) = &mut *g;
        *index += 1;
        let service = r.service.map(|(id, tags, address, port)| ServiceInfo {
            id: id.into(),
            name: id.split('-').next().unwrap().into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: address.into(),
            port,
            weights: Weights {
                passing: 10,
                warning: 1,
            },
            ..ServiceInfo::default()
        });
        let checks = r
            .checks
            .iter()
            .map(|(id, status, of_service)| CheckInfo {
                check_id: id.to_string(),
                name: id.to_string(),
                status: *status,
                service_id: match (&service, of_service) {
                    (Some(s), true) => s.id.clone(),
                    _ => String::new(),
                },
                ..CheckInfo::default()
            })
            .collect();
        let reg = Registration {
            node: NodeInfo {
                name: r.node.into(),
                address: r.address.into(),
                datacenter: "dc1".into(),
                meta: r
                    .meta
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                ..NodeInfo::default()
            },
            skip_node_update: false,
            service,
            checks,
        };
        let req = Request {
            client: 0,
            seq: 0,
            opened_at: 0,
            cmd: Command::Catalog(CatalogOp::Register(Box::new(reg))),
        };
        sm.apply(*index, &req);
    }
}

const P: Health = Health::Passing;
const W: Health = Health::Warning;
const C: Health = Health::Critical;

/// Nodes n1..n4 with `web` instances: n1 passing (tags primary, v1), n2 warning (v1),
/// n3 critical through its node's check, n4 passing with its own service address. `db`
/// on n1, `ext` on an external node named by a host name. n1 has meta.
fn catalog() -> Arc<Sm> {
    let sm = Arc::new(Sm::default());
    sm.register(Reg {
        node: "n1",
        address: "10.0.0.1",
        meta: &[
            ("rack", "r1"),
            ("rfc1035-raw", "plain text"),
            (" a=b", "x`y"),
        ],
        service: Some(("web-1", &["primary", "v1"], "", 8001)),
        checks: &[("serfHealth", P, false), ("web-1-up", P, true)],
    });
    sm.register(Reg {
        node: "n1",
        address: "10.0.0.1",
        meta: &[
            ("rack", "r1"),
            ("rfc1035-raw", "plain text"),
            (" a=b", "x`y"),
        ],
        service: Some(("db-1", &[], "", 5432)),
        checks: &[],
    });
    sm.register(Reg {
        node: "n2",
        address: "10.0.0.2",
        meta: &[],
        service: Some(("web-2", &["v1"], "", 8002)),
        checks: &[("serfHealth", P, false), ("web-2-slow", W, true)],
    });
    sm.register(Reg {
        node: "n3",
        address: "10.0.0.3",
        meta: &[],
        service: Some(("web-3", &["primary"], "", 8003)),
        checks: &[("serfHealth", C, false)],
    });
    sm.register(Reg {
        node: "n4",
        address: "10.0.0.4",
        meta: &[],
        service: Some(("web-4", &[], "192.168.7.4", 8004)),
        checks: &[],
    });
    sm.register(Reg {
        node: "n6",
        address: "fd00::6",
        meta: &[],
        service: Some(("web6-1", &[], "", 8006)),
        checks: &[],
    });
    sm.register(Reg {
        node: "external",
        address: "db.example.com",
        meta: &[],
        service: Some(("ext-1", &[], "", 443)),
        checks: &[],
    });
    sm
}

fn settings() -> DnsConfig {
    DnsConfig {
        udp_answer_limit: 8,
        node_ttl: Duration::from_secs(7),
        service_ttl: vec![
            ("web*".into(), Duration::from_secs(3)),
            ("*".into(), Duration::from_secs(5)),
            ("webx".into(), Duration::from_secs(9)),
        ],
        soa: crate::config::SoaConfig {
            refresh: 11,
            retry: 12,
            expire: 13,
            min_ttl: 14,
        },
        ..DnsConfig::default()
    }
}

fn zone_with(dir: Arc<dyn Directory>, settings: DnsConfig) -> Zone {
    Zone::new("consul", "dc1", dir, settings, Arc::default()).unwrap()
}

fn ask(z: &Zone, name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut e = Edns::new();
    e.set_max_payload(4096);
    m.set_edns(e);
    let bytes = z.handle(&m.to_vec().unwrap(), true).expect("an answer");
    Message::from_vec(&bytes).unwrap()
}

fn ips(r: &Message) -> Vec<String> {
    let mut v: Vec<String> = r
        .answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn srvs(r: &Message) -> Vec<(String, u16, u16)> {
    let mut v: Vec<_> = r
        .answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::SRV(s) => Some((s.target.to_ascii(), s.port, s.weight)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn soa_of(r: &Message) -> &SOA {
    match r.authorities.first().map(|a| &a.data) {
        Some(RData::SOA(soa)) => soa,
        _ => panic!("no SOA in {r:?}"),
    }
}

#[test]
fn service_a_leaves_out_critical_and_with_only_passing_warning() {
    let z = zone_with(catalog(), settings());
    let r = ask(&z, "web.service.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&r), ["10.0.0.1", "10.0.0.2", "192.168.7.4"]);
    assert!(
        r.answers.iter().all(|a| a.ttl == 3),
        "web* prefix TTL: {r:?}"
    );
    let z = zone_with(
        catalog(),
        DnsConfig {
            only_passing: true,
            ..settings()
        },
    );
    let r = ask(&z, "web.service.dc1.consul.", RecordType::A);
    assert_eq!(ips(&r), ["10.0.0.1", "192.168.7.4"]);
    assert_eq!(
        ask(&z, "db.service.consul.", RecordType::A).answers[0].ttl,
        5
    );
}

#[test]
fn tags_filter_case_insensitively_in_both_name_forms() {
    let z = zone_with(catalog(), settings());
    assert_eq!(
        ips(&ask(&z, "PRIMARY.web.service.consul.", RecordType::A)),
        ["10.0.0.1"],
        "n3 is primary but critical"
    );
    assert_eq!(
        ips(&ask(&z, "v1.web.service.consul.", RecordType::A)),
        ["10.0.0.1", "10.0.0.2"]
    );
    let r = ask(&z, "_web._v1.service.consul.", RecordType::SRV);
    assert_eq!(
        srvs(&r),
        [
            ("n1.node.dc1.consul.".into(), 8001, 10),
            ("n2.node.dc1.consul.".into(), 8002, 1)
        ],
        "weights follow health"
    );
    let r = ask(&z, "nope.web.service.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(soa_of(&r).refresh, 11);
}

#[test]
fn srv_targets_nodes_or_addr_names_with_additional_addresses() {
    let z = zone_with(catalog(), settings());
    for name in [
        "web.service.consul.",
        "_web._tcp.service.consul.",
        "_web._tcp.consul.",
    ] {
        let r = ask(&z, name, RecordType::SRV);
        assert_eq!(
            srvs(&r),
            [
                ("c0a80704.addr.dc1.consul.".into(), 8004, 10),
                ("n1.node.dc1.consul.".into(), 8001, 10),
                ("n2.node.dc1.consul.".into(), 8002, 1),
            ],
            "{name}"
        );
        for (target, ip) in [
            ("c0a80704.addr.dc1.consul.", "192.168.7.4"),
            ("n1.node.dc1.consul.", "10.0.0.1"),
            ("n2.node.dc1.consul.", "10.0.0.2"),
        ] {
            let found = r
                .additionals
                .iter()
                .any(|x| x.name.to_ascii() == target && x.data == RData::A(A(ip.parse().unwrap())));
            assert!(found, "{target} {r:?}");
        }
        // n1's meta as TXT for its target.
        assert!(r.additionals.iter().any(|x| {
            x.name.to_ascii() == "n1.node.dc1.consul." && matches!(x.data, RData::TXT(_))
        }));
    }
    // The addr name resolves back.
    let r = ask(&z, "c0a80704.addr.dc1.consul.", RecordType::A);
    assert_eq!(ips(&r), ["192.168.7.4"]);
    let r = ask(&z, "c0a80704.addr.consul.", RecordType::AAAA);
    assert_eq!(
        (r.metadata.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_eq!(
        r.additionals[0].data,
        RData::A(A("192.168.7.4".parse().unwrap()))
    );
    soa_of(&r);
    let r = ask(
        &z,
        "fd000000000000000000000000000006.addr.consul.",
        RecordType::AAAA,
    );
    assert_eq!(ips(&r), ["fd00::6"]);
    let r = ask(&z, "c0a807.addr.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = ask(&z, "zzzzzzzz.addr.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn nxdomain_and_nodata_carry_the_configured_soa() {
    let z = zone_with(catalog(), settings());
    let r = ask(&z, "missing.service.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let soa = soa_of(&r);
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (11, 12, 13, 14)
    );
    assert_eq!(r.authorities[0].ttl, 14);
    // web6 has only an IPv6 address: NODATA for A, the address for AAAA.
    let r = ask(&z, "web6.service.consul.", RecordType::A);
    assert_eq!(
        (r.metadata.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
    soa_of(&r);
    assert_eq!(
        ips(&ask(&z, "web6.service.consul.", RecordType::AAAA)),
        ["fd00::6"]
    );
    let r = ask(&z, "n1.node.consul.", RecordType::AAAA);
    assert_eq!(
        (r.metadata.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
    soa_of(&r);
    let r = ask(&z, "n1.node.consul.", RecordType::MX);
    assert_eq!(
        (r.metadata.response_code, r.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert!(r.additionals.is_empty(), "{r:?}");
    let r = ask(&z, "n9.node.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Every instance critical: the name has nothing to answer with.
    let r = ask(&z, "primary.web.service.consul.", RecordType::SRV);
    assert_eq!(srvs(&r).len(), 1);
    let sm = catalog();
    sm.register(Reg {
        node: "n5",
        address: "10.0.0.5",
        meta: &[],
        service: Some(("down-1", &[], "", 1)),
        checks: &[("down-1-dead", C, true)],
    });
    let z = zone_with(sm, settings());
    let r = ask(&z, "down.service.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn srv_meta_txt_is_named_by_the_node_whatever_the_target() {
    let sm = Arc::new(Sm::default());
    let meta: &[(&str, &str)] = &[("rack", "r2")];
    for (node, address, service_address) in [
        ("m1", "10.0.0.5", "192.168.7.5"),
        ("m2", "m2.example.com", ""),
        ("m3", "10.0.0.6", ""),
    ] {
        let id = format!("api-{node}");
        sm.register(Reg {
            node,
            address,
            meta: if node == "m3" { &[] } else { meta },
            service: Some((&id, &[], service_address, 9000)),
            checks: &[],
        });
    }
    let z = zone_with(sm, settings());
    let r = ask(&z, "api.service.consul.", RecordType::SRV);
    assert_eq!(
        srvs(&r),
        [
            ("c0a80705.addr.dc1.consul.".into(), 9000, 10),
            ("m2.example.com.".into(), 9000, 10),
            ("m3.node.dc1.consul.".into(), 9000, 10),
        ]
    );
    let mut txt: Vec<String> = r
        .additionals
        .iter()
        .filter(|x| matches!(x.data, RData::TXT(_)))
        .map(|x| format!("{} {}", x.name.to_ascii(), x.data))
        .collect();
    txt.sort();
    assert_eq!(
        txt,
        ["m1.node.dc1.consul. rack=r2", "m2.node.dc1.consul. rack=r2"],
        "m3 has no meta: no TXT"
    );
}

#[test]
fn nodes_come_from_the_catalog_with_meta_as_txt() {
    let z = zone_with(catalog(), settings());
    let r = ask(&z, "n1.node.dc1.consul.", RecordType::A);
    assert_eq!(ips(&r), ["10.0.0.1"]);
    assert_eq!(r.answers[0].ttl, 7);
    let txt = |recs: &[Record]| {
        let mut v: Vec<String> = recs
            .iter()
            .filter_map(|x| match &x.data {
                RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let want = ["` a`=b=x``y", "plain text", "rack=r1"];
    assert_eq!(
        txt(&r.additionals),
        want,
        "RFC 1464 keys, rfc1035- values bare"
    );
    let r = ask(&z, "n1.node.consul.", RecordType::TXT);
    assert_eq!(
        (txt(&r.answers), ips(&r).len()),
        (want.map(String::from).to_vec(), 0)
    );
    let z = zone_with(
        catalog(),
        DnsConfig {
            node_meta_txt: false,
            ..settings()
        },
    );
    let r = ask(&z, "n1.node.consul.", RecordType::A);
    assert!(txt(&r.additionals).is_empty());
    assert_eq!(
        txt(&ask(&z, "n1.node.consul.", RecordType::ANY).answers).len(),
        3
    );
    // A node registered by a host name: a CNAME.
    let r = ask(&z, "external.node.consul.", RecordType::A);
    assert_eq!(
        r.answers[0].data,
        RData::CNAME(CNAME(Name::from_ascii("db.example.com.").unwrap()))
    );
    let r = ask(&z, "ext.service.consul.", RecordType::SRV);
    assert_eq!(srvs(&r), [("db.example.com.".into(), 443, 10)]);
}

#[test]
fn reverse_lookups_name_nodes_then_services() {
    let z = zone_with(catalog(), settings());
    let ptr = |name: &str| {
        let r = ask(&z, name, RecordType::PTR);
        let names: Vec<String> = r
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect();
        (r.metadata.response_code, names)
    };
    assert_eq!(
        ptr("1.0.0.10.in-addr.arpa."),
        (ResponseCode::NoError, vec!["n1.node.dc1.consul.".into()])
    );
    assert_eq!(
        ptr("4.7.168.192.in-addr.arpa."),
        (
            ResponseCode::NoError,
            vec!["web.service.dc1.consul.".into()]
        )
    );
    let v6 = "6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(
        ptr(v6),
        (ResponseCode::NoError, vec!["n6.node.dc1.consul.".into()])
    );
    assert_eq!(ptr("9.9.9.9.in-addr.arpa.").0, ResponseCode::NXDomain);
    assert_eq!(ptr("9.9.in-addr.arpa.").0, ResponseCode::NXDomain);
    assert_eq!(ptr("x.1.0.0.10.in-addr.arpa.").0, ResponseCode::NXDomain);
}

#[test]
fn a_record_limit_caps_address_answers_and_answers_are_shuffled() {
    let sm = Arc::new(Sm::default());
    for i in 1..=20 {
        sm.register(Reg {
            node: &format!("m{i}"),
            address: &format!("10.1.0.{i}"),
            meta: &[],
            service: Some(("api-1", &[], "", 80)),
            checks: &[],
        });
    }
    let z = zone_with(
        sm.clone(),
        DnsConfig {
            a_record_limit: 4,
            ..settings()
        },
    );
    let r = ask(&z, "api.service.consul.", RecordType::A);
    assert_eq!(r.answers.len(), 4);
    assert_eq!(
        ask(&z, "api.service.consul.", RecordType::SRV)
            .answers
            .len(),
        20,
        "SRV is not capped"
    );
    let z = zone_with(sm, settings());
    let orders: std::collections::HashSet<Vec<String>> = (0..20)
        .map(|_| {
            ask(&z, "api.service.consul.", RecordType::A)
                .answers
                .iter()
                .map(|a| a.data.to_string())
                .collect()
        })
        .collect();
    assert!(orders.len() > 1, "the same order 20 times");
}

#[test]
fn a_plain_udp_srv_answer_is_cut_with_tc_and_keeps_its_additionals() {
    let sm = Arc::new(Sm::default());
    for i in 1..=12 {
        sm.register(Reg {
            node: &format!("node-with-a-rather-long-name-{i}"),
            address: &format!("10.1.0.{i}"),
            meta: &[],
            service: Some(("api-1", &[], "", 80)),
            checks: &[],
        });
    }
    let z = zone_with(
        sm,
        DnsConfig {
            enable_truncate: true,
            ..settings()
        },
    );
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("api.service.consul.").unwrap(),
        RecordType::SRV,
    ));
    let bytes = z.handle(&m.to_vec().unwrap(), true).unwrap();
    assert!(bytes.len() <= 512);
    let r = Message::from_vec(&bytes).unwrap();
    assert!(r.metadata.truncation && (1..=8).contains(&r.answers.len()));
    assert_eq!(r.additionals.len(), r.answers.len());
    let tcp = Message::from_vec(&z.handle(&m.to_vec().unwrap(), false).unwrap()).unwrap();
    assert_eq!((tcp.answers.len(), tcp.metadata.truncation), (12, false));
}

#[test]
fn hex_and_arpa_names_parse_strictly() {
    assert_eq!(parse_hex_ip("7f000001"), Some("127.0.0.1".parse().unwrap()));
    assert_eq!(parse_hex_ip("7f00000"), None);
    assert_eq!(parse_hex_ip("7f0000g1"), None);
    assert_eq!(parse_hex_ip("7f00000é"), None, "a multi-byte character");
    assert_eq!(hex_ip("192.168.7.4".parse().unwrap()), "c0a80704");
    let l = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        parse_arpa(&l("4.3.2.1.in-addr.arpa")),
        Some("1.2.3.4".parse().unwrap())
    );
    assert_eq!(parse_arpa(&l("256.3.2.1.in-addr.arpa")), None);
    assert_eq!(parse_arpa(&l("3.2.1.in-addr.arpa")), None);
}

#[test]
fn the_catalog_and_a_client_view_answer_alike() {
    // A `/v1/health/service` answer read back into a catalog (a client agent's view).
    let json = serde_json::json!([
        {"Node": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"rack": "r1"}},
         "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Address": "",
                     "Port": 8001, "Weights": {"Passing": 10, "Warning": 1}},
         "Checks": [{"Node": "n1", "CheckID": "serfHealth", "Status": "passing",
                     "ServiceID": ""}]},
        {"Node": {"Node": "n2", "Address": "10.0.0.2"},
         "Service": {"ID": "web-2", "Service": "web", "Port": 8002},
         "Checks": [{"Node": "n2", "CheckID": "c", "Status": "warning",
                     "ServiceID": "web-2"}]},
        {"Node": {"Node": "n3", "Address": "10.0.0.3"},
         "Service": {"ID": "web-3", "Service": "web", "Port": 8003},
         "Checks": [{"Node": "n3", "CheckID": "c", "Status": "critical",
                     "ServiceID": "web-3"}]},
        {"garbage": true}
    ]);
    let c = crate::directory::catalog_of_health(&json);
    let list = instances(&c, "web", None, false);
    let mut got: Vec<_> = list.iter().map(|i| (i.node.as_str(), i.weight)).collect();
    got.sort();
    assert_eq!(got, [("n1", 10), ("n2", 1)]);
    assert_eq!(instances(&c, "web", Some("V1"), true).len(), 1);
    assert_eq!(catalog_node(&c, "N1").unwrap().meta["rack"], "r1");
}

/// A client agent's view whose servers never answered: nothing is filled.
struct Unfilled;

impl Directory for Unfilled {
    fn node(&self, _name: &str) -> Option<Node> {
        None
    }

    fn servers(&self) -> Vec<Node> {
        vec![Node {
            name: "s1".into(),
            ip: "10.0.0.9".parse().unwrap(),
            server_port: Some(8300),
        }]
    }

    fn prepare<'a>(&'a self, _service: &'a str) -> crate::store::BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

#[tokio::test]
async fn an_unfilled_view_fails_service_lookups_but_consul_comes_from_gossip() {
    let z = zone_with(Arc::new(Unfilled), settings());
    let ask = |name: &str| {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    };
    let r = Message::from_vec(&z.serve(&ask("web.service.consul."), true).await.unwrap());
    assert_eq!(r.unwrap().metadata.response_code, ResponseCode::ServFail);
    let r = Message::from_vec(&z.serve(&ask("consul.service.consul."), true).await.unwrap());
    assert_eq!(ips(&r.unwrap()), ["10.0.0.9"]);
    // Without recursors a name outside the zone is refused on this path too.
    let r = Message::from_vec(&z.serve(&ask("example.com."), false).await.unwrap());
    assert_eq!(r.unwrap().metadata.response_code, ResponseCode::Refused);
}

#[test]
fn routes_pick_recursion_only_outside_the_zone_with_recursors() {
    let q = |name: &str, qtype| {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    };
    let z = zone_with(catalog(), settings());
    assert_eq!(z.route(&q("example.com.", RecordType::A)), Route::Local);
    let z = zone_with(
        catalog(),
        DnsConfig {
            recursors: vec!["127.0.0.1:53".parse().unwrap()],
            ..settings()
        },
    );
    assert_eq!(z.route(&q("example.com.", RecordType::A)), Route::Recurse);
    assert_eq!(
        z.route(&q("1.0.0.10.in-addr.arpa.", RecordType::PTR)),
        Route::Local,
        "reverse names are looked up first"
    );
    assert_eq!(
        z.route(&q("_web._tcp.consul.", RecordType::SRV)),
        Route::Service("web".into())
    );
    assert_eq!(z.route(&q("n1.node.consul.", RecordType::A)), Route::Local);
    // Answers say recursion is available when recursors are set.
    assert!(
        ask(&z, "n1.node.consul.", RecordType::A)
            .metadata
            .recursion_available
    );
}
