//! Where the DNS interface finds the nodes it answers about: a [`Directory`]. What feeds it
//! today is this agent and the alive members of its LAN gossip pool ([`LanDirectory`]); the
//! catalog, or a client agent's local cache of it, can stand behind the same trait.

use std::net::IpAddr;

use crate::serf::Pool;

/// A node as DNS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    /// The server RPC port, for servers (the nodes of the `consul` service).
    pub server_port: Option<u16>,
}

/// The nodes of this datacenter that DNS answers about.
pub trait Directory: Send + Sync {
    /// The alive node named `name` (case-insensitively), if there is one.
    fn node(&self, name: &str) -> Option<Node>;

    /// The alive servers: the nodes of the `consul` service, each with its RPC port.
    fn servers(&self) -> Vec<Node>;
}

/// A fixed list of nodes (tests, and any caller that has its nodes at hand).
impl Directory for [Node] {
    fn node(&self, name: &str) -> Option<Node> {
        self.iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    fn servers(&self) -> Vec<Node> {
        self.iter()
            .filter(|n| n.server_port.is_some())
            .cloned()
            .collect()
    }
}

impl Directory for Vec<Node> {
    fn node(&self, name: &str) -> Option<Node> {
        self.as_slice().node(name)
    }

    fn servers(&self) -> Vec<Node> {
        self.as_slice().servers()
    }
}

/// This agent and the alive members of its LAN pool (if gossip runs): a member is a server
/// when tagged `role=consul`, at the RPC port of its `port` tag.
pub struct LanDirectory {
    own: Node,
    lan: Option<Pool>,
}

impl LanDirectory {
    pub fn new(own: Node, lan: Option<Pool>) -> LanDirectory {
        LanDirectory { own, lan }
    }

    /// The alive members other than this agent, as nodes.
    fn members(&self) -> impl Iterator<Item = Node> + '_ {
        let members = self.lan.iter().flat_map(|p| p.members());
        // Consul's "alive" (status 1) includes suspect members.
        members
            .filter(|m| m.status == 1 && m.name != self.own.name)
            .map(|m| {
                let server = m.tags.get("role").is_some_and(|r| r == "consul");
                let server_port = m
                    .tags
                    .get("port")
                    .and_then(|p| p.parse().ok())
                    .filter(|_| server);
                Node {
                    name: m.name,
                    ip: m.addr.ip(),
                    server_port,
                }
            })
    }
}

impl Directory for LanDirectory {
    fn node(&self, name: &str) -> Option<Node> {
        if self.own.name.eq_ignore_ascii_case(name) {
            return Some(self.own.clone());
        }
        self.members().find(|n| n.name.eq_ignore_ascii_case(name))
    }

    fn servers(&self) -> Vec<Node> {
        let own = Some(self.own.clone()).filter(|n| n.server_port.is_some());
        own.into_iter()
            .chain(self.members().filter(|n| n.server_port.is_some()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, server_port: Option<u16>) -> Node {
        Node {
            name: name.into(),
            ip: "10.0.0.1".parse().unwrap(),
            server_port,
        }
    }

    #[test]
    fn a_list_finds_names_case_insensitively_and_servers_by_port() {
        let nodes = vec![node("web-1", None), node("Server-1", Some(8300))];
        assert_eq!(nodes.node("WEB-1"), Some(node("web-1", None)));
        assert_eq!(nodes.node("nope"), None);
        assert_eq!(nodes.servers(), vec![node("Server-1", Some(8300))]);
    }

    #[test]
    fn without_gossip_the_agent_is_its_own_directory() {
        let d = LanDirectory::new(node("n1", Some(8300)), None);
        assert_eq!(d.node("N1"), Some(node("n1", Some(8300))));
        assert_eq!(d.node("n2"), None);
        assert_eq!(d.servers().len(), 1);
        let client = LanDirectory::new(node("c1", None), None);
        assert!(client.servers().is_empty());
    }
}
