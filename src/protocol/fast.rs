//! The heartbeat's fast path. Heartbeats are nearly all the registry's traffic, and parsing each
//! into the general request (a struct of optional JSON values, strings allocated, names checked
//! and lower-cased into new strings) and serialising a general reply cost about a fifth of the
//! server's own CPU per renewal.
//!
//! This path takes only the plain shape: one JSON object whose keys are `op` (exactly
//! `"heartbeat"`), `service`, `id`, and optionally `seq` (an unsigned integer of up to 19
//! digits) and `v` (exactly `1`), and for a signed heartbeat `key`, `ts` and `sig` together,
//! each once, in any order, with JSON whitespace anywhere between
//! tokens; strings without escapes; names that are already canonical labels (what
//! [`crate::name::label`] returns unchanged). Anything else — another op, an escape, an
//! upper-case name, an unknown or repeated key, a float — returns `None` and takes the general
//! path, which stays the reference: a unit test feeds both paths the same requests and
//! compares the replies byte for byte.

use std::io::Write;
use std::net::IpAddr;

use serde_json::Value;

use super::{Handled, ProtocolError, VERSION};
use crate::auth::{self, Access, Auth, Claim};
use crate::name;
use crate::registry::Registry;

/// A heartbeat in the plain shape.
#[derive(Debug, PartialEq, Eq)]
struct Heartbeat<'a> {
    seq: Option<u64>,
    service: &'a str,
    id: &'a str,
    /// A signed heartbeat's key name and timestamp (its `sig` is checked on the bytes).
    signed: Option<Claim<'a>>,
}

/// Answers `bytes` if it is a heartbeat in the plain shape; `None` sends it down the general
/// path.
pub(super) fn try_heartbeat(
    registry: &Registry,
    auth: &Auth,
    bytes: &[u8],
    sender: IpAddr,
) -> Option<Handled> {
    let heartbeat = parse(bytes)?;
    let access = Access::Change {
        service: heartbeat.service,
    };
    let origin = match auth.check(access, heartbeat.signed, bytes, sender) {
        Ok(origin) => origin,
        Err(error) => {
            let error = ProtocolError::from(error);
            let key = heartbeat.signed.map(|claim| claim.key);
            auth::log_refusal(sender, key, error.code.as_str(), &error.message);
            return Some(Handled::refused(heartbeat.seq.map(Value::from), error));
        }
    };
    let renewed = registry.heartbeat_from(heartbeat.service, heartbeat.id, &origin);
    Some(match renewed {
        Ok(renewed) => {
            // Field for field what `Reply`'s serialisation writes for this reply.
            let mut reply = Vec::with_capacity(96);
            let _ = write!(reply, "{{\"v\":{VERSION},");
            if let Some(seq) = heartbeat.seq {
                let _ = write!(reply, "\"seq\":{seq},");
            }
            let _ = write!(
                reply,
                "\"ok\":true,\"op\":\"heartbeat\",\"version\":{},\"ttl_ms\":{}}}",
                renewed.version,
                renewed.ttl.as_millis()
            );
            Handled {
                reply,
                changed: false,
            }
        }
        Err(error) => {
            let error = ProtocolError::from(error);
            if matches!(
                error.code,
                super::ErrorCode::Unauthorized | super::ErrorCode::Replayed
            ) {
                let key = origin.owner.as_deref();
                auth::log_refusal(sender, key, error.code.as_str(), &error.message);
            }
            Handled::refused(heartbeat.seq.map(Value::from), error)
        }
    })
}

