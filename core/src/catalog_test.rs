use super::*;

fn node(name: &str, address: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        address: address.into(),
        datacenter: "dc1".into(),
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

fn check(id: &str, service_id: &str, status: Health) -> CheckInfo {
    CheckInfo {
        check_id: id.into(),
        name: id.into(),
        service_id: service_id.into(),
        status,
        ..CheckInfo::default()
    }
}

fn register(
    c: &mut Catalog,
    index: u64,
    n: NodeInfo,
    s: Option<ServiceInfo>,
    checks: Vec<CheckInfo>,
) -> Result<bool, CatalogError> {
    let r = c.apply(
        index,
        &CatalogOp::Register(Box::new(Registration {
            node: n,
            skip_node_update: false,
            service: s,
            checks,
        })),
    );
    c.check_invariants(index).unwrap();
    r.map(|change| change.changed())
}

fn deregister(c: &mut Catalog, index: u64, n: &str, sid: Option<&str>, cid: Option<&str>) {
    c.apply(
        index,
        &CatalogOp::Deregister {
            node: n.into(),
            service_id: sid.map(Into::into),
            check_id: cid.map(Into::into),
        },
    )
    .unwrap();
    c.check_invariants(index).unwrap();
}

#[test]
fn a_registration_creates_node_service_and_check_at_its_index() {
    let mut c = Catalog::default();
    let s = service("web-1", "web", 80);
    let ch = check("web-alive", "web-1", Health::Passing);
    let changed = register(&mut c, 5, node("n1", "10.0.0.1"), Some(s), vec![ch]).unwrap();
    assert!(changed);
    let n = c.node("N1").expect("found without regard to case");
    assert_eq!((n.create_index, n.modify_index), (5, 5));
    let inst: Vec<_> = c.instances("web").collect();
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0].node, "n1");
    let checks: Vec<_> = c.instance_checks("n1", "web-1").collect();
    assert_eq!(
        checks[0].info.service_name, "web",
        "a check carries its service's name"
    );
    assert_eq!(
        checks[0].info.node, "n1",
        "a check's node defaults to the registration's"
    );
    assert_eq!(c.service_index("web"), 5);
    assert_eq!(c.node_index("n1"), 5);
    assert_eq!(c.table_index(Table::Checks), 5);
}

#[test]
fn the_same_registration_again_changes_nothing_and_moves_no_index() {
    let mut c = Catalog::default();
    let s = service("web-1", "web", 80);
    let ch = check("web-alive", "web-1", Health::Passing);
    let n = node("n1", "10.0.0.1");
    register(&mut c, 5, n.clone(), Some(s.clone()), vec![ch.clone()]).unwrap();
    let changed = register(&mut c, 9, n, Some(s), vec![ch]).unwrap();
    assert!(!changed);
    assert_eq!(c.service_index("web"), 5);
    assert_eq!(c.node("n1").unwrap().modify_index, 5);
    assert_eq!(c.table_index(Table::Nodes), 5);
}

#[test]
fn a_change_to_one_service_does_not_move_another_services_index() {
    let mut c = Catalog::default();
    register(
        &mut c,
        1,
        node("n1", "a"),
        Some(service("web", "web", 80)),
        vec![],
    )
    .unwrap();
    register(
        &mut c,
        2,
        node("n2", "b"),
        Some(service("db", "db", 5432)),
        vec![],
    )
    .unwrap();
    let ch = check("db-ok", "db", Health::Passing);
    register(&mut c, 3, node("n2", "b"), None, vec![ch]).unwrap();
    assert_eq!(c.service_index("web"), 1);
    assert_eq!(c.service_index("db"), 3);
    // A node check of n2 shows in every service on n2, and only there.
    register(
        &mut c,
        4,
        node("n2", "b"),
        None,
        vec![check("serfHealth", "", Health::Passing)],
    )
    .unwrap();
    assert_eq!(c.service_index("db"), 4);
    assert_eq!(c.service_index("web"), 1);
    assert_eq!(c.node_index("n1"), 1);
}

