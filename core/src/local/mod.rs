//! An agent's local state: the services and checks registered with this agent (over
//! `/v1/agent/*` or by its config files), and what the catalog must be told about them.
//!
//! The agent owns this state; the catalog is a copy it keeps in step (Consul's
//! anti-entropy, [`anti_entropy`]). Every entry is either *in sync* (the catalog has it as
//! it is here), *out of sync* (it must be registered again) or *deleted* (it must be
//! deregistered, then forgotten). [`LocalState::mark_against`] sets those flags from what
//! the catalog holds for this node (a full sync); every local change clears the flag of what
//! it changed (so a partial sync pushes only that); [`LocalState::pending`] lists the
//! writes, and [`LocalState::confirm`] records the ones the catalog took.
//!
//! Each entry has a revision, bumped on every change: a write confirmed for an older
//! revision does not mark a newer one in sync.
//!
//! TTL checks are kept here too, as deadlines on the caller's clock (a `Duration` since
//! some origin the caller chooses): [`LocalState::expire_ttls`] turns the checks whose TTL
//! ran out critical. Alias checks of local services are kept in step here as well
//! ([`alias`]): every change re-evaluates them. A change that takes no time (adding or
//! removing a service, removing a check) dates what it changes at the latest time any call
//! brought.
//!
//! Bounds: at most [`SERVICES_MAX`] services and [`CHECKS_MAX`] checks; a check's output is
//! cut at [`OUTPUT_MAX`] bytes.

pub mod alias;
pub mod anti_entropy;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::catalog::CatalogOp;
use crate::catalog::CheckInfo;
use crate::catalog::Health;
use crate::catalog::NodeInfo;
use crate::catalog::Registration;
use crate::catalog::ServiceInfo;
use crate::catalog::SERF_CHECK_ID;

pub use self::alias::Alias;

/// Services one agent holds.
pub const SERVICES_MAX: usize = 65_536;
/// Checks one agent holds.
pub const CHECKS_MAX: usize = 65_536;
/// A check's output is cut at this many bytes (Consul's default 4 KiB).
pub const OUTPUT_MAX: usize = 4096;
/// The id of the node's maintenance check (Consul's).
pub const NODE_MAINT_ID: &str = "_node_maintenance";
/// The id prefix of a service's maintenance check (Consul's).
pub const SERVICE_MAINT_PREFIX: &str = "_service_maintenance:";
/// The service the servers register for themselves, which the catalog reconcile owns.
const CONSUL_SERVICE_ID: &str = "consul";

/// Why a change to the local state was refused, with Consul's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("Missing service name")]
    MissingServiceName,
    #[error("Missing check name")]
    MissingCheckName,
    #[error("ServiceID {0:?} does not exist")]
    NoSuchServiceForCheck(String),
    #[error(
        "Unknown service ID {0:?}. Ensure that the service ID is passed, not the service name."
    )]
    UnknownService(String),
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    UnknownCheck(String),
    #[error("CheckID {0:?} does not have associated TTL")]
    NotTtl(String),
    #[error("this agent holds {max} {what} already")]
    Full { what: &'static str, max: usize },
}

/// A check as this agent holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCheck {
    pub info: CheckInfo,
    /// A TTL check: how long a status holds without an update.
    pub ttl: Option<Duration>,
    /// When the TTL runs out (caller's clock).
    pub ttl_deadline: Option<Duration>,
    /// Deregister the check's service once it has been critical this long.
    pub deregister_after: Option<Duration>,
    /// Since when the check has been critical (caller's clock), for `deregister_after`.
    pub critical_since: Option<Duration>,
    /// An alias check: what it mirrors (its status is set from that, not from outside).
    pub alias: Option<Alias>,
}

impl LocalCheck {
    pub fn new(info: CheckInfo) -> LocalCheck {
        LocalCheck {
            info,
            ttl: None,
            ttl_deadline: None,
            deregister_after: None,
            critical_since: None,
            alias: None,
        }
    }
}

/// One entry's sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sync {
    in_sync: bool,
    deleted: bool,
    revision: u64,
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    /// The id as registered (the map key is folded).
    id: String,
    /// `None` once deleted: only the deregistration is left to do.
    service: Option<ServiceInfo>,
    sync: Sync,
}

