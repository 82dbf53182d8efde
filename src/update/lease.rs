//! The Update Lease EDNS(0) option (RFC 9664): how long an UPDATE's registration lives, asked
//! in the request and granted in the reply.
//!
//! Option code 2, four bytes (LEASE, seconds) or eight (LEASE, then KEY-LEASE, seconds). beacon
//! holds no KEY records (that is SRP's, see ARCHITECTURE.md), so KEY-LEASE is granted as asked,
//! within the same bounds, only so that a client sees the option it sent answered.

use std::time::Duration;

use hickory_proto::op::Edns;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

/// The option's code.
pub const CODE: u16 = 2;

/// What an UPDATE asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    /// LEASE, in seconds.
    pub lease: u32,
    /// KEY-LEASE, in seconds, when the eight-byte form was sent.
    pub key_lease: Option<u32>,
}

/// What beacon grants, in whole seconds, and sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The instance's lease.
    pub lease: Duration,
    /// Sent back only if the request had a KEY-LEASE.
    pub key_lease: Option<u32>,
}

/// An Update Lease option whose length is neither 4 nor 8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Update Lease option (EDNS option 2) is {0} bytes; RFC 9664 allows 4 (LEASE) or 8 (LEASE and KEY-LEASE)")]
pub struct BadLease(pub usize);

/// Reads the option from a request's EDNS, if it has one.
pub fn read(edns: Option<&Edns>) -> Result<Option<Requested>, BadLease> {
    let Some(option) = edns.and_then(|e| e.option(EdnsCode::from(CODE))) else {
        return Ok(None);
    };
    // hickory keeps options it has no type for, this one among them, as raw bytes.
    let EdnsOption::Unknown(_, data) = option else {
        return Ok(None);
    };
    let word = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    match data.len() {
        4 => Ok(Some(Requested {
            lease: word(0),
            key_lease: None,
        })),
        8 => Ok(Some(Requested {
            lease: word(0),
            key_lease: Some(word(4)),
        })),
        n => Err(BadLease(n)),
    }
}

/// The lease granted for `requested`: LEASE clamped to `min..=max`, or `default` without the
/// option. Whole seconds, rounded up, so the lease the reply reports is never shorter than the
/// one the registry keeps.
pub fn grant(
    requested: Option<Requested>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Granted {
    let clamp = |d: Duration| d.clamp(min, max);
    let asked = requested.map_or(default, |r| Duration::from_secs(u64::from(r.lease)));
    Granted {
        lease: clamp(asked),
        key_lease: requested
            .and_then(|r| r.key_lease)
            .map(|k| seconds(clamp(Duration::from_secs(u64::from(k))))),
    }
}

/// `d` in whole seconds, rounded up.
pub fn seconds(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// The option for the reply.
pub fn option(granted: &Granted) -> EdnsOption {
    let mut data = seconds(granted.lease).to_be_bytes().to_vec();
    if let Some(key) = granted.key_lease {
        data.extend_from_slice(&key.to_be_bytes());
    }
    EdnsOption::Unknown(CODE, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edns(data: &[u8]) -> Edns {
        let mut e = Edns::new();
        e.options_mut()
            .insert(EdnsOption::Unknown(CODE, data.to_vec()));
        e
    }

    #[test]
    fn reads_both_forms_and_refuses_other_lengths() {
        assert_eq!(read(None), Ok(None));
        assert_eq!(read(Some(&Edns::new())), Ok(None));
        assert_eq!(
            read(Some(&edns(&[0, 0, 0x0e, 0x10]))),
            Ok(Some(Requested {
                lease: 3600,
                key_lease: None
            }))
        );
        assert_eq!(
            read(Some(&edns(&[0, 0, 0, 60, 0, 0, 1, 0]))),
            Ok(Some(Requested {
                lease: 60,
                key_lease: Some(256)
            }))
        );
        assert_eq!(read(Some(&edns(&[0, 0, 0]))), Err(BadLease(3)));
    }

    #[test]
    fn grants_within_the_bounds_and_defaults_without_the_option() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(3600));
        let default = Duration::from_secs(10);
        let ask = |lease, key_lease| Some(Requested { lease, key_lease });
        assert_eq!(grant(None, default, min, max).lease, default);
        assert_eq!(grant(ask(60, None), default, min, max).lease.as_secs(), 60);
        assert_eq!(grant(ask(0, None), default, min, max).lease, min);
        let long = grant(ask(7200, Some(86_400)), default, min, max);
        assert_eq!((long.lease, long.key_lease), (max, Some(3600)));
        let reply = option(&long);
        assert_eq!(
            reply,
            EdnsOption::Unknown(CODE, vec![0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10])
        );
        assert_eq!(seconds(Duration::from_millis(1500)), 2);
    }
}
