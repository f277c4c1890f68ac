//! Webhook signature verification, the first step of the webhook trigger: each provider's scheme
//! checked on the raw body, before anything is parsed, in constant time (`hmac`'s `verify_slice`).
//!
//! | scheme | signature | signed content | timestamp |
//! | --- | --- | --- | --- |
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | the body | — |
//! | `standard-webhooks` | `webhook-signature: v1,<base64> [v1,<base64> …]` | `id.timestamp.body` | `webhook-timestamp` |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>…]` | `ts.body` | `t=` |
//! | `slack` | `X-Slack-Signature: v0=<hex>` | `v0:ts:body` | `X-Slack-Request-Timestamp` |
//! | `hmac-sha256` | a configured header, hex or base64, optional prefix | the body | — |
//!
//! During a secret rotation either secret verifies. A refusal says what kind of problem it was,
//! never which byte differed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// How a provider signs its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// GitHub: `X-Hub-Signature-256`.
    Github,
    /// Standard Webhooks (Svix and others): `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`.
    StandardWebhooks,
    /// Stripe: `Stripe-Signature`.
    Stripe,
    /// Slack: `X-Slack-Signature` and `X-Slack-Request-Timestamp`.
    Slack,
    /// Any provider that sends an HMAC-SHA256 of the body in one header (Shopify, say).
    HmacSha256 {
        /// The header that carries the signature.
        header: String,
        /// How the signature is written.
        encoding: Encoding,
        /// What precedes the signature in the header (like `sha256=`), if anything.
        prefix: String,
    },
}

/// How a generic signature is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lower- or upper-case hex.
    Hex,
    /// Standard base64.
    Base64,
}

/// The keys a delivery may be signed with: the current secret and, during a rotation, the
/// previous one.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} secret(s), not shown)", self.keys.len())
    }
}

impl Keys {
    /// The keys of `scheme` from the configured secrets (already resolved from `env:`): a
    /// Standard Webhooks `whsec_` secret is the base64 after the prefix; every other secret is
    /// used as its bytes.
    pub fn new(scheme: &Scheme, current: &str, previous: Option<&str>) -> Result<Keys, String> {
        let key = |secret: &str| -> Result<Vec<u8>, String> {
            if secret.is_empty() {
                return Err("the secret is empty".into());
            }
            match (scheme, secret.strip_prefix("whsec_")) {
                (Scheme::StandardWebhooks, Some(b64)) => {
                    // The decoder's error would quote a byte of the secret: say less.
                    let key = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| "the part after whsec_ is not valid base64".to_string())?;
                    if key.is_empty() {
                        return Err("the secret is empty after whsec_".into());
                    }
                    Ok(key)
                }
                _ => Ok(secret.as_bytes().to_vec()),
            }
        };
        let mut keys = vec![key(current)?];
        if let Some(p) = previous {
            keys.push(key(p)?);
        }
        Ok(Keys { keys })
    }
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A header the scheme needs is missing (401).
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The signature header is not in the scheme's form (401).
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// No signature matched any secret (401).
    #[error("signature does not match")]
    Mismatch,
    /// The timestamp is further in the past than the tolerance (400).
    #[error("timestamp is too old (more than {0} s)")]
    Stale(u64),
    /// The timestamp is further in the future than the tolerance (400).
    #[error("timestamp is in the future (more than {0} s)")]
    Future(u64),
}

