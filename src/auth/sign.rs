//! The signature's wire form (docs/PROTOCOL.md §8).
//!
//! A signed request is the JSON request with the members `key` (the key's name) and `ts` (Unix
//! time in milliseconds), signed as it is: its exact bytes `U`, which end with `}`. The
//! signature is HMAC-SHA256(secret, `U`), in standard base64 with padding (44 characters), and
//! is put in as the last member: the bytes sent are `U` without its final `}`, then
//! `,"sig":"`, the 44 characters, and `"}`. The server reverses that: the signed bytes are
//! everything before `,"sig":"`, plus `}`. No canonical form is needed, because the signature
//! covers the bytes as sent, and nothing can be added after it.

use base64::Engine;
use hmac::Mac;

use super::keys::{ClientKey, HmacSha256};

/// What comes between the signed bytes (without their `}`) and the signature.
const SIG_OPEN: &[u8] = b",\"sig\":\"";

/// What ends a signed request.
const SIG_CLOSE: &[u8] = b"\"}";

/// Length of the signature's text: 32 bytes in base64 with padding.
pub const SIG_TEXT_LEN: usize = 44;

/// The parts of a signed request: the bytes that were signed, less their closing `}`, and the
/// signature's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The request's bytes up to (not including) `,"sig":"`.
    pub head: &'a [u8],
    /// The 44 characters of the signature.
    pub sig: &'a [u8],
}

/// `bytes` without the JSON whitespace after the request, which the server tolerates.
pub fn trim_trailing_whitespace(bytes: &[u8]) -> &[u8] {
    let end = bytes.len()
        - bytes
            .iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
    &bytes[..end]
}

/// Finds the signature at the end of `bytes`, after which only JSON whitespace may follow.
/// `None` when the request does not end with `,"sig":"<44 characters>"}`.
pub fn split(bytes: &[u8]) -> Option<Parts<'_>> {
    let body = trim_trailing_whitespace(bytes).strip_suffix(SIG_CLOSE)?;
    let sig_start = body.len().checked_sub(SIG_TEXT_LEN)?;
    let (rest, sig) = body.split_at(sig_start);
    let head = rest.strip_suffix(SIG_OPEN)?;
    Some(Parts { head, sig })
}

