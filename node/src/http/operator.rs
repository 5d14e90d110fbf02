//! `/v1/operator/raft`: the Raft configuration, and removing a server from it.

use serde_json::json;
use serde_json::Value;
use tribune_core::gossip::MemberInfo;

use super::context::Ctx;
use super::context::Reply;
use super::error::ApiError;
use super::text;
use super::AgentInfo;
use crate::store::RaftServer;

/// Consul's node name for a server it cannot tie to a member.
const UNKNOWN_NODE: &str = "(unknown)";

/// `GET /v1/operator/raft/configuration`.
pub async fn raft_configuration(cx: Ctx) -> Reply {
    let api = &cx.api;
    let members = api.lan.as_ref().map(|p| p.members()).unwrap_or_default();
    let servers = servers_json(
        &api.store.raft_servers(),
        &members,
        &api.agent,
        api.store.leader(),
    );
    let mut applied = 0;
    api.store.with_state(&mut |sm| applied = sm.last_applied());
    Ok(cx.json(&json!({"Servers": servers, "Index": applied.max(1)})))
}

/// The servers as Consul lists them: `ID` is the Raft id, `Node` the member's name. A
/// server's id, when the store does not know it, and its name come from its gossip member
/// (tagged `raft_id`, or at its RPC address); this agent knows its own.
pub fn servers_json(
    servers: &[RaftServer],
    members: &[MemberInfo],
    agent: &AgentInfo,
    leader: Option<String>,
) -> Vec<Value> {
    let own_addr = format!("{}:{}", agent.advertise_ip, agent.server_port);
    servers
        .iter()
        .map(|s| {
            let own = s.address == own_addr || (s.id.is_some() && s.id == agent.raft_id);
            let by_id = |m: &&MemberInfo| {
                s.id.is_some_and(|id| m.tags.get("raft_id") == Some(&id.to_string()))
            };
            let at_addr = |m: &&MemberInfo| {
                crate::serf::rpc_addr(m).is_some_and(|a| a.to_string() == s.address)
            };
            let member = members
                .iter()
                .find(by_id)
                .or_else(|| members.iter().find(at_addr));
            let id =
                s.id.or(if own { agent.raft_id } else { None })
                    .or_else(|| member.and_then(|m| m.tags.get("raft_id")?.parse().ok()))
                    .map(|id| id.to_string());
            let (id, node) = if own {
                (
                    id.unwrap_or_else(|| agent.node_id.clone()),
                    agent.node_name.clone(),
                )
            } else {
                let node = member.map_or(UNKNOWN_NODE.to_string(), |m| m.name.clone());
                (id.unwrap_or_else(|| s.address.clone()), node)
            };
            json!({
                "ID": id, "Node": node, "Address": s.address,
                "Leader": leader.as_deref() == Some(s.address.as_str()),
                "Voter": s.voter, "ProtocolVersion": "3",
            })
        })
        .collect()
}

