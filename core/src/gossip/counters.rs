//! Counters the shell can export as metrics.

/// Monotonic counters. Rejected input is only ever counted here: it never panics and never
/// changes membership state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// UDP packets handed to `handle_packet`.
    pub packets_in: u64,
    /// UDP packets emitted.
    pub packets_out: u64,
    /// Bytes of UDP packets handed in.
    pub bytes_in: u64,
    /// Bytes of UDP packets emitted.
    pub bytes_out: u64,
    /// Stream payloads handed to `handle_stream`.
    pub streams_in: u64,
    /// Stream payloads emitted (requests and replies).
    pub streams_out: u64,
    /// Bytes of stream payloads handed in.
    pub stream_bytes_in: u64,
    /// Bytes of stream payloads emitted.
    pub stream_bytes_out: u64,
    /// Encrypted input no installed key could open (or encrypted input without a keyring).
    pub decrypt_failed: u64,
    /// Plaintext input while a keyring is configured.
    pub plaintext_rejected: u64,
    /// Input that did not decode.
    pub decode_failed: u64,
    /// Input larger than the configured maximum.
    pub oversize_dropped: u64,
    /// Well-formed messages that make no sense where they arrived (e.g. push-pull over UDP).
    pub unexpected_message: u64,
    /// Pings addressed to another node name.
    pub misdirected_ping: u64,
    /// Outputs dropped because the output queue was full.
    pub outputs_dropped: u64,
    /// Indirect probe requests refused because too many were in flight.
    pub relays_dropped: u64,
    /// New members refused because `member_count_max` was reached.
    pub members_rejected: u64,
    /// Duplicate user events suppressed.
    pub events_deduped: u64,
    /// User events older than the de-duplication window, ignored.
    pub events_too_old: u64,
    /// Times this node refuted a suspicion / death about itself.
    pub refutations: u64,
    /// Times this node told a member that it holds other data for it at an incarnation
    /// not below the one the member claimed (so that the member outbids it).
    pub conflicts_told: u64,
    /// Push-pulls started with a member held failed or left because it probed this node.
    pub stale_resyncs: u64,
    /// Push-pulls started with a prober this node did not know.
    pub unknown_resyncs: u64,
    /// Probes sent by this node.
    pub probes_sent: u64,
    /// Probes that got no ack (direct or indirect) by the end of the protocol period.
    pub probes_failed: u64,
    /// Alive messages ignored because the member was tombstoned / left / failed at that
    /// incarnation.
    pub stale_ignored: u64,
    /// Queued broadcasts dropped because the broadcast queue was full.
    pub broadcasts_dropped: u64,
}