/// Checks `parts` against `mac` (keyed with the key's secret) in constant time, and returns
/// the signature's bytes.
pub fn verify(mut mac: HmacSha256, parts: Parts<'_>) -> Result<[u8; 32], &'static str> {
    let mut decoded = [0u8; 33];
    let signature =
        match base64::engine::general_purpose::STANDARD.decode_slice(parts.sig, &mut decoded) {
            Ok(32) => &decoded[..32],
            _ => return Err("the signature is not 32 bytes in base64 (44 characters)"),
        };
    mac.update(parts.head);
    mac.update(b"}");
    mac.verify_slice(signature)
        .map_err(|_| "the signature does not match the request and key")?;
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(signature);
    Ok(bytes)
}

/// As [`verify`], for a signature over `parts.head` exactly (no closing `}` added): the HTTP
/// API's signed reads.
pub fn verify_whole(mut mac: HmacSha256, parts: Parts<'_>) -> Result<(), &'static str> {
    let mut decoded = [0u8; 33];
    let signature =
        match base64::engine::general_purpose::STANDARD.decode_slice(parts.sig, &mut decoded) {
            Ok(32) => &decoded[..32],
            _ => return Err("the signature is not 32 bytes in base64 (44 characters)"),
        };
    mac.update(parts.head);
    mac.verify_slice(signature)
        .map_err(|_| "the signature does not match the request and key")
}

/// Signs `unsigned`, a JSON object that already holds `key` and `ts` and ends with `}`, and
/// returns the bytes to send.
pub fn sign(key: &ClientKey, unsigned: &[u8]) -> Vec<u8> {
    let mut mac = key.mac();
    mac.update(unsigned);
    let signature = mac.finalize().into_bytes();
    let head = unsigned.strip_suffix(b"}").unwrap_or(unsigned);
    let mut signed = Vec::with_capacity(head.len() + SIG_OPEN.len() + SIG_TEXT_LEN + 2);
    signed.extend_from_slice(head);
    signed.extend_from_slice(SIG_OPEN);
    signed.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(signature)
            .as_bytes(),
    );
    signed.extend_from_slice(SIG_CLOSE);
    signed
}

/// Bits of a stamp below the timestamp: a fingerprint of the signature.
const FINGERPRINT_BITS: u32 = 22;

/// A signed request's place in the order of requests: its timestamp in the high 42 bits
/// (milliseconds, enough until the year 2109), the first 22 bits of its signature below. Two
/// stamps are equal only for the same request (a retransmission, or a replay of it), and a later
/// request has a greater stamp.
pub fn stamp(ts_ms: u64, signature: &[u8; 32]) -> u64 {
    let fingerprint = u32::from_be_bytes([signature[0], signature[1], signature[2], signature[3]])
        >> (32 - FINGERPRINT_BITS);
    (ts_ms << FINGERPRINT_BITS) | u64::from(fingerprint)
}

/// The smallest stamp a request signed at `ts_ms` or later can have.
pub fn stamp_floor(ts_ms: u64) -> u64 {
    ts_ms << FINGERPRINT_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    #[test]
    fn a_signed_request_splits_back_and_verifies() {
        let key = ClientKey::new("web-key", SECRET).unwrap();
        let unsigned = br#"{"op":"heartbeat","service":"web","id":"web-1","key":"web-key","ts":1765000000000}"#;
        let signed = sign(&key, unsigned);
        assert!(signed.ends_with(b"\"}"));
        let mut with_newline = signed.clone();
        with_newline.extend_from_slice(b"\r\n");
        for bytes in [&signed, &with_newline] {
            let parts = split(bytes).unwrap();
            assert_eq!(parts.head, &unsigned[..unsigned.len() - 1]);
            assert!(verify(key.mac(), parts).is_ok());
        }
        serde_json::from_slice::<serde_json::Value>(&signed).unwrap();
    }

    /// The worked example of docs/PROTOCOL.md §8.2, byte for byte.
    #[test]
    fn the_documented_example_signs_as_documented() {
        let key = ClientKey::new("web-key", SECRET).unwrap();
        let unsigned = br#"{"op":"heartbeat","service":"web","id":"web-1","seq":7,"key":"web-key","ts":1765000000000}"#;
        assert_eq!(unsigned.len(), 90);
        let mut mac = key.mac();
        mac.update(unsigned);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "62d372a6515ef16052a3c4786cdeb329332afa60150981dcdb24e8db7aacc11a"
        );
        assert_eq!(
            String::from_utf8(sign(&key, unsigned)).unwrap(),
            r#"{"op":"heartbeat","service":"web","id":"web-1","seq":7,"key":"web-key","ts":1765000000000,"sig":"YtNyplFe8WBSo8R4bN6zKTMq+mAVCYHc2yTo23qswRo="}"#
        );
    }

    #[test]
    fn any_altered_byte_fails() {
        let key = ClientKey::new("k", SECRET).unwrap();
        let signed = sign(
            &key,
            br#"{"op":"deregister","service":"web","id":"a","key":"k","ts":1}"#,
        );
        for at in 0..signed.len() {
            let mut altered = signed.clone();
            altered[at] ^= 0x01;
            let ok = split(&altered).is_some_and(|parts| verify(key.mac(), parts).is_ok());
            assert!(!ok, "byte {at} altered and still accepted");
        }
        let other = ClientKey::new("k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert!(verify(other.mac(), split(&signed).unwrap()).is_err());
    }

    #[test]
    fn stamps_order_by_time_then_tell_requests_apart() {
        let a = stamp(1000, &[0xff; 32]);
        let b = stamp(1001, &[0x00; 32]);
        assert!(a < b && stamp_floor(1001) <= b && stamp_floor(1001) > a);
        assert_ne!(stamp(1000, &[0x01; 32]), stamp(1000, &[0x02; 32]));
    }
}
