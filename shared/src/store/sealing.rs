//! Secrets and payloads at rest: signing secrets, retry tasks, event states, attempt
//! excerpts and dead-letter records are sealed with ChaCha20-Poly1305 under a key from
//! configuration before they reach Redis, so a copy of Redis (a backup, a replica, a
//! `MONITOR`) hands out neither subscribers' secrets nor candidates' data.
//!
//! A sealed value names its key (`sealed:v1:{key id}:{base64 nonce ‖ ciphertext ‖ tag}`),
//! so keys rotate without downtime: configure the new key and keep the old one in
//! `previous_keys`; values sealed under either open, and each value is sealed under the
//! new key the next time it is written. A plain value (written before sealing) still
//! opens.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Used when no key is configured, so a local `make run` works. Ingest and the
/// deliverer log a warning at start while it is in use.
pub const DEVELOPMENT_KEY: &str = "aG9va2xpbmUtZGV2ZWxvcG1lbnQta2V5LW5vdC1zZWM=";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("{0} is not a base64-encoded 32-byte key")]
    BadKey(&'static str),
    #[error("sealed with key {0}, which is not configured (secrets.key or secrets.previous_keys)")]
    UnknownKey(String),
    #[error("the sealed value is damaged or was sealed under another key")]
    Damaged,
}

struct SealingKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

impl SealingKey {
    fn parse(encoded: &str, name: &'static str) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| SealError::BadKey(name))?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey(name));
        }
        // The id identifies the key without revealing it.
        let id = Sha256::digest(&bytes)[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            id,
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }
}

#[derive(Debug)]
pub struct Sealer {
    current: SealingKey,
    previous: Vec<SealingKey>,
    development: bool,
}

impl Sealer {
    /// `key`: the key new values are sealed under (base64 of 32 bytes); `None` means the
    /// development key. `previous`: comma-separated keys that still open old values.
    pub fn new(
        key: Option<&SecretString>,
        previous: Option<&SecretString>,
    ) -> Result<Self, SealError> {
        let development = key.is_none_or(|k| k.expose_secret().trim().is_empty());
        let current = match key {
            Some(key) if !development => SealingKey::parse(key.expose_secret(), "secrets.key")?,
            _ => SealingKey::parse(DEVELOPMENT_KEY, "secrets.key")?,
        };
        let previous = previous
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default()
            .split(',')
            .filter(|k| !k.trim().is_empty())
            .map(|k| SealingKey::parse(k, "secrets.previous_keys"))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            current,
            previous,
            development,
        })
    }

    /// True when no key was configured and the well-known development key is in use.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Every payload at rest passes through here (retry tasks, event states), so it
    /// encrypts in place and encodes straight into the answer: one buffer, one string.
    pub fn seal(&self, plaintext: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext.as_bytes());
        // Fails only past ChaCha20's 256 GiB per message.
        let tag = self
            .current
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut sealed[NONCE_LEN..])
            .unwrap_or_default();
        sealed.extend_from_slice(&tag);
        let mut stored = String::with_capacity(
            PREFIX.len() + self.current.id.len() + 1 + sealed.len().div_ceil(3) * 4,
        );
        stored.push_str(PREFIX);
        stored.push_str(&self.current.id);
        stored.push(':');
        base64_simd::STANDARD.encode_append(&sealed, &mut stored);
        stored
    }

    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (id, encoded) = rest.split_once(':').ok_or(SealError::Damaged)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let mut sealed = base64_simd::STANDARD
            .decode_to_vec(encoded)
            .map_err(|_| SealError::Damaged)?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Damaged);
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        key.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                b"",
                ciphertext,
                Tag::from_slice(tag),
            )
            .map_err(|_| SealError::Damaged)?;
        sealed.truncate(sealed.len() - TAG_LEN);
        sealed.drain(..NONCE_LEN);
        String::from_utf8(sealed).map_err(|_| SealError::Damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::from(STANDARD.encode([byte; 32]))
    }

    #[test]
    fn seals_and_opens_and_never_shows_the_plaintext() {
        let sealer = Sealer::new(Some(&key(1)), None).expect("sealer");
        let sealed = sealer.seal("whsec_abc");
        assert!(sealed.starts_with("sealed:v1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(sealed, sealer.seal("whsec_abc"), "fresh nonce per seal");
        assert_eq!(sealer.open(&sealed), Ok("whsec_abc".to_owned()));
        assert!(!sealer.is_development());
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = Sealer::new(Some(&key(1)), None).expect("old");
        let sealed_before = old.seal("whsec_old");
        let rotated = Sealer::new(Some(&key(2)), Some(&key(1))).expect("rotated");
        assert_eq!(rotated.open(&sealed_before), Ok("whsec_old".to_owned()));
        let sealed_after = rotated.seal("whsec_new");
        assert!(matches!(
            old.open(&sealed_after),
            Err(SealError::UnknownKey(_))
        ));
        let forgotten = Sealer::new(Some(&key(2)), None).expect("forgot the old key");
        assert!(matches!(
            forgotten.open(&sealed_before),
            Err(SealError::UnknownKey(_))
        ));
    }

    /// The stored form is a contract with every value already in Redis: nonce ‖
    /// ciphertext ‖ tag, standard base64, built here with the reference encoder and the
    /// one-shot cipher call. Empty, short and multi-block plaintexts (ChaCha20 and the
    /// SIMD encoder both work in blocks) must cross both ways.
    #[test]
    fn the_stored_form_is_the_reference_encoding_both_ways() {
        use chacha20poly1305::aead::Aead;
        let sealer = Sealer::new(Some(&key(7)), None).expect("sealer");
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
        for plaintext in ["", "é", &"x".repeat(63), &"payload ✓ ".repeat(400)] {
            let nonce = [9u8; NONCE_LEN];
            let mut reference = nonce.to_vec();
            reference.extend(
                cipher
                    .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
                    .expect("encrypt"),
            );
            let stored = format!(
                "{PREFIX}{}:{}",
                sealer.current.id,
                STANDARD.encode(&reference)
            );
            assert_eq!(sealer.open(&stored).as_deref(), Ok(plaintext));

            let sealed = sealer.seal(plaintext);
            let encoded = sealed
                .strip_prefix(&format!("{PREFIX}{}:", sealer.current.id))
                .expect("prefix and key id");
            let bytes = STANDARD.decode(encoded).expect("standard base64");
            let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
            let opened = cipher
                .decrypt(Nonce::from_slice(nonce), ciphertext)
                .expect("the reference cipher opens it");
            assert_eq!(opened, plaintext.as_bytes());
        }
    }

    #[test]
    fn damage_and_bad_keys_are_errors_and_plain_values_pass() {
        let sealer = Sealer::new(Some(&key(1)), None).expect("sealer");
        let mut sealed = sealer.seal("whsec_abc");
        sealed.pop();
        sealed.push('A');
        assert!(sealer.open(&sealed).is_err());
        let truncated = format!("{PREFIX}{}:AAAA", sealer.current.id);
        assert_eq!(sealer.open(&truncated), Err(SealError::Damaged));
        assert_eq!(sealer.open("whsec_plain"), Ok("whsec_plain".to_owned()));
        let short = SecretString::from(STANDARD.encode([1u8; 16]));
        assert_eq!(
            Sealer::new(Some(&short), None).err(),
            Some(SealError::BadKey("secrets.key"))
        );
        assert!(Sealer::new(None, None).expect("dev").is_development());
    }
}
