//! The change hub: wakes exactly the blocking queries a write could affect.
//!
//! One fan-out channel per watched key and one per watched prefix, shared by every request
//! watching it and removed when the last of them goes away. A write publishes what it
//! touched (a key, a deleted prefix, or everything for a tombstone reap) and the hub wakes:
//! - key watchers of that key, or of any key under a deleted prefix;
//! - prefix watchers whose prefix is a prefix of the touched key, or (for a deleted prefix)
//!   that start with it or that it starts with.
//!
//! Catalog reads watch one service name, one node or a whole table; a catalog write
//! publishes the names and tables it moved ([`CatalogChange`]) and wakes only those.
//!
//! Waiters subscribe *before* they read the state, so a write that lands between the read
//! and the wait is never lost (the channel remembers it was signalled).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use tokio::sync::watch;
use tribune_core::catalog::CatalogChange;
use tribune_core::catalog::Table;

/// What a blocking query watches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    Key(String),
    Prefix(String),
    /// One service name (any case).
    Service(String),
    /// One node, its services and checks (any case).
    Node(String),
    /// A whole catalog table.
    Table(CatalogTable),
}

/// [`Table`], ordered so that it can name a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CatalogTable {
    Nodes,
    Services,
    Checks,
}

impl From<Table> for CatalogTable {
    fn from(t: Table) -> Self {
        match t {
            Table::Nodes => CatalogTable::Nodes,
            Table::Services => CatalogTable::Services,
            Table::Checks => CatalogTable::Checks,
        }
    }
}

/// What a write touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Key(String),
    Tree(String),
    Catalog(CatalogChange),
    All,
}

impl Touched {
    /// From a KV operation (`KvOp::touched`), telling a tree delete apart.
    pub fn of(op: &tribune_core::kv::KvOp) -> Touched {
        use tribune_core::kv::KvOp;
        match op {
            KvOp::DeleteTree { prefix } => Touched::Tree(prefix.clone()),
            // An op of no one key (a tombstone reap) touches the whole KV tree, and no
            // catalog topic.
            other => match other.touched() {
                Some(k) => Touched::Key(k.to_string()),
                None => Touched::Tree(String::new()),
            },
        }
    }
}

#[derive(Default)]
struct Maps {
    keys: BTreeMap<String, watch::Sender<u64>>,
    prefixes: BTreeMap<String, watch::Sender<u64>>,
    /// Catalog topics, by [`catalog_key`].
    catalog: BTreeMap<String, watch::Sender<u64>>,
}

/// A catalog topic's name in [`Maps::catalog`]: names are folded, as the catalog's are.
fn catalog_key(topic: &Topic) -> Option<String> {
    match topic {
        Topic::Service(n) => Some(format!("s/{}", n.to_ascii_lowercase())),
        Topic::Node(n) => Some(format!("n/{}", n.to_ascii_lowercase())),
        Topic::Table(t) => Some(format!("t/{t:?}")),
        Topic::Key(_) | Topic::Prefix(_) => None,
    }
}

impl Maps {
    fn map<'a>(
        &'a mut self,
        topic: &Topic,
    ) -> (&'a mut BTreeMap<String, watch::Sender<u64>>, String) {
        match topic {
            Topic::Key(k) => (&mut self.keys, k.clone()),
            Topic::Prefix(p) => (&mut self.prefixes, p.clone()),
            other => (&mut self.catalog, catalog_key(other).unwrap_or_default()),
        }
    }
}

/// Shared by the store (publisher) and the HTTP layer / watches (subscribers).
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Maps>>,
}

/// A registration on one topic; dropping it unregisters (and frees the topic's channel if
/// it was the last).
pub struct Subscription {
    hub: Hub,
    topic: Topic,
    rx: Option<watch::Receiver<u64>>,
}

