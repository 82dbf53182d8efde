//! The watch-push check the fuzz target `watch_push` (fuzz/) and the corpus replay test run on
//! arbitrary bytes: the lines a watcher reads from a registry never panic its parser, and every
//! update it takes from them is what the server's own push encoding
//! ([`crate::protocol::watch::push_line`]) says for that update, byte for byte as a serialised
//! [`Reply`], and reads back to the same update.

use std::net::SocketAddr;
use std::sync::Arc;

use super::watch::parse_push;
use crate::protocol::watch::push_line;
use crate::protocol::{Reply, VERSION};

/// Panics if reading a line of `bytes` as a watch push panics, or an update read from one does
/// not come back whole through the server's encoding.
pub fn check(bytes: &[u8]) {
    let addr: SocketAddr = ([127, 0, 0, 1], 8601).into();
    // The watcher reads up to each newline (read_until), one push per line.
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let Ok(update) = parse_push(addr, line) else {
            continue;
        };
        let reply = Reply {
            v: VERSION,
            ok: true,
            op: Some("watch".into()),
            version: Some(update.version),
            run: update.run,
            instances: Some(update.instances.clone()),
            ..Reply::default()
        };
        let mut encoded = reply.to_json();
        encoded.push(b'\n');
        let again = parse_push(addr, &encoded).unwrap_or_else(|e| {
            panic!(
                "{e}: the push re-encoded as {}",
                String::from_utf8_lossy(&encoded)
            )
        });
        assert_eq!(again, update);
        // The server writes pushes with push_line, which always names the run.
        if let Some(run) = update.run {
            let fragments: Vec<Arc<Vec<u8>>> = update
                .instances
                .iter()
                .map(|i| Arc::new(serde_json::to_vec(i).expect("an instance encodes")))
                .collect();
            let pushed = push_line(update.version, run, &fragments);
            assert_eq!(
                String::from_utf8_lossy(&pushed),
                String::from_utf8_lossy(&encoded),
                "push_line and a serialised Reply differ"
            );
        }
    }
}
