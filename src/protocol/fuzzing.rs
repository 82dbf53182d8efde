//! The registration-protocol check the fuzz target `protocol_request` (fuzz/) and the corpus
//! replay test run on arbitrary bytes: handling never panics, and whenever the heartbeat's fast
//! path takes a request, its reply equals the general path's byte for byte.

use std::net::IpAddr;
use std::time::Duration;

use super::{admit, fast, handle, parse_signed, reply_to, Handled};
use crate::auth::Auth;
use crate::config::RegistryConfig;
use crate::registry::{Limits, RegistrationRequest, Registry};

fn registry() -> Registry {
    let registry = Registry::new(Limits::from(&RegistryConfig::default()));
    for (service, id) in [("web", "a1"), ("web", "b-2"), ("db", "x")] {
        let reg = RegistrationRequest {
            service: service.into(),
            id: Some(id.into()),
            address: Some("10.0.0.1".parse().expect("an address")),
            port: 80,
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        }
        .validate(registry.limits())
        .expect("a valid registration");
        registry.register(reg).expect("registered");
    }
    registry
}

/// Panics if handling `bytes` panics, or the fast path's reply differs from the general path's.
pub fn check(bytes: &[u8]) {
    let auth = Auth::open_loopback();
    let sender: IpAddr = "127.0.0.1".parse().expect("an address");
    let _ = handle(&registry(), &auth, bytes, sender);
    let (fast_registry, general_registry) = (registry(), registry());
    let Some(fast) = fast::try_heartbeat(&fast_registry, &auth, bytes, sender) else {
        return;
    };
    let general = match parse_signed(bytes, sender) {
        Ok((seq, request, signer)) => {
            match admit(&auth, &request, signer.as_ref(), bytes, sender) {
                Ok(origin) => reply_to(&general_registry, seq, request, &origin, sender),
                Err(e) => Handled::refused(seq, e),
            }
        }
        Err((seq, e)) => Handled::refused(seq, e),
    };
    assert_eq!(
        String::from_utf8_lossy(&fast.reply),
        String::from_utf8_lossy(&general.reply),
        "request {:?}",
        String::from_utf8_lossy(bytes)
    );
}
