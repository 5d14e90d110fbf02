//! Exactly one first configuration: the claim protocol behind `bootstrap_expect`.
//!
//! Servers that see different sets of peers (more servers than `bootstrap_expect`, started
//! at different times) must not initialize Raft with different first configurations: both
//! would sit at the same log id and could each elect a leader in term 1. So a server
//! initializes only after every member of its first configuration has *granted* it the
//! bootstrap:
//!
//! - The first configuration a server proposes is the `expect` lowest Raft ids it found;
//!   only the lowest of them, the claimer, tries to bootstrap.
//! - The claimer asks each member in increasing id order (itself first). A server grants
//!   at most one claimer at a time, records the grant durably before answering, and never
//!   claims while it holds another's grant. A formed server grants nobody.
//! - If a member refuses, the claimer releases what it was granted and tries again later
//!   (after a jittered pause). Having every grant, it initializes.
//!
//! Two initialized configurations would share a member that granted both claims, which a
//! durable, single grant rules out (disjoint ones need disjoint views: a network split
//! before any cluster exists, which no bootstrap rule can see through).

use std::io;
use std::sync::Arc;

use super::NodeId;
use crate::raft::backend::Space;
use crate::raft::Backend;

const KEY_CLAIM: &[u8] = b"bootstrap-claim";

/// Where a server keeps whose bootstrap claim it granted (durable: a restart must not
/// forget a grant).
pub trait ClaimStore: Send + Sync + 'static {
    fn holder(&self) -> io::Result<Option<NodeId>>;
    fn set_holder(&self, holder: Option<NodeId>) -> io::Result<()>;
}

/// A [`ClaimStore`] in the Raft store's metadata space.
pub struct BackendClaims<B>(pub Arc<B>);

impl<B: Backend> ClaimStore for BackendClaims<B> {
    fn holder(&self) -> io::Result<Option<NodeId>> {
        match self.0.get(Space::Meta, KEY_CLAIM)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bootstrap claim is corrupt")
                })?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    fn set_holder(&self, holder: Option<NodeId>) -> io::Result<()> {
        self.0.write(
            vec![(
                Space::Meta,
                KEY_CLAIM.to_vec(),
                holder.map(|h| h.to_be_bytes().to_vec()),
            )],
            true,
        )
    }
}