#[test]
fn a_new_status_moves_the_check_and_its_service_but_keeps_create_index() {
    let mut c = Catalog::default();
    let s = service("web-1", "web", 80);
    let n = node("n1", "a");
    register(
        &mut c,
        1,
        n.clone(),
        Some(s),
        vec![check("c", "web-1", Health::Passing)],
    )
    .unwrap();
    register(
        &mut c,
        7,
        n,
        None,
        vec![check("c", "web-1", Health::Critical)],
    )
    .unwrap();
    let ch = c.node_checks("n1").next().unwrap();
    assert_eq!((ch.create_index, ch.modify_index), (1, 7));
    assert_eq!(ch.info.status, Health::Critical);
    assert_eq!(c.service_index("web"), 7);
    assert_eq!(
        c.node("n1").unwrap().modify_index,
        1,
        "the node itself did not change"
    );
}

#[test]
fn refused_registrations_give_consuls_errors_and_change_nothing() {
    let mut c = Catalog::default();
    let none = register(&mut c, 1, node("", "a"), None, vec![]);
    assert_eq!(
        none.unwrap_err().to_string(),
        "Must provide node and address"
    );
    let bad_id = NodeInfo {
        id: "not-a-uuid".into(),
        ..node("n1", "a")
    };
    assert!(register(&mut c, 2, bad_id, None, vec![])
        .unwrap_err()
        .to_string()
        .starts_with("Bad node ID: "));
    let nameless = ServiceInfo {
        id: "x".into(),
        ..ServiceInfo::default()
    };
    let e = register(&mut c, 3, node("n1", "a"), Some(nameless), vec![]).unwrap_err();
    assert_eq!(e.to_string(), "Must provide service name with ID");
    let orphan = check("c", "nope", Health::Passing);
    let e = register(&mut c, 4, node("n1", "a"), None, vec![orphan]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed inserting check on node \"n1\": Missing service registration"
    );
    let other = CheckInfo {
        node: "n2".into(),
        ..check("c", "", Health::Passing)
    };
    let e = register(&mut c, 5, node("n1", "a"), None, vec![other]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "check node \"n2\" does not match node \"n1\""
    );
    assert!(c.is_empty(), "nothing of a refused registration was kept");
    assert_eq!(c.table_index(Table::Nodes), 0);
}

#[test]
fn a_service_id_defaults_to_its_name_and_a_check_id_to_its_name() {
    let mut c = Catalog::default();
    let s = ServiceInfo {
        name: "redis".into(),
        ..ServiceInfo::default()
    };
    let ch = CheckInfo {
        name: "mem".into(),
        ..CheckInfo::default()
    };
    register(&mut c, 1, node("n1", "a"), Some(s), vec![ch]).unwrap();
    assert_eq!(c.node_services("n1").next().unwrap().info.id, "redis");
    let ch = c.node_checks("n1").next().unwrap();
    assert_eq!(ch.info.check_id, "mem");
    assert_eq!(
        ch.info.status,
        Health::Critical,
        "no status given: critical"
    );
}

#[test]
fn deregistering_a_service_takes_its_checks_and_sets_the_extinction_index() {
    let mut c = Catalog::default();
    let n = node("n1", "a");
    let checks = vec![
        check("web-ok", "web", Health::Passing),
        check("serfHealth", "", Health::Passing),
    ];
    register(
        &mut c,
        1,
        n.clone(),
        Some(service("web", "web", 80)),
        checks,
    )
    .unwrap();
    register(&mut c, 2, n, Some(service("db", "db", 1)), vec![]).unwrap();
    deregister(&mut c, 3, "n1", Some("web"), None);
    assert_eq!(c.instances("web").count(), 0);
    let left: Vec<_> = c
        .node_checks("n1")
        .map(|c| c.info.check_id.clone())
        .collect();
    assert_eq!(left, vec!["serfHealth".to_string()]);
    assert_eq!(
        c.service_index("web"),
        3,
        "a vanished service answers the extinction"
    );
    assert_eq!(c.service_index("never-there"), 3);
    assert_eq!(c.service_index("db"), 2, "other services are not woken");
    // Removing what is not there is no error and no change.
    deregister(&mut c, 4, "n1", Some("web"), None);
    assert_eq!(c.table_index(Table::Services), 3);
}