fn parse(bytes: &[u8]) -> Option<Heartbeat<'_>> {
    let mut scan = Scanner { bytes, at: 0 };
    let (mut op, mut version, mut seq, mut service, mut id) = (false, false, None, None, None);
    let (mut signer, mut ts, mut sig) = (None, None, false);
    scan.skip_whitespace();
    scan.expect(b'{')?;
    loop {
        scan.skip_whitespace();
        let key = scan.string()?;
        scan.skip_whitespace();
        scan.expect(b':')?;
        scan.skip_whitespace();
        match key {
            b"op" if !op => {
                op = scan.string()? == b"heartbeat";
                if !op {
                    return None;
                }
            }
            b"v" if !version => {
                version = scan.integer()? == VERSION;
                if !version {
                    return None;
                }
            }
            b"seq" if seq.is_none() => seq = Some(scan.integer()?),
            b"service" if service.is_none() => service = Some(scan.string()?),
            b"id" if id.is_none() => id = Some(scan.string()?),
            b"key" if signer.is_none() => signer = Some(scan.string()?),
            b"ts" if ts.is_none() => ts = Some(scan.integer()?),
            b"sig" if !sig => {
                // As any JSON string, UTF-8 (the general path refuses anything else as
                // malformed: found by fuzzing).
                std::str::from_utf8(scan.string()?).ok()?;
                sig = true;
            }
            _ => return None,
        }
        scan.skip_whitespace();
        match scan.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    scan.skip_whitespace();
    if scan.at != bytes.len() || !op {
        return None;
    }
    let service = canonical_label(service?)?;
    let id = canonical_label(id?)?;
    let signed = match (signer, ts, sig) {
        (None, None, false) => None,
        (Some(name), Some(ts_ms), true) => Some(Claim {
            key: auth::keys::key_name(std::str::from_utf8(name).ok()?).ok()?,
            ts_ms,
        }),
        // Partly signed: the general path says what is missing.
        _ => return None,
    };
    Some(Heartbeat {
        seq,
        service,
        id,
        signed,
    })
}

