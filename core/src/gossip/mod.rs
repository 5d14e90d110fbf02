//! SWIM + Lifeguard gossip membership (sans-IO).
