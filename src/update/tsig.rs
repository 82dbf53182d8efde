//! TSIG (RFC 8945) for UPDATE, with hickory's `TSigner`: the request's MAC checked under the key
//! of the same name in the keys file (HMAC-SHA256 only), its time against the server's clock,
//! and the reply signed over the request's MAC. The MACs themselves are hickory's; this file
//! decides which key, which time and which error.
//!
//! Errors as RFC 8945 §5.2 prescribes: an unknown key or another algorithm is BADKEY and a MAC
//! that does not verify is BADSIG, both answered NOTAUTH with an unsigned TSIG; a time outside
//! the window is BADTIME, answered NOTAUTH and signed, with the server's time in Other Data.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::tsig::{make_tsig_record, TsigAlgorithm, TsigError, TSIG};
use hickory_proto::rr::{DNSClass, Name, Record, TSigResponseContext, TSigner};

use crate::auth::keys::KeyRing;

/// A request whose TSIG verified: its key's name, signer (for the reply) and MAC.
pub struct Verified {
    /// The key's name as the keys file has it (lower case, no trailing dot).
    pub key: String,
    /// Signs the reply.
    pub signer: TSigner,
    /// The request's MAC, which the reply's MAC covers, and the replay cache's key.
    pub mac: Vec<u8>,
    /// The request's Time Signed (seconds).
    pub time: u64,
}

/// Why a request's TSIG was not accepted. (No `Debug`: hickory's signer, which holds the
/// secret, has none, rightly.)
pub enum Failure {
    /// No key of that name, or not HMAC-SHA256: BADKEY.
    BadKey {
        /// The key name as sent, for the log and the unsigned reply.
        name: Name,
        /// What exactly.
        reason: String,
    },
    /// The MAC does not verify: BADSIG.
    BadSig {
        /// The key, to name it in the unsigned reply.
        signer: TSigner,
        /// The key's name (never its secret).
        key_name: String,
    },
    /// Not a TSIG RR as RFC 8945 §4.2 writes one (class ANY, TTL 0): FORMERR. (hickory's MAC
    /// takes both as those constants, so an altered one would verify.)
    Malformed(String),
    /// Time Signed outside the window: BADTIME, answered signed.
    BadTime {
        /// The request, verified but for its time.
        verified: Verified,
        /// How far off, for the log.
        skew: i64,
    },
}

/// The key name as the keys file writes it.
fn key_name(name: &Name) -> String {
    let text = name.to_ascii().to_ascii_lowercase();
    text.strip_suffix('.').unwrap_or(&text).to_string()
}

/// Checks the TSIG of `bytes` (parsed as `message`, which has one): key, MAC, then time within
/// `window_s` seconds of `now_s` (and within the request's own fudge, whichever is smaller).
pub fn verify(
    ring: &KeyRing,
    bytes: &[u8],
    message: &Message,
    now_s: u64,
    window_s: u64,
) -> Result<Verified, Failure> {
    let Some(record) = message.signature() else {
        return Err(Failure::BadKey {
            name: Name::root(),
            reason: "no TSIG".into(),
        });
    };
    let key = key_name(&record.name);
    if record.dns_class != DNSClass::ANY || record.ttl != 0 {
        return Err(Failure::Malformed(format!(
            "the TSIG RR has class {} and TTL {}; RFC 8945 §4.2 wants ANY and 0",
            record.dns_class, record.ttl
        )));
    }
    if record.data.algorithm != TsigAlgorithm::HmacSha256 {
        return Err(Failure::BadKey {
            name: record.name.clone(),
            reason: format!(
                "TSIG algorithm {} is not hmac-sha256, the only one beacon's keys are for",
                record.data.algorithm.to_name()
            ),
        });
    }
    let Some(found) = ring.get(&key) else {
        return Err(Failure::BadKey {
            name: record.name.clone(),
            reason: format!("unknown TSIG key {key:?}: this registry has no key of that name"),
        });
    };
    // hickory computes Time Signed minus fudge once the MAC verified, which would overflow for
    // a time within the fudge of 1970; no clock is there, so it is refused before.
    if record.data.time < u64::from(record.data.fudge) {
        return Err(Failure::BadKey {
            name: record.name.clone(),
            reason: format!(
                "TSIG time {} is within its fudge of 1970; no client clock is",
                record.data.time
            ),
        });
    }
    // The signer's name is the one sent, so hickory's own name check compares like with like;
    // its fudge is the window, which replies state.
    let fudge = u16::try_from(window_s).unwrap_or(u16::MAX);
    let signer = match TSigner::new(
        found.secret().expose_bytes().to_vec(),
        TsigAlgorithm::HmacSha256,
        record.name.clone(),
        fudge,
    ) {
        Ok(signer) => signer,
        Err(e) => {
            return Err(Failure::BadKey {
                name: record.name.clone(),
                reason: e.to_string(),
            })
        }
    };
    let (mac, time, range) = match signer.verify_message_byte(bytes, None, true) {
        Ok(verified) => verified,
        Err(_) => {
            return Err(Failure::BadSig {
                signer,
                key_name: key,
            })
        }
    };
    let verified = Verified {
        key,
        signer,
        mac,
        time,
    };
    // RFC 8945 §5.2.3: the request's fudge bounds it; so does auth.window, as for the
    // registration protocol's signatures, so a client cannot widen its own replay window.
    // (hickory computes the range only after the MAC verified, so only a key's holder reaches
    // it; its end is Time Signed plus the request's fudge.)
    let allowed = range.end.saturating_sub(time).min(window_s);
    let skew = now_s as i64 - time as i64;
    if now_s.abs_diff(time) > allowed {
        return Err(Failure::BadTime { verified, skew });
    }
    Ok(verified)
}

