use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft_rt_tokio::TokioRuntime;
use proptest::prelude::*;

use super::anti_entropy::AntiEntropy;
use super::anti_entropy::CatalogPort;
use super::anti_entropy::LocalAgent;
use super::anti_entropy::SyncError;
use super::*;
use crate::catalog::Catalog;

const S: Duration = Duration::from_secs(1);

fn me() -> NodeInfo {
    NodeInfo {
        id: "40e4a748-2192-161a-0510-9bf59fe950b5".into(),
        name: "agent-1".into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        meta: [("rack".to_string(), "r1".to_string())].into(),
        ..NodeInfo::default()
    }
}

fn service(id: &str, name: &str, port: u16) -> ServiceInfo {
    ServiceInfo {
        id: id.into(),
        name: name.into(),
        port,
        ..ServiceInfo::default()
    }
}

fn check(id: &str, service_id: &str, status: Health) -> LocalCheck {
    LocalCheck::new(CheckInfo {
        check_id: id.into(),
        name: id.into(),
        service_id: service_id.into(),
        status,
        ..CheckInfo::default()
    })
}

fn ttl_check(id: &str, service_id: &str, ttl: Duration) -> LocalCheck {
    let mut c = check(id, service_id, Health::Critical);
    c.ttl = Some(ttl);
    c.info.kind = "ttl".into();
    c
}

/// The real catalog, in memory, as the port the syncer writes through.
#[derive(Default)]
struct MemCatalog {
    inner: Mutex<(Catalog, u64)>,
    /// When set, every write fails (the servers are unreachable).
    down: Mutex<bool>,
}

impl MemCatalog {
    fn with<T>(&self, f: impl FnOnce(&mut Catalog, &mut u64) -> T) -> T {
        let mut g = self.inner.lock().unwrap();
        let (c, i) = &mut *g;
        f(c, i)
    }

    fn slice(&self, name: &str) -> RemoteNode {
        self.with(|c, _| RemoteNode::of(c, name))
    }

    fn apply_op(&self, op: &CatalogOp) -> Result<(), SyncError> {
        self.with(|c, i| {
            *i += 1;
            let r = c.apply(*i, op).map(|_| ());
            c.check_invariants(*i).unwrap();
            r.map_err(|e| SyncError::Refused(e.to_string()))
        })
    }
}

impl CatalogPort for Arc<MemCatalog> {
    async fn node_slice(&self, name: &str) -> Result<RemoteNode, SyncError> {
        Ok(self.slice(name))
    }

    async fn apply(&self, op: CatalogOp) -> Result<(), SyncError> {
        if *self.down.lock().unwrap() {
            return Err(SyncError::Unavailable("down".into()));
        }
        self.apply_op(&op)
    }
}

