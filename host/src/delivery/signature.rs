//! Standard Webhooks signatures for callbacks: `whsec_` secrets and the `v1,<base64 HMAC>`
//! signature over `id.timestamp.body`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Decodes a `whsec_<base64>` secret into its key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").ok_or_else(|| {
        "a callback secret looks like whsec_<base64 of at least 24 bytes>".to_string()
    })?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
    if key.len() < 24 {
        return Err("a callback secret needs at least 24 random bytes".into());
    }
    Ok(key)
}

/// A fresh `whsec_` secret: 32 bytes from the operating system's cryptographic generator.
pub fn generate_secret() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("the operating system's random generator failed: {e}"))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// The `webhook-signature` value for a message: `v1,<base64 HMAC-SHA256(id.timestamp.body)>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    #[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature_vector() {
        // The example from the Standard Webhooks specification.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets() {
        assert!(decode_secret("nope").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        let s = generate_secret().unwrap();
        assert_eq!(decode_secret(&s).unwrap().len(), 32);
        assert_ne!(s, generate_secret().unwrap());
    }
}
