//! Push wake-ups: waking a device whose app is asleep, with no content (docs/protocol.md
//! §15, docs/operations.md "Push wake-ups").
//!
//! - [`web_push`]: the message itself: RFC 8291 encryption for a subscription and the RFC 8292
//!   VAPID header (checked against the RFC's example), and the relay's VAPID key
//!   ([`load_or_create_vapid_key`]: made at first start, printed by `ferry-relay vapid-key`).
//! - [`sender`]: one Web Push request to a push service, and what its answer means.
//! - [`queue`]: the pipeline of a node: what the relay stored becomes at most one pending
//!   wake-up per device in the store, and what is due is sent.
//! - [`apns`]: APNs for iOS and macOS apps (HTTP/2, provider tokens), when the relay has
//!   an APNs key (`--apns-key-file`, `--apns-key-id`, `--apns-team-id`, `--apns-topic`).
//! - [`check_endpoint`]: which endpoints a device may register.

pub mod apns;
pub mod queue;
pub mod sender;
pub mod web_push;

use std::path::Path;

use crate::relay_key::{KeyFileError, load_or_create_secret};
use web_push::VapidKey;

/// A JWT signed with ES256 (RFC 7515/7518): base64url (no padding) of `header` and of
/// `claims`, joined by a dot, then the P-256 signature of that, as VAPID (RFC 8292) and
/// APNs provider tokens both are.
pub(crate) fn es256_jwt(key: &p256::ecdsa::SigningKey, header: &str, claims: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::ecdsa::signature::Signer as _;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// File name of the VAPID key inside the data folder (hex, mode 0600, like `relay.key`).
pub const VAPID_KEY_FILE: &str = "vapid.key";

/// Loads the relay's VAPID key from `data_dir`, creating it if there is none; returns it and
/// whether it was just created.
pub fn load_or_create_vapid_key(data_dir: &Path) -> Result<(VapidKey, bool), KeyFileError> {
    let path = data_dir.join(VAPID_KEY_FILE);
    let (secret, created) = load_or_create_secret(data_dir, VAPID_KEY_FILE, || {
        VapidKey::generate().secret_bytes()
    })?;
    // Any 32 bytes below the group order are a key; a file holding zero or more is corrupt.
    let key = VapidKey::from_secret_bytes(&secret).ok_or(KeyFileError::Corrupt(path))?;
    Ok((key, created))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_vapid_key_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = load_or_create_vapid_key(dir.path()).unwrap();
        assert!(created);
        let (again, created) = load_or_create_vapid_key(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(again.public(), key.public());
        // 65 bytes: an uncompressed point, as browsers take an applicationServerKey.
        assert_eq!(key.public().len(), 87);
        std::fs::write(dir.path().join(VAPID_KEY_FILE), "00".repeat(32)).unwrap();
        assert!(matches!(
            load_or_create_vapid_key(dir.path()),
            Err(KeyFileError::Corrupt(_))
        ));
    }
}

/// Whether the relay may send to `endpoint` (checked when a device registers it): `https://`
/// to a host that is not an address of this machine or a private network, so a hostile
/// client cannot make the relay post to services behind its firewall. With
/// `allow_loopback` (tests, a local push service), `http://` and `https://` to this machine
/// are allowed too. A name is checked again when the sender resolves it
/// ([`address_allowed`]).
pub fn check_endpoint(endpoint: &str, allow_loopback: bool) -> Result<(), &'static str> {
    let origin = web_push::origin(endpoint).ok_or("the endpoint must be an https:// URL")?;
    let (scheme, host) = origin.split_once("://").unwrap_or(("", origin));
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return if allow_loopback {
            Ok(())
        } else {
            Err("the endpoint is on the relay's own machine")
        };
    }
    if scheme != "https" {
        return Err("the endpoint must be an https:// URL");
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && !address_allowed(ip, false)
    {
        return Err("the endpoint is on a private network");
    }
    Ok(())
}

/// Whether the relay may connect to `ip` for a push: not this machine (unless
/// `allow_loopback`), nor a private, link-local, shared (100.64/10), unspecified or broadcast
/// address.
pub fn address_allowed(ip: std::net::IpAddr, allow_loopback: bool) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return allow_loopback;
    }
    let private = match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    !private
}

#[cfg(test)]
mod endpoint_tests {
    #![allow(clippy::unwrap_used)]

    use super::check_endpoint;

    #[test]
    fn endpoints_on_this_machine_or_private_networks_are_refused() {
        for ok in [
            "https://fcm.googleapis.com/fcm/send/x",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://203.0.113.7:8443/push",
        ] {
            assert_eq!(check_endpoint(ok, false), Ok(()), "{ok}");
        }
        for refused in [
            "http://push.example.net/p",
            "https://127.0.0.1/p",
            "http://127.0.0.1:4000/p",
            "https://localhost/p",
            "https://[::1]:9/p",
            "https://10.1.2.3/p",
            "https://192.168.0.1/p",
            "https://172.16.5.5/p",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/p",
            "https://[fd00::1]/p",
            "https://[fe80::1]/p",
            "https://[::ffff:10.0.0.1]/p",
            "https://0.0.0.0/p",
            "ftp://push.example.net/p",
        ] {
            assert!(check_endpoint(refused, false).is_err(), "{refused}");
        }
        assert_eq!(check_endpoint("http://127.0.0.1:4000/p", true), Ok(()));
        assert!(check_endpoint("https://[::ffff:127.0.0.1]/p", false).is_err());
        // What the sender checks after resolving a name.
        use super::address_allowed;
        for (ip, loopback_allowed, allowed) in [
            ("203.0.113.7", false, true),
            ("2001:db8::1", false, true),
            ("127.0.0.1", false, false),
            ("127.0.0.1", true, true),
            ("::1", true, true),
            ("::ffff:127.0.0.1", false, false),
            ("::ffff:10.0.0.1", true, false),
            ("10.0.0.1", true, false),
            ("fe80::1", false, false),
        ] {
            assert_eq!(
                address_allowed(ip.parse().unwrap(), loopback_allowed),
                allowed,
                "{ip}"
            );
        }
        assert!(check_endpoint("https://10.1.2.3/p", true).is_err());
    }
}
