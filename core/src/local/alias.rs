//! Alias checks (Consul's `AliasService` / `AliasNode`): a check whose status mirrors the
//! health of another service instance, or of a node.
//!
//! Its status is the aggregate of the aliased node's own checks and, when a service is
//! aliased, that service's checks on it: critical if any is critical, else warning if any
//! is warning, else passing, with Consul's outputs (`All checks passing.`, `No checks
//! found.`, `Aliased check "<name>" failing: <output>`). An aliased service with no check
//! that is not registered on the node either makes the alias critical (`Service <id> could
//! not be found on node <node>`, the node as the definition names it, empty when it names
//! none, as Consul writes it).
//!
//! An alias of this agent's own node (no `AliasNode`, or this node's name with a service)
//! follows the local state: [`LocalState`] re-evaluates such checks after every change of
//! its services and checks, so they are never stale. An alias of another node follows the
//! catalog: the agent feeds [`aggregate`] what a query on that node returns and sets the
//! check with [`LocalState::update_check`].
//!
//! Consul counts an alias among the checks it aggregates when it is a node check aliasing
//! its own node, so such a check can hold itself critical; here a check never reads
//! itself. Checks are read in id order (Consul's local state reads them in map order), so
//! of several failing checks the output names the first critical one, or else the last
//! warning one.

use std::time::Duration;

use super::bound_output;
use super::fold;
use super::LocalState;
use crate::catalog::CheckInfo;
use crate::catalog::Health;

/// How many times one change re-evaluates the local alias checks at most: an alias of an
/// alias settles in the next round, so chains up to this deep settle at once (a deeper one,
/// or a cycle, is left to the next change).
pub const ALIAS_ROUNDS_MAX: usize = 8;

/// What an alias check mirrors: a service instance (by id) on a node, or a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alias {
    /// The aliased node as the definition names it; empty for this agent's own node.
    pub node: String,
    /// The aliased service's id; empty to alias only the node's own checks.
    pub service: String,
}

impl Alias {
    /// Whether the alias reads this agent's local state (its node is `own`): without a
    /// node, or with `own` and a service. (A bare alias of its own node by name follows the
    /// catalog, where that node's `serfHealth` check is.)
    pub fn follows_local(&self, own: &str) -> bool {
        self.node.is_empty() || (self.node.eq_ignore_ascii_case(own) && !self.service.is_empty())
    }
}

/// The aggregate of the checks an alias reads, before the aliased service's presence is
/// known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub status: Health,
    pub output: String,
    /// A check of the aliased service (or, for a node alias, a node check) was among them.
    pub service_found: bool,
}

impl Aggregate {
    /// The alias's status and output, once it is known whether the aliased service is
    /// registered on the node (asked only when `service_found` is false).
    pub fn resolve(self, alias: &Alias, service_exists: bool) -> (Health, String) {
        if !self.service_found && !service_exists {
            let output = format!(
                "Service {} could not be found on node {}",
                alias.service, alias.node
            );
            return (Health::Critical, output);
        }
        (self.status, self.output)
    }
}

/// Consul's aggregation of `checks` for `alias`: checks of other nodes and of other
/// services are skipped; the first critical check decides, else the last warning one.
pub fn aggregate<'a>(alias: &Alias, checks: impl IntoIterator<Item = &'a CheckInfo>) -> Aggregate {
    let mut out = Aggregate {
        status: Health::Passing,
        output: "No checks found.".to_string(),
        service_found: false,
    };
    for c in checks {
        if !alias.node.is_empty() && !alias.node.eq_ignore_ascii_case(&c.node) {
            continue;
        }
        let service_match = c.service_id.eq_ignore_ascii_case(&alias.service);
        if !c.service_id.is_empty() && !service_match {
            continue;
        }
        out.service_found |= service_match;
        match c.status {
            Health::Critical | Health::Warning => {
                out.status = c.status;
                out.output = format!(
                    "Aliased check {} failing: {}",
                    go_quote(c.name.as_bytes()),
                    c.output
                );
                if c.status == Health::Critical {
                    break;
                }
            }
            Health::Passing => {
                if out.status == Health::Passing {
                    out.output = "All checks passing.".to_string();
                }
            }
        }
    }
    out
}

/// `s` quoted as Go's `%q` quotes it: escapes for quotes, backslashes, control characters
/// and bytes that are not UTF-8 (the check names in alias outputs, the texts in `?filter`
/// errors).
pub fn go_quote(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// The local checks an alias may read, by key: the node's own, and each service's.
struct Sources {
    node: Vec<String>,
    services: std::collections::BTreeMap<String, Vec<String>>,
}

impl Sources {
    fn of(state: &LocalState) -> Sources {
        let mut out = Sources {
            node: Vec::new(),
            services: std::collections::BTreeMap::new(),
        };
        for (key, e) in &state.checks {
            let Some(c) = e.check.as_ref() else { continue };
            if c.info.service_id.is_empty() {
                out.node.push(key.clone());
            } else {
                let service = fold(&c.info.service_id);
                out.services.entry(service).or_default().push(key.clone());
            }
        }
        out
    }
}

impl LocalState {
    /// The status and output of the local alias check `key` (folded id) for `alias`.
    fn local_alias_status(&self, sources: &Sources, key: &str, alias: &Alias) -> (Health, String) {
        let mut keys: Vec<&String> = sources.node.iter().collect();
        if !alias.service.is_empty() {
            if let Some(s) = sources.services.get(&fold(&alias.service)) {
                keys.extend(s);
            }
            keys.sort_unstable();
        }
        let checks = keys
            .into_iter()
            .filter(|k| k.as_str() != key)
            .filter_map(|k| self.checks.get(k)?.check.as_ref())
            .map(|c| &c.info);
        let agg = aggregate(alias, checks);
        let exists = !alias.service.is_empty() && self.service(&alias.service).is_some();
        agg.resolve(alias, exists)
    }

    /// The status `c` (an alias check about to be added as `key`) starts with, if it
    /// follows the local state.
    pub(super) fn initial_alias_status(&self, key: &str, c: &mut super::LocalCheck) {
        let Some(alias) = c.alias.as_ref() else {
            return;
        };
        if !alias.follows_local(&self.node.name) {
            return;
        }
        let (status, output) = self.local_alias_status(&Sources::of(self), key, alias);
        c.info.status = status;
        c.info.output = bound_output(output);
    }

    /// Bring every alias check that follows the local state up to date, in at most
    /// [`ALIAS_ROUNDS_MAX`] rounds (each check read in id order sees the ones updated
    /// before it).
    pub(super) fn refresh_aliases(&mut self, now: Duration) {
        let own = self.node.name.clone();
        let aliases: Vec<(String, Alias)> = self
            .checks
            .iter()
            .filter_map(|(k, e)| {
                let a = e.check.as_ref()?.alias.as_ref()?;
                a.follows_local(&own).then(|| (k.clone(), a.clone()))
            })
            .collect();
        if aliases.is_empty() {
            return;
        }
        let sources = Sources::of(self);
        for _ in 0..ALIAS_ROUNDS_MAX {
            let mut changed = false;
            for (key, alias) in &aliases {
                let (status, output) = self.local_alias_status(&sources, key, alias);
                let Some(id) = self
                    .checks
                    .get(key)
                    .and_then(|e| e.check.as_ref())
                    .map(|c| c.info.check_id.clone())
                else {
                    continue;
                };
                changed |= self.set_check(&id, status, output, now).unwrap_or(false);
            }
            if !changed {
                break;
            }
        }
    }
}
