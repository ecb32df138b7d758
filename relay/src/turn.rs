//! TURN credentials for calls: coturn's REST scheme (`use-auth-secret`).
//!
//! The relay and the TURN servers share one secret (coturn's `static-auth-secret`) and nothing
//! else: no user database, no call to the TURN server. A credential is
//!
//! - `username = "<expiry, unix seconds>:<opaque id>"`, where the opaque id is 16 random
//!   bytes (base64url, no padding), so the TURN server's logs name no user or device;
//! - `password = base64(HMAC-SHA1(secret, username))` (standard base64, padded).
//!
//! The TURN server recomputes the password from the username, and refuses it once the expiry
//! has passed. The algorithm (HMAC-SHA1, base64) is coturn's, not a choice of ours: the
//! secret is what protects it, and it never leaves the relay and the TURN servers.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ferry_protocol::TurnCredentials;
use ferry_protocol::frames::{MAX_TURN_FIELD_LEN, MAX_TURN_URLS};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha1::Sha1;
use zeroize::Zeroizing;

use crate::config::TurnConfig;

/// How long credentials stay valid by default: 4 hours (a long call on one allocation).
pub const DEFAULT_TTL_SECS: u64 = 4 * 3600;
/// The shortest lifetime `--turn-ttl-secs` takes.
pub const MIN_TTL_SECS: u64 = 60;
/// The longest lifetime `--turn-ttl-secs` takes (a day).
pub const MAX_TTL_SECS: u64 = 86_400;
/// Random bytes in a username's opaque id.
pub const OPAQUE_ID_LEN: usize = 16;

/// Why the TURN settings cannot be used; the relay refuses to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnConfigError {
    /// URLs without a secret.
    #[error(
        "--turn-url is set but no secret: give --turn-secret-file (or --turn-secret), the TURN servers' static-auth-secret"
    )]
    NoSecret,
    /// A secret without URLs.
    #[error("a TURN secret is set but no --turn-url: name the TURN servers clients should use")]
    NoUrls,
    /// Both `--turn-secret` and `--turn-secret-file`.
    #[error("--turn-secret and --turn-secret-file are both set: give one")]
    TwoSecrets,
    /// The secret is empty (an empty file, or only a newline).
    #[error("the TURN secret is empty")]
    EmptySecret,
    /// The secret file could not be read.
    #[error("reading --turn-secret-file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A URL that is not `turn:`, `turns:` or `stun:`, or is too long.
    #[error("{0}")]
    BadUrl(String),
    /// More URLs than a `TurnCredentials` frame carries.
    #[error("at most {MAX_TURN_URLS} --turn-url are allowed, got {0}")]
    TooManyUrls(usize),
    /// A lifetime out of bounds.
    #[error("--turn-ttl-secs must be {MIN_TTL_SECS} to {MAX_TTL_SECS}, got {0}")]
    Ttl(u64),
}

/// Checks one TURN server URL: `turn:`, `turns:` or `stun:`, at most 256 bytes, no spaces.
pub fn check_url(url: &str) -> Result<(), String> {
    let known = ["turn:", "turns:", "stun:"];
    if !known.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(format!(
            "TURN URL {url:?} must start with turn:, turns: or stun:"
        ));
    }
    if url.len() > MAX_TURN_FIELD_LEN {
        return Err(format!(
            "TURN URL {url:?} is longer than {MAX_TURN_FIELD_LEN} bytes"
        ));
    }
    if url.len() <= "turns:".len() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("TURN URL {url:?} names no server"));
    }
    Ok(())
}

/// Mints TURN credentials for the configured servers.
pub struct TurnIssuer {
    urls: Vec<String>,
    secret: Zeroizing<Vec<u8>>,
    ttl_secs: u64,
}