impl Subscription {
    /// Wait until a write that could affect the topic is published after the subscription
    /// was taken (or after the previous `changed` returned). Returns its index.
    pub async fn changed(&mut self) -> u64 {
        let rx = self.rx.as_mut().expect("live subscription");
        // The sender lives as long as any receiver (the hub only drops it with no receivers).
        let _ = rx.changed().await;
        *rx.borrow_and_update()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut maps = self
            .hub
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.rx.take());
        let (map, name) = maps.map(&self.topic);
        if let Some(tx) = map.get(&name) {
            if tx.receiver_count() == 0 {
                map.remove(&name);
            }
        }
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let mut maps = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, name) = maps.map(&topic);
        let rx = match map.get(&name) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(name, tx);
                rx
            }
        };
        drop(maps);
        Subscription {
            hub: self.clone(),
            topic,
            rx: Some(rx),
        }
    }

    /// Number of distinct topics being watched (keys, prefixes, catalog topics).
    pub fn topics(&self) -> (usize, usize, usize) {
        let maps = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (maps.keys.len(), maps.prefixes.len(), maps.catalog.len())
    }

    /// Wake the watchers a write at `index` that touched `touched` could affect.
    pub fn publish(&self, index: u64, touched: &Touched) {
        let maps = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let wake = |tx: &watch::Sender<u64>| {
            tx.send_replace(index);
        };
        match touched {
            Touched::All => {
                maps.keys.values().for_each(wake);
                maps.prefixes.values().for_each(wake);
                maps.catalog.values().for_each(wake);
            }
            Touched::Catalog(change) => {
                let tables = [
                    (change.nodes, CatalogTable::Nodes),
                    (change.services, CatalogTable::Services),
                    (change.checks, CatalogTable::Checks),
                ];
                let topics = change
                    .service_names
                    .iter()
                    .map(|n| Topic::Service(n.clone()))
                    .chain(change.node_names.iter().map(|n| Topic::Node(n.clone())))
                    .chain(
                        tables
                            .into_iter()
                            .filter(|t| t.0)
                            .map(|t| Topic::Table(t.1)),
                    );
                for topic in topics {
                    if let Some(tx) = catalog_key(&topic).and_then(|k| maps.catalog.get(&k)) {
                        wake(tx);
                    }
                }
            }
            Touched::Key(k) => {
                if let Some(tx) = maps.keys.get(k.as_str()) {
                    wake(tx);
                }
                for_each_prefix_of(&maps.prefixes, k, wake);
            }
            Touched::Tree(p) => {
                for_each_under(&maps.keys, p, wake);
                for_each_under(&maps.prefixes, p, wake);
                // Prefix watchers that the deleted prefix starts with.
                for_each_prefix_of(&maps.prefixes, p, wake);
            }
        }
    }
}

/// Call `f` on every entry whose name is a prefix of `s` (including "" and `s` itself).
fn for_each_prefix_of(
    map: &BTreeMap<String, watch::Sender<u64>>,
    s: &str,
    mut f: impl FnMut(&watch::Sender<u64>),
) {
    if map.is_empty() {
        return;
    }
    for (i, _) in s.char_indices().chain(std::iter::once((s.len(), ' '))) {
        if let Some(tx) = map.get(&s[..i]) {
            f(tx);
        }
    }
}