/// `DELETE /v1/operator/raft/peer?id=|address=`.
pub async fn raft_peer(cx: Ctx) -> Reply {
    let q = &cx.query;
    let Some(peer) = q
        .get("address")
        .or_else(|| q.get("id"))
        .filter(|p| !p.is_empty())
    else {
        return Err(ApiError::bad_request(
            "Must specify either ?id with the server's ID or ?address with IP:port of peer to \
             remove",
        ));
    };
    cx.api.store.remove_peer(peer.to_string()).await?;
    Ok(text(axum::http::StatusCode::OK, ""))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use tribune_core::gossip::MemberState;

    use super::*;
    use crate::http::testing::agent_info;
    use crate::http::testing::api_over;
    use crate::http::testing::get_json;
    use crate::hub::Hub;
    use crate::store;
    use crate::store::Consistency;
    use crate::store::ReadMeta;
    use crate::store::Store;
    use crate::store::StoreError;

    fn member(name: &str, addr: &str, tags: &[(&str, &str)]) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            addr: addr.parse::<SocketAddr>().unwrap(),
            state: MemberState::Alive,
            status: 1,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            incarnation: 1,
        }
    }

    fn server(id: Option<u64>, address: &str, voter: bool) -> RaftServer {
        RaftServer {
            id,
            address: address.into(),
            voter,
        }
    }

    #[test]
    fn ids_and_names_come_from_the_store_then_gossip() {
        let mut agent = agent_info();
        agent.raft_id = Some(7);
        let members = [
            member("n", "127.0.0.1:8301", &[("raft_id", "7"), ("port", "8300")]),
            member(
                "s2",
                "10.0.0.2:8301",
                &[("raft_id", "22"), ("port", "8300")],
            ),
            member("s3", "10.0.0.3:8301", &[("port", "8300")]),
            member(
                "s4",
                "10.0.0.4:8301",
                &[("raft_id", "44"), ("port", "8300")],
            ),
        ];
        let servers = [
            server(None, "127.0.0.1:8300", true),
            // Known to the store: its id finds the member whatever the address.
            server(Some(44), "10.0.0.40:8300", false),
            // Unknown id: the member at its RPC address has one...
            server(None, "10.0.0.2:8300", true),
            // ... or has none.
            server(None, "10.0.0.3:8300", true),
            // No member at all.
            server(Some(5), "10.0.0.5:8300", false),
            server(None, "10.0.0.6:8300", true),
        ];
        let got = servers_json(&servers, &members, &agent, Some("10.0.0.2:8300".into()));
        let rows: Vec<(&str, &str, &str, bool, bool)> = got
            .iter()
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap();
                (
                    s("ID"),
                    s("Node"),
                    s("Address"),
                    v["Voter"] == true,
                    v["Leader"] == true,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("7", "n", "127.0.0.1:8300", true, false),
                ("44", "s4", "10.0.0.40:8300", false, false),
                ("22", "s2", "10.0.0.2:8300", true, true),
                ("10.0.0.3:8300", "s3", "10.0.0.3:8300", true, false),
                ("5", "(unknown)", "10.0.0.5:8300", false, false),
                ("10.0.0.6:8300", "(unknown)", "10.0.0.6:8300", true, false),
            ]
        );
    }

    /// A store of three servers, one of them a learner.
    struct ThreeServers(Hub);

    impl Store for ThreeServers {
        fn write(
            &self,
            _cmd: tribune_core::fsm::Command,
        ) -> store::BoxFuture<'_, Result<tribune_core::fsm::Response, StoreError>> {
            Box::pin(async { Err(StoreError::NoLeader) })
        }
        fn read_barrier(
            &self,
            _: Consistency,
        ) -> store::BoxFuture<'_, Result<ReadMeta, StoreError>> {
            Box::pin(async {
                Ok(ReadMeta {
                    known_leader: true,
                    last_contact_ms: 0,
                })
            })
        }
        fn with_state(&self, f: &mut dyn FnMut(&tribune_core::fsm::StateMachine)) {
            f(&tribune_core::fsm::StateMachine::new())
        }
        fn hub(&self) -> &Hub {
            &self.0
        }
        fn leader(&self) -> Option<String> {
            Some("10.0.0.2:8300".into())
        }
        fn peers(&self) -> Vec<String> {
            vec!["127.0.0.1:8300".into(), "10.0.0.2:8300".into()]
        }
        fn raft_servers(&self) -> Vec<RaftServer> {
            vec![
                server(Some(1), "127.0.0.1:8300", true),
                server(Some(2), "10.0.0.2:8300", true),
                server(Some(3), "10.0.0.3:8300", false),
            ]
        }
    }

    #[tokio::test]
    async fn configuration_lists_learners_with_their_raft_ids() {
        let api = api_over(Arc::new(ThreeServers(Hub::new())));
        let v = get_json(&api, "/v1/operator/raft/configuration").await;
        let servers = v["Servers"].as_array().unwrap();
        let ids: Vec<&str> = servers.iter().map(|s| s["ID"].as_str().unwrap()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        let voters: Vec<bool> = servers.iter().map(|s| s["Voter"] == true).collect();
        assert_eq!(voters, [true, true, false]);
        assert_eq!(servers[0]["Node"], "n");
        assert_eq!(servers[1]["Leader"], true);
        assert_eq!(v["Index"], 1);
    }

    #[tokio::test]
    async fn dev_configuration_is_this_agent() {
        let api = crate::http::testing::dev_api();
        let v = get_json(&api, "/v1/operator/raft/configuration").await;
        assert_eq!(
            v["Servers"],
            json!([{
                "ID": "id", "Node": "n", "Address": "127.0.0.1:8300", "Leader": true,
                "Voter": true, "ProtocolVersion": "3",
            }])
        );
    }
}
