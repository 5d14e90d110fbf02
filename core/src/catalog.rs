//! The catalog: Consul's nodes, services and health checks, with their index rules.
//!
//! Like the KV table, every index is the Raft index of the write that caused it, and a
//! registration that changes nothing (the same node, service or check again, which every
//! agent's anti-entropy sends) is not a write: it leaves `ModifyIndex` alone and wakes no
//! one.
//!
//! Names are matched without regard to case (node names, service ids, service names and
//! check ids), as Consul's tables do; each entry keeps the spelling it was registered
//! with.
//!
//! Blocking queries wait on the index of exactly what they read:
//! - [`Catalog::service_index`]: one service name. It moves when an instance of that
//!   service, one of its checks, a check of its node or its node changes. A name with no
//!   instance left answers the index of the last removal of any service's last instance
//!   (Consul's "extinction" index), so a watcher of a missing service is not woken by
//!   writes to others.
//! - [`Catalog::node_index`]: one node, its services and its checks.
//! - [`Catalog::table_index`]: the whole nodes, services or checks table.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

/// The check every agent's node has, following gossip (Consul's `serfHealth`).
pub const SERF_CHECK_ID: &str = "serfHealth";

/// A node as registered: what `/v1/catalog/register` carries about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's UUID, or empty for an external node registered without one.
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub info: NodeInfo,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Consul's DNS SRV weights of an instance, by its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// An address and port under a name (`lan`, `wan`, ...) of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedAddress {
    pub address: String,
    pub port: u16,
}

/// A service instance as registered on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Unique on its node; defaults to the service name.
    pub id: String,
    /// The service name (Consul's `Service`).
    pub name: String,
    pub tags: Vec<String>,
    /// Empty: the node's address.
    pub address: String,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The node's name as registered.
    pub node: String,
    pub info: ServiceInfo,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A check's status.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Health {
    Passing,
    Warning,
    /// Consul's default for a check registered without a status.
    #[default]
    Critical,
}

impl Health {
    /// Consul's spelling: `passing`, `warning`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    /// Parse Consul's spelling (exactly, as Consul compares it).
    pub fn parse(s: &str) -> Option<Health> {
        match s {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

/// A health check as registered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInfo {
    /// The node it belongs to; defaults to the registration's node.
    pub node: String,
    /// Unique on its node; defaults to the check's name.
    pub check_id: String,
    pub name: String,
    pub status: Health,
    pub notes: String,
    pub output: String,
    /// Empty: a check of the whole node.
    pub service_id: String,
    /// Copied from the service at registration.
    pub service_name: String,
    pub service_tags: Vec<String>,
    /// Consul's `Type` (`ttl`, `http`, `script`, ...), for display.
    pub kind: String,
    pub interval: String,
    pub timeout: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub info: CheckInfo,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `/v1/catalog/register`: a node, and optionally one service and checks on it, in one
/// write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeInfo,
    /// Leave the node's fields alone if it exists (Consul's `SkipNodeUpdate`).
    pub skip_node_update: bool,
    pub service: Option<ServiceInfo>,
    pub checks: Vec<CheckInfo>,
}

/// A write to the catalog; each is applied at one Raft log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogOp {
    /// Boxed: a registration is far larger than any other command.
    Register(Box<Registration>),
    /// `/v1/catalog/deregister`: with a service id, that service and its checks; with a
    /// check id, that check; with neither, the node and everything on it. Removing what is
    /// not there is not an error.
    Deregister {
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    },
}

/// Why a catalog write was refused, with Consul's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CatalogError {
    #[error("Must provide node and address")]
    MissingNodeOrAddress,
    #[error("Must provide node")]
    MissingNode,
    #[error("Bad node ID: {0}")]
    BadNodeId(String),
    #[error("Must provide service name with ID")]
    MissingServiceName,
    #[error("check node {check:?} does not match node {node:?}")]
    CheckNodeMismatch { check: String, node: String },
    #[error("Missing node registration")]
    NodeNotRegistered,
    #[error("failed inserting check on node {node:?}: Missing service registration")]
    ServiceNotRegistered { node: String },
    #[error(
        "failed inserting node: Node name {name} is reserved by node {id} with name \
         {held_by} ({address})"
    )]
    NameReserved {
        name: String,
        id: String,
        held_by: String,
        address: String,
    },
}

