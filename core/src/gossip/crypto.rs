//! Packet encryption: AES-GCM with a keyring.
//!
//! An encrypted packet (or stream payload) is `[ENCRYPTED_VERSION, nonce(12), ciphertext+tag]`
//! where the plaintext is a whole plaintext packet (see [`super::codec`]) and the version byte
//! is authenticated as associated data. Nonces come from the caller-seeded RNG. Keys are
//! base64 of 16, 24 or 32 bytes (AES-128/192/256). The primary key encrypts; every key is
//! tried on receive, so a rotation is: install the new key everywhere, make it primary
//! everywhere, remove the old one.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand_core::RngCore;

/// Version byte of encrypted packets.
pub const ENCRYPTED_VERSION: u8 = 2;
/// Nonce length.
pub const NONCE_LEN: usize = 12;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes added by encryption.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

type Aes192Gcm = AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

/// Keyring errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not valid base64.
    #[error("key is not valid base64")]
    Base64,
    /// Decoded length is not 16, 24 or 32.
    #[error("key must be 16, 24 or 32 bytes, got {0}")]
    Length(usize),
    /// The key is not in the ring.
    #[error("key not installed")]
    NotInstalled,
    /// The primary key cannot be removed.
    #[error("cannot remove the primary key")]
    RemovePrimary,
    /// The ring is full.
    #[error("keyring full")]
    Full,
    /// A keyring needs at least one key.
    #[error("empty keyring")]
    Empty,
}

/// Why an encrypted packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not an encrypted packet (wrong version byte or too short).
    #[error("not an encrypted packet")]
    NotEncrypted,
    /// No key authenticated it.
    #[error("no key could decrypt the packet")]
    NoKey,
}

#[derive(Clone)]
enum Cipher {
    A128(Box<Aes128Gcm>),
    A192(Box<Aes192Gcm>),
    A256(Box<Aes256Gcm>),
}

#[derive(Clone)]
struct Key {
    raw: Vec<u8>,
    cipher: Cipher,
}

impl Key {
    fn parse(b64: &str) -> Result<Key, KeyError> {
        let raw = STANDARD.decode(b64.trim()).map_err(|_| KeyError::Base64)?;
        let cipher = match raw.len() {
            16 => Cipher::A128(Box::new(Aes128Gcm::new(GenericArray::from_slice(&raw)))),
            24 => Cipher::A192(Box::new(Aes192Gcm::new(GenericArray::from_slice(&raw)))),
            32 => Cipher::A256(Box::new(Aes256Gcm::new(GenericArray::from_slice(&raw)))),
            n => return Err(KeyError::Length(n)),
        };
        Ok(Key { raw, cipher })
    }

    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
        let n = GenericArray::from_slice(nonce);
        let p = Payload { msg, aad };
        match &self.cipher {
            Cipher::A128(c) => c.encrypt(n, p).ok(),
            Cipher::A192(c) => c.encrypt(n, p).ok(),
            Cipher::A256(c) => c.encrypt(n, p).ok(),
        }
    }

    fn open(&self, nonce: &[u8], aad: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
        let n = GenericArray::from_slice(nonce);
        let p = Payload { msg, aad };
        match &self.cipher {
            Cipher::A128(c) => c.decrypt(n, p).ok(),
            Cipher::A192(c) => c.decrypt(n, p).ok(),
            Cipher::A256(c) => c.decrypt(n, p).ok(),
        }
    }
}

/// The installed keys: one primary (encrypts) and any number of secondaries (decrypt only).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>, // keys[0] is the primary
    max: usize,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

impl Keyring {
    /// A ring from base64 keys; the first becomes the primary. At most `max` keys.
    pub fn new(keys: &[String], max: usize) -> Result<Keyring, KeyError> {
        let first = keys.first().ok_or(KeyError::Empty)?;
        let mut ring = Keyring {
            keys: vec![Key::parse(first)?],
            max: max.max(1),
        };
        for k in &keys[1..] {
            ring.install(k)?;
        }
        Ok(ring)
    }

