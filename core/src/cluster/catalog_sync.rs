//! The leader's reconcile of the LAN pool into the catalog, as Consul's leader does it:
//! every alive member's node is registered with a passing `serfHealth` check (and, for a
//! server, the `consul` service on its RPC port); a failed member's check goes critical;
//! a member that left, or that the pool has forgotten (reaped), is deregistered.
//!
//! [`catalog_ops`] is the decision, a pure function of the members and the catalog; the
//! leader applies at most [`CATALOG_OPS_PER_ROUND`] of its writes per round, so a large
//! pool converges over several rounds instead of flooding Raft.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use super::membership::is_server_of;
use crate::catalog::is_uuid;
use crate::catalog::Catalog;
use crate::catalog::CatalogOp;
use crate::catalog::CheckInfo;
use crate::catalog::Health;
use crate::catalog::NodeInfo;
use crate::catalog::Registration;
use crate::catalog::ServiceInfo;
use crate::catalog::SERF_CHECK_ID;
use crate::gossip::MemberInfo;
use crate::gossip::MemberState;

/// The most catalog writes one reconcile round makes.
pub const CATALOG_OPS_PER_ROUND: usize = 128;

/// Consul's name and outputs of the `serfHealth` check.
pub const SERF_CHECK_NAME: &str = "Serf Health Status";
pub const SERF_ALIVE_OUTPUT: &str = "Agent alive and reachable";
pub const SERF_FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// The service every server registers (Consul's `consul` service, on the RPC port).
pub const CONSUL_SERVICE: &str = "consul";

