//! Signed inbound write-backs, the Standard Webhooks way (the scheme Svix and others publish):
//! the sender signs `"{webhook-id}.{webhook-timestamp}.{raw body}"` with HMAC-SHA256 under a
//! shared `whsec_` key and sends `webhook-signature: v1,<base64>` (space-separated, several
//! during a key rotation). A request is accepted when any signature matches any configured key
//! and its timestamp is within 5 minutes of now; the id then guards against a replay
//! (`db::Changes::update_from_inbound`).

use actix_web::http::header::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::ApiError;
use crate::config::WebhookKey;

/// How far a write-back's timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// A verified write-back: its `webhook-id`, and when the sender sent it (`webhook-timestamp`,
/// seconds since the epoch), which orders write-backs delivered out of order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookId {
    pub id: String,
    pub sent_at: i64,
}

/// Checks the signature of a write-back (`now` in seconds since the epoch).
pub fn verify(
    keys: &[WebhookKey],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<WebhookId, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::InvalidSignature(format!("the {name} header is missing")))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let sent_at: i64 = timestamp.parse().map_err(|_| {
        ApiError::InvalidSignature("webhook-timestamp must be seconds since the epoch".into())
    })?;
    if (now - sent_at).abs() > TOLERANCE_SECS {
        return Err(ApiError::InvalidSignature(
            "webhook-timestamp is more than 5 minutes from now".into(),
        ));
    }
    let presented: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    let matches = keys.iter().any(|key| {
        presented.iter().any(|signature| {
            // `verify_slice` compares in constant time.
            signed(key, id, timestamp, body)
                .verify_slice(signature)
                .is_ok()
        })
    });
    if matches {
        Ok(WebhookId {
            id: id.to_string(),
            sent_at,
        })
    } else {
        Err(ApiError::InvalidSignature(
            "webhook-signature matches no configured key".into(),
        ))
    }
}

/// The MAC of one write-back under one key.
fn signed(key: &WebhookKey, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1,<base64>` for a write-back: what a sender puts in `webhook-signature` (for tests and for
/// the external system's implementers, who can compare against it).
pub fn sign(key: &WebhookKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = signed(key, id, &timestamp.to_string(), body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn key() -> WebhookKey {
        crate::config::WebhookKey::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("key")
    }

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature.to_string()),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).expect("header value"),
            );
        }
        headers
    }

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_specifications_example_verifies() {
        let body = br#"{"test": 2432232314}"#;
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            sign(&key(), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            signature
        );
        let id = verify(
            &[key()],
            &headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, signature),
            body,
            1614265330 + 10,
        );
        assert_eq!(
            id.ok(),
            Some(WebhookId {
                id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
                sent_at: 1614265330
            })
        );
    }

    #[test]
    fn a_tampered_body_a_stale_timestamp_or_an_unknown_key_is_refused() {
        let body = b"{}";
        let signature = sign(&key(), "msg_1", 1_000_000, body);
        let at = |now| {
            verify(
                &[key()],
                &headers("msg_1", 1_000_000, &signature),
                body,
                now,
            )
        };
        assert!(at(1_000_000).is_ok());
        assert!(at(1_000_000 + TOLERANCE_SECS + 1).is_err());
        assert!(at(1_000_000 - TOLERANCE_SECS - 1).is_err());
        assert!(verify(
            &[key()],
            &headers("msg_1", 1_000_000, &signature),
            b"{ }",
            1_000_000
        )
        .is_err());
        let other = WebhookKey::from_whsec("whsec_c2VjcmV0").expect("key");
        assert!(verify(
            std::slice::from_ref(&other),
            &headers("msg_1", 1_000_000, &signature),
            body,
            1_000_000
        )
        .is_err());
        // Any configured key, any listed signature: a rotation.
        let both = format!("v1,AAAA {signature}");
        assert!(verify(
            &[other, key()],
            &headers("msg_1", 1_000_000, &both),
            body,
            1_000_000
        )
        .is_ok());
    }
}