impl std::fmt::Debug for TurnIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnIssuer")
            .field("urls", &self.urls)
            .field("secret", &"<redacted>")
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl TurnIssuer {
    /// An issuer for `urls` (checked with [`check_url`], at most 8) sharing `secret` with the
    /// TURN servers; credentials live `ttl_secs` (60 to 86 400).
    pub fn new(
        urls: Vec<String>,
        secret: impl Into<Vec<u8>>,
        ttl_secs: u64,
    ) -> Result<Self, TurnConfigError> {
        let secret = Zeroizing::new(secret.into());
        if urls.is_empty() {
            return Err(TurnConfigError::NoUrls);
        }
        if urls.len() > MAX_TURN_URLS {
            return Err(TurnConfigError::TooManyUrls(urls.len()));
        }
        for url in &urls {
            check_url(url).map_err(TurnConfigError::BadUrl)?;
        }
        if secret.is_empty() {
            return Err(TurnConfigError::EmptySecret);
        }
        if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(TurnConfigError::Ttl(ttl_secs));
        }
        Ok(Self {
            urls,
            secret,
            ttl_secs,
        })
    }

    /// The issuer the settings ask for: `None` when TURN is not configured (no URLs and no
    /// secret). Reads `--turn-secret-file` (a trailing newline is not part of the secret).
    pub fn from_config(config: &TurnConfig) -> Result<Option<Self>, TurnConfigError> {
        let secret = match (&config.secret, &config.secret_file) {
            (Some(_), Some(_)) => return Err(TurnConfigError::TwoSecrets),
            (Some(secret), None) => Some(Zeroizing::new(secret.as_bytes().to_vec())),
            (None, Some(path)) => {
                let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|source| {
                    TurnConfigError::SecretFile {
                        path: path.clone(),
                        source,
                    }
                })?);
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                Some(bytes)
            }
            (None, None) => None,
        };
        match (config.urls.is_empty(), secret) {
            (true, None) => Ok(None),
            (false, None) => Err(TurnConfigError::NoSecret),
            (true, Some(_)) => Err(TurnConfigError::NoUrls),
            (false, Some(secret)) => {
                Self::new(config.urls.clone(), secret.to_vec(), config.ttl_secs).map(Some)
            }
        }
    }

    /// The TURN server URLs handed out.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// How long credentials stay valid, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// New credentials, valid from `now_s` (Unix seconds) for the configured lifetime, under a
    /// fresh random opaque id.
    pub fn issue(&self, now_s: u64) -> TurnCredentials {
        let mut id = [0u8; OPAQUE_ID_LEN];
        OsRng.fill_bytes(&mut id);
        let expires_at = now_s.saturating_add(self.ttl_secs);
        let username = format!("{expires_at}:{}", URL_SAFE_NO_PAD.encode(id));
        TurnCredentials {
            urls: self.urls.clone(),
            password: password(&self.secret, &username),
            username,
            expires_at,
        }
    }
}