/// The `consul` service of a server member of `dc`, from its gossip tags.
fn consul_service(m: &MemberInfo, dc: &str) -> Option<ServiceInfo> {
    if !is_server_of(m, dc) {
        return None;
    }
    let port = m
        .tags
        .get("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(8300);
    let mut meta = BTreeMap::new();
    let tag = |k: &str| m.tags.get(k).cloned().unwrap_or_default();
    meta.insert("raft_version".to_string(), tag("raft_vsn"));
    meta.insert("serf_protocol_current".to_string(), tag("vsn"));
    meta.insert("serf_protocol_min".to_string(), tag("vsn_min"));
    meta.insert("serf_protocol_max".to_string(), tag("vsn_max"));
    meta.insert("version".to_string(), tag("build"));
    meta.insert("non_voter".to_string(), "false".to_string());
    meta.insert("read_replica".to_string(), "false".to_string());
    Some(ServiceInfo {
        id: CONSUL_SERVICE.to_string(),
        name: CONSUL_SERVICE.to_string(),
        port,
        meta,
        ..ServiceInfo::default()
    })
}

fn serf_check(m: &MemberInfo, status: Health) -> CheckInfo {
    let output = match status {
        Health::Passing => SERF_ALIVE_OUTPUT,
        _ => SERF_FAILED_OUTPUT,
    };
    CheckInfo {
        node: m.name.clone(),
        check_id: SERF_CHECK_ID.to_string(),
        name: SERF_CHECK_NAME.to_string(),
        status,
        output: output.to_string(),
        kind: String::new(),
        ..CheckInfo::default()
    }
}

/// Whether the catalog already holds what member `m` in `status` calls for.
fn in_step(
    c: &Catalog,
    m: &MemberInfo,
    status: Health,
    service: Option<&ServiceInfo>,
    sabotage_stale: bool,
) -> bool {
    let Some(node) = c.node(&m.name) else {
        return false;
    };
    if sabotage_stale && status == Health::Passing {
        // Wrong on purpose: a registered node is never marked alive again.
        return true;
    }
    if node.info.address != m.addr.ip().to_string() {
        return false;
    }
    let serf_ok = c
        .node_checks(&m.name)
        .any(|ch| ch.info.check_id == SERF_CHECK_ID && ch.info.status == status);
    let service_ok = match service {
        None => true,
        Some(want) => c
            .node_services(&m.name)
            .any(|s| s.info.id == want.id && s.info == *want),
    };
    serf_ok && service_ok
}

/// The catalog writes that bring `catalog` in step with the LAN `members` of datacenter
/// `dc`, in member order.
pub fn catalog_ops(members: &[MemberInfo], catalog: &Catalog, dc: &str) -> Vec<CatalogOp> {
    ops_for(members, catalog, dc, false)
}

/// [`catalog_ops`], with the `stale_serf_health` sabotage when `sabotage_stale`.
pub(crate) fn ops_for(
    members: &[MemberInfo],
    catalog: &Catalog,
    dc: &str,
    sabotage_stale: bool,
) -> Vec<CatalogOp> {
    let mut ops = Vec::new();
    let mut known = BTreeSet::new();
    for m in members {
        if m.tags.get("dc").is_some_and(|d| d != dc) {
            continue;
        }
        known.insert(m.name.to_ascii_lowercase());
        let status = match m.state {
            MemberState::Alive | MemberState::Suspect => Health::Passing,
            MemberState::Failed => Health::Critical,
            MemberState::Left | MemberState::Leaving => {
                if catalog.node(&m.name).is_some() {
                    ops.push(CatalogOp::Deregister {
                        node: m.name.clone(),
                        service_id: None,
                        check_id: None,
                    });
                }
                continue;
            }
        };
        // A failed member keeps its services as they were; only its check changes.
        let service = (status == Health::Passing)
            .then(|| consul_service(m, dc))
            .flatten();
        if in_step(catalog, m, status, service.as_ref(), sabotage_stale) {
            continue;
        }
        let id = m.tags.get("id").filter(|id| is_uuid(id)).cloned();
        ops.push(CatalogOp::Register(Box::new(Registration {
            node: NodeInfo {
                id: id.unwrap_or_default(),
                name: m.name.clone(),
                address: m.addr.ip().to_string(),
                datacenter: dc.to_string(),
                ..NodeInfo::default()
            },
            // What the node's own agent registered about it stays.
            skip_node_update: catalog
                .node(&m.name)
                .is_some_and(|n| n.info.address == m.addr.ip().to_string()),
            service,
            checks: vec![serf_check(m, status)],
        })));
    }
    // Nodes the pool has forgotten (reaped) that the reconcile once registered.
    for n in catalog.nodes() {
        let name = &n.info.name;
        let has_serf = catalog
            .node_checks(name)
            .any(|c| c.info.check_id == SERF_CHECK_ID);
        if has_serf && !known.contains(&name.to_ascii_lowercase()) {
            ops.push(CatalogOp::Deregister {
                node: name.clone(),
                service_id: None,
                check_id: None,
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn member(name: &str, ip: &str, state: MemberState, server: bool) -> MemberInfo {
        let mut tags = crate::gossip::Tags::new();
        tags.insert("dc".into(), "dc1".into());
        let n: u64 = name.bytes().map(u64::from).sum();
        tags.insert("id".into(), format!("11111111-2222-3333-4444-{n:012x}"));
        if server {
            tags.insert("role".into(), "consul".into());
            tags.insert("port".into(), "8300".into());
        } else {
            tags.insert("role".into(), "node".into());
        }
        MemberInfo {
            name: name.into(),
            addr: format!("{ip}:8301").parse::<SocketAddr>().unwrap(),
            state,
            status: 1,
            tags,
            incarnation: 1,
        }
    }

    /// Run one reconcile round of `members` against `c`.
    fn sync(c: &mut Catalog, index: &mut u64, members: &[MemberInfo]) {
        for op in catalog_ops(members, c, "dc1") {
            *index += 1;
            c.apply(*index, &op).unwrap();
        }
    }

    #[test]
    fn alive_members_are_registered_once_with_serf_health_and_servers_with_consul() {
        let mut c = Catalog::default();
        let members = vec![
            member("s1", "10.0.0.1", MemberState::Alive, true),
            member("c1", "10.0.0.9", MemberState::Suspect, false),
        ];
        assert_eq!(catalog_ops(&members, &c, "dc1").len(), 2);
        let mut index = 0;
        sync(&mut c, &mut index, &members);
        assert!(
            catalog_ops(&members, &c, "dc1").is_empty(),
            "in step: nothing to do"
        );
        let consul: Vec<_> = c.instances("consul").collect();
        assert_eq!(consul.len(), 1);
        assert_eq!(consul[0].node, "s1");
        assert_eq!(consul[0].info.port, 8300);
        let serf = c.node_checks("c1").next().unwrap();
        assert_eq!(serf.info.check_id, "serfHealth");
        assert_eq!(serf.info.status, Health::Passing);
        assert_eq!(serf.info.output, SERF_ALIVE_OUTPUT);
        assert!(!c.node("s1").unwrap().info.id.is_empty());
    }

    #[test]
    fn a_failed_member_goes_critical_and_one_that_left_or_was_reaped_is_deregistered() {
        let mut c = Catalog::default();
        let mut members = vec![
            member("s1", "10.0.0.1", MemberState::Alive, true),
            member("c1", "10.0.0.9", MemberState::Alive, false),
            member("c2", "10.0.0.8", MemberState::Alive, false),
        ];
        let mut index = 0;
        sync(&mut c, &mut index, &members);
        members[1].state = MemberState::Failed;
        members[2].state = MemberState::Left;
        sync(&mut c, &mut index, &members);
        let serf = c.node_checks("c1").next().unwrap();
        assert_eq!(serf.info.status, Health::Critical);
        assert_eq!(serf.info.output, SERF_FAILED_OUTPUT);
        assert!(c.node("c2").is_none(), "left: deregistered");
        members.truncate(1);
        sync(&mut c, &mut index, &members);
        assert!(c.node("c1").is_none(), "reaped: deregistered");
        assert!(c.node("s1").is_some());
    }

    #[test]
    fn what_an_agent_registered_about_its_node_stays_and_other_datacenters_are_skipped() {
        let mut c = Catalog::default();
        let mut index = 1;
        let own = Registration {
            node: NodeInfo {
                name: "c1".into(),
                address: "10.0.0.9".into(),
                meta: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
                ..NodeInfo::default()
            },
            ..Registration::default()
        };
        c.apply(index, &CatalogOp::Register(Box::new(own))).unwrap();
        let mut other = member("x1", "10.1.0.1", MemberState::Alive, false);
        other.tags.insert("dc".into(), "dc2".into());
        let members = vec![member("c1", "10.0.0.9", MemberState::Alive, false), other];
        sync(&mut c, &mut index, &members);
        assert_eq!(c.node("c1").unwrap().info.meta["rack"], "r1");
        assert!(c.node("x1").is_none());
        // A node registered by hand, without serfHealth, is not the reconcile's to remove.
        let external = Registration {
            node: NodeInfo {
                name: "ext".into(),
                address: "192.0.2.1".into(),
                ..NodeInfo::default()
            },
            ..Registration::default()
        };
        index += 1;
        c.apply(index, &CatalogOp::Register(Box::new(external)))
            .unwrap();
        assert!(catalog_ops(&members, &c, "dc1").is_empty());
    }
}
