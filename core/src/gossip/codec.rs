//! Wire format.
//!
//! A plaintext packet is `[VERSION, type, body...]` where `body` is the postcard encoding of
//! the message struct. A compound packet (type [`TYPE_COMPOUND`]) has as body the postcard
//! encoding of a `Vec<Vec<u8>>` whose items are `[type, body...]` parts (no version byte,
//! no nesting). Decoding is strict: trailing bytes, unknown types, nested compounds and
//! non-canonical encodings (anything that would not re-encode to the same bytes) are
//! errors, so every accepted byte string round-trips exactly.
//!
//! Encryption wraps the whole plaintext packet; see [`super::crypto`].

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::member::{MemberState, Tags};

/// Version byte of plaintext packets and stream payloads.
pub const VERSION: u8 = 1;
/// Type byte of a compound packet.
pub const TYPE_COMPOUND: u8 = 10;

/// Direct probe: "are you `target`? ack `seq`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Sequence number echoed in the ack.
    pub seq: u32,
    /// Name the prober expects to reach (a restarted process under another name won't ack).
    pub target: String,
    /// The target's incarnation as the prober knows it: if it is behind (e.g. the prober
    /// missed a refutation), the target piggybacks its current `Alive` on the ack.
    pub incarnation: u64,
}

/// Indirect probe request: "please ping `target` at `target_addr` and forward its ack".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndirectPing {
    /// The requester's sequence number, used in the forwarded ack / nack.
    pub seq: u32,
    /// Target name.
    pub target: String,
    /// Target address.
    pub target_addr: SocketAddr,
    /// Lifeguard: send a nack if the target does not answer in time.
    pub nack: bool,
}

/// Probe answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Sequence number of the ping.
    pub seq: u32,
}

/// Lifeguard: an indirect prober could not reach the target (so the requester's own
/// network is probably fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Sequence number of the indirect ping.
    pub seq: u32,
}

/// "`name` is alive at `incarnation`" (also carries address and tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// Member name.
    pub name: String,
    /// Member address.
    pub addr: SocketAddr,
    /// Member tags.
    pub tags: Tags,
    /// Incarnation.
    pub incarnation: u64,
}

/// "`from` suspects `name` at `incarnation`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspect {
    /// Suspected member.
    pub name: String,
    /// Its incarnation as the accuser knew it.
    pub incarnation: u64,
    /// The accuser.
    pub from: String,
}

/// Why a member is being removed from the live set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    /// Failure detector timeout.
    Failed,
    /// Graceful leave (sent by the member itself) or force-leave.
    Left,
    /// Force-leave with prune: drop the member entirely (tombstoned).
    Pruned,
}

/// "`name` is dead/left at `incarnation`", declared by `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dead {
    /// Member.
    pub name: String,
    /// Incarnation.
    pub incarnation: u64,
    /// Declarer (equal to `name` for a graceful leave).
    pub from: String,
    /// Failed, left or pruned.
    pub reason: DeadReason,
}

/// A user event with its Lamport time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Lamport time assigned by the originator.
    pub ltime: u64,
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

/// One member in a push-pull exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPullMember {
    /// Name.
    pub name: String,
    /// Address.
    pub addr: SocketAddr,
    /// Tags.
    pub tags: Tags,
    /// Incarnation.
    pub incarnation: u64,
    /// State as the sender sees it.
    pub state: MemberState,
}

/// Full-state exchange over a stream (TCP): request and reply have the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPull {
    /// Sender's node name.
    pub from: String,
    /// This is the reply to a request (so no reply is sent back).
    pub reply: bool,
    /// The request is part of a join.
    pub join: bool,
    /// Sender's user-event Lamport clock.
    pub event_ltime: u64,
    /// Sender's member list (including itself).
    pub members: Vec<PushPullMember>,
}

/// Every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Direct probe.
    Ping(Ping),
    /// Indirect probe request.
    IndirectPing(IndirectPing),
    /// Probe answer.
    Ack(Ack),
    /// Indirect probe failure notice.
    Nack(Nack),
    /// Alive broadcast.
    Alive(Alive),
    /// Suspect broadcast.
    Suspect(Suspect),
    /// Dead / left broadcast.
    Dead(Dead),
    /// User event broadcast.
    UserEvent(UserEvent),
    /// Push-pull (streams only).
    PushPull(PushPull),
    /// Several messages in one packet.
    Compound(Vec<Message>),
}

/// Why bytes were not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Zero-length input.
    #[error("empty packet")]
    Empty,
    /// Unknown version byte.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body did not decode.
    #[error("malformed body")]
    Body,
    /// Bytes left after the body.
    #[error("trailing bytes")]
    Trailing,
    /// A compound inside a compound.
    #[error("nested compound")]
    Nested,
    /// Decodes, but not to the canonical bytes.
    #[error("non-canonical encoding")]
    NonCanonical,
    /// Larger than allowed.
    #[error("too large")]
    TooLarge,
}