#[test]
fn deregistering_a_node_takes_everything_on_it() {
    let mut c = Catalog::default();
    let n = node("n1", "a");
    let ch = vec![check("web-ok", "web", Health::Passing)];
    register(&mut c, 1, n, Some(service("web", "web", 80)), ch).unwrap();
    register(
        &mut c,
        2,
        node("n2", "b"),
        Some(service("web2", "web", 81)),
        vec![],
    )
    .unwrap();
    deregister(&mut c, 3, "N1", None, None);
    assert!(c.node("n1").is_none());
    assert_eq!(c.node_services("n1").count(), 0);
    assert_eq!(c.node_checks("n1").count(), 0);
    assert_eq!(c.instances("web").count(), 1);
    assert_eq!(c.service_index("web"), 3);
    assert_eq!(c.node_index("n1"), 3);
    assert_eq!(c.node_index("n2"), 2);
}

#[test]
fn a_node_id_under_a_new_name_renames_the_node_and_a_healthy_name_is_reserved() {
    let mut c = Catalog::default();
    let id = "11111111-2222-3333-4444-555555555555";
    let n = NodeInfo {
        id: id.into(),
        ..node("old", "a")
    };
    let serf = check("serfHealth", "", Health::Passing);
    register(&mut c, 1, n.clone(), None, vec![serf.clone()]).unwrap();
    let renamed = NodeInfo {
        name: "new".into(),
        ..n
    };
    register(&mut c, 2, renamed, None, vec![serf.clone()]).unwrap();
    assert!(c.node("old").is_none());
    assert!(c.node("new").is_some());
    // Another id may not take the name of a node whose agent is alive.
    let thief = NodeInfo {
        id: "99999999-2222-3333-4444-555555555555".into(),
        ..node("new", "b")
    };
    let e = register(&mut c, 3, thief.clone(), None, vec![]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("failed inserting node: Node name new is reserved by node {id} with name new (a)")
    );
    // Once that agent is critical, it may.
    let critical = CheckInfo {
        node: "new".into(),
        ..check("serfHealth", "", Health::Critical)
    };
    let n_new = NodeInfo {
        id: id.into(),
        ..node("new", "a")
    };
    register(&mut c, 5, n_new, None, vec![critical]).unwrap();
    register(&mut c, 6, thief, None, vec![]).unwrap();
    assert_eq!(c.node("new").unwrap().info.address, "b");
}

#[test]
fn a_renamed_service_leaves_its_old_name() {
    let mut c = Catalog::default();
    let n = node("n1", "a");
    register(&mut c, 1, n.clone(), Some(service("s1", "web", 80)), vec![]).unwrap();
    register(&mut c, 2, n, Some(service("s1", "api", 80)), vec![]).unwrap();
    assert_eq!(c.instances("web").count(), 0);
    assert_eq!(c.instances("api").count(), 1);
    assert_eq!(c.service_index("web"), 2);
    let names: Vec<_> = c.service_names().into_keys().collect();
    assert_eq!(names, vec!["api".to_string()]);
}

#[test]
fn skip_node_update_keeps_the_nodes_fields() {
    let mut c = Catalog::default();
    register(&mut c, 1, node("n1", "a"), None, vec![]).unwrap();
    let r = Registration {
        node: node("n1", "b"),
        skip_node_update: true,
        service: Some(service("web", "web", 80)),
        checks: vec![],
    };
    c.apply(2, &CatalogOp::Register(Box::new(r))).unwrap();
    assert_eq!(c.node("n1").unwrap().info.address, "a");
    assert_eq!(c.instances("web").count(), 1);
}