    /// Add a secondary key (no-op if already installed).
    pub fn install(&mut self, b64: &str) -> Result<(), KeyError> {
        let key = Key::parse(b64)?;
        if self.keys.iter().any(|k| k.raw == key.raw) {
            return Ok(());
        }
        if self.keys.len() >= self.max {
            return Err(KeyError::Full);
        }
        self.keys.push(key);
        Ok(())
    }

    /// Where the installed key `b64` stands in the ring.
    fn position(&self, b64: &str) -> Result<usize, KeyError> {
        let key = Key::parse(b64)?;
        self.keys
            .iter()
            .position(|k| k.raw == key.raw)
            .ok_or(KeyError::NotInstalled)
    }

    /// Make an installed key the primary.
    pub fn use_key(&mut self, b64: &str) -> Result<(), KeyError> {
        let i = self.position(b64)?;
        let k = self.keys.remove(i);
        self.keys.insert(0, k);
        Ok(())
    }

    /// Remove a secondary key.
    pub fn remove(&mut self, b64: &str) -> Result<(), KeyError> {
        let i = self.position(b64)?;
        if i == 0 {
            return Err(KeyError::RemovePrimary);
        }
        self.keys.remove(i);
        Ok(())
    }

    /// Installed keys in base64, primary first.
    pub fn list(&self) -> Vec<String> {
        self.keys.iter().map(|k| STANDARD.encode(&k.raw)).collect()
    }

    /// The primary key in base64.
    pub fn primary(&self) -> String {
        STANDARD.encode(&self.keys[0].raw)
    }

    /// Encrypt a plaintext packet with the primary key and a fresh nonce from `rng`.
    pub fn encrypt(&self, rng: &mut impl RngCore, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ct = self.keys[0]
            .seal(&nonce, &[ENCRYPTED_VERSION], plaintext)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(ENCRYPTED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt with any installed key.
    pub fn decrypt(&self, packet: &[u8]) -> Result<Vec<u8>, DecryptError> {
        if packet.len() < OVERHEAD || packet[0] != ENCRYPTED_VERSION {
            return Err(DecryptError::NotEncrypted);
        }
        let nonce = &packet[1..1 + NONCE_LEN];
        let ct = &packet[1 + NONCE_LEN..];
        self.keys
            .iter()
            .find_map(|k| k.open(nonce, &[ENCRYPTED_VERSION], ct))
            .ok_or(DecryptError::NoKey)
    }
}

/// A new random 32-byte key in base64 (for `tribune keygen`).
pub fn generate_key(rng: &mut impl RngCore) -> String {
    let mut raw = [0u8; 32];
    rng.fill_bytes(&mut raw);
    STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn keyring_ops_and_round_trip() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let k1 = generate_key(&mut rng);
        let k2 = STANDARD.encode([7u8; 16]);
        let k3 = STANDARD.encode([9u8; 24]);
        let mut ring = Keyring::new(std::slice::from_ref(&k1), 16).unwrap();
        ring.install(&k2).unwrap();
        ring.install(&k3).unwrap();
        assert_eq!(ring.list(), vec![k1.clone(), k2.clone(), k3.clone()]);
        assert_eq!(ring.remove(&k1), Err(KeyError::RemovePrimary));
        let ct = ring.encrypt(&mut rng, b"hello");
        assert_eq!(ct.len(), 5 + OVERHEAD);
        ring.use_key(&k3).unwrap();
        assert_eq!(ring.primary(), k3);
        assert_eq!(ring.decrypt(&ct).unwrap(), b"hello");
        let ct3 = ring.encrypt(&mut rng, b"x");
        ring.remove(&k1).unwrap();
        assert_eq!(ring.decrypt(&ct), Err(DecryptError::NoKey));
        assert_eq!(ring.decrypt(&ct3).unwrap(), b"x");
        assert_eq!(ring.install("!!"), Err(KeyError::Base64));
        assert_eq!(
            ring.install(&STANDARD.encode([1u8; 5])),
            Err(KeyError::Length(5))
        );
        assert_eq!(ring.decrypt(&[2, 1]), Err(DecryptError::NotEncrypted));
    }
}