/// Whether the catalog's slice of this node says what the local state says.
fn catalog_matches(local: &LocalState, remote: &RemoteNode) -> Result<(), String> {
    match local.differs_from(remote) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

fn agent() -> Arc<LocalAgent<TokioRuntime>> {
    Arc::new(LocalAgent::new(me()))
}

#[test]
fn pending_writes_register_the_node_then_services_with_their_checks() {
    let mut l = LocalState::new(me());
    l.add_service(service("web-1", "web", 80), None).unwrap();
    l.add_check(check("web-alive", "web-1", Health::Passing), S)
        .unwrap();
    l.add_check(check("disk", "", Health::Warning), S).unwrap();
    let p = l.pending(100);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(matches!(p[0].0, SyncKey::Node { .. }));
    let CatalogOp::Register(r) = &p[1].1 else {
        panic!("{:?}", p[1]);
    };
    assert_eq!(r.service.as_ref().unwrap().id, "web-1");
    assert_eq!(r.checks.len(), 1, "the service's check rides along");
    let CatalogOp::Register(r) = &p[2].1 else {
        panic!("{:?}", p[2]);
    };
    assert_eq!(r.checks[0].check_id, "disk");
    for (k, _) in &p {
        l.confirm(k);
    }
    assert!(l.in_sync());
    assert!(l.pending(100).is_empty());
}

#[test]
fn a_write_confirmed_for_an_older_revision_leaves_the_newer_out_of_sync() {
    let mut l = LocalState::new(me());
    l.add_service(service("web-1", "web", 80), None).unwrap();
    let p = l.pending(100);
    l.add_service(service("web-1", "web", 81), None).unwrap();
    for (k, _) in &p {
        l.confirm(k);
    }
    let again = l.pending(100);
    assert_eq!(again.len(), 1, "{again:?}");
    let CatalogOp::Register(r) = &again[0].1 else {
        panic!();
    };
    assert_eq!(r.service.as_ref().unwrap().port, 81);
}

#[test]
fn removing_a_service_removes_its_checks_and_deregisters_it() {
    let mut l = LocalState::new(me());
    l.add_service(service("web-1", "web", 80), None).unwrap();
    l.add_check(check("web-alive", "web-1", Health::Passing), S)
        .unwrap();
    for (k, _) in l.pending(100) {
        l.confirm(&k);
    }
    l.remove_service("web-1").unwrap();
    assert!(l.check("web-alive").is_none());
    let p = l.pending(100);
    assert!(p.iter().any(|(_, op)| matches!(op,
        CatalogOp::Deregister { service_id: Some(s), .. } if s == "web-1")));
    for (k, _) in &p {
        l.confirm(k);
    }
    assert!(l.in_sync() && l.pending(100).is_empty());
    assert_eq!(
        l.remove_service("web-1"),
        Err(LocalError::UnknownService("web-1".into()))
    );
}

#[test]
fn consuls_request_rules_and_texts() {
    let mut l = LocalState::new(me());
    assert_eq!(
        l.add_service(service("", "", 1), None)
            .unwrap_err()
            .to_string(),
        "Missing service name"
    );
    assert_eq!(
        l.add_check(check("c", "nope", Health::Passing), S)
            .unwrap_err()
            .to_string(),
        "ServiceID \"nope\" does not exist"
    );
    l.add_check(check("plain", "", Health::Passing), S).unwrap();
    assert_eq!(
        l.update_ttl("plain", Health::Passing, String::new(), S)
            .unwrap_err()
            .to_string(),
        "CheckID \"plain\" does not have associated TTL"
    );
    // The id defaults to the name, the node to this agent's.
    l.add_service(service("", "db", 5432), None).unwrap();
    assert_eq!(l.service("db").unwrap().id, "db");
    assert_eq!(l.check("plain").unwrap().info.node, "agent-1");
}

#[test]
fn a_ttl_check_expires_critical_and_an_update_rearms_it() {
    let mut l = LocalState::new(me());
    l.add_service(service("web-1", "web", 80), None).unwrap();
    l.add_check(ttl_check("web-ttl", "web-1", 10 * S), S)
        .unwrap();
    assert!(l
        .update_ttl("web-ttl", Health::Passing, "ok".into(), 2 * S)
        .unwrap());
    assert_eq!(l.next_ttl_deadline(), Some(12 * S));
    assert!(l.expire_ttls(11 * S).is_empty());
    assert_eq!(l.expire_ttls(12 * S), vec!["web-ttl".to_string()]);
    let c = l.check("web-ttl").unwrap();
    assert_eq!(c.info.status, Health::Critical);
    assert_eq!(
        c.info.output,
        "TTL expired (last output before timeout follows): ok"
    );
    assert!(l.expire_ttls(100 * S).is_empty(), "expires once");
    l.update_ttl("web-ttl", Health::Passing, String::new(), 100 * S)
        .unwrap();
    assert_eq!(l.check("web-ttl").unwrap().info.status, Health::Passing);
    assert_eq!(l.next_ttl_deadline(), Some(110 * S));
}

#[test]
fn output_alone_waits_for_a_full_sync_but_a_new_status_does_not() {
    let mut l = LocalState::new(me());
    l.add_check(check("disk", "", Health::Passing), S).unwrap();
    for (k, _) in l.pending(100) {
        l.confirm(&k);
    }
    let v = l.version();
    assert!(l
        .update_check("disk", Health::Passing, "used 10%".into(), S)
        .unwrap());
    assert!(l.version() > v, "readers of the agent see the output");
    assert!(l.pending(100).is_empty(), "output alone is deferred");
    l.update_check("disk", Health::Critical, "used 99%".into(), S)
        .unwrap();
    assert_eq!(l.pending(100).len(), 1);
    let long = "x".repeat(OUTPUT_MAX + 10);
    l.update_check("disk", Health::Critical, long, S).unwrap();
    assert_eq!(l.check("disk").unwrap().info.output.len(), OUTPUT_MAX);
}

#[test]
fn maintenance_is_a_critical_check_that_comes_and_goes() {
    let mut l = LocalState::new(me());
    l.add_service(service("web-1", "web", 80), None).unwrap();
    l.service_maintenance("web-1", true, "", S).unwrap();
    assert!(l.in_maintenance("web-1"));
    let c = l.check("_service_maintenance:web-1").unwrap();
    assert_eq!(c.info.status, Health::Critical);
    assert!(c
        .info
        .notes
        .starts_with("Maintenance mode is enabled for this service"));
    l.service_maintenance("web-1", false, "", S).unwrap();
    assert!(!l.in_maintenance("web-1"));
    l.node_maintenance(true, "patching", S);
    assert_eq!(l.check(NODE_MAINT_ID).unwrap().info.notes, "patching");
    assert!(l.service_maintenance("nope", true, "", S).is_err());
}

#[test]
fn a_service_critical_too_long_is_named_for_removal() {
    let mut l = LocalState::new(me());
    l.add_service(service("web-1", "web", 80), None).unwrap();
    let mut c = ttl_check("web-ttl", "web-1", 5 * S);
    c.deregister_after = Some(60 * S);
    l.add_check(c, S).unwrap();
    l.update_ttl("web-ttl", Health::Passing, String::new(), S)
        .unwrap();
    l.expire_ttls(6 * S);
    assert!(l.critical_too_long(65 * S).is_empty());
    assert_eq!(l.critical_too_long(66 * S), vec!["web-1".to_string()]);
}

#[tokio::test]
async fn a_full_sync_restores_what_the_catalog_lost_and_removes_what_it_should_not_have() {
    let cat = Arc::new(MemCatalog::default());
    let a = agent();
    a.change(|l| {
        l.add_service(service("web-1", "web", 80), None).unwrap();
        l.add_check(check("web-alive", "web-1", Health::Passing), S)
            .unwrap();
    });
    let ae = AntiEntropy::new(a.clone(), cat.clone(), 7);
    ae.sync_full().await.unwrap();
    a.read(|l| catalog_matches(l, &cat.slice("agent-1")))
        .unwrap();

    // The catalog loses the service, gains one this agent never had, and the servers'
    // own entries (serfHealth, the consul service) are there too.
    let node = me();
    cat.apply_op(&CatalogOp::Deregister {
        node: "agent-1".into(),
        service_id: Some("web-1".into()),
        check_id: None,
    })
    .unwrap();
    let stray = Registration {
        node: node.clone(),
        skip_node_update: true,
        service: Some(service("stray", "stray", 1)),
        checks: vec![CheckInfo {
            check_id: SERF_CHECK_ID.into(),
            name: "Serf Health Status".into(),
            status: Health::Passing,
            ..CheckInfo::default()
        }],
    };
    cat.apply_op(&CatalogOp::Register(Box::new(stray))).unwrap();
    let consul = Registration {
        node,
        skip_node_update: true,
        service: Some(service("consul", "consul", 8300)),
        checks: Vec::new(),
    };
    cat.apply_op(&CatalogOp::Register(Box::new(consul)))
        .unwrap();

    ae.sync_full().await.unwrap();
    let slice = cat.slice("agent-1");
    assert!(slice.services.iter().any(|s| s.id == "web-1"));
    assert!(!slice.services.iter().any(|s| s.id == "stray"));
    assert!(slice.services.iter().any(|s| s.id == "consul"));
    assert!(slice.checks.iter().any(|c| c.check_id == SERF_CHECK_ID));
    assert!(a.read(LocalState::in_sync));
}

#[tokio::test]
async fn a_failed_sync_is_left_pending_and_finishes_later() {
    let cat = Arc::new(MemCatalog::default());
    let a = agent();
    let ae = AntiEntropy::new(a.clone(), cat.clone(), 7);
    *cat.down.lock().unwrap() = true;
    a.change(|l| l.add_service(service("web-1", "web", 80), None))
        .unwrap();
    assert!(ae.sync_changes().await.is_err());
    assert!(!a.read(LocalState::in_sync));
    *cat.down.lock().unwrap() = false;
    ae.sync_changes().await.unwrap();
    a.read(|l| catalog_matches(l, &cat.slice("agent-1")))
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_loop_pushes_each_change_without_waiting_for_a_full_sync() {
    let cat = Arc::new(MemCatalog::default());
    let a = agent();
    let ae = Arc::new(AntiEntropy::new(a.clone(), cat.clone(), 7));
    let run = tokio::spawn({
        let ae = ae.clone();
        async move { ae.run().await }
    });
    tokio::time::sleep(S).await;
    a.change(|l| l.add_service(service("web-1", "web", 80), None))
        .unwrap();
    tokio::time::sleep(S).await;
    a.read(|l| catalog_matches(l, &cat.slice("agent-1")))
        .unwrap();
    // A catalog that lost the service gets it back at the next full sync, within the
    // interval and its stagger.
    cat.apply_op(&CatalogOp::Deregister {
        node: "agent-1".into(),
        service_id: None,
        check_id: None,
    })
    .unwrap();
    tokio::time::sleep(2 * anti_entropy::FULL_SYNC_INTERVAL + S).await;
    a.read(|l| catalog_matches(l, &cat.slice("agent-1")))
        .unwrap();
    assert!(ae.stats.lock().unwrap().full_syncs >= 2);
    run.abort();
}

#[test]
fn the_full_sync_interval_scales_as_consuls() {
    use anti_entropy::scale_factor;
    assert_eq!(scale_factor(1), 1);
    assert_eq!(scale_factor(128), 1);
    assert_eq!(scale_factor(129), 2);
    assert_eq!(scale_factor(256), 2);
    assert_eq!(scale_factor(257), 3);
    assert_eq!(scale_factor(4096), 6);
}

/// A local change, or something else changing the catalog behind the agent's back.
#[derive(Debug, Clone)]
enum Step {
    AddService(u8, u16),
    RemoveService(u8),
    AddCheck(u8, Option<u8>, u8),
    RemoveCheck(u8),
    Update(u8, u8),
    CatalogDrops(u8),
    CatalogGains(u8),
    Sync,
}

fn health(n: u8) -> Health {
    [Health::Passing, Health::Warning, Health::Critical][usize::from(n % 3)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..6u8, 1..4u16).prop_map(|(i, p)| Step::AddService(i, p)),
        (0..6u8).prop_map(Step::RemoveService),
        (0..6u8, proptest::option::of(0..6u8), 0..3u8)
            .prop_map(|(i, s, h)| Step::AddCheck(i, s, h)),
        (0..6u8).prop_map(Step::RemoveCheck),
        (0..6u8, 0..3u8).prop_map(|(i, h)| Step::Update(i, h)),
        (0..6u8).prop_map(Step::CatalogDrops),
        (0..6u8).prop_map(Step::CatalogGains),
        Just(Step::Sync),
    ]
}

proptest! {
    /// Whatever the agent does and whatever the catalog loses or gains behind its back,
    /// one full sync leaves the catalog's slice of the node equal to the local state.
    #[test]
    fn one_full_sync_converges(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let cat = Arc::new(MemCatalog::default());
        let a = agent();
        let ae = AntiEntropy::new(a.clone(), cat.clone(), 1);
        for s in steps {
            match s {
                Step::AddService(i, p) => {
                    let _ = a.change(|l| l.add_service(service(&format!("s{i}"), "svc", p), None));
                }
                Step::RemoveService(i) => {
                    let _ = a.change(|l| l.remove_service(&format!("s{i}")));
                }
                Step::AddCheck(i, sid, h) => {
                    let sid = sid.map(|s| format!("s{s}")).unwrap_or_default();
                    let _ = a.change(|l| l.add_check(check(&format!("c{i}"), &sid, health(h)), S));
                }
                Step::RemoveCheck(i) => {
                    let _ = a.change(|l| l.remove_check(&format!("c{i}")));
                }
                Step::Update(i, h) => {
                    let id = format!("c{i}");
                    let _ = a.change(|l| l.update_check(&id, health(h), "o".into(), S));
                }
                Step::CatalogDrops(i) => {
                    let _ = cat.apply_op(&CatalogOp::Deregister {
                        node: "agent-1".into(),
                        service_id: Some(format!("s{i}")),
                        check_id: None,
                    });
                }
                Step::CatalogGains(i) => {
                    let r = Registration {
                        node: me(),
                        skip_node_update: true,
                        service: Some(service(&format!("s{i}"), "other", 9)),
                        checks: Vec::new(),
                    };
                    let _ = cat.apply_op(&CatalogOp::Register(Box::new(r)));
                }
                // A partial sync may fail: it does not know what the catalog lost (a
                // check whose service is gone is refused). The full sync repairs that.
                Step::Sync => {
                    let _ = rt.block_on(ae.sync_changes());
                }
            }
        }
        rt.block_on(ae.sync_full()).unwrap();
        let slice = cat.slice("agent-1");
        prop_assert_eq!(a.read(|l| catalog_matches(l, &slice)), Ok(()));
        prop_assert!(a.read(LocalState::in_sync));
    }
}

// ---------------------------------------------------------------------------------------
// Alias checks.

fn alias_check(id: &str, service_id: &str, node: &str, aliased: &str) -> LocalCheck {
    let mut c = check(id, service_id, Health::Critical);
    c.alias = Some(Alias {
        node: node.into(),
        service: aliased.into(),
    });
    c.info.kind = "alias".into();
    c
}

fn status_of(l: &LocalState, id: &str) -> (Health, String) {
    let c = l.check(id).unwrap();
    (c.info.status, c.info.output.clone())
}

fn info(id: &str, node: &str, service_id: &str, status: Health, output: &str) -> CheckInfo {
    CheckInfo {
        node: node.into(),
        check_id: id.into(),
        name: id.into(),
        status,
        output: output.into(),
        service_id: service_id.into(),
        ..CheckInfo::default()
    }
}

#[test]
fn an_alias_aggregates_as_consul_does_with_its_texts() {
    use super::alias::aggregate;
    let web = Alias {
        node: "n2".into(),
        service: "web".into(),
    };
    let resolve =
        |checks: &[CheckInfo], exists: bool| aggregate(&web, checks.iter()).resolve(&web, exists);
    let passing = Health::Passing;
    // Nothing to read, the service there: passing, with no check.
    assert_eq!(
        resolve(&[], true),
        (passing, "No checks found.".to_string())
    );
    // Nothing of it, and it is not there either.
    assert_eq!(
        resolve(&[], false),
        (
            Health::Critical,
            "Service web could not be found on node n2".to_string()
        )
    );
    let ok = info("ok", "n2", "web", passing, "fine");
    let node_ok = info("serfHealth", "n2", "", passing, "");
    assert_eq!(
        resolve(&[node_ok.clone(), ok.clone()], false),
        (passing, "All checks passing.".to_string()),
        "a check of the service is found: its presence is not asked"
    );
    // Another node's and another service's checks do not count.
    let elsewhere = [
        info("x", "n3", "web", Health::Critical, "x"),
        info("y", "n2", "db", Health::Critical, "y"),
    ];
    assert_eq!(resolve(&elsewhere, true).0, passing);
    assert_eq!(resolve(&elsewhere, false).0, Health::Critical);
    // A node check counts: the node is down, so is what runs on it.
    let node_down = info("serfHealth", "N2", "", Health::Critical, "Agent not live");
    assert_eq!(
        resolve(&[ok.clone(), node_down], true),
        (
            Health::Critical,
            "Aliased check \"serfHealth\" failing: Agent not live".to_string()
        )
    );
    // The first critical check decides; else the last warning one; a passing check after a
    // warning does not hide it.
    let w1 = info("w1", "n2", "web", Health::Warning, "slow");
    let w2 = info("w2", "n2", "web", Health::Warning, "slower");
    let c1 = info("c1", "n2", "web", Health::Critical, "down");
    let c2 = info("c2", "n2", "web", Health::Critical, "gone");
    assert_eq!(
        resolve(&[w1.clone(), w2.clone(), ok.clone()], true),
        (
            Health::Warning,
            "Aliased check \"w2\" failing: slower".to_string()
        )
    );
    assert_eq!(
        resolve(&[w1, c1, c2, w2], true),
        (
            Health::Critical,
            "Aliased check \"c1\" failing: down".to_string()
        )
    );
    // A check name is quoted as Go quotes it.
    let odd = info("say \"hi\"\t", "n2", "web", Health::Warning, "");
    assert_eq!(
        resolve(&[odd], true).1,
        "Aliased check \"say \\\"hi\\\"\\t\" failing: "
    );
    // An alias of a node alone reads the node's checks only, and names no service.
    let node_only = Alias {
        node: "n2".into(),
        service: String::new(),
    };
    let svc_down = info("c", "n2", "web", Health::Critical, "");
    let agg = aggregate(&node_only, [&svc_down, &node_ok]);
    assert!(agg.service_found);
    assert_eq!(agg.resolve(&node_only, false).0, passing);
    assert_eq!(
        aggregate(&node_only, [&svc_down]).resolve(&node_only, false),
        (
            Health::Critical,
            "Service  could not be found on node n2".to_string()
        )
    );
}

#[test]
fn which_aliases_follow_the_local_state() {
    let a = |node: &str, service: &str| Alias {
        node: node.into(),
        service: service.into(),
    };
    assert!(a("", "web").follows_local("agent-1"));
    assert!(a("AGENT-1", "web").follows_local("agent-1"));
    assert!(
        !a("agent-1", "").follows_local("agent-1"),
        "serfHealth is in the catalog"
    );
    assert!(!a("agent-2", "web").follows_local("agent-1"));
}

#[test]
fn a_local_alias_follows_its_service_through_every_change() {
    let mut l = LocalState::new(me());
    l.add_service(service("web", "web", 80), None).unwrap();
    l.add_check(ttl_check("web-ttl", "web", 10 * S), S).unwrap();
    l.add_service(service("proxy", "proxy", 21000), None)
        .unwrap();
    l.add_check(alias_check("proxy-alias", "proxy", "", "web"), S)
        .unwrap();
    // It starts as what it mirrors: a TTL check not yet updated is critical.
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (
            Health::Critical,
            "Aliased check \"web-ttl\" failing: ".to_string()
        )
    );
    l.update_ttl("web-ttl", Health::Passing, "up".into(), 2 * S)
        .unwrap();
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (Health::Passing, "All checks passing.".to_string())
    );
    l.update_ttl("web-ttl", Health::Warning, "slow".into(), 3 * S)
        .unwrap();
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (
            Health::Warning,
            "Aliased check \"web-ttl\" failing: slow".to_string()
        )
    );
    // A TTL running out is a change too.
    l.expire_ttls(13 * S);
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (
            Health::Critical,
            "Aliased check \"web-ttl\" failing: TTL expired (last output before timeout \
             follows): slow"
                .to_string()
        )
    );
    assert_eq!(l.check("proxy-alias").unwrap().critical_since, Some(13 * S));
    // A node check counts; maintenance of the service too.
    l.update_ttl("web-ttl", Health::Passing, String::new(), 14 * S)
        .unwrap();
    l.add_check(check("disk", "", Health::Warning), 14 * S)
        .unwrap();
    assert_eq!(status_of(&l, "proxy-alias").0, Health::Warning);
    l.remove_check("disk").unwrap();
    assert_eq!(status_of(&l, "proxy-alias").0, Health::Passing);
    l.service_maintenance("web", true, "", 15 * S).unwrap();
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (
            Health::Critical,
            "Aliased check \"Service Maintenance Mode\" failing: ".to_string()
        )
    );
    l.service_maintenance("web", false, "", 16 * S).unwrap();
    assert_eq!(status_of(&l, "proxy-alias").0, Health::Passing);
    // Its checks gone, the service is still there; then the service goes.
    l.remove_check("web-ttl").unwrap();
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (Health::Passing, "No checks found.".to_string())
    );
    l.remove_service("web").unwrap();
    assert_eq!(
        status_of(&l, "proxy-alias"),
        (
            Health::Critical,
            "Service web could not be found on node ".to_string()
        )
    );
    l.add_service(service("web", "web", 80), None).unwrap();
    assert_eq!(status_of(&l, "proxy-alias").0, Health::Passing);
}

