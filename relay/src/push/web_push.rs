//! Web Push (RFC 8030) messages as a push service takes them: the payload encrypted for the
//! subscription (RFC 8291: ECDH on P-256 with the browser's key, HKDF with its auth secret,
//! then RFC 8188 `aes128gcm` records), and the sender identified by VAPID (RFC 8292: an ES256
//! JWT naming the push service's origin, signed with the relay's VAPID key).
//!
//! Only the push service sees the request; it learns the relay's VAPID key, the endpoint, the
//! time and the size, never the payload. Ferry's payloads say nothing anyway (a version and a
//! kind), so the encryption is there because browsers refuse unencrypted payloads.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

/// RFC 8188 record size used for every message (one record: payloads are tiny).
const RECORD_SIZE: u32 = 4096;
/// Longest payload one record carries (the record, less the tag and the padding delimiter).
pub const MAX_PAYLOAD_LEN: usize = RECORD_SIZE as usize - 16 - 1;
/// Longest VAPID JWT lifetime a push service accepts (RFC 8292 §2: at most 24 hours).
pub const MAX_VAPID_LIFETIME_SECS: u64 = 24 * 3600;

/// Why a message could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebPushError {
    /// The subscription's `p256dh` is not a P-256 public key, or `auth` is not 16 bytes.
    #[error("the subscription's keys are malformed: {0}")]
    BadSubscription(&'static str),
    /// The endpoint is not an `https://` URL (`http://` only for loopback, in tests).
    #[error("the push endpoint must be an https:// URL")]
    BadEndpoint,
    /// The payload does not fit one record.
    #[error("the payload is larger than {MAX_PAYLOAD_LEN} bytes")]
    PayloadTooLarge,
    /// The record layer failed (not expected with a checked payload).
    #[error("encryption failed")]
    Encryption,
}

/// A browser's push subscription: where to send and the keys to encrypt for.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The push service URL for this subscription.
    pub endpoint: String,
    /// The user agent's public key (uncompressed P-256 point, 65 bytes).
    pub p256dh: PublicKey,
    /// The user agent's authentication secret.
    pub auth: [u8; 16],
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint is a bearer capability at the push service: shown by origin only.
        f.debug_struct("Subscription")
            .field("origin", &origin(&self.endpoint))
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// From the endpoint and the two keys as browsers give them (`PushSubscription.toJSON()`:
    /// base64url without padding).
    pub fn new(endpoint: &str, p256dh: &str, auth: &str) -> Result<Self, WebPushError> {
        let key = URL_SAFE_NO_PAD
            .decode(p256dh.trim_end_matches('='))
            .map_err(|_| WebPushError::BadSubscription("p256dh is not base64url"))?;
        let auth = URL_SAFE_NO_PAD
            .decode(auth.trim_end_matches('='))
            .map_err(|_| WebPushError::BadSubscription("auth is not base64url"))?;
        Self::from_keys(endpoint, &key, &auth)
    }

    /// From the endpoint and the two keys as bytes (as `PushRegister` carries them).
    pub fn from_keys(endpoint: &str, p256dh: &[u8], auth: &[u8]) -> Result<Self, WebPushError> {
        origin(endpoint).ok_or(WebPushError::BadEndpoint)?;
        let p256dh = PublicKey::from_sec1_bytes(p256dh)
            .map_err(|_| WebPushError::BadSubscription("p256dh is not a P-256 point"))?;
        let auth = <[u8; 16]>::try_from(auth)
            .map_err(|_| WebPushError::BadSubscription("auth is not 16 bytes"))?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            p256dh,
            auth,
        })
    }
}

/// The origin (`scheme://host[:port]`) of an endpoint, which a VAPID token names as its
/// audience; `None` unless it is `https://`, or `http://` to a loopback address.
pub fn origin(endpoint: &str) -> Option<&str> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let host_end = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..host_end];
    let loopback = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| host == *h || host.strip_prefix(h).is_some_and(|p| p.starts_with(':')));
    let allowed = scheme == "https" || (scheme == "http" && loopback);
    (allowed && !host.is_empty()).then(|| &endpoint[..scheme.len() + 3 + host_end])
}

/// Encrypts `payload` for `subscription` (RFC 8291), with a fresh key and salt.
pub fn encrypt(subscription: &Subscription, payload: &[u8]) -> Result<Vec<u8>, WebPushError> {
    let sender = SecretKey::random(&mut OsRng);
    let mut salt = [0; 16];
    OsRng.fill_bytes(&mut salt);
    encrypt_with(subscription, payload, &sender, salt)
}