/// Encodes `response` with a TSIG appended: signed over the request's MAC when `signer` is
/// given (with `error`, BADTIME's Other Data holding `now_s`), unsigned for BADKEY and BADSIG.
pub fn sign_reply(
    mut response: Message,
    request_id: u16,
    reply: Reply<'_>,
    now_s: u64,
) -> Option<Vec<u8>> {
    let record: Record<TSIG> = match reply {
        Reply::Signed { verified, error } => {
            let unsigned = response.to_vec().ok()?;
            let (time, other) = match error {
                // RFC 8945 §5.2.3: the request's time, so the client can check the MAC, and
                // the server's in Other Data (48 bits), so it can see how far off it is.
                Some(TsigError::BadTime) => (verified.time, now_s.to_be_bytes()[2..].to_vec()),
                _ => (now_s, Vec::new()),
            };
            let signer = &verified.signer;
            let stub = TSIG::new(
                TsigAlgorithm::HmacSha256,
                time,
                signer.fudge(),
                Vec::new(),
                request_id,
                error,
                other,
            );
            let tbs = signer
                .encode_response_tbs(&verified.mac, &unsigned, &stub)
                .ok()?;
            let mac = signer.sign(&tbs).ok()?;
            make_tsig_record(signer.signer_name().clone(), stub.set_mac(mac))
        }
        Reply::BadSig(signer) => {
            *TSigResponseContext::bad_signature(request_id, now_s, signer.clone())
                .sign(&[])
                .ok()?
        }
        Reply::BadKey(name) => *TSigResponseContext::unknown_key(request_id, now_s, name.clone())
            .sign(&[])
            .ok()?,
    };
    response.set_signature(Box::new(record));
    response.to_vec().ok()
}

/// How a reply's TSIG is made.
pub enum Reply<'a> {
    /// Signed with the request's key, over its MAC, with a TSIG error (BADTIME) or none.
    Signed {
        /// The request.
        verified: &'a Verified,
        /// The TSIG error.
        error: Option<TsigError>,
    },
    /// Unsigned, BADSIG, naming the key.
    BadSig(&'a TSigner),
    /// Unsigned, BADKEY, naming the key as sent.
    BadKey(&'a Name),
}

/// Most replies kept by the replay cache.
pub const MAX_SEEN: usize = 16_384;

/// The replies to the verified requests of the last window, by request MAC: the same signed
/// UPDATE again (a retransmission whose reply was lost, or a replay) gets the reply it got the
/// first time and changes nothing. A request outside the window is BADTIME, so a MAC older than
/// that need not be remembered. Per node and per run: see docs/UPDATE.md's threat model.
#[derive(Default)]
pub struct Seen {
    inner: Mutex<SeenInner>,
}

#[derive(Default)]
struct SeenInner {
    replies: HashMap<Vec<u8>, Vec<u8>>,
    /// MACs in the order they came, with the second after which they can go.
    order: VecDeque<(u64, Vec<u8>)>,
}

impl Seen {
    /// The reply already sent to the request with `mac`, if any.
    pub fn get(&self, mac: &[u8]) -> Option<Vec<u8>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.replies.get(mac).cloned()
    }

    /// Remembers `reply` for `mac` until `until_s`; drops what is past its time, and the oldest
    /// beyond [`MAX_SEEN`] (a request that old is then refused by nothing but BADTIME: a flood
    /// of valid signed updates would be needed, which only a key's holder can make).
    pub fn put(&self, mac: Vec<u8>, reply: Vec<u8>, now_s: u64, until_s: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((until, _)) = inner.order.front() {
            if *until >= now_s && inner.order.len() < MAX_SEEN {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                inner.replies.remove(&old);
            }
        }
        inner.order.push_back((until_s, mac.clone()));
        inner.replies.insert(mac, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_cache_forgets_what_is_past_its_time() {
        let seen = Seen::default();
        seen.put(vec![1], vec![10], 100, 160);
        seen.put(vec![2], vec![20], 150, 210);
        assert_eq!(seen.get(&[1]), Some(vec![10]));
        seen.put(vec![3], vec![30], 170, 230);
        assert_eq!(seen.get(&[1]), None);
        assert_eq!(seen.get(&[2]), Some(vec![20]));
        assert_eq!(seen.get(&[3]), Some(vec![30]));
    }
}