impl Message {
    /// Type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Ping(_) => 1,
            Message::IndirectPing(_) => 2,
            Message::Ack(_) => 3,
            Message::Nack(_) => 4,
            Message::Alive(_) => 5,
            Message::Suspect(_) => 6,
            Message::Dead(_) => 7,
            Message::UserEvent(_) => 8,
            Message::PushPull(_) => 9,
            Message::Compound(_) => TYPE_COMPOUND,
        }
    }

    /// Full packet: version byte, type byte, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        self.encode_part_into(&mut out);
        out
    }

    /// `[type, body]` without the version byte (a compound item).
    pub fn encode_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_part_into(&mut out);
        out
    }

    fn encode_part_into(&self, out: &mut Vec<u8>) {
        out.push(self.type_byte());
        match self {
            Message::Ping(m) => body(m, out),
            Message::IndirectPing(m) => body(m, out),
            Message::Ack(m) => body(m, out),
            Message::Nack(m) => body(m, out),
            Message::Alive(m) => body(m, out),
            Message::Suspect(m) => body(m, out),
            Message::Dead(m) => body(m, out),
            Message::UserEvent(m) => body(m, out),
            Message::PushPull(m) => body(m, out),
            Message::Compound(items) => {
                let parts: Vec<Vec<u8>> = items.iter().map(Message::encode_part).collect();
                body(&parts, out)
            }
        }
    }

    /// Strictly decode a full packet (see the module docs).
    pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
        let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
        if version != VERSION {
            return Err(CodecError::Version(version));
        }
        decode_part(rest, true)
    }

    /// The messages of a packet, compound or not.
    pub fn into_parts(self) -> Vec<Message> {
        match self {
            Message::Compound(items) => items,
            m => vec![m],
        }
    }
}

/// Exact encoded size of a compound packet holding parts of the given lengths.
pub fn compound_len(part_lens: impl IntoIterator<Item = usize>) -> usize {
    let mut n = 0usize;
    let mut total = 2; // version + type
    for len in part_lens {
        n += 1;
        total += varint_len(len) + len;
    }
    total + varint_len(n)
}

/// Build a compound packet directly from already-encoded parts.
pub fn encode_compound(parts: &[&[u8]]) -> Vec<u8> {
    let total = compound_len(parts.iter().map(|p| p.len()));
    let mut out = Vec::with_capacity(total);
    out.push(VERSION);
    out.push(TYPE_COMPOUND);
    push_varint(&mut out, parts.len());
    for p in parts {
        push_varint(&mut out, p.len());
        out.extend_from_slice(p);
    }
    out
}

/// Length of a postcard varint.
pub fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn push_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn body<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    // Serializing plain structs into a Vec cannot fail.
    if let Ok(bytes) = postcard::to_extend(v, std::mem::take(out)) {
        *out = bytes;
    }
}

/// Decode exactly `bytes` as a `T`, and insist that `T` re-encodes to exactly `bytes`
/// (rejecting over-long varints and other non-canonical forms).
fn exact<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| CodecError::Body)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing);
    }
    let same = if bytes.len() <= 1024 {
        // Hot path (every piggybacked part of every packet): no allocation.
        let mut buf = [0u8; 1025];
        matches!(postcard::to_slice(&v, &mut buf), Ok(again) if again == bytes)
    } else {
        let again = postcard::to_extend(&v, Vec::with_capacity(bytes.len()));
        matches!(again, Ok(again) if again == bytes)
    };
    if same {
        Ok(v)
    } else {
        Err(CodecError::NonCanonical)
    }
}

/// Read a minimal postcard varint (usize).
fn read_varint(bytes: &[u8]) -> Result<(usize, &[u8]), CodecError> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            let v = usize::try_from(v).map_err(|_| CodecError::Body)?;
            if varint_len(v) != i + 1 {
                return Err(CodecError::NonCanonical);
            }
            return Ok((v, &bytes[i + 1..]));
        }
    }
    Err(CodecError::Body)
}

fn decode_part(bytes: &[u8], allow_compound: bool) -> Result<Message, CodecError> {
    let (&ty, b) = bytes.split_first().ok_or(CodecError::Empty)?;
    Ok(match ty {
        1 => Message::Ping(exact(b)?),
        2 => Message::IndirectPing(exact(b)?),
        3 => Message::Ack(exact(b)?),
        4 => Message::Nack(exact(b)?),
        5 => Message::Alive(exact(b)?),
        6 => Message::Suspect(exact(b)?),
        7 => Message::Dead(exact(b)?),
        8 => Message::UserEvent(exact(b)?),
        9 => Message::PushPull(exact(b)?),
        TYPE_COMPOUND => {
            if !allow_compound {
                return Err(CodecError::Nested);
            }
            // Same bytes as postcard's `Vec<Vec<u8>>`, parsed without copying.
            let (count, mut rest) = read_varint(b)?;
            if count > rest.len() {
                return Err(CodecError::Body);
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let (len, r) = read_varint(rest)?;
                if len > r.len() {
                    return Err(CodecError::Body);
                }
                items.push(decode_part(&r[..len], false)?);
                rest = &r[len..];
            }
            if !rest.is_empty() {
                return Err(CodecError::Trailing);
            }
            Message::Compound(items)
        }
        t => return Err(CodecError::UnknownType(t)),
    })
}