/// [`encrypt`] with the sender's key and the salt given (the RFC's example fixes them).
fn encrypt_with(
    subscription: &Subscription,
    payload: &[u8],
    sender: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, WebPushError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(WebPushError::PayloadTooLarge);
    }
    let ikm = input_keying_material(subscription, sender);
    let sender_public = sender.public_key().to_encoded_point(false);
    ece_native::encrypt(
        ikm,
        salt,
        sender_public.as_bytes(),
        std::iter::once(payload.to_vec()),
        RECORD_SIZE,
    )
    .map_err(|_| WebPushError::Encryption)
}

/// RFC 8291 §3.3: `IKM = HKDF(salt = auth, ikm = ECDH(sender, ua), info = "WebPush: info" ||
/// 0x00 || ua_public || sender_public, 32)`.
fn input_keying_material(subscription: &Subscription, sender: &SecretKey) -> [u8; 32] {
    let shared =
        p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), subscription.p256dh.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(subscription.p256dh.to_encoded_point(false).as_bytes());
    info.extend_from_slice(sender.public_key().to_encoded_point(false).as_bytes());
    let hkdf = Hkdf::<Sha256>::new(Some(&subscription.auth), shared.raw_secret_bytes());
    let mut ikm = [0; 32];
    // 32 bytes is far below HKDF-SHA256's limit: expand cannot fail.
    let _ = hkdf.expand(&info, &mut ikm);
    ikm
}

/// The relay's VAPID key (RFC 8292): a P-256 key the push services know the relay by.
/// Client apps subscribe with its public half (`applicationServerKey`).
#[derive(Clone)]
pub struct VapidKey(SecretKey);

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VapidKey").field(&self.public()).finish()
    }
}