#[derive(Debug, Clone)]
struct CheckEntry {
    id: String,
    check: Option<LocalCheck>,
    sync: Sync,
}

/// What one pending write is for, to [`LocalState::confirm`] it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncKey {
    Node {
        revision: u64,
    },
    /// A service, with the checks that rode on its registration.
    Service {
        key: String,
        revision: u64,
        checks: Vec<(String, u64)>,
    },
    Check {
        key: String,
        revision: u64,
    },
}

/// What the catalog holds for this agent's node (read for a full sync).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteNode {
    /// `None`: the node is not registered.
    pub node: Option<NodeInfo>,
    pub services: Vec<ServiceInfo>,
    pub checks: Vec<CheckInfo>,
}

impl RemoteNode {
    /// Node `name`'s slice of `catalog`.
    pub fn of(catalog: &crate::catalog::Catalog, name: &str) -> RemoteNode {
        RemoteNode {
            node: catalog.node(name).map(|n| n.info.clone()),
            services: catalog
                .node_services(name)
                .map(|s| s.info.clone())
                .collect(),
            checks: catalog.node_checks(name).map(|c| c.info.clone()).collect(),
        }
    }
}

/// Ids are matched without regard to case, as the catalog matches them.
fn fold(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// Cut `s` to at most [`OUTPUT_MAX`] bytes, on a character boundary.
pub fn bound_output(mut s: String) -> String {
    if s.len() > OUTPUT_MAX {
        let mut end = OUTPUT_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Whether two checks say the same thing to a reader of the catalog (the catalog fills in
/// the service's name and tags itself).
fn same_check(a: &CheckInfo, b: &CheckInfo) -> bool {
    a.check_id.eq_ignore_ascii_case(&b.check_id)
        && a.name == b.name
        && a.status == b.status
        && a.notes == b.notes
        && a.output == b.output
        && a.service_id.eq_ignore_ascii_case(&b.service_id)
        && a.kind == b.kind
        && a.interval == b.interval
        && a.timeout == b.timeout
}

/// The agent's local state.
#[derive(Debug, Clone)]
pub struct LocalState {
    node: NodeInfo,
    node_sync: Sync,
    services: BTreeMap<String, ServiceEntry>,
    checks: BTreeMap<String, CheckEntry>,
    /// Bumped on every change that readers of `/v1/agent/*` can see.
    version: u64,
    /// The last revision handed out.
    revisions: u64,
    /// The latest time a call brought (the caller's clock), for changes that take none.
    clock: Duration,
    /// Wrong on purpose: a full sync keeps services the catalog has and this agent does
    /// not (they are never deregistered).
    #[cfg(feature = "sabotage")]
    pub sabotage_keep_strays: bool,
}

impl LocalState {
    /// The state of an agent whose node is `node` (its name, id, address, datacenter,
    /// tagged addresses and meta, as it registers itself).
    pub fn new(node: NodeInfo) -> LocalState {
        LocalState {
            node,
            node_sync: Sync {
                in_sync: false,
                deleted: false,
                revision: 1,
            },
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            version: 1,
            revisions: 1,
            clock: Duration::ZERO,
            #[cfg(feature = "sabotage")]
            sabotage_keep_strays: false,
        }
    }

    fn keep_strays(&self) -> bool {
        #[cfg(feature = "sabotage")]
        return self.sabotage_keep_strays;
        #[cfg(not(feature = "sabotage"))]
        false
    }

    /// How the catalog's slice of this node differs from this state, if it does: the node's
    /// fields, the services, and the checks with their status (the servers' own `consul`
    /// service and `serfHealth` check aside). `None` once a full sync has finished and
    /// nothing changed since.
    pub fn differs_from(&self, remote: &RemoteNode) -> Option<String> {
        let Some(node) = remote.node.as_ref() else {
            return Some(format!("node {} is not in the catalog", self.node.name));
        };
        if node.meta != self.node.meta || node.address != self.node.address {
            return Some(format!("node {} differs: {node:?}", self.node.name));
        }
        let mut want: Vec<&ServiceInfo> = self.services().collect();
        let mut have: Vec<&ServiceInfo> = remote
            .services
            .iter()
            .filter(|s| !s.id.eq_ignore_ascii_case(CONSUL_SERVICE_ID))
            .collect();
        want.sort_by_key(|s| fold(&s.id));
        have.sort_by_key(|s| fold(&s.id));
        if want != have {
            let ids = |l: &[&ServiceInfo]| l.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
            return Some(format!(
                "services of {} differ: local {:?}, catalog {:?}",
                self.node.name,
                ids(&want),
                ids(&have)
            ));
        }
        let theirs: Vec<&CheckInfo> = remote
            .checks
            .iter()
            .filter(|c| !c.check_id.eq_ignore_ascii_case(SERF_CHECK_ID))
            .collect();
        if theirs.len() != self.checks().count() {
            return Some(format!(
                "checks of {} differ: local {}, catalog {}",
                self.node.name,
                self.checks().count(),
                theirs.len()
            ));
        }
        for c in self.checks() {
            let same = theirs.iter().any(|r| {
                r.check_id.eq_ignore_ascii_case(&c.info.check_id)
                    && r.status == c.info.status
                    && r.service_id.eq_ignore_ascii_case(&c.info.service_id)
            });
            if !same {
                return Some(format!(
                    "check {} of {} differs in the catalog",
                    c.info.check_id, self.node.name
                ));
            }
        }
        None
    }

    fn next_revision(&mut self) -> u64 {
        self.revisions += 1;
        self.version += 1;
        self.revisions
    }

    /// A new revision, out of sync: to register again, or, if `deleted`, to deregister.
    fn mark(&mut self, deleted: bool) -> Sync {
        Sync {
            in_sync: false,
            deleted,
            revision: self.next_revision(),
        }
    }

    /// Bumped on every visible change: blocking agent endpoints and the syncer wait on it.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// The live services, by id.
    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values().filter_map(|e| e.service.as_ref())
    }

    pub fn service(&self, id: &str) -> Option<&ServiceInfo> {
        self.services.get(&fold(id))?.service.as_ref()
    }

    /// The live checks, by id.
    pub fn checks(&self) -> impl Iterator<Item = &LocalCheck> {
        self.checks.values().filter_map(|e| e.check.as_ref())
    }

    pub fn check(&self, id: &str) -> Option<&LocalCheck> {
        self.checks.get(&fold(id))?.check.as_ref()
    }

    /// The checks of service `id` (its own, not the node's).
    pub fn service_checks<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a LocalCheck> {
        self.checks()
            .filter(move |c| c.info.service_id.eq_ignore_ascii_case(id))
    }

    /// Add or replace a service (its id defaults to its name). Its checks are added with
    /// [`LocalState::add_check`]; with `replace_checks`, checks of the service that are
    /// not in `keep` are removed (Consul's `?replace-existing-checks`).
    pub fn add_service(
        &mut self,
        mut s: ServiceInfo,
        replace_checks: Option<&[String]>,
    ) -> Result<(), LocalError> {
        if s.name.is_empty() {
            return Err(LocalError::MissingServiceName);
        }
        if s.id.is_empty() {
            s.id = s.name.clone();
        }
        let key = fold(&s.id);
        let live = self.services.get(&key).is_some_and(|e| e.service.is_some());
        if !live && self.services().count() >= SERVICES_MAX {
            return Err(LocalError::Full {
                what: "services",
                max: SERVICES_MAX,
            });
        }
        if let Some(keep) = replace_checks {
            let gone: Vec<String> = self
                .service_checks(&s.id)
                .map(|c| c.info.check_id.clone())
                .filter(|id| !keep.iter().any(|k| k.eq_ignore_ascii_case(id)))
                .collect();
            for id in gone {
                self.forget_check(&id)?;
            }
        }
        let unchanged = self.service(&s.id) == Some(&s);
        if !unchanged {
            let sync = self.mark(false);
            let id = s.id.clone();
            self.services.insert(
                key,
                ServiceEntry {
                    id,
                    service: Some(s),
                    sync,
                },
            );
        }
        self.refresh_aliases(self.clock);
        Ok(())
    }

    /// Remove a service and its checks.
    pub fn remove_service(&mut self, id: &str) -> Result<(), LocalError> {
        if self.service(id).is_none() {
            return Err(LocalError::UnknownService(id.to_string()));
        }
        let checks: Vec<String> = self
            .service_checks(id)
            .map(|c| c.info.check_id.clone())
            .collect();
        for c in checks {
            self.forget_check(&c)?;
        }
        let sync = self.mark(true);
        if let Some(e) = self.services.get_mut(&fold(id)) {
            e.service = None;
            e.sync = sync;
        }
        self.refresh_aliases(self.clock);
        Ok(())
    }

    /// Add or replace a check (its id defaults to its name; its node is this one). A
    /// service check's service must be registered here. An alias of a local service starts
    /// with the status it mirrors.
    pub fn add_check(&mut self, mut c: LocalCheck, now: Duration) -> Result<(), LocalError> {
        self.tick(now);
        if c.info.name.is_empty() {
            return Err(LocalError::MissingCheckName);
        }
        if c.info.check_id.is_empty() {
            c.info.check_id = c.info.name.clone();
        }
        if !c.info.service_id.is_empty() {
            let Some(s) = self.service(&c.info.service_id) else {
                return Err(LocalError::NoSuchServiceForCheck(c.info.service_id.clone()));
            };
            c.info.service_name = s.name.clone();
            c.info.service_tags = s.tags.clone();
        }
        c.info.node = self.node.name.clone();
        c.info.output = bound_output(std::mem::take(&mut c.info.output));
        let key = fold(&c.info.check_id);
        let live = self.checks.get(&key).is_some_and(|e| e.check.is_some());
        if !live && self.checks().count() >= CHECKS_MAX {
            return Err(LocalError::Full {
                what: "checks",
                max: CHECKS_MAX,
            });
        }
        self.initial_alias_status(&key, &mut c);
        c.ttl_deadline = c.ttl.map(|t| now + t);
        c.critical_since = (c.info.status == Health::Critical).then_some(now);
        if self.check(&c.info.check_id) == Some(&c) {
            return Ok(());
        }
        let sync = self.mark(false);
        let id = c.info.check_id.clone();
        self.checks.insert(
            key,
            CheckEntry {
                id,
                check: Some(c),
                sync,
            },
        );
        self.refresh_aliases(now);
        Ok(())
    }

    /// Remove a check.
    pub fn remove_check(&mut self, id: &str) -> Result<(), LocalError> {
        self.forget_check(id)?;
        self.refresh_aliases(self.clock);
        Ok(())
    }

    /// Note the caller's time: changes that take none are dated by the latest.
    fn tick(&mut self, now: Duration) {
        self.clock = self.clock.max(now);
    }

    /// Mark a check deleted (the alias checks are left for the caller to refresh).
    fn forget_check(&mut self, id: &str) -> Result<(), LocalError> {
        if self.check(id).is_none() {
            return Err(LocalError::UnknownCheck(id.to_string()));
        }
        let sync = self.mark(true);
        if let Some(e) = self.checks.get_mut(&fold(id)) {
            e.check = None;
            e.sync = sync;
        }
        Ok(())
    }

    /// Set a check's status and output (a TTL check's update, or a check run's result).
    /// A new status is pushed to the catalog at once; new output alone waits for the next
    /// full sync, as Consul's `check_update_interval` defers it, so a chatty check does not
    /// cost a Raft write per run. Returns whether anything changed.
    pub fn update_check(
        &mut self,
        id: &str,
        status: Health,
        output: String,
        now: Duration,
    ) -> Result<bool, LocalError> {
        self.tick(now);
        let changed = self.set_check(id, status, output, now)?;
        if changed {
            self.refresh_aliases(now);
        }
        Ok(changed)
    }

    /// [`LocalState::update_check`] without refreshing the alias checks.
    fn set_check(
        &mut self,
        id: &str,
        status: Health,
        output: String,
        now: Duration,
    ) -> Result<bool, LocalError> {
        let key = fold(id);
        let Some(c) = self.checks.get(&key).and_then(|e| e.check.as_ref()) else {
            return Err(LocalError::UnknownCheck(id.to_string()));
        };
        let output = bound_output(output);
        let status_changed = c.info.status != status;
        let output_changed = c.info.output != output;
        // A new status is a new revision, to push; new output alone is only seen here.
        let sync = status_changed.then(|| self.mark(false));
        self.version += u64::from(!status_changed && output_changed);
        let Some((e, c)) = self
            .checks
            .get_mut(&key)
            .and_then(|e| e.check.as_mut().map(|c| (&mut e.sync, c)))
        else {
            return Err(LocalError::UnknownCheck(id.to_string()));
        };
        c.ttl_deadline = c.ttl.map(|t| now + t);
        if !status_changed && !output_changed {
            return Ok(false);
        }
        c.info.output = output;
        if let Some(sync) = sync {
            c.info.status = status;
            c.critical_since = (status == Health::Critical).then_some(now);
            *e = sync;
        }
        Ok(true)
    }

    /// A TTL check's `pass`/`warn`/`fail`/`update`.
    pub fn update_ttl(
        &mut self,
        id: &str,
        status: Health,
        output: String,
        now: Duration,
    ) -> Result<bool, LocalError> {
        match self.check(id) {
            None => Err(LocalError::UnknownCheck(id.to_string())),
            Some(c) if c.ttl.is_none() => Err(LocalError::NotTtl(id.to_string())),
            Some(_) => self.update_check(id, status, output, now),
        }
    }

    /// Turn critical every TTL check whose deadline is at or before `now`, with Consul's
    /// output. Returns the ids expired.
    pub fn expire_ttls(&mut self, now: Duration) -> Vec<String> {
        self.tick(now);
        let due: Vec<(String, String)> = self
            .checks()
            .filter(|c| c.ttl_deadline.is_some_and(|d| d <= now))
            .filter(|c| c.info.status != Health::Critical || !c.info.output.starts_with("TTL"))
            .map(|c| (c.info.check_id.clone(), c.info.output.clone()))
            .collect();
        let mut expired = Vec::new();
        for (id, last) in due {
            let output = if last.is_empty() {
                "TTL expired".to_string()
            } else {
                format!("TTL expired (last output before timeout follows): {last}")
            };
            if self.set_check(&id, Health::Critical, output, now).is_ok() {
                if let Some(e) = self.checks.get_mut(&fold(&id)) {
                    if let Some(c) = e.check.as_mut() {
                        // Expired once; the next update re-arms it.
                        c.ttl_deadline = None;
                    }
                }
                expired.push(id);
            }
        }
        if !expired.is_empty() {
            self.refresh_aliases(now);
        }
        expired
    }

    /// The earliest TTL deadline, for the caller's timer.
    pub fn next_ttl_deadline(&self) -> Option<Duration> {
        self.checks().filter_map(|c| c.ttl_deadline).min()
    }

    /// Services whose checks have been critical longer than their
    /// `deregister_critical_service_after`: the caller removes them.
    pub fn critical_too_long(&self, now: Duration) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks()
            .filter(|c| !c.info.service_id.is_empty())
            .filter(|c| match (c.deregister_after, c.critical_since) {
                (Some(after), Some(since)) => now.saturating_sub(since) >= after,
                _ => false,
            })
            .map(|c| c.info.service_id.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Put a service in maintenance mode (a critical check with `reason`) or take it out.
    pub fn service_maintenance(
        &mut self,
        id: &str,
        enable: bool,
        reason: &str,
        now: Duration,
    ) -> Result<(), LocalError> {
        let Some(s) = self.service(id) else {
            return Err(LocalError::UnknownService(id.to_string()));
        };
        let check_id = format!("{SERVICE_MAINT_PREFIX}{}", s.id);
        let service_id = s.id.clone();
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this service, but no reason was provided. This \
             is a default message."
                .to_string()
        } else {
            reason.to_string()
        };
        self.maintenance(
            check_id,
            "Service Maintenance Mode",
            service_id,
            enable,
            notes,
            now,
        )
    }

    /// Put the node in maintenance mode or take it out.
    pub fn node_maintenance(&mut self, enable: bool, reason: &str, now: Duration) {
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this node, but no reason was provided. This is \
             a default message."
                .to_string()
        } else {
            reason.to_string()
        };
        let id = NODE_MAINT_ID.to_string();
        // Only an unknown check fails, and taking out what is not there is not an error.
        let _ = self.maintenance(
            id,
            "Node Maintenance Mode",
            String::new(),
            enable,
            notes,
            now,
        );
    }

    fn maintenance(
        &mut self,
        check_id: String,
        name: &str,
        service_id: String,
        enable: bool,
        notes: String,
        now: Duration,
    ) -> Result<(), LocalError> {
        if !enable {
            if self.check(&check_id).is_some() {
                self.remove_check(&check_id)?;
            }
            return Ok(());
        }
        if self.check(&check_id).is_some() {
            return Ok(());
        }
        let info = CheckInfo {
            check_id,
            name: name.to_string(),
            status: Health::Critical,
            notes,
            service_id,
            kind: "maintenance".to_string(),
            ..CheckInfo::default()
        };
        self.add_check(LocalCheck::new(info), now)
    }

    /// Whether a service is in maintenance mode.
    pub fn in_maintenance(&self, service_id: &str) -> bool {
        self.check(&format!("{SERVICE_MAINT_PREFIX}{service_id}"))
            .is_some()
    }

    /// A full sync's first half: mark every entry in sync, out of sync or deleted by
    /// comparing it with what the catalog holds for this node. Remote services and checks
    /// that this agent does not have are marked deleted, except what the servers manage
    /// themselves (the `consul` service, the `serfHealth` check).
    pub fn mark_against(&mut self, remote: &RemoteNode) {
        let node_same = remote.node.as_ref().is_some_and(|n| {
            n.id.eq_ignore_ascii_case(&self.node.id)
                && n.address == self.node.address
                && n.tagged_addresses == self.node.tagged_addresses
                && n.meta == self.node.meta
        });
        self.node_sync.in_sync = node_same;
        let remote_services: BTreeMap<String, &ServiceInfo> =
            remote.services.iter().map(|s| (fold(&s.id), s)).collect();
        for (key, e) in &mut self.services {
            if let Some(s) = e.service.as_mut() {
                let r = remote_services.get(key);
                if let (true, Some(r)) = (s.enable_tag_override, r) {
                    // The catalog's tags win (Consul's EnableTagOverride).
                    s.tags = r.tags.clone();
                }
                e.sync.in_sync = r.is_some_and(|r| *r == s);
            }
        }
        for (key, r) in &remote_services {
            if !self.services.contains_key(key) && key != CONSUL_SERVICE_ID && !self.keep_strays() {
                let sync = self.mark(true);
                let id = r.id.clone();
                let e = ServiceEntry {
                    id,
                    service: None,
                    sync,
                };
                self.services.insert(key.clone(), e);
            }
        }
        let remote_checks: BTreeMap<String, &CheckInfo> = remote
            .checks
            .iter()
            .map(|c| (fold(&c.check_id), c))
            .collect();
        for (key, e) in &mut self.checks {
            if let Some(c) = e.check.as_ref() {
                e.sync.in_sync = remote_checks
                    .get(key)
                    .is_some_and(|r| same_check(&c.info, r));
            }
        }
        for (key, r) in &remote_checks {
            if !self.checks.contains_key(key) && !r.check_id.eq_ignore_ascii_case(SERF_CHECK_ID) {
                let sync = self.mark(true);
                let id = r.check_id.clone();
                let e = CheckEntry {
                    id,
                    check: None,
                    sync,
                };
                self.checks.insert(key.clone(), e);
            }
        }
        // A deleted entry the catalog does not have is done with.
        self.services
            .retain(|k, e| !e.sync.deleted || remote_services.contains_key(k));
        self.checks
            .retain(|k, e| !e.sync.deleted || remote_checks.contains_key(k));
    }

    /// A registration of this node, with `service` and `checks` if given.
    fn registration(&self, service: Option<ServiceInfo>, checks: Vec<CheckInfo>) -> CatalogOp {
        CatalogOp::Register(Box::new(Registration {
            node: self.node.clone(),
            skip_node_update: self.node_sync.in_sync,
            service,
            checks,
        }))
    }

    /// The writes that bring the catalog in step with this state, at most `limit`, in
    /// Consul's order: the node, then services (deregistered or registered, each with its
    /// out-of-sync checks), then the checks left.
    pub fn pending(&self, limit: usize) -> Vec<(SyncKey, CatalogOp)> {
        let mut out = Vec::new();
        if !self.node_sync.in_sync {
            let key = SyncKey::Node {
                revision: self.node_sync.revision,
            };
            out.push((key, self.registration(None, Vec::new())));
        }
        let mut riding: Vec<&str> = Vec::new();
        for (key, e) in &self.services {
            if out.len() >= limit {
                return out;
            }
            if e.sync.in_sync {
                continue;
            }
            let sync_key = |checks| SyncKey::Service {
                key: key.clone(),
                revision: e.sync.revision,
                checks,
            };
            match &e.service {
                None => {
                    let op = CatalogOp::Deregister {
                        node: self.node.name.clone(),
                        service_id: Some(e.id.clone()),
                        check_id: None,
                    };
                    out.push((sync_key(Vec::new()), op));
                }
                Some(s) => {
                    let checks: Vec<(&String, &CheckEntry)> = self
                        .checks
                        .iter()
                        .filter(|(_, c)| !c.sync.in_sync)
                        .filter(|(_, c)| {
                            c.check
                                .as_ref()
                                .is_some_and(|c| c.info.service_id.eq_ignore_ascii_case(&s.id))
                        })
                        .collect();
                    riding.extend(checks.iter().map(|(k, _)| k.as_str()));
                    let infos = checks
                        .iter()
                        .filter_map(|(_, c)| c.check.as_ref().map(|c| c.info.clone()))
                        .collect();
                    let revs = checks
                        .iter()
                        .map(|(k, c)| ((*k).clone(), c.sync.revision))
                        .collect();
                    out.push((sync_key(revs), self.registration(Some(s.clone()), infos)));
                }
            }
        }
        for (key, e) in &self.checks {
            if out.len() >= limit {
                break;
            }
            if e.sync.in_sync || riding.contains(&key.as_str()) {
                continue;
            }
            let sync_key = SyncKey::Check {
                key: key.clone(),
                revision: e.sync.revision,
            };
            let op = match &e.check {
                None => CatalogOp::Deregister {
                    node: self.node.name.clone(),
                    service_id: None,
                    check_id: Some(e.id.clone()),
                },
                Some(c) => self.registration(None, vec![c.info.clone()]),
            };
            out.push((sync_key, op));
        }
        out
    }

    /// Record that the catalog took the write for `key`: its entry (if not changed since)
    /// is in sync, or, if deleted, forgotten. A registration carries the node's fields, so
    /// it also brings the node in sync.
    pub fn confirm(&mut self, key: &SyncKey) {
        match key {
            SyncKey::Node { revision } => {
                if self.node_sync.revision == *revision {
                    self.node_sync.in_sync = true;
                }
            }
            SyncKey::Service {
                key,
                revision,
                checks,
            } => {
                if let Some(e) = self.services.get_mut(key) {
                    if e.sync.revision == *revision {
                        if e.sync.deleted {
                            self.services.remove(key);
                        } else {
                            e.sync.in_sync = true;
                            self.node_sync.in_sync = true;
                        }
                    }
                }
                for (k, rev) in checks {
                    self.confirm(&SyncKey::Check {
                        key: k.clone(),
                        revision: *rev,
                    });
                }
            }
            SyncKey::Check { key, revision } => {
                if let Some(e) = self.checks.get_mut(key) {
                    if e.sync.revision == *revision {
                        if e.sync.deleted {
                            self.checks.remove(key);
                        } else {
                            e.sync.in_sync = true;
                        }
                    }
                }
            }
        }
    }

    /// Replace the node's own fields (a reload changed its meta or addresses).
    pub fn set_node(&mut self, node: NodeInfo) {
        if node != self.node {
            self.node = node;
            self.node_sync = self.mark(false);
        }
    }

    /// Whether every entry is in sync (nothing is pending).
    pub fn in_sync(&self) -> bool {
        self.node_sync.in_sync
            && self.services.values().all(|e| e.sync.in_sync)
            && self.checks.values().all(|e| e.sync.in_sync)
    }
}

#[cfg(test)]
#[path = "local_test.rs"]
mod local_test;