impl Registration {
    /// Consul's request rules, applied before the write and again when it is applied:
    /// node and address are required, a node id is a UUID, a service id defaults to its
    /// name, a check id to its name and a check's node to the registration's.
    pub fn normalize(&mut self) -> Result<(), CatalogError> {
        if self.node.name.is_empty() || self.node.address.is_empty() {
            return Err(CatalogError::MissingNodeOrAddress);
        }
        if !self.node.id.is_empty() && !is_uuid(&self.node.id) {
            return Err(CatalogError::BadNodeId(format!(
                "uuid string is wrong length or malformed: {}",
                self.node.id
            )));
        }
        if let Some(s) = self.service.as_mut() {
            if s.id.is_empty() {
                s.id = s.name.clone();
            }
            if !s.id.is_empty() && s.name.is_empty() {
                return Err(CatalogError::MissingServiceName);
            }
        }
        for c in &mut self.checks {
            if c.check_id.is_empty() {
                c.check_id = c.name.clone();
            }
            if c.node.is_empty() {
                c.node = self.node.name.clone();
            }
            if !c.node.eq_ignore_ascii_case(&self.node.name) {
                return Err(CatalogError::CheckNodeMismatch {
                    check: c.node.clone(),
                    node: self.node.name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// 8-4-4-4-12 hex digits, as Consul's UUID parser takes them.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Which whole table a read covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nodes,
    Services,
    Checks,
}

type NodeKey = String;
type PairKey = (String, String);

fn fold(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// `s` folded for a lookup: borrowed when it is folded already (names mostly are), so
/// that a read allocates nothing for it.
fn folded(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(fold(s))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The indexes blocking queries wait on (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Indexes {
    nodes: u64,
    services: u64,
    checks: u64,
    by_service: BTreeMap<String, u64>,
    by_node: BTreeMap<String, u64>,
    service_extinction: u64,
    node_extinction: u64,
}

/// The catalog tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    nodes: BTreeMap<NodeKey, Node>,
    /// (node, service id), both folded.
    services: BTreeMap<PairKey, Service>,
    /// (node, check id), both folded.
    checks: BTreeMap<PairKey, Check>,
    /// Folded service name -> the instances' keys.
    by_name: BTreeMap<String, BTreeSet<PairKey>>,
    indexes: Indexes,
}

/// What a write changed: the tables, and the (folded) service and node names whose
/// indexes moved, so that exactly their blocking queries are woken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogChange {
    pub nodes: bool,
    pub services: bool,
    pub checks: bool,
    pub service_names: BTreeSet<String>,
    pub node_names: BTreeSet<String>,
}

impl CatalogChange {
    /// Whether the write changed anything at all.
    pub fn changed(&self) -> bool {
        self.nodes || self.services || self.checks
    }
}

impl Catalog {
    /// Apply `op` at `index`; what it changed.
    pub fn apply(&mut self, index: u64, op: &CatalogOp) -> Result<CatalogChange, CatalogError> {
        let mut t = CatalogChange::default();
        let result = match op {
            CatalogOp::Register(r) => {
                let mut r = r.clone();
                r.normalize()?;
                self.validate(&r)?;
                self.register(index, &r, &mut t);
                Ok(())
            }
            CatalogOp::Deregister {
                node,
                service_id,
                check_id,
            } => self.deregister(
                index,
                node,
                service_id.as_deref(),
                check_id.as_deref(),
                &mut t,
            ),
        };
        result?;
        self.bump(index, &t);
        // A name that is gone moved the extinction index; its watchers are woken too.
        Ok(t)
    }

    /// Everything that can refuse a registration, checked before anything changes so a
    /// refused write leaves the tables as they were.
    fn validate(&self, r: &Registration) -> Result<(), CatalogError> {
        let key = fold(&r.node.name);
        if !r.node.id.is_empty() {
            for n in self.nodes.values() {
                let held = n.info.name.eq_ignore_ascii_case(&r.node.name)
                    && !n.info.id.is_empty()
                    && !n.info.id.eq_ignore_ascii_case(&r.node.id);
                if held && self.node_healthy(&fold(&n.info.name)) {
                    return Err(CatalogError::NameReserved {
                        name: r.node.name.clone(),
                        id: n.info.id.clone(),
                        held_by: n.info.name.clone(),
                        address: n.info.address.clone(),
                    });
                }
            }
        }
        for c in &r.checks {
            if c.service_id.is_empty() {
                continue;
            }
            let sk = (key.clone(), fold(&c.service_id));
            let in_request = r
                .service
                .as_ref()
                .is_some_and(|s| s.id.eq_ignore_ascii_case(&c.service_id));
            if !in_request && !self.services.contains_key(&sk) {
                return Err(CatalogError::ServiceNotRegistered {
                    node: c.node.clone(),
                });
            }
        }
        Ok(())
    }

    /// A node counts as healthy unless its serfHealth check is critical (Consul lets a
    /// new node take the name of one whose agent is gone, or that has no such check).
    fn node_healthy(&self, node: &str) -> bool {
        self.checks
            .get(&(node.to_string(), fold(SERF_CHECK_ID)))
            .is_some_and(|c| c.info.status != Health::Critical)
    }

    fn register(&mut self, index: u64, r: &Registration, t: &mut CatalogChange) {
        let key = fold(&r.node.name);
        // A node id registered under another name renames that node: the old entry goes.
        if !r.node.id.is_empty() {
            let renamed: Option<String> = self
                .nodes
                .iter()
                .find(|(k, n)| **k != key && n.info.id.eq_ignore_ascii_case(&r.node.id))
                .map(|(k, _)| k.clone());
            if let Some(old) = renamed {
                self.delete_node(index, &old, t);
            }
        }
        match self.nodes.get_mut(&key) {
            Some(_) if r.skip_node_update => {}
            Some(n) if n.info == r.node => {}
            Some(n) => {
                n.info = r.node.clone();
                n.modify_index = index;
                t.nodes = true;
                t.node_names.insert(key.clone());
                let names = self.service_names_on(&key);
                t.service_names.extend(names);
            }
            None => {
                self.nodes.insert(
                    key.clone(),
                    Node {
                        info: r.node.clone(),
                        create_index: index,
                        modify_index: index,
                    },
                );
                t.nodes = true;
                t.node_names.insert(key.clone());
            }
        }
        if let Some(s) = &r.service {
            self.ensure_service(index, &key, &r.node.name, s, t);
        }
        for c in &r.checks {
            self.ensure_check(index, &key, c, t);
        }
    }

    fn ensure_service(
        &mut self,
        index: u64,
        node_key: &str,
        node_name: &str,
        s: &ServiceInfo,
        t: &mut CatalogChange,
    ) {
        let sk = (node_key.to_string(), fold(&s.id));
        let name = fold(&s.name);
        let (create_index, old_name) = match self.services.get(&sk) {
            Some(old) if old.info == *s => return,
            Some(old) => (old.create_index, Some(fold(&old.info.name))),
            None => (index, None),
        };
        if let Some(old_name) = old_name.filter(|o| *o != name) {
            self.unlink_name(index, &old_name, &sk);
            t.service_names.insert(old_name);
        }
        self.services.insert(
            sk.clone(),
            Service {
                node: node_name.to_string(),
                info: s.clone(),
                create_index,
                modify_index: index,
            },
        );
        self.by_name.entry(name.clone()).or_default().insert(sk);
        // The checks of this instance carry its name and tags (only this node's checks are
        // looked at: a registration costs its node's checks, not the whole catalog's).
        for (_, c) in self.checks.range_mut(node_range(node_key)) {
            let mine = c.info.service_id.eq_ignore_ascii_case(&s.id);
            if mine && (c.info.service_name != s.name || c.info.service_tags != s.tags) {
                c.info.service_name = s.name.clone();
                c.info.service_tags = s.tags.clone();
                c.modify_index = index;
                t.checks = true;
            }
        }
        t.services = true;
        t.service_names.insert(name);
        t.node_names.insert(node_key.to_string());
    }

    fn ensure_check(&mut self, index: u64, node_key: &str, c: &CheckInfo, t: &mut CatalogChange) {
        let ck = (node_key.to_string(), fold(&c.check_id));
        let mut c = c.clone();
        if !c.service_id.is_empty() {
            if let Some(s) = self
                .services
                .get(&(node_key.to_string(), fold(&c.service_id)))
            {
                c.service_name = s.info.name.clone();
                c.service_tags = s.info.tags.clone();
            }
        } else {
            c.service_name.clear();
            c.service_tags.clear();
        }
        let create_index = match self.checks.get(&ck) {
            Some(old) if old.info == c => return,
            Some(old) => {
                // A check moved from one service to another wakes both.
                if !old.info.service_id.eq_ignore_ascii_case(&c.service_id) {
                    self.touch_check_scope(node_key, &old.info.service_id, t);
                }
                old.create_index
            }
            None => index,
        };
        self.touch_check_scope(node_key, &c.service_id, t);
        self.checks.insert(
            ck,
            Check {
                info: c,
                create_index,
                modify_index: index,
            },
        );
        t.checks = true;
    }

    /// Mark what a check's change is visible in: its service, or with no service every
    /// service on its node (a node check fails all of them), and its node.
    fn touch_check_scope(&self, node_key: &str, service_id: &str, t: &mut CatalogChange) {
        t.node_names.insert(node_key.to_string());
        if service_id.is_empty() {
            t.service_names.extend(self.service_names_on(node_key));
        } else if let Some(s) = self.services.get(&(node_key.to_string(), fold(service_id))) {
            t.service_names.insert(fold(&s.info.name));
        }
    }

    fn service_names_on(&self, node_key: &str) -> BTreeSet<String> {
        self.services
            .range(node_range(node_key))
            .map(|(_, s)| fold(&s.info.name))
            .collect()
    }

    fn deregister(
        &mut self,
        index: u64,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
        t: &mut CatalogChange,
    ) -> Result<(), CatalogError> {
        if node.is_empty() {
            return Err(CatalogError::MissingNode);
        }
        let key = fold(node);
        match (service_id, check_id) {
            (Some(sid), _) if !sid.is_empty() => self.delete_service(index, &key, sid, t),
            (_, Some(cid)) if !cid.is_empty() => self.delete_check(&key, cid, t),
            _ => self.delete_node(index, &key, t),
        }
        Ok(())
    }

    fn delete_check(&mut self, node_key: &str, check_id: &str, t: &mut CatalogChange) {
        if let Some(c) = self.checks.remove(&(node_key.to_string(), fold(check_id))) {
            self.touch_check_scope(node_key, &c.info.service_id, t);
            t.checks = true;
        }
    }

    fn delete_service(
        &mut self,
        index: u64,
        node_key: &str,
        service_id: &str,
        t: &mut CatalogChange,
    ) {
        let sk = (node_key.to_string(), fold(service_id));
        let Some(s) = self.services.remove(&sk) else {
            return;
        };
        let name = fold(&s.info.name);
        self.unlink_name(index, &name, &sk);
        let checks: Vec<PairKey> = self
            .checks
            .range(node_range(node_key))
            .filter(|(_, c)| c.info.service_id.eq_ignore_ascii_case(service_id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in checks {
            self.checks.remove(&k);
            t.checks = true;
        }
        t.services = true;
        t.service_names.insert(name);
        t.node_names.insert(node_key.to_string());
    }

    fn delete_node(&mut self, index: u64, node_key: &str, t: &mut CatalogChange) {
        if self.nodes.remove(node_key).is_none() {
            return;
        }
        let services: Vec<PairKey> = self
            .services
            .range(node_range(node_key))
            .map(|(k, _)| k.clone())
            .collect();
        // The key's id is folded already, and folding is idempotent.
        for (_, sid) in services {
            self.delete_service(index, node_key, &sid, t);
        }
        let checks: Vec<PairKey> = self
            .checks
            .range(node_range(node_key))
            .map(|(k, _)| k.clone())
            .collect();
        for k in checks {
            self.checks.remove(&k);
            t.checks = true;
        }
        self.indexes.by_node.remove(node_key);
        self.indexes.node_extinction = index;
        t.nodes = true;
        t.node_names.insert(node_key.to_string());
    }

    /// Drop one instance from its name's set; the name's last instance takes its index
    /// along and sets the extinction index.
    fn unlink_name(&mut self, index: u64, name: &str, sk: &PairKey) {
        if let Some(set) = self.by_name.get_mut(name) {
            set.remove(sk);
            if set.is_empty() {
                self.by_name.remove(name);
                self.indexes.by_service.remove(name);
                self.indexes.service_extinction = index;
            }
        }
    }

    fn bump(&mut self, index: u64, t: &CatalogChange) {
        let ix = &mut self.indexes;
        if t.nodes {
            ix.nodes = index;
        }
        if t.services {
            ix.services = index;
        }
        if t.checks {
            ix.checks = index;
        }
        for name in &t.service_names {
            if self.by_name.contains_key(name) {
                ix.by_service.insert(name.clone(), index);
            } else {
                ix.service_extinction = index;
            }
        }
        for node in &t.node_names {
            if self.nodes.contains_key(node) {
                ix.by_node.insert(node.clone(), index);
            }
        }
    }

    // ----- reads ----------------------------------------------------------------------

    pub fn table_index(&self, table: Table) -> u64 {
        match table {
            Table::Nodes => self.indexes.nodes,
            Table::Services => self.indexes.services,
            Table::Checks => self.indexes.checks,
        }
    }

    /// The index of everything a read of service `name` shows (see the module docs).
    pub fn service_index(&self, name: &str) -> u64 {
        let i = &self.indexes;
        i.by_service
            .get(&fold(name))
            .copied()
            .unwrap_or(i.service_extinction)
    }

    /// The index of node `name`, its services and its checks.
    pub fn node_index(&self, name: &str) -> u64 {
        let i = &self.indexes;
        i.by_node
            .get(&fold(name))
            .copied()
            .unwrap_or(i.node_extinction)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(folded(name).as_ref())
    }

    /// Every service name with the union of its instances' tags.
    pub fn service_names(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.services.values() {
            out.entry(s.info.name.clone())
                .or_default()
                .extend(s.info.tags.iter().cloned());
        }
        out
    }

    /// The instances of service `name`, ordered by node then id.
    pub fn instances(&self, name: &str) -> impl Iterator<Item = &Service> {
        self.by_name
            .get(folded(name).as_ref())
            .into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
    }

    /// The services on node `name`.
    pub fn node_services(&self, name: &str) -> impl Iterator<Item = &Service> {
        self.services.range(node_range(&fold(name))).map(|(_, s)| s)
    }

    /// The checks on node `name`.
    pub fn node_checks(&self, name: &str) -> impl Iterator<Item = &Check> {
        self.checks.range(node_range(&fold(name))).map(|(_, c)| c)
    }

    /// The checks that apply to instance `service_id` on node `node`: its own and its
    /// node's.
    pub fn instance_checks<'a>(
        &'a self,
        node: &'a str,
        service_id: &'a str,
    ) -> impl Iterator<Item = &'a Check> + 'a {
        // From the node's first key while keys are the node's (they are folded): one
        // allocation, where a range's two bounds took three.
        let first = (fold(node), String::new());
        self.checks
            .range(first..)
            .take_while(move |(k, _)| k.0.eq_ignore_ascii_case(node))
            .map(|(_, c)| c)
            .filter(move |c| {
                c.info.service_id.is_empty() || c.info.service_id.eq_ignore_ascii_case(service_id)
            })
    }

    /// Every check.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Check the tables against each other and against `last_applied`.
    pub fn check_invariants(&self, last_applied: u64) -> Result<(), String> {
        let ix = |what: &str, c: u64, m: u64| -> Result<(), String> {
            if c == 0 || c > m || m > last_applied {
                return Err(format!(
                    "{what}: CreateIndex {c} ModifyIndex {m} (applied {last_applied})"
                ));
            }
            Ok(())
        };
        for (k, n) in &self.nodes {
            if *k != fold(&n.info.name) {
                return Err(format!("node {k} stored under another name"));
            }
            ix(&format!("node {k}"), n.create_index, n.modify_index)?;
        }
        let mut names: BTreeMap<String, BTreeSet<PairKey>> = BTreeMap::new();
        for (k, s) in &self.services {
            if !self.nodes.contains_key(&k.0) {
                return Err(format!("service {} on missing node {}", k.1, k.0));
            }
            ix(
                &format!("service {}/{}", k.0, k.1),
                s.create_index,
                s.modify_index,
            )?;
            names
                .entry(fold(&s.info.name))
                .or_default()
                .insert(k.clone());
        }
        if names != self.by_name {
            return Err("service name index disagrees with the services".into());
        }
        for (k, c) in &self.checks {
            if !self.nodes.contains_key(&k.0) {
                return Err(format!("check {} on missing node {}", k.1, k.0));
            }
            let sid = &c.info.service_id;
            if !sid.is_empty() && !self.services.contains_key(&(k.0.clone(), fold(sid))) {
                return Err(format!("check {} of missing service {sid}", k.1));
            }
            ix(
                &format!("check {}/{}", k.0, k.1),
                c.create_index,
                c.modify_index,
            )?;
        }
        for name in self.indexes.by_service.keys() {
            if !self.by_name.contains_key(name) {
                return Err(format!("index kept for vanished service {name}"));
            }
        }
        for name in self.indexes.by_node.keys() {
            if !self.nodes.contains_key(name) {
                return Err(format!("index kept for vanished node {name}"));
            }
        }
        Ok(())
    }
}

/// Every key of node `node_key` in a (node, x) table.
fn node_range(node_key: &str) -> std::ops::Range<PairKey> {
    // Keys are (node, x): all of one node's sort between (node, "") and the next node.
    let mut next = node_key.to_string();
    next.push('\0');
    (node_key.to_string(), String::new())..(next, String::new())
}

#[cfg(test)]
#[path = "catalog_test.rs"]
mod catalog_test;
