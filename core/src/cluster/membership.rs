//! Cluster membership: forming with `bootstrap_expect`, the leader's reconcile of the LAN
//! gossip pool into the Raft configuration, and a graceful leave.
//!
//! The Raft configuration changes only here, on the leader, from what the authenticated
//! LAN pool says (as Consul's leader does): no server RPC lets a caller add or remove a
//! server. The one other way is the operator's `remove-peer`, which the API serves.
//!
//! A server is known by its Raft id, which its gossip tags carry (`raft_id`; a hello to its
//! RPC port tells it too). A server whose data dir was wiped comes back at its old address
//! with a new id: the leader removes the old id and adds the new one as a new server. A
//! server whose address changed keeps its id, and the leader records its new address.
//! New servers join as learners first (without waiting for them to catch up: a server far
//! behind may need a snapshot) and are made voters once their log is close to the leader's.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::impls::BasicNode;
use openraft::storage::RaftStateMachine;
use openraft::AsyncRuntime;
use openraft::ChangeMembers;

use super::catalog_sync;
use super::now;
use super::sleep;
use super::Discovery;
use super::Rt;
use super::Server;
use super::WriteError;
use crate::fsm::Command;
use crate::gossip::MemberInfo;
use crate::gossip::MemberState;
use crate::raft::rpc::PeerReply;
use crate::raft::rpc::PeerRpc;
use crate::raft::rpc::PeerTransport;
use crate::raft::NodeId;
use crate::raft::Types;

/// A learner becomes a voter once its matched log index is at most this far behind the
/// leader's last log index.
pub const PROMOTE_LAG_MAX: u64 = 128;
/// The longest one reconcile round may take.
pub const RECONCILE_ROUND_MAX: Duration = Duration::from_secs(10);

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes the configuration; the leader's RPC address if known.
    #[error("not the leader")]
    NotLeader(Option<String>),
    /// No server of the configuration has that id or address.
    #[error("address {0:?} was not found in the Raft configuration")]
    NotFound(String),
    /// openraft refused or failed the change; the configuration may have changed.
    #[error("{0}")]
    Raft(String),
}

/// Whether a gossip member is a server of datacenter `dc` (Consul's `role` and `dc` tags).
pub fn is_server_of(m: &MemberInfo, dc: &str) -> bool {
    m.tags.get("role").is_some_and(|r| r == "consul")
        && m.tags.get("dc").is_some_and(|d| d.eq_ignore_ascii_case(dc))
}

/// A server member's server-RPC address: its gossip IP and its `port` tag.
pub fn rpc_addr_of(m: &MemberInfo) -> Option<String> {
    let port: u16 = m.tags.get("port")?.parse().ok()?;
    Some(std::net::SocketAddr::new(m.addr.ip(), port).to_string())
}

/// A server member's Raft id (its `raft_id` tag).
fn raft_id_of(m: &MemberInfo) -> Option<NodeId> {
    m.tags.get("raft_id")?.parse().ok()
}