/// `raw` as a `&str` if validation would leave it as it is ([`name::is_canonical_label`]).
fn canonical_label(raw: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(raw).ok()?;
    name::is_canonical_label(text).then_some(text)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters; its bytes between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.next()? {
                b'"' => return Some(&self.bytes[start..self.at - 1]),
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// An unsigned integer as JSON writes it (no leading zero), of up to 19 digits so it fits
    /// a u64. What follows is checked by the caller: a fraction or exponent is no `,` or `}`.
    fn integer(&mut self) -> Option<u64> {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let digits = &self.bytes[start..self.at];
        if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_signed, reply_to};
    use crate::registry::{Limits, RegistrationRequest};
    use std::time::Duration;

    fn registry() -> Registry {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        for (service, id) in [("web", "a1"), ("web", "b-2"), ("db", "x")] {
            let reg = RegistrationRequest {
                service: service.into(),
                id: Some(id.into()),
                address: Some("10.0.0.1".parse().unwrap()),
                port: 80,
                ttl: Some(Duration::from_secs(30)),
                ..Default::default()
            }
            .validate(registry.limits())
            .unwrap();
            registry.register(reg).unwrap();
        }
        registry
    }

    const LOCAL: &str = "127.0.0.1";

    /// The general path's reply, as `handle` gave it before the fast path.
    fn general(registry: &Registry, auth: &Auth, bytes: &[u8]) -> Vec<u8> {
        let sender = LOCAL.parse().unwrap();
        let handled = match parse_signed(bytes, sender) {
            Ok((seq, request, signer)) => {
                match super::super::admit(auth, &request, signer.as_ref(), bytes, sender) {
                    Ok(origin) => reply_to(registry, seq, request, &origin, sender),
                    Err(e) => Handled::refused(seq, e),
                }
            }
            Err((seq, e)) => Handled::refused(seq, e),
        };
        assert!(!handled.changed);
        handled.reply
    }

    #[test]
    fn takes_the_plain_shape_and_answers_as_the_general_path() {
        let registry = registry();
        let taken = [
            r#"{"op":"heartbeat","service":"web","id":"a1","seq":7}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1"}"#,
            r#"{"seq":0,"id":"b-2","service":"web","op":"heartbeat","v":1}"#,
            " {\n \"v\" : 1 ,\t\"op\":\"heartbeat\", \"service\":\"db\",\"id\":\"x\",\"seq\":18446744073709551}\r\n",
            r#"{"op":"heartbeat","service":"web","id":"nobody","seq":3}"#,
            r#"{"op":"heartbeat","service":"nothing","id":"a1"}"#,
        ];
        let auth = Auth::open_loopback();
        for text in taken {
            let fast = try_heartbeat(&registry, &auth, text.as_bytes(), LOCAL.parse().unwrap())
                .expect(text);
            assert!(!fast.changed);
            assert_eq!(
                String::from_utf8(fast.reply).unwrap(),
                String::from_utf8(general(&registry, &auth, text.as_bytes())).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn signed_heartbeats_take_it_too_and_answer_alike() {
        use crate::auth::keys::ClientKey;
        use crate::auth::sign::sign;
        const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, format!("web-key {SECRET} web\nother {SECRET} db\n")).unwrap();
        let config = crate::config::AuthConfig {
            keys_file: Some(keys),
            ..Default::default()
        };
        let auth = Auth::from_config(&config).unwrap();
        let now = auth::wall_clock_ms();
        let signed = |key: &str, ts: u64, service: &str, id: &str| {
            let unsigned = format!(
                r#"{{"op":"heartbeat","seq":5,"service":"{service}","id":"{id}","key":"{key}","ts":{ts}}}"#
            );
            sign(&ClientKey::new(key, SECRET).unwrap(), unsigned.as_bytes())
        };
        let mut altered = signed("web-key", now + 3, "web", "a1");
        let in_signature = altered.len() - 6;
        altered[in_signature] = if altered[in_signature] == b'A' {
            b'B'
        } else {
            b'A'
        };
        // Each case on fresh registries, so the fast path's renewal does not make the general
        // path's reply a replay (and the reverse).
        let cases: Vec<Vec<u8>> = vec![
            signed("web-key", now, "web", "a1"),
            signed("web-key", now + 1, "web", "nobody"),
            signed("other", now + 2, "web", "a1"),
            signed("nobody", now, "web", "a1"),
            altered,
            br#"{"op":"heartbeat","service":"web","id":"a1"}"#.to_vec(),
        ];
        for bytes in cases {
            let text = String::from_utf8_lossy(&bytes).to_string();
            let fast =
                try_heartbeat(&registry(), &auth, &bytes, LOCAL.parse().unwrap()).expect(&text);
            assert_eq!(
                String::from_utf8(fast.reply).unwrap(),
                String::from_utf8(general(&registry(), &auth, &bytes)).unwrap(),
                "{text}"
            );
        }
        // The same signed heartbeat twice: both paths answer the repeat alike.
        let once = signed("web-key", now + 10, "web", "a1");
        let (fast_registry, general_registry) = (registry(), registry());
        let first = try_heartbeat(&fast_registry, &auth, &once, LOCAL.parse().unwrap()).unwrap();
        assert_eq!(first.reply, general(&general_registry, &auth, &once));
        let again = try_heartbeat(&fast_registry, &auth, &once, LOCAL.parse().unwrap()).unwrap();
        assert_eq!(again.reply, general(&general_registry, &auth, &once));
        assert_eq!(again.reply, first.reply);
        // A partly signed heartbeat goes the general way.
        let partial = br#"{"op":"heartbeat","service":"web","id":"a1","key":"web-key","ts":1}"#;
        assert!(try_heartbeat(&registry(), &auth, partial, LOCAL.parse().unwrap()).is_none());
    }

    #[test]
    fn leaves_everything_else_to_the_general_path() {
        let registry = registry();
        let left = [
            r#"{"op":"heartbeat","service":"WEB","id":"a1"}"#,
            r#"{"op":"heartbeat","service":"web","id":"a\u0031"}"#,
            r#"{"op":"heartbeat","service":"web","id":"-a1"}"#,
            r#"{"op":"heartbeat","service":"web","id":"web-10.0.0.2-8080"}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","seq":1.5}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","seq":-1}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","seq":01}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","seq":"1"}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","seq":18446744073709551615}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","v":2}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","port":80}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1","id":"b-2"}"#,
            r#"{"op":"heartbeat","service":"web"}"#,
            r#"{"service":"web","id":"a1"}"#,
            r#"{"op":"deregister","service":"web","id":"a1"}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1"} x"#,
            r#"{"op":"heartbeat","service":"web","id":"a1",}"#,
            r#"{"op":"heartbeat","service":"web","id":"a1""#,
            r#"[1]"#,
            "",
        ];
        let auth = Auth::open_loopback();
        for text in left {
            let local = LOCAL.parse().unwrap();
            assert!(
                try_heartbeat(&registry, &auth, text.as_bytes(), local).is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn parses_what_it_takes() {
        assert_eq!(
            parse(br#"{"id":"b-2","seq":42,"service":"web","op":"heartbeat"}"#),
            Some(Heartbeat {
                seq: Some(42),
                service: "web",
                id: "b-2",
                signed: None,
            })
        );
    }
}
