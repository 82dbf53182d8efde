//! The signature check the fuzz target `signed_request` (fuzz/) and the corpus replay test run
//! on arbitrary bytes, against a key ring holding a known key:
//!
//! - as a registration request: parsing and [`Auth::check`] never panic, and a request the
//!   check accepts as signed is exactly what [`sign::sign`] makes of its unsigned part (plus
//!   JSON whitespace after it): nothing else verifies, so no byte of an accepted request
//!   escaped the signature; [`sign::split`] and [`sign::verify`] alone hold to the same;
//! - as unsigned bytes: what [`sign::sign`] makes of them splits back to them and verifies;
//! - as an HTTP `Authorization` header: its parser never panics, its three parts written out
//!   again parse to the same, and [`Auth::check_detached`] accepts exactly the signature
//!   HMAC-SHA256 gives for its message.

use std::net::IpAddr;

use base64::Engine;
use hmac::Mac;

use super::keys::{ClientKey, KeyRing};
use super::{sign, Access, Auth, Claim};
use crate::config::{AuthConfig, ReadAccess};

/// The known key: docs/PROTOCOL.md §8's worked example.
pub const KEY: &str = "web-key";
/// Its secret, base64.
pub const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

/// A key ring of the known key alone, covering `web`: what the fuzz harnesses verify against.
/// The secret is the public example of PROTOCOL.md §8, written here into a keys file's text
/// to be parsed, never into a log or an error.
pub fn known_key_ring() -> KeyRing {
    KeyRing::parse(&format!("{KEY} {SECRET} web"), "fuzz").expect("the known key")
}

/// The policy the check runs against: the known key, covering `web`, signed reads, and a
/// window that takes any `ts` (the clock is not what this check is about, and a corpus of
/// requests signed at fixed times must verify on any day).
fn auth() -> Auth {
    let policy = AuthConfig {
        read: ReadAccess::Signed,
        window: std::time::Duration::from_millis(u64::MAX),
        ..AuthConfig::default()
    };
    Auth::with_ring(known_key_ring(), &policy)
}

/// The base64 HMAC-SHA256 of `message` under `key`, as a signature carries it.
fn mac_base64(key: &ClientKey, message: &[u8]) -> String {
    let mut mac = key.mac();
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn client_key() -> ClientKey {
    ClientKey::new(KEY, SECRET).expect("the known key")
}

/// The signed form of the unsigned request whose head (without `}`) is `head`.
fn resigned(head: &[u8]) -> Vec<u8> {
    let mut unsigned = head.to_vec();
    unsigned.push(b'}');
    sign::sign(&client_key(), &unsigned)
}

/// Panics if checking `bytes` as a signed request, as unsigned bytes or as an Authorization
/// header panics, or accepts anything but the exact signed form.
pub fn check(bytes: &[u8]) {
    let auth = auth();
    let key = client_key();
    let source: IpAddr = "192.0.2.7".parse().expect("an address");

    // As the registration protocol reads it: the claim from the request, then the check.
    if let Ok((_, _, Some(signer))) = crate::protocol::parse_signed(bytes, source) {
        let claim = Claim {
            key: &signer.key,
            ts_ms: signer.ts_ms,
        };
        for access in [Access::Change { service: "web" }, Access::Read] {
            let Ok(origin) = auth.check(access, Some(claim), bytes, source) else {
                continue;
            };
            let parts = sign::split(bytes).expect("an accepted request has a signature");
            assert_eq!(
                resigned(parts.head),
                sign::trim_trailing_whitespace(bytes),
                "accepted, but not the signed form of its unsigned part"
            );
            if let Access::Change { .. } = access {
                assert_eq!(origin.owner.as_deref(), Some(KEY));
                let signature = sign::verify(key.mac(), parts).expect("it verified");
                assert_eq!(origin.stamp, sign::stamp(claim.ts_ms, &signature));
            }
        }
    }

    // The wire form alone, whatever the JSON says.
    if let Some(parts) = sign::split(bytes) {
        if sign::verify(key.mac(), parts).is_ok() {
            assert_eq!(
                resigned(parts.head),
                sign::trim_trailing_whitespace(bytes),
                "verified, but not signed so"
            );
        }
        if sign::verify_whole(key.mac(), parts).is_ok() {
            let expected = mac_base64(&key, parts.head);
            assert_eq!(parts.sig, expected.as_bytes(), "verified another encoding");
        }
    }

    // The bytes as an unsigned request: signing and splitting are inverse.
    if let Some(head) = bytes.strip_suffix(b"}") {
        let signed = sign::sign(&key, bytes);
        let parts = sign::split(&signed).expect("a signed request splits");
        assert_eq!(parts.head, head);
        assert!(sign::verify(key.mac(), parts).is_ok());
    }

    // As HTTP's Authorization header.
    let Ok(header) = std::str::from_utf8(bytes) else {
        return;
    };
    let Some((name, ts, sig)) = crate::http::parse_authorization(header) else {
        return;
    };
    let written = format!("Beacon key={name}, ts={ts}, sig={sig}");
    assert_eq!(
        crate::http::parse_authorization(&written),
        Some((name, ts, sig)),
        "{written:?}"
    );
    let message = format!("GET /v1/catalog/services\n{name}\n{ts}");
    let accepted = auth
        .check_detached(name, ts, message.as_bytes(), sig)
        .is_ok();
    let expected = mac_base64(&key, message.as_bytes());
    assert_eq!(
        accepted,
        name == KEY && sig == expected,
        "{header:?} accepted: {accepted}"
    );
    if name == KEY {
        assert!(auth
            .check_detached(name, ts, message.as_bytes(), &expected)
            .is_ok());
    }
}