#[test]
fn alias_changes_are_pushed_and_an_unchanged_alias_costs_nothing() {
    let mut l = LocalState::new(me());
    l.add_service(service("web", "web", 80), None).unwrap();
    l.add_check(ttl_check("web-ttl", "web", 10 * S), S).unwrap();
    l.add_service(service("proxy", "proxy", 1), None).unwrap();
    l.add_check(alias_check("proxy-alias", "proxy", "agent-1", "web"), S)
        .unwrap();
    for (k, _) in l.pending(100) {
        l.confirm(&k);
    }
    assert!(l.in_sync());
    // The same definition again (as a reload registers it) is no change.
    l.add_check(alias_check("proxy-alias", "proxy", "agent-1", "web"), S)
        .unwrap();
    assert!(l.in_sync());
    // A change of what it mirrors is pushed for both checks.
    l.update_ttl("web-ttl", Health::Passing, String::new(), 2 * S)
        .unwrap();
    let pushed: Vec<String> = l
        .pending(100)
        .into_iter()
        .flat_map(|(_, op)| match op {
            CatalogOp::Register(r) => r.checks.into_iter().map(|c| c.check_id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(
        pushed.contains(&"web-ttl".to_string()) && pushed.contains(&"proxy-alias".to_string()),
        "{pushed:?}"
    );
}

#[test]
fn aliases_of_aliases_settle_and_none_reads_itself() {
    let mut l = LocalState::new(me());
    l.add_service(service("web", "web", 80), None).unwrap();
    l.add_check(ttl_check("web-ttl", "web", 10 * S), S).unwrap();
    l.add_service(service("proxy", "proxy", 1), None).unwrap();
    l.add_service(service("edge", "edge", 2), None).unwrap();
    // `a-edge` sorts before `b-proxy`: it is read first and must see the update after.
    l.add_check(alias_check("a-edge", "edge", "", "proxy"), S)
        .unwrap();
    l.add_check(alias_check("b-proxy", "proxy", "", "web"), S)
        .unwrap();
    // A node check aliasing web: a node check itself, it must not hold itself critical.
    l.add_check(alias_check("node-alias", "", "", "web"), S)
        .unwrap();
    l.update_ttl("web-ttl", Health::Passing, String::new(), 2 * S)
        .unwrap();
    for id in ["a-edge", "b-proxy", "node-alias"] {
        assert_eq!(status_of(&l, id).0, Health::Passing, "{id}");
    }
    l.update_ttl("web-ttl", Health::Critical, "boom".into(), 3 * S)
        .unwrap();
    assert_eq!(status_of(&l, "b-proxy").0, Health::Critical);
    // edge's alias reads proxy's check and the node's (the node alias, critical too).
    assert_eq!(status_of(&l, "a-edge").0, Health::Critical);
    l.update_ttl("web-ttl", Health::Passing, String::new(), 4 * S)
        .unwrap();
    for id in ["a-edge", "b-proxy", "node-alias"] {
        assert_eq!(status_of(&l, id).0, Health::Passing, "{id}");
    }
}

#[test]
fn alias_cycles_and_remote_aliases_stay_bounded() {
    let mut l = LocalState::new(me());
    l.add_service(service("a", "a", 1), None).unwrap();
    l.add_service(service("b", "b", 2), None).unwrap();
    l.add_check(alias_check("a-alias", "a", "", "b"), S)
        .unwrap();
    l.add_check(alias_check("b-alias", "b", "", "a"), S)
        .unwrap();
    // Each change runs a bounded number of rounds; outputs stay bounded.
    for i in 0..20 {
        l.add_check(check("n", "", health(i)), S).unwrap();
    }
    assert!(l.check("a-alias").unwrap().info.output.len() <= OUTPUT_MAX);
    // An alias of another node is the caller's to update: local changes leave it alone.
    l.add_check(alias_check("remote", "", "n2", "web"), S)
        .unwrap();
    assert_eq!(status_of(&l, "remote"), (Health::Critical, String::new()));
    l.add_check(check("n", "", Health::Passing), S).unwrap();
    assert_eq!(status_of(&l, "remote"), (Health::Critical, String::new()));
    l.update_check("remote", Health::Passing, "All checks passing.".into(), S)
        .unwrap();
    assert_eq!(status_of(&l, "remote").0, Health::Passing);
}

/// A change to a small agent whose alias checks alias only services of lower number, so
/// that they form no cycle (and chains are at most three deep).
#[derive(Debug, Clone)]
enum AliasStep {
    AddService(u8),
    RemoveService(u8),
    AddTtl(u8, u8),
    RemoveCheck(u8),
    Update(u8, u8),
    AddAlias(u8, u8),
    Expire(u8),
}

fn alias_step() -> impl Strategy<Value = AliasStep> {
    prop_oneof![
        (0..4u8).prop_map(AliasStep::AddService),
        (0..4u8).prop_map(AliasStep::RemoveService),
        (0..4u8, 0..5u8).prop_map(|(c, s)| AliasStep::AddTtl(c, s)),
        (0..4u8).prop_map(AliasStep::RemoveCheck),
        (0..4u8, 0..3u8).prop_map(|(c, h)| AliasStep::Update(c, h)),
        (1..4u8, 0..3u8).prop_map(|(on, of)| AliasStep::AddAlias(on, of)),
        (0..30u8).prop_map(AliasStep::Expire),
    ]
}

proptest! {
    /// After any change, every local alias says what its service's and its node's checks
    /// (without itself) say.
    #[test]
    fn local_aliases_are_always_up_to_date(
        steps in proptest::collection::vec(alias_step(), 1..40)
    ) {
        use super::alias::aggregate;
        let mut l = LocalState::new(me());
        let mut now = S;
        for s in steps {
            now += S;
            let svc = |i: u8| format!("s{i}");
            let _ = match s {
                AliasStep::AddService(i) => l.add_service(service(&svc(i), "svc", 1), None),
                AliasStep::RemoveService(i) => l.remove_service(&svc(i)),
                AliasStep::AddTtl(c, s) => {
                    let on = if s == 4 { String::new() } else { svc(s) };
                    l.add_check(ttl_check(&format!("t{c}"), &on, 5 * S), now)
                }
                AliasStep::RemoveCheck(c) => l.remove_check(&format!("t{c}")),
                AliasStep::Update(c, h) => {
                    l.update_ttl(&format!("t{c}"), health(h), format!("o{h}"), now).map(|_| ())
                }
                AliasStep::AddAlias(on, of) => {
                    let of = of.min(on - 1);
                    l.add_check(alias_check(&format!("alias{on}"), &svc(on), "", &svc(of)), now)
                }
                AliasStep::Expire(secs) => {
                    l.expire_ttls(now + Duration::from_secs(u64::from(secs)));
                    Ok(())
                }
            };
            for c in l.checks() {
                let Some(alias) = &c.alias else { continue };
                let others = l.checks().filter(|o| o.info.check_id != c.info.check_id);
                let want = aggregate(alias, others.map(|o| &o.info))
                    .resolve(alias, l.service(&alias.service).is_some());
                prop_assert_eq!(
                    (c.info.status, c.info.output.clone()),
                    want,
                    "{}", c.info.check_id
                );
            }
        }
    }
}