impl<C, SM, T, D> Server<C, SM, T, D>
where
    C: Types,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
    T: PeerTransport<C>,
    D: Discovery,
{
    /// Live LAN servers of this datacenter, by RPC address.
    fn lan_servers(&self) -> Option<Vec<(MemberInfo, String)>> {
        let members = self.discovery.lan_members()?;
        Some(
            members
                .into_iter()
                .filter(|m| m.state.is_live() && is_server_of(m, &self.cfg.datacenter))
                .filter_map(|m| rpc_addr_of(&m).map(|a| (m, a)))
                .collect(),
        )
    }

    /// A live LAN server of this datacenter that expects a different number of servers
    /// (Consul refuses to bootstrap then).
    fn conflicting_expect(&self, expect: u64) -> Option<String> {
        let servers = self.lan_servers().filter(|_| expect > 0)?;
        servers
            .into_iter()
            .find(|(m, _)| {
                m.tags
                    .get("expect")
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e != 0 && e != expect)
            })
            .map(|(m, _)| m.name)
    }

    /// Form the cluster as Consul's `bootstrap_expect` does, or wait to be added to a
    /// formed one.
    ///
    /// Each round, the server says hello to the join addresses and to the servers of its
    /// datacenter on the LAN pool. Once `expect` servers (this one included) answer and none
    /// of them belongs to a cluster yet, it initializes Raft with that set: one of them wins
    /// the first election. A server that already has a membership never bootstraps again;
    /// one that finds a formed cluster waits for its leader to add it (through gossip).
    pub async fn form_cluster(&self, expect: u64, retry: Duration) {
        let mut told_formed = false;
        loop {
            if self.is_formed() {
                return;
            }
            // With gossip, servers are counted (and their `expect` checked) on the LAN pool
            // too, as Consul does: wait for it to start.
            if self.cfg.gossip && self.discovery.lan_members().is_none() {
                sleep::<C>(Duration::from_millis(100)).await;
                continue;
            }
            let mut join = self.discovery.join_addrs().await;
            for (_, addr) in self.lan_servers().unwrap_or_default() {
                if !join.contains(&addr) {
                    join.push(addr);
                }
            }
            let mut found: BTreeMap<NodeId, String> =
                BTreeMap::from([(self.cfg.id, self.cfg.rpc_addr.clone())]);
            let mut formed_peer = false;
            for addr in &join {
                if *addr == self.cfg.rpc_addr {
                    continue;
                }
                if let Ok(PeerReply::Hello(h)) = self
                    .transport
                    .call(addr, PeerRpc::Hello, self.cfg.hello_ttl)
                    .await
                {
                    if h.datacenter != self.cfg.datacenter {
                        continue;
                    }
                    formed_peer |= h.cluster_formed;
                    found.insert(h.id, addr.clone());
                }
            }
            let lan_count = self.lan_servers().map(|s| s.len() as u64);
            if formed_peer {
                if !told_formed {
                    tracing::info!(
                        "raft: found a formed cluster; waiting for its leader to add this server"
                    );
                    told_formed = true;
                }
            } else if let Some(name) = self.conflicting_expect(expect) {
                tracing::error!(
                    member = %name,
                    "raft: Member {name} has a conflicting expect value. All nodes should expect \
                    the same number."
                );
            } else if expect > 0
                && found.len() as u64 >= expect
                && lan_count.is_none_or(|n| n >= expect)
            {
                if self.sabotage().no_claim {
                    // Wrong on purpose: every server initializes with whatever it found.
                    let members: BTreeMap<NodeId, BasicNode> = found
                        .into_iter()
                        .map(|(id, addr)| (id, BasicNode { addr }))
                        .collect();
                    if self.raft.initialize(members).await.is_ok() {
                        return;
                    }
                } else {
                    // The first configuration: the `expect` lowest ids found.
                    let first: BTreeMap<NodeId, String> =
                        found.into_iter().take(expect as usize).collect();
                    let claimer = first.keys().next().copied().unwrap_or(self.cfg.id);
                    if claimer != self.cfg.id {
                        tracing::info!(
                            claimer,
                            "raft: bootstrap_expect reached; waiting for the lowest server to \
                            bootstrap",
                        );
                        // A claim of ours from before a lower server appeared must not
                        // block that server's.
                        if self.claims.holder().ok().flatten() == Some(self.cfg.id) {
                            self.release_all(first.values()).await;
                        }
                    } else if self.claim_all(&first).await {
                        let members: BTreeMap<NodeId, BasicNode> = first
                            .into_iter()
                            .map(|(id, addr)| (id, BasicNode { addr }))
                            .collect();
                        tracing::info!(
                            servers = members.len(),
                            "raft: bootstrap_expect reached; bootstrapping the cluster"
                        );
                        match self.raft.initialize(members).await {
                            Ok(()) => return,
                            Err(e) => {
                                tracing::info!(
                                    error = %e,
                                    "raft: initialize refused (already formed elsewhere?)",
                                )
                            }
                        }
                    } else {
                        sleep::<C>(self.jitter(Duration::from_millis(1_000))).await;
                    }
                }
            } else {
                tracing::info!(
                    found = found.len(),
                    expect,
                    "raft: waiting for servers to bootstrap"
                );
            }
            // Consul re-checks on every gossip join; a short poll does the same here.
            sleep::<C>(retry.min(Duration::from_millis(500))).await;
        }
    }

    /// Grant server `by` the bootstrap, unless this server is formed or granted another
    /// (the grant is durable before it is answered).
    pub(super) fn grant(&self, by: NodeId) -> bool {
        let _lock = self.claim_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_formed() {
            return false;
        }
        match self.claims.holder() {
            Ok(Some(holder)) if holder == by => true,
            Ok(Some(_)) | Err(_) => false,
            Ok(None) => self.claims.set_holder(Some(by)).is_ok(),
        }
    }

    /// Take back a grant held by `by`; whether it was held.
    pub(super) fn release(&self, by: NodeId) -> bool {
        let _lock = self.claim_lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.claims.holder() {
            Ok(Some(holder)) if holder == by => self.claims.set_holder(None).is_ok(),
            _ => false,
        }
    }

    /// Collect every member's grant, in increasing id order (this server's own first). On a
    /// refusal, release what was granted.
    async fn claim_all(&self, first: &BTreeMap<NodeId, String>) -> bool {
        let me = self.cfg.id;
        let mut asked: Vec<&String> = Vec::new();
        for (id, addr) in first {
            let ok = if *id == me {
                self.grant(me)
            } else {
                matches!(
                    self.transport
                        .call(addr, PeerRpc::Claim { by: me }, self.cfg.hello_ttl)
                        .await,
                    Ok(PeerReply::Claim { granted: true })
                )
            };
            if *id != me {
                // Released on failure too: a grant whose answer was lost is still a grant.
                asked.push(addr);
            }
            if !ok {
                tracing::info!(refused_by = id, "raft: bootstrap claim refused; retrying");
                self.release_all(asked).await;
                return false;
            }
        }
        true
    }

    /// Take back this server's claim here and at `addrs`.
    async fn release_all<'a>(&self, addrs: impl IntoIterator<Item = &'a String>) {
        for addr in addrs {
            if *addr != self.cfg.rpc_addr {
                let _ = self
                    .transport
                    .call(
                        addr,
                        PeerRpc::Release { by: self.cfg.id },
                        self.cfg.hello_ttl,
                    )
                    .await;
            }
        }
        self.release(self.cfg.id);
    }

    /// The leader's side of Consul's serf–Raft coupling, every `every` until Raft stops.
    /// A round that takes longer than [`RECONCILE_ROUND_MAX`] is given up (a configuration
    /// change that waits on a quorum it lost) and the next round starts afresh.
    pub async fn reconcile(&self, every: Duration) {
        loop {
            sleep::<C>(every).await;
            match Rt::<C>::timeout(RECONCILE_ROUND_MAX, self.reconcile_once()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "raft: reconciling the configuration failed");
                }
                Err(_) => {
                    tracing::warn!("raft: a reconcile round timed out; starting another");
                }
            }
            match Rt::<C>::timeout(RECONCILE_ROUND_MAX, self.reconcile_catalog_once()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "catalog: reconciling the LAN pool failed");
                }
                Err(_) => tracing::warn!("catalog: a reconcile round timed out"),
            }
        }
    }

    /// One round of reconciling, on the leader: alive LAN servers of this datacenter join
    /// (as learners, then voters once caught up), servers that left are removed, an id
    /// that moved address is updated and an address taken by a new id loses its old one.
    /// Failed servers stay (an operator removes them, or they come back).
    pub async fn reconcile_once(&self) -> Result<(), MembershipError> {
        if !self.raft.is_leader() {
            return Ok(());
        }
        // A change left half-made (joint) by the leader before: finish it first. openraft
        // does not on its own, and no other change can start until it is done.
        let m = self.metrics();
        let joint = m.membership_config.membership().get_joint_config().clone();
        if joint.len() > 1 {
            if let Some(target) = joint.last().cloned() {
                tracing::info!(?target, "raft: finishing a configuration change left joint");
                return self.change(ChangeMembers::ReplaceAllVoters(target)).await;
            }
        }
        let Some(members) = self.discovery.lan_members() else {
            return Ok(());
        };
        for member in members
            .iter()
            .filter(|m| is_server_of(m, &self.cfg.datacenter))
        {
            let Some(addr) = rpc_addr_of(member) else {
                continue;
            };
            match member.state {
                MemberState::Alive => self.reconcile_alive(member, &addr).await?,
                MemberState::Left => {
                    let id = raft_id_of(member).or_else(|| self.node_at(&addr));
                    if let Some(id) =
                        id.filter(|id| *id != self.cfg.id && self.node_addr(*id).is_some())
                    {
                        if self.removal_keeps_quorum(id).await {
                            tracing::info!(
                                server = %member.name,
                                %addr,
                                "raft: removing server that left",
                            );
                            self.remove_server(id).await?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// One round of the catalog reconcile, on the leader: at most
    /// [`catalog_sync::CATALOG_OPS_PER_ROUND`] writes that bring the catalog in step with
    /// the LAN pool.
    pub async fn reconcile_catalog_once(&self) -> Result<(), WriteError> {
        if !self.raft.is_leader() {
            return Ok(());
        }
        let (Some(reader), Some(members)) = (self.catalog.get(), self.discovery.lan_members())
        else {
            return Ok(());
        };
        let mut ops = Vec::new();
        let (dc, stale) = (&self.cfg.datacenter, self.sabotage().stale_serf_health);
        reader(&mut |c| ops = catalog_sync::ops_for(&members, c, dc, stale));
        for op in ops.into_iter().take(catalog_sync::CATALOG_OPS_PER_ROUND) {
            self.write(Command::Catalog(op)).await?;
        }
        Ok(())
    }

    async fn reconcile_alive(
        &self,
        member: &MemberInfo,
        addr: &str,
    ) -> Result<(), MembershipError> {
        let id = match raft_id_of(member) {
            Some(id) => id,
            // Without the tag, a hello tells the id (only for an address not yet known).
            None if self.node_at(addr).is_some() => return Ok(()),
            None => match self
                .transport
                .call(addr, PeerRpc::Hello, self.cfg.hello_ttl)
                .await
            {
                Ok(PeerReply::Hello(h)) if h.datacenter == self.cfg.datacenter => h.id,
                _ => return Ok(()),
            },
        };
        if id == self.cfg.id {
            return Ok(());
        }
        match self.node_addr(id) {
            Some(known) if known != addr => {
                tracing::info!(
                    server = %member.name,
                    id,
                    from = %known,
                    to = %addr,
                    "raft: server moved; updating its address",
                );
                let nodes = BTreeMap::from([(
                    id,
                    BasicNode {
                        addr: addr.to_string(),
                    },
                )]);
                self.change(ChangeMembers::SetNodes(nodes)).await
            }
            Some(_) => self.maybe_promote(id).await,
            None => {
                if let Some(old) = self.node_at(addr).filter(|old| *old != id) {
                    if !self.removal_keeps_quorum(old).await {
                        return Ok(());
                    }
                    tracing::info!(
                        server = %member.name,
                        old,
                        new = id,
                        %addr,
                        "raft: a new server took the address of an old one; removing the old id",
                    );
                    self.remove_server(old).await?;
                }
                tracing::info!(server = %member.name, id, %addr, "raft: adding server");
                self.raft
                    .add_learner(
                        id,
                        BasicNode {
                            addr: addr.to_string(),
                        },
                        false,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| MembershipError::Raft(e.to_string()))
            }
        }
    }

    /// Make learner `id` a voter once its log is close to the leader's.
    async fn maybe_promote(&self, id: NodeId) -> Result<(), MembershipError> {
        let m = self.metrics();
        if m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
        {
            return Ok(());
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index);
        match matched {
            Some(i) if i + PROMOTE_LAG_MAX >= last => {
                tracing::info!(id, "raft: learner caught up; making it a voter");
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Whether the voters left after removing `id` still have a working majority: this
    /// server and the voters that answer a hello with their own id now (a wiped server at a
    /// voter's address answers with a new id, a dead one not at all). A configuration
    /// change needs a majority of the new voters to commit; without one it would hang
    /// half-made, and every later write with it.
    async fn removal_keeps_quorum(&self, id: NodeId) -> bool {
        if self.sabotage().unguarded_removal {
            return true;
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let remaining: Vec<(NodeId, String)> = membership
            .voter_ids()
            .filter(|v| *v != id)
            .map(|v| {
                (
                    v,
                    membership
                        .get_node(&v)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let mut healthy = 0;
        for (v, addr) in &remaining {
            let ok = *v == self.cfg.id
                || matches!(
                    self.transport.call(addr, PeerRpc::Hello, self.cfg.hello_ttl).await,
                    Ok(PeerReply::Hello(h)) if h.id == *v
                );
            healthy += usize::from(ok);
        }
        let keeps = healthy > remaining.len() / 2;
        if !keeps {
            tracing::info!(
                id,
                healthy,
                voters = remaining.len(),
                "raft: not removing a server: the rest would lack a working majority"
            );
        }
        keeps
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, crate::raft::Node>,
    ) -> Result<(), MembershipError> {
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| match e.forward_to_leader() {
                Some(f) => {
                    MembershipError::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                }
                None => MembershipError::Raft(e.to_string()),
            })
    }

    /// Remove server `id` (voter or learner) from the configuration, on the leader.
    pub async fn remove_server(&self, id: NodeId) -> Result<(), MembershipError> {
        let m = self.metrics();
        if m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
        {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await
        } else {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await
        }
    }

    /// Remove the server named by its Raft id or RPC address (`operator raft remove-peer`),
    /// on the leader.
    pub async fn remove_peer(&self, peer: &str) -> Result<(), MembershipError> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let id = membership
            .nodes()
            .find(|(id, n)| id.to_string() == peer || n.addr == peer)
            .map(|(id, _)| *id)
            .ok_or_else(|| MembershipError::NotFound(peer.to_string()))?;
        if !self.raft.is_leader() {
            return Err(MembershipError::NotLeader(self.leader_addr()));
        }
        self.remove_server(id).await
    }

    /// The server (voter or learner) whose RPC address is `addr`.
    fn node_at(&self, addr: &str) -> Option<NodeId> {
        let m = self.metrics();
        let found = m
            .membership_config
            .membership()
            .nodes()
            .find(|(_, n)| n.addr == addr)
            .map(|(id, _)| *id);
        found
    }

    /// The RPC address the configuration holds for server `id`.
    fn node_addr(&self, id: NodeId) -> Option<String> {
        let m = self.metrics();
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone());
        addr
    }

    /// A graceful leave (after the gossip leave, so the leader does not add this server
    /// back): the leader removes itself; a follower waits up to `within` for the leader to
    /// remove it (the leader removes servers that left the LAN pool).
    pub async fn leave(&self, within: Duration) {
        let deadline = now::<C>() + within;
        while now::<C>() < deadline {
            let voters: Vec<NodeId> = self.raft.voter_ids().collect();
            if !voters.contains(&self.cfg.id) {
                tracing::info!("raft: left the Raft configuration");
                return;
            }
            if voters.len() == 1 {
                tracing::info!("raft: the only server stays in the Raft configuration");
                return;
            }
            if self.raft.is_leader() && self.removal_keeps_quorum(self.cfg.id).await {
                // Bounded by the leave's deadline: a removal that cannot commit (the quorum
                // is gone) must not hold the leave, and the agent's exit, for good.
                match Rt::<C>::timeout_at(deadline, self.remove_server(self.cfg.id)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "raft: leaving the configuration; retrying");
                    }
                    Err(_) => break,
                }
            }
            sleep::<C>(Duration::from_millis(200)).await;
        }
        tracing::warn!(
            "raft: still in the Raft configuration after {within:?}; the leader removes a server \
            that left",
        );
    }
}
