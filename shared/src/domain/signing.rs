//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! `webhook-signature` is `v1,<base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))>`;
//! several space-separated signatures may be sent while a secret is being rotated.

use super::Invalid;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

pub const SECRET_PREFIX: &str = "whsec_";
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// An endpoint's signing key. `Debug` never shows it, so it cannot leak into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    /// Accepts `whsec_<base64>` (as issued) or bare base64, decoding to 24–64 bytes.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let encoded = value.strip_prefix(SECRET_PREFIX).unwrap_or(value);
        let key = BASE64
            .decode(encoded)
            .map_err(|_| Invalid::new("secret", "must be whsec_ followed by base64"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(Invalid::new(
                "secret",
                format_args!("must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"),
            ));
        }
        Ok(Self { key })
    }

    /// Wraps freshly drawn random bytes; the caller owns the randomness.
    pub fn from_random_bytes(bytes: [u8; 32]) -> Self {
        Self {
            key: bytes.to_vec(),
        }
    }

    /// The `whsec_…` form given to the subscriber.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    /// `v1,<base64 signature>` for one message.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            BASE64.encode(
                self.mac(webhook_id, timestamp, body)
                    .finalize()
                    .into_bytes()
            )
        )
    }

    fn mac(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// True when any `v1,` entry of a `webhook-signature` header was made with this secret.
    /// `verify_slice` compares in constant time, as a receiver must.
    pub fn verify(&self, webhook_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|entry| {
            entry
                .strip_prefix("v1,")
                .and_then(|encoded| BASE64.decode(encoded).ok())
                .is_some_and(|given| {
                    self.mac(webhook_id, timestamp, body)
                        .verify_slice(&given)
                        .is_ok()
                })
        })
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The `webhook-signature` value for a delivery: one signature per active secret.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SigningSecret>,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|secret| secret.sign(webhook_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published test vector of the Standard Webhooks specification
    // (github.com/standard-webhooks/standard-webhooks, libraries' shared tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        let secret = SigningSecret::parse(SPEC_SECRET).expect("spec secret");
        assert_eq!(
            secret.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        assert!(secret.verify(
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY.as_bytes(),
            SPEC_SIGNATURE
        ));
    }

    #[test]
    fn verification_rejects_tampering() {
        let secret = SigningSecret::parse(SPEC_SECRET).expect("spec secret");
        let body = SPEC_BODY.as_bytes();
        let cases = [
            (SPEC_ID, SPEC_TIMESTAMP, body, SPEC_SIGNATURE, true),
            ("msg_other", SPEC_TIMESTAMP, body, SPEC_SIGNATURE, false),
            (SPEC_ID, SPEC_TIMESTAMP + 1, body, SPEC_SIGNATURE, false),
            (SPEC_ID, SPEC_TIMESTAMP, &b"{}"[..], SPEC_SIGNATURE, false),
            (
                SPEC_ID,
                SPEC_TIMESTAMP,
                body,
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                false,
            ),
            (
                SPEC_ID,
                SPEC_TIMESTAMP,
                body,
                "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                true,
            ),
            (SPEC_ID, SPEC_TIMESTAMP, body, "", false),
        ];
        for (id, ts, body, header, ok) in cases {
            assert_eq!(
                secret.verify(id, ts, body, header),
                ok,
                "{id} {ts} {header}"
            );
        }
    }

    #[test]
    fn rotation_header_carries_both_signatures() {
        let old = SigningSecret::parse(SPEC_SECRET).expect("spec secret");
        let new = SigningSecret::from_random_bytes([7; 32]);
        let header = signature_header([&new, &old], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes());
        assert_eq!(header.split(' ').count(), 2);
        assert!(old.verify(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes(), &header));
        assert!(new.verify(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes(), &header));
    }

    #[test]
    fn secrets_are_validated_and_redacted() {
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err(), "too short");
        assert!(SigningSecret::parse("whsec_!!!").is_err(), "not base64");
        let secret = SigningSecret::from_random_bytes([1; 32]);
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(
            SigningSecret::parse(&secret.expose()).expect("round trip"),
            secret
        );
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
    }
}