#[test]
fn the_invariant_check_catches_a_service_on_a_missing_node() {
    let mut c = Catalog::default();
    register(
        &mut c,
        1,
        node("n1", "a"),
        Some(service("web", "web", 80)),
        vec![],
    )
    .unwrap();
    c.nodes.clear();
    assert!(c.check_invariants(1).is_err());
}

#[test]
fn a_change_names_exactly_the_services_and_nodes_it_moved() {
    let mut c = Catalog::default();
    register(
        &mut c,
        1,
        node("n1", "a"),
        Some(service("web", "Web", 80)),
        vec![],
    )
    .unwrap();
    register(
        &mut c,
        2,
        node("n2", "b"),
        Some(service("db", "db", 1)),
        vec![],
    )
    .unwrap();
    let op = CatalogOp::Register(Box::new(Registration {
        node: node("n1", "a"),
        skip_node_update: false,
        service: None,
        checks: vec![check("web-ok", "web", Health::Passing)],
    }));
    let change = c.apply(3, &op).unwrap();
    assert!(change.checks && !change.services && !change.nodes);
    assert_eq!(change.service_names, BTreeSet::from(["web".to_string()]));
    assert_eq!(change.node_names, BTreeSet::from(["n1".to_string()]));
    let again = c.apply(4, &op).unwrap();
    assert!(!again.changed() && again.service_names.is_empty());
    let gone = c
        .apply(
            5,
            &CatalogOp::Deregister {
                node: "n2".into(),
                service_id: None,
                check_id: None,
            },
        )
        .unwrap();
    assert_eq!(gone.service_names, BTreeSet::from(["db".to_string()]));
    assert_eq!(gone.node_names, BTreeSet::from(["n2".to_string()]));
}

#[test]
fn reads_fold_names_and_keep_to_their_node() {
    let mut c = Catalog::default();
    let ch = |id: &str, sid: &str| check(id, sid, Health::Passing);
    let web = service("web-1", "Web", 80);
    register(&mut c, 1, node("n1", "10.0.0.1"), Some(web.clone()), vec![]).unwrap();
    register(
        &mut c,
        2,
        node("N1x", "10.0.0.2"),
        Some(web.clone()),
        vec![],
    )
    .unwrap();
    register(&mut c, 3, node("n", "10.0.0.3"), Some(web), vec![]).unwrap();
    let checks = vec![ch("serf", ""), ch("a", "web-1"), ch("b", "db-1")];
    let db = || Some(service("db-1", "db", 5432));
    register(&mut c, 4, node("n1", "10.0.0.1"), db(), checks.clone()).unwrap();
    register(&mut c, 5, node("N1x", "10.0.0.2"), db(), checks.clone()).unwrap();
    register(&mut c, 6, node("n", "10.0.0.3"), db(), checks).unwrap();
    for name in ["n1", "N1", "n1X", "N1X", "n"] {
        let n = c.node(name).unwrap();
        assert!(n.info.name.eq_ignore_ascii_case(name));
        let mut ids: Vec<_> = c
            .instance_checks(name, "WEB-1")
            .map(|ch| (ch.info.node.to_ascii_lowercase(), ch.info.check_id.clone()))
            .collect();
        ids.sort();
        let folded = name.to_ascii_lowercase();
        assert_eq!(ids, [(folded.clone(), "a".into()), (folded, "serf".into())]);
    }
    assert!(c.node("n2").is_none());
    assert_eq!(c.instance_checks("n2", "web-1").count(), 0);
    assert_eq!(c.instances("WEB").count(), 3);
    assert_eq!(c.instances("web").count(), 3);
}