impl VapidKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(SecretKey::random(&mut OsRng))
    }

    /// The key from its 32 secret bytes.
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Option<Self> {
        SecretKey::from_slice(bytes).ok().map(Self)
    }

    /// Its 32 secret bytes.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes().into())
    }

    /// The public key as browsers take it for `applicationServerKey`: the uncompressed point,
    /// base64url without padding.
    pub fn public(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.public_key().to_encoded_point(false).as_bytes())
    }

    /// The `Authorization` header for a message to `endpoint`: `vapid t=<JWT>, k=<public>`,
    /// the JWT (ES256) naming the endpoint's origin, expiring at `expires_at` (unix seconds,
    /// at most 24 hours ahead), with `subject` (a `mailto:` or `https:` contact for the push
    /// service's operator).
    pub fn authorization(
        &self,
        endpoint: &str,
        subject: &str,
        expires_at: u64,
    ) -> Result<String, WebPushError> {
        let audience = origin(endpoint).ok_or(WebPushError::BadEndpoint)?;
        let claims = serde_json::json!({ "aud": audience, "exp": expires_at, "sub": subject });
        let signing_key = p256::ecdsa::SigningKey::from(&self.0);
        let token = super::es256_jwt(
            &signing_key,
            r#"{"typ":"JWT","alg":"ES256"}"#,
            &claims.to_string(),
        );
        Ok(format!("vapid t={token}, k={}", self.public()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use p256::ecdsa::signature::Verifier as _;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    /// RFC 8291 Appendix A: the example message, byte for byte.
    #[test]
    fn the_rfc_8291_example_encrypts_to_the_rfc_bytes() {
        let subscription = Subscription::new(
            "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV",
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap();
        let sender =
            SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        assert_eq!(
            input_keying_material(&subscription, &sender).to_vec(),
            b64("S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg")
        );
        let body = encrypt_with(
            &subscription,
            b"When I grow up, I want to be a watermelon",
            &sender,
            salt,
        )
        .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    /// The receiving side, as a browser does it (RFC 8291 §3.4), for a random subscription.
    #[test]
    fn a_message_opens_with_the_subscription_key_only() {
        let ua = SecretKey::random(&mut OsRng);
        let auth = [7; 16];
        let p256dh = URL_SAFE_NO_PAD.encode(ua.public_key().to_encoded_point(false).as_bytes());
        let subscription = Subscription::new(
            "http://127.0.0.1:9/push/x",
            &p256dh,
            &URL_SAFE_NO_PAD.encode(auth),
        )
        .unwrap();
        let body = encrypt(&subscription, br#"{"v":1,"kind":"message"}"#).unwrap();
        let open = |ua: &SecretKey, auth: [u8; 16]| {
            // The sender's public key is the record header's key id (after salt, rs, idlen).
            let sender = PublicKey::from_sec1_bytes(&body[21..21 + 65]).unwrap();
            let shared = p256::ecdh::diffie_hellman(ua.to_nonzero_scalar(), sender.as_affine());
            let mut info = b"WebPush: info\0".to_vec();
            info.extend_from_slice(ua.public_key().to_encoded_point(false).as_bytes());
            info.extend_from_slice(sender.to_encoded_point(false).as_bytes());
            let mut ikm = [0; 32];
            Hkdf::<Sha256>::new(Some(&auth), shared.raw_secret_bytes())
                .expand(&info, &mut ikm)
                .unwrap();
            ece_native::decrypt(ikm, body.clone())
        };
        assert_eq!(open(&ua, auth).unwrap(), br#"{"v":1,"kind":"message"}"#);
        assert!(open(&ua, [8; 16]).is_err(), "another auth secret");
        assert!(
            open(&SecretKey::random(&mut OsRng), auth).is_err(),
            "another key"
        );
        // Two messages never share a key or salt.
        assert_ne!(encrypt(&subscription, b"x").unwrap()[..16], body[..16]);
        assert_eq!(
            encrypt(&subscription, &[0; MAX_PAYLOAD_LEN + 1]),
            Err(WebPushError::PayloadTooLarge)
        );
    }

    #[test]
    fn a_vapid_header_is_an_es256_jwt_for_the_push_service_origin() {
        let key = VapidKey::generate();
        let header = key
            .authorization(
                "https://push.example.net:8443/wpush/v2/abc?x=1",
                "mailto:ops@example.org",
                1_700_000_000,
            )
            .unwrap();
        let (token, public) = header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(public, key.public());
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let (jwt_header, claims) = signing_input.split_once('.').unwrap();
        let jwt_header: serde_json::Value = serde_json::from_slice(&b64(jwt_header)).unwrap();
        assert_eq!(jwt_header["alg"], "ES256");
        let claims: serde_json::Value = serde_json::from_slice(&b64(claims)).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["exp"], 1_700_000_000);
        assert_eq!(claims["sub"], "mailto:ops@example.org");
        // Verifies with the public key the header names, and only for these bytes.
        let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&b64(public)).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&b64(signature)).unwrap();
        assert!(
            verifying
                .verify(signing_input.as_bytes(), &signature)
                .is_ok()
        );
        let other = format!("{signing_input}x");
        assert!(verifying.verify(other.as_bytes(), &signature).is_err());
        // A key survives its secret bytes.
        let again = VapidKey::from_secret_bytes(&key.secret_bytes()).unwrap();
        assert_eq!(again.public(), key.public());
    }

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        for (endpoint, origin_is) in [
            (
                "https://fcm.googleapis.com/fcm/send/abc",
                Some("https://fcm.googleapis.com"),
            ),
            (
                "https://push.example.net:8443",
                Some("https://push.example.net:8443"),
            ),
            (
                "http://127.0.0.1:4000/push/1",
                Some("http://127.0.0.1:4000"),
            ),
            ("http://localhost:4000/p", Some("http://localhost:4000")),
            ("http://push.example.net/p", None),
            ("http://127.0.0.1.evil.example/p", None),
            ("ftp://push.example.net/p", None),
            ("https:///p", None),
            ("push.example.net/p", None),
        ] {
            assert_eq!(origin(endpoint), origin_is, "{endpoint}");
        }
        let key = URL_SAFE_NO_PAD.encode(
            SecretKey::random(&mut OsRng)
                .public_key()
                .to_encoded_point(false)
                .as_bytes(),
        );
        let auth = URL_SAFE_NO_PAD.encode([1; 16]);
        assert_eq!(
            Subscription::new("http://push.example.net/p", &key, &auth),
            Err(WebPushError::BadEndpoint)
        );
        assert!(matches!(
            Subscription::new("https://p.example/p", "AAAA", &auth),
            Err(WebPushError::BadSubscription(_))
        ));
        assert!(matches!(
            Subscription::new("https://p.example/p", &key, "AAAA"),
            Err(WebPushError::BadSubscription(_))
        ));
    }
}
