//! Membership and user events reported to the shell.

use super::codec::UserEvent;
use super::member::MemberInfo;

/// Something the shell (and Consul's catalog / event watchers) should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member became known, or came back after failing / leaving.
    MemberJoined(MemberInfo),
    /// A member's address or tags changed.
    MemberUpdated(MemberInfo),
    /// A member left gracefully or was force-left (also reported for this node itself
    /// once its leave has propagated).
    MemberLeft(MemberInfo),
    /// The failure detector declared a member dead.
    MemberFailed(MemberInfo),
    /// A failed / left member was forgotten (after reconnect_timeout / tombstone_timeout, or
    /// force-leave with prune).
    MemberReaped(MemberInfo),
    /// A user event, delivered once per node (de-duplicated by Lamport time, name, payload).
    User(UserEvent),
}

impl Event {
    /// The member the event is about, if it is a membership event.
    pub fn member(&self) -> Option<&MemberInfo> {
        match self {
            Event::MemberJoined(m)
            | Event::MemberUpdated(m)
            | Event::MemberLeft(m)
            | Event::MemberFailed(m)
            | Event::MemberReaped(m) => Some(m),
            Event::User(_) => None,
        }
    }
}