/// Call `f` on every entry whose name starts with `p`.
fn for_each_under(
    map: &BTreeMap<String, watch::Sender<u64>>,
    p: &str,
    mut f: impl FnMut(&watch::Sender<u64>),
) {
    for (_, tx) in map
        .range::<str, _>((Bound::Included(p), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(p))
    {
        f(tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woke(sub: &mut Subscription) -> bool {
        tokio::time::timeout(Duration::from_millis(50), sub.changed())
            .await
            .is_ok()
    }

    fn key(k: &str) -> Topic {
        Topic::Key(k.into())
    }
    fn prefix(p: &str) -> Topic {
        Topic::Prefix(p.into())
    }

    #[tokio::test]
    async fn key_write_wakes_only_its_watchers() {
        let hub = Hub::new();
        let mut ab = hub.subscribe(key("a/b"));
        let mut cd = hub.subscribe(key("c/d"));
        let mut pa = hub.subscribe(prefix("a/"));
        let mut pc = hub.subscribe(prefix("c/"));
        let mut all = hub.subscribe(prefix(""));
        let mut abc = hub.subscribe(key("a/bc"));
        hub.publish(5, &Touched::Key("a/b".into()));
        assert!(woke(&mut ab).await);
        assert!(woke(&mut pa).await);
        assert!(woke(&mut all).await);
        assert!(!woke(&mut cd).await);
        assert!(!woke(&mut pc).await);
        assert!(!woke(&mut abc).await);
        // Woken once per publish.
        assert!(!woke(&mut ab).await);
    }

    #[tokio::test]
    async fn publish_before_wait_is_not_lost() {
        let hub = Hub::new();
        let mut ab = hub.subscribe(key("a/b"));
        hub.publish(7, &Touched::Key("a/b".into()));
        assert_eq!(
            tokio::time::timeout(Duration::from_millis(50), ab.changed())
                .await
                .unwrap(),
            7
        );
    }

    #[tokio::test]
    async fn tree_delete_wakes_keys_and_prefixes_both_ways() {
        let hub = Hub::new();
        let mut k_under = hub.subscribe(key("a/b/c"));
        let mut k_other = hub.subscribe(key("b/x"));
        let mut p_under = hub.subscribe(prefix("a/b/"));
        let mut p_over = hub.subscribe(prefix("a"));
        let mut p_other = hub.subscribe(prefix("b/"));
        hub.publish(9, &Touched::Tree("a/".into()));
        assert!(woke(&mut k_under).await);
        assert!(woke(&mut p_under).await);
        assert!(woke(&mut p_over).await);
        assert!(!woke(&mut k_other).await);
        assert!(!woke(&mut p_other).await);
    }

    #[tokio::test]
    async fn a_catalog_change_wakes_only_the_names_and_tables_it_moved() {
        let hub = Hub::new();
        let mut web = hub.subscribe(Topic::Service("Web".into()));
        let mut db = hub.subscribe(Topic::Service("db".into()));
        let mut n1 = hub.subscribe(Topic::Node("n1".into()));
        let mut n2 = hub.subscribe(Topic::Node("n2".into()));
        let mut checks = hub.subscribe(Topic::Table(CatalogTable::Checks));
        let mut nodes = hub.subscribe(Topic::Table(CatalogTable::Nodes));
        let mut kv = hub.subscribe(prefix(""));
        let change = CatalogChange {
            checks: true,
            service_names: ["web".to_string()].into(),
            node_names: ["n1".to_string()].into(),
            ..CatalogChange::default()
        };
        hub.publish(4, &Touched::Catalog(change));
        assert!(
            woke(&mut web).await,
            "names are matched without regard to case"
        );
        assert!(woke(&mut n1).await);
        assert!(woke(&mut checks).await);
        assert!(!woke(&mut db).await);
        assert!(!woke(&mut n2).await);
        assert!(!woke(&mut nodes).await);
        assert!(!woke(&mut kv).await, "a catalog write wakes no KV watcher");
        hub.publish(5, &Touched::Key("k".into()));
        assert!(!woke(&mut web).await, "a KV write wakes no catalog watcher");
        hub.publish(6, &Touched::All);
        assert!(
            woke(&mut db).await,
            "a snapshot install wakes catalog watchers too"
        );
    }

    #[tokio::test]
    async fn reap_wakes_every_kv_watcher_and_no_catalog_one() {
        let hub = Hub::new();
        let mut k = hub.subscribe(key("x"));
        let mut p = hub.subscribe(prefix("y/"));
        let mut web = hub.subscribe(Topic::Service("web".into()));
        let reap = Touched::of(&tribune_core::kv::KvOp::ReapTombstones { up_to: 3 });
        hub.publish(3, &reap);
        assert!(woke(&mut k).await);
        assert!(woke(&mut p).await);
        assert!(
            !woke(&mut web).await,
            "a tombstone reap woke a catalog watcher"
        );
    }

    #[tokio::test]
    async fn topics_are_shared_and_freed() {
        let hub = Hub::new();
        let subs: Vec<_> = (0..10_000).map(|_| hub.subscribe(key("same"))).collect();
        let other = hub.subscribe(prefix("p/"));
        assert_eq!(hub.topics(), (1, 1, 0));
        drop(subs);
        assert_eq!(hub.topics(), (0, 1, 0));
        drop(other);
        assert_eq!(hub.topics(), (0, 0, 0));
    }

    #[test]
    fn touched_of_ops() {
        use tribune_core::kv::KvOp;
        assert_eq!(
            Touched::of(&KvOp::Delete { key: "k".into() }),
            Touched::Key("k".into())
        );
        assert_eq!(
            Touched::of(&KvOp::DeleteTree { prefix: "p".into() }),
            Touched::Tree("p".into())
        );
        assert_eq!(
            Touched::of(&KvOp::ReapTombstones { up_to: 3 }),
            Touched::Tree(String::new())
        );
    }
}