impl Refusal {
    /// The HTTP status a provider gets: 400 for a timestamp outside the tolerance, else 401.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Stale(_) | Refusal::Future(_) => 400,
            _ => 401,
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Refusal> {
    let v = headers.get(name).ok_or(Refusal::Missing(name))?;
    v.to_str().map_err(|_| Refusal::Malformed(name))
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac
}

/// At most this many candidate signatures are looked at per delivery (providers send one or
/// two; an attacker could send thousands to make us hash the body for each).
const MAX_CANDIDATES: usize = 8;

/// Whether any of `signatures` is the HMAC of `parts` under any key. Each key's tag is computed
/// once; every tag is compared with every candidate in constant time (`subtle`), all pairs
/// checked, so the time taken does not tell which one matched. Candidates that cannot be an
/// HMAC-SHA256 (not 32 bytes) are skipped.
fn any_matches(keys: &Keys, parts: &[&[u8]], signatures: &[Vec<u8>]) -> bool {
    use subtle::ConstantTimeEq as _;
    let candidates: Vec<&Vec<u8>> = signatures
        .iter()
        .filter(|s| s.len() == 32)
        .take(MAX_CANDIDATES)
        .collect();
    let mut ok = subtle::Choice::from(0);
    for key in &keys.keys {
        let tag = mac(key, parts).finalize().into_bytes();
        for sig in &candidates {
            ok |= tag.as_slice().ct_eq(sig.as_slice());
        }
    }
    ok.into()
}

fn decode_hex(s: &str, name: &'static str) -> Result<Vec<u8>, Refusal> {
    hex::decode(s.trim()).map_err(|_| Refusal::Malformed(name))
}

fn decode_b64(s: &str, name: &'static str) -> Result<Vec<u8>, Refusal> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| Refusal::Malformed(name))
}

/// A unix timestamp within `tolerance` of `now`, in both directions.
fn check_time(
    ts: &str,
    name: &'static str,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Refusal> {
    let ts: u64 = ts.trim().parse().map_err(|_| Refusal::Malformed(name))?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let tol = tolerance.as_secs();
    if ts.saturating_add(tol) < now {
        return Err(Refusal::Stale(tol));
    }
    if ts > now.saturating_add(tol) {
        return Err(Refusal::Future(tol));
    }
    Ok(())
}

/// Verifies a delivery's signature on its raw body. `now` and `tolerance` bound the timestamp
/// of the schemes that sign one.
pub fn verify(
    scheme: &Scheme,
    keys: &Keys,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Refusal> {
    let matched = match scheme {
        Scheme::Github => {
            const H: &str = "x-hub-signature-256";
            let sig = header(headers, H)?
                .strip_prefix("sha256=")
                .ok_or(Refusal::Malformed(H))?;
            any_matches(keys, &[body], &[decode_hex(sig, H)?])
        }
        Scheme::StandardWebhooks => {
            const SIG: &str = "webhook-signature";
            const TS: &str = "webhook-timestamp";
            let id = header(headers, "webhook-id")?;
            let ts = header(headers, TS)?;
            let sigs = header(headers, SIG)?;
            check_time(ts, TS, now, tolerance)?;
            let sigs: Vec<Vec<u8>> = sigs
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .map(|s| decode_b64(s, SIG))
                .collect::<Result<_, _>>()?;
            if sigs.is_empty() {
                return Err(Refusal::Malformed(SIG));
            }
            any_matches(
                keys,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
                &sigs,
            )
        }
        Scheme::Stripe => {
            const H: &str = "stripe-signature";
            let value = header(headers, H)?;
            let mut ts = None;
            let mut sigs = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", t)) => ts = Some(t),
                    Some(("v1", s)) => sigs.push(decode_hex(s, H)?),
                    Some(_) => {} // other schemes (v0) do not count
                    None => return Err(Refusal::Malformed(H)),
                }
            }
            let ts = ts.ok_or(Refusal::Malformed(H))?;
            if sigs.is_empty() {
                return Err(Refusal::Malformed(H));
            }
            check_time(ts, H, now, tolerance)?;
            any_matches(keys, &[ts.as_bytes(), b".", body], &sigs)
        }
        Scheme::Slack => {
            const SIG: &str = "x-slack-signature";
            const TS: &str = "x-slack-request-timestamp";
            let sig = header(headers, SIG)?;
            let ts = header(headers, TS)?;
            let sig = sig.strip_prefix("v0=").ok_or(Refusal::Malformed(SIG))?;
            check_time(ts, TS, now, tolerance)?;
            any_matches(
                keys,
                &[b"v0:", ts.as_bytes(), b":", body],
                &[decode_hex(sig, SIG)?],
            )
        }
        Scheme::HmacSha256 {
            header: name,
            encoding,
            prefix,
        } => {
            const H: &str = "signature";
            let value = headers
                .get(name.as_str())
                .ok_or(Refusal::Missing(H))?
                .to_str()
                .map_err(|_| Refusal::Malformed(H))?;
            let sig = value
                .strip_prefix(prefix.as_str())
                .ok_or(Refusal::Malformed(H))?;
            let sig = match encoding {
                Encoding::Hex => decode_hex(sig, H)?,
                Encoding::Base64 => decode_b64(sig, H)?,
            };
            any_matches(keys, &[body], &[sig])
        }
    };
    if matched {
        Ok(())
    } else {
        Err(Refusal::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn github_documentation_vector() {
        // docs.github.com, "Validating webhook deliveries".
        let keys = Keys::new(&Scheme::Github, "It's a Secret to Everybody", None).unwrap();
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(
            verify(&Scheme::Github, &keys, &h, b"Hello, World!", at(0), TOL),
            Ok(())
        );
        assert_eq!(
            verify(&Scheme::Github, &keys, &h, b"Hello, World?", at(0), TOL),
            Err(Refusal::Mismatch)
        );
        let garbage = headers(&[("x-hub-signature-256", "sha256=zz")]);
        assert_eq!(
            verify(&Scheme::Github, &keys, &garbage, b"", at(0), TOL),
            Err(Refusal::Malformed("x-hub-signature-256"))
        );
        assert_eq!(
            verify(&Scheme::Github, &keys, &HeaderMap::new(), b"", at(0), TOL),
            Err(Refusal::Missing("x-hub-signature-256"))
        );
    }

    #[test]
    fn standard_webhooks_specification_vector_rotation_and_time() {
        let scheme = Scheme::StandardWebhooks;
        let keys = Keys::new(&scheme, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,bm9ldHZhbGlk v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(1614265330), TOL),
            Ok(())
        );
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(1614265330 + 301), TOL),
            Err(Refusal::Stale(300))
        );
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(1614265330 - 301), TOL),
            Err(Refusal::Future(300))
        );
        // Rotation: the old secret as the previous one still verifies.
        let rotated = Keys::new(
            &scheme,
            "whsec_c2VjcmV0LXRoYXQtaXMtbmV3LWFuZC1sb25n",
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        )
        .unwrap();
        assert_eq!(
            verify(&scheme, &rotated, &h, body, at(1614265330), TOL),
            Ok(())
        );
        let other = Keys::new(&scheme, "whsec_c2VjcmV0LXRoYXQtaXMtbmV3LWFuZC1sb25n", None).unwrap();
        assert_eq!(
            verify(&scheme, &other, &h, body, at(1614265330), TOL),
            Err(Refusal::Mismatch)
        );
    }

    fn hex_hmac(key: &[u8], parts: &[&[u8]]) -> String {
        hex::encode(mac(key, parts).finalize().into_bytes())
    }

    #[test]
    fn stripe_sdk_vector() {
        // stripe/stripe-dotnet, EventUtilityTest.cs with event_test_signature.json (its
        // trailing newline included); the v0 entry must not count.
        let body = "{\n  \"id\": \"evt_123\",\n  \"object\": \"event\",\n  \"account\": \"acct_123\",\n  \"api_version\": \"2017-05-25\",\n  \"created\": 1533204620,\n  \"data\": {\n    \"object\": {\n      \"id\": \"cus_123\",\n      \"object\": \"customer\",\n      \"created\": 123456789,\n      \"email\": \"test@stripe.com\",\n      \"livemode\": false,\n      \"metadata\": {}\n    }\n  },\n  \"livemode\": false,\n  \"pending_webhooks\": 1,\n  \"request\": {\n    \"id\": \"req_123\",\n    \"idempotency_key\": \"idempotency-key-123\"\n  },\n  \"type\": \"customer.created\"\n}\n";
        assert_eq!(body.len(), 484);
        let keys = Keys::new(&Scheme::Stripe, "webhook_secret", None).unwrap();
        let h = headers(&[("stripe-signature", "t=1533204620,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef")]);
        assert_eq!(
            verify(
                &Scheme::Stripe,
                &keys,
                &h,
                body.as_bytes(),
                at(1533204620),
                TOL
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &Scheme::Stripe,
                &keys,
                &h,
                body.trim_end().as_bytes(),
                at(1533204620),
                TOL
            ),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn stripe_counts_only_v1_entries_and_checks_time() {
        let scheme = Scheme::Stripe;
        let secret = "whsec_test_secret";
        let keys = Keys::new(&scheme, secret, None).unwrap();
        let body = br#"{"id": "evt_1", "type": "charge.succeeded"}"#;
        let good = hex_hmac(secret.as_bytes(), &[b"1700000000.", body]);
        let h = headers(&[(
            "stripe-signature",
            &format!("t=1700000000,v1={},v1={good},v0={good}", "00".repeat(32)),
        )]);
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(1700000000), TOL),
            Ok(())
        );
        let only_v0 = headers(&[("stripe-signature", &format!("t=1700000000,v0={good}"))]);
        assert_eq!(
            verify(&scheme, &keys, &only_v0, body, at(1700000000), TOL),
            Err(Refusal::Malformed("stripe-signature"))
        );
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(1700000000 + 1000), TOL),
            Err(Refusal::Stale(300))
        );
    }

    #[test]
    fn slack_documentation_vector() {
        // api.slack.com, "Verifying requests from Slack".
        let scheme = Scheme::Slack;
        let keys = Keys::new(&scheme, "8f742231b10e8888abcd99yyyzzz85a5", None).unwrap();
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let h = headers(&[
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
            ("x-slack-request-timestamp", "1531420618"),
        ]);
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(1531420618), TOL),
            Ok(())
        );
        assert_eq!(
            verify(&scheme, &keys, &h, &body[1..], at(1531420618), TOL),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn a_flood_of_candidate_signatures_is_cut_short() {
        let scheme = Scheme::Stripe;
        let keys = Keys::new(&scheme, "s", None).unwrap();
        let body = b"{}";
        let good = hex_hmac(b"s", &[b"100.", body]);
        // Thousands of empty candidates cost nothing and do not hide the real one.
        let flood = format!("t=100,v1={good}{}", ",v1=".repeat(5000));
        let h = headers(&[("stripe-signature", &flood)]);
        assert_eq!(verify(&scheme, &keys, &h, body, at(100), TOL), Ok(()));
        // Only the first 8 well-formed candidates are looked at.
        let decoys = format!(",v1={}", "ab".repeat(32)).repeat(8);
        let late = format!("t=100{decoys},v1={good}");
        let h = headers(&[("stripe-signature", &late)]);
        assert_eq!(
            verify(&scheme, &keys, &h, body, at(100), TOL),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn shopify_sdk_vector() {
        // Shopify/shopify-app-js, webhooks/__tests__/validate.test.ts.
        let scheme = Scheme::HmacSha256 {
            header: "x-shopify-hmac-sha256".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
        };
        let keys = Keys::new(&scheme, "test_secret_key", None).unwrap();
        let h = headers(&[(
            "x-shopify-hmac-sha256",
            "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=",
        )]);
        assert_eq!(
            verify(&scheme, &keys, &h, br#"{"foo": "bar"}"#, at(0), TOL),
            Ok(())
        );
    }

    #[test]
    fn generic_hmac_in_base64_and_hex_with_a_prefix() {
        let body = b"{\"order\": 1}";
        let secret = "shpss_secret";
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(mac(secret.as_bytes(), &[body]).finalize().into_bytes());
        let shopify = Scheme::HmacSha256 {
            header: "x-shopify-hmac-sha256".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
        };
        let keys = Keys::new(&shopify, secret, None).unwrap();
        let h = headers(&[("x-shopify-hmac-sha256", &b64)]);
        assert_eq!(verify(&shopify, &keys, &h, body, at(0), TOL), Ok(()));
        let prefixed = Scheme::HmacSha256 {
            header: "x-signature".into(),
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
        };
        let h = headers(&[(
            "x-signature",
            &format!("sha256={}", hex_hmac(secret.as_bytes(), &[body])),
        )]);
        assert_eq!(verify(&prefixed, &keys, &h, body, at(0), TOL), Ok(()));
        let no_prefix = headers(&[("x-signature", &hex_hmac(secret.as_bytes(), &[body]))]);
        assert_eq!(
            verify(&prefixed, &keys, &no_prefix, body, at(0), TOL),
            Err(Refusal::Malformed("signature"))
        );
    }

    #[test]
    fn secrets_are_never_shown_and_an_empty_one_is_refused() {
        let keys = Keys::new(&Scheme::Github, "hunter2", None).unwrap();
        assert!(!format!("{keys:?}").contains("hunter2"));
        assert!(Keys::new(&Scheme::Github, "", None).is_err());
        assert!(Keys::new(&Scheme::StandardWebhooks, "whsec_!!", None).is_err());
        assert!(Keys::new(&Scheme::StandardWebhooks, "whsec_", None).is_err());
        let e = Keys::new(&Scheme::StandardWebhooks, "whsec_c2Vj!mV0", None).unwrap_err();
        assert!(
            !e.contains('!'),
            "no byte of the secret in the message: {e}"
        );
    }
}