/// coturn's REST password for `username`: base64 (standard, padded) of
/// HMAC-SHA1(`secret`, `username`).
pub fn password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "turn:127.0.0.1:3478?transport=udp";

    fn issuer(ttl_secs: u64) -> TurnIssuer {
        TurnIssuer::new(vec![URL.into()], "ferry-test-secret", ttl_secs).unwrap()
    }

    /// Expected values computed outside Rust, with OpenSSL:
    /// `printf '%s' USER | openssl dgst -sha1 -hmac SECRET -binary | base64`.
    #[test]
    fn the_password_is_coturns() {
        let cases = [
            (
                "ferry-test-secret",
                "1700003600:AAAAAAAAAAAAAAAAAAAAAA",
                "1XVLeeQHzMbdpw0WYsx3tzsLc3E=",
            ),
            (
                "north",
                "1700003600:00112233445566778899aabbccddeeff",
                "Ngd5KBW47tc71j0bYWw30ZkipKc=",
            ),
        ];
        for (secret, username, expected) in cases {
            assert_eq!(
                password(secret.as_bytes(), username),
                expected,
                "{username}"
            );
        }
    }

    #[test]
    fn credentials_expire_after_the_ttl_and_verify() {
        let issuer = issuer(DEFAULT_TTL_SECS);
        let now = 1_700_000_000;
        let credentials = issuer.issue(now);
        assert_eq!(credentials.expires_at, now + DEFAULT_TTL_SECS);
        assert_eq!(credentials.urls, [URL]);
        let (expiry, id) = credentials.username.split_once(':').unwrap();
        assert_eq!(expiry, (now + DEFAULT_TTL_SECS).to_string());
        assert_eq!(URL_SAFE_NO_PAD.decode(id).unwrap().len(), OPAQUE_ID_LEN);
        assert_eq!(
            credentials.password,
            password(b"ferry-test-secret", &credentials.username)
        );
        assert!(credentials.username.len() <= MAX_TURN_FIELD_LEN);
        assert_eq!(credentials.password.len(), 28, "20 bytes in padded base64");
    }

    #[test]
    fn every_credential_has_its_own_random_id() {
        let issuer = issuer(600);
        let ids: std::collections::HashSet<String> = (0..64)
            .map(|_| issuer.issue(1_700_000_000).username)
            .collect();
        assert_eq!(ids.len(), 64);
    }

    #[test]
    fn bad_settings_are_refused() {
        let new = |urls: Vec<&str>, secret: &str, ttl| {
            TurnIssuer::new(urls.into_iter().map(Into::into).collect(), secret, ttl)
        };
        assert!(matches!(
            new(vec![URL], "", 600),
            Err(TurnConfigError::EmptySecret)
        ));
        assert!(matches!(
            new(vec![], "s", 600),
            Err(TurnConfigError::NoUrls)
        ));
        assert!(matches!(
            new(vec!["http://x"], "s", 600),
            Err(TurnConfigError::BadUrl(_))
        ));
        assert!(matches!(
            new(vec![URL], "s", 59),
            Err(TurnConfigError::Ttl(59))
        ));
        assert!(matches!(
            new(vec![URL], "s", 86_401),
            Err(TurnConfigError::Ttl(_))
        ));
        assert!(matches!(
            new(vec![URL; 9], "s", 600),
            Err(TurnConfigError::TooManyUrls(9))
        ));
        for ok in [
            "turn:a.example:3478",
            "turns:a.example:5349?transport=tcp",
            "stun:a:3478",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        let long = format!("turn:{}", "a".repeat(MAX_TURN_FIELD_LEN));
        for bad in ["", "turn:", "TURN:x", "turn: x", "https://x", long.as_str()] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
    }

    fn config(urls: &[&str], secret: Option<&str>, file: Option<PathBuf>) -> TurnConfig {
        TurnConfig {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            secret: secret.map(Into::into),
            secret_file: file,
            ttl_secs: DEFAULT_TTL_SECS,
            credentials_per_device_per_minute: 10,
        }
    }

    #[test]
    fn the_settings_need_urls_and_a_secret_together() {
        assert!(
            TurnIssuer::from_config(&config(&[], None, None))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            TurnIssuer::from_config(&config(&[URL], None, None)),
            Err(TurnConfigError::NoSecret)
        ));
        assert!(matches!(
            TurnIssuer::from_config(&config(&[], Some("s"), None)),
            Err(TurnConfigError::NoUrls)
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("turn-secret");
        std::fs::write(&file, "ferry-test-secret\n").unwrap();
        assert!(matches!(
            TurnIssuer::from_config(&config(&[URL], Some("s"), Some(file.clone()))),
            Err(TurnConfigError::TwoSecrets)
        ));
        let issuer = TurnIssuer::from_config(&config(&[URL], None, Some(file.clone())))
            .unwrap()
            .unwrap();
        let credentials = issuer.issue(1_700_000_000);
        assert_eq!(
            credentials.password,
            password(b"ferry-test-secret", &credentials.username),
            "the trailing newline is not part of the secret"
        );
        assert!(!format!("{issuer:?}").contains("ferry-test-secret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            TurnIssuer::from_config(&config(&[URL], None, Some(file))),
            Err(TurnConfigError::EmptySecret)
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            TurnIssuer::from_config(&config(&[URL], None, Some(missing))),
            Err(TurnConfigError::SecretFile { .. })
        ));
    }
}
