//! Push watches: a TCP connection that sent `watch` receives the full live set of the services
//! it watches, with the version it reflects, at once if it changed since the version the
//! watcher last saw, and again after every change.
//!
//! Each watcher is one task waiting on the registry's version channel. Changes coalesce: a
//! watcher is always sent the latest state, never a queue of past ones, so a slow reader costs
//! at most one message in flight; one that takes nothing for `registry.watch_write_timeout` is
//! dropped. The JSON of a service's instances is built once per version of that service and
//! shared by every watcher of it ([`WatchCache`]), so a change to a service watched by ten
//! thousand connections is serialised once, not ten thousand times; and each version reuses
//! the previous one's JSON of every instance they share, so a change to one instance of a
//! service of thousands serialises that one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use super::server::{Line, LineBuffer};
use super::{bad, InstanceInfo, Reply, WatchRequest, VERSION};
use crate::registry::{Instance, Registry, ServiceView};

/// The JSON objects of one service's live instances, separated by commas.
pub(crate) type Fragment = Arc<Vec<u8>>;

/// Each service's instances as JSON, as last built for a version of it, shared by watchers.
#[derive(Default)]
pub struct WatchCache {
    fragments: Mutex<HashMap<Arc<str>, Built>>,
}

/// A service's instances as JSON, built from `view`. Holding the view keeps its instances
/// alive, so while this is cached no other instance can be allocated where one of them was:
/// an instance of a later view that is the same allocation is the same instance, and its
/// JSON is copied from here rather than serialised again.
struct Built {
    view: Arc<ServiceView>,
    bytes: Fragment,
    /// Where the k-th instance of `view` (in id order) ends in `bytes`; the next begins one
    /// byte later, after the comma.
    ends: Vec<usize>,
}

impl Built {
    /// The instances of `view`, every one live, reusing the JSON of those `previous` holds.
    fn new(view: &Arc<ServiceView>, live_at: u64, previous: Option<&Built>) -> Built {
        let mut bytes = Vec::with_capacity(previous.map_or(0, |p| p.bytes.len() + 256));
        let mut ends = Vec::with_capacity(view.instances.len());
        // Both views are sorted by id: one walk down the previous one finds every instance
        // they share.
        let mut before = previous
            .into_iter()
            .flat_map(|p| {
                p.view
                    .instances
                    .iter()
                    .enumerate()
                    .map(move |(k, kv)| (p, k, kv))
            })
            .peekable();
        for (n, (id, instance)) in view.instances.iter().enumerate() {
            if n > 0 {
                bytes.push(b',');
            }
            while before.next_if(|(_, _, (old, _))| *old < id).is_some() {}
            match before.peek() {
                Some(&(p, k, (old, same))) if old == id && Arc::ptr_eq(same, instance) => {
                    let start = if k == 0 { 0 } else { p.ends[k - 1] + 1 };
                    bytes.extend_from_slice(&p.bytes[start..p.ends[k]]);
                }
                _ => write_instance(&mut bytes, instance, live_at),
            }
            ends.push(bytes.len());
        }
        Built {
            view: view.clone(),
            bytes: Arc::new(bytes),
            ends,
        }
    }
}

impl WatchCache {
    /// The instances of `view` live at `live_at` (the readers' clock,
    /// [`Registry::read_now_ms`]) as JSON objects separated by commas.
    fn fragment(&self, view: &Arc<ServiceView>, live_at: u64) -> Fragment {
        // A view can hold an instance whose lease ran out a moment ago and that the expiry task
        // has not removed yet; such a view is serialised for this push only, never cached, so
        // no push names an expired instance. (While self-preservation holds, every instance
        // held is live on the readers' clock, and a view cached then is replaced by the change
        // that ends it.)
        if view.instances.values().any(|i| !i.is_live(live_at)) {
            return Arc::new(serialise(view, live_at));
        }
        let mut fragments = self
            .fragments
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = fragments.get(&*view.name);
        if let Some(built) = previous.filter(|b| b.view.version == view.version) {
            return built.bytes.clone();
        }
        // A change to a service of thousands of instances touches one or a few: the others'
        // JSON is copied, not serialised again (a push of 2 000 instances took about 0.5 ms
        // to serialise whole).
        let built = Built::new(view, live_at, previous);
        let bytes = built.bytes.clone();
        fragments.insert(view.name.clone(), built);
        bytes
    }

    /// Drops what is cached for services not among `live` (every service there is): a watcher
    /// of every service never names the ones that left, so without this their JSON, and the
    /// instances their view keeps allocated, would stay.
    fn forget_all_but(&self, live: &[Arc<ServiceView>]) {
        let mut fragments = self
            .fragments
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if fragments.len() > live.len() {
            let names: std::collections::HashSet<&str> =
                live.iter().map(|view| &*view.name).collect();
            fragments.retain(|name, _| names.contains(&**name));
        }
    }

    fn forget(&self, name: &str) {
        self.fragments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}

fn serialise(view: &ServiceView, live_at: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, instance) in view.live(live_at).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_instance(&mut out, instance, live_at);
    }
    out
}

/// One instance's JSON object, as a push carries it: the same bytes for as long as the
/// instance is the same (nothing that changes with time or renewals is in it).
fn write_instance(out: &mut Vec<u8>, instance: &Instance, live_at: u64) {
    // Neither the lease nor who holds it: pushes follow the live set, and a renewal (or a
    // provider moving between cluster nodes) does not change it.
    let info = InstanceInfo {
        expires_in_ms: None,
        remote: false,
        ..InstanceInfo::new(instance, live_at)
    };
    let start = out.len();
    // Plain strings, numbers and a string map: serialising cannot fail.
    if serde_json::to_writer(&mut *out, &info).is_err() {
        out.truncate(start);
    }
}

/// One push: `{"v":1,"ok":true,"op":"watch","version":N,"run":R,"instances":[...]}` and a
/// newline, exactly what serialising a [`Reply`] with those fields gives (a unit test holds
/// them equal).
pub(crate) fn push_line(version: u64, run: u64, fragments: &[Fragment]) -> Vec<u8> {
    let size: usize = fragments.iter().map(|f| f.len() + 1).sum();
    let mut line = Vec::with_capacity(64 + size);
    line.extend_from_slice(
        format!(r#"{{"v":{VERSION},"ok":true,"op":"watch","version":{version},"run":{run},"instances":["#)
            .as_bytes(),
    );
    let mut first = true;
    for fragment in fragments.iter().filter(|f| !f.is_empty()) {
        if !first {
            line.push(b',');
        }
        first = false;
        line.extend_from_slice(fragment);
    }
    line.extend_from_slice(b"]}\n");
    line
}

/// The live set of `services` (every service when empty) as one push line, and its version.
fn snapshot(registry: &Registry, cache: &WatchCache, services: &[String]) -> (u64, Vec<u8>) {
    // The version is read before the views: views published after it only make the push newer
    // than it says, and the change that published them wakes the watcher again.
    let version = registry.version();
    let live_at = registry.read_now_ms();
    let views: Vec<Arc<ServiceView>> = if services.is_empty() {
        let every = registry.services();
        cache.forget_all_but(&every);
        every
    } else {
        services
            .iter()
            .filter_map(|name| match registry.service(name) {
                Some(view) => Some(view),
                None => {
                    cache.forget(name);
                    None
                }
            })
            .collect()
    };
    let fragments: Vec<Fragment> = views.iter().map(|v| cache.fragment(v, live_at)).collect();
    (version, push_line(version, registry.run_id(), &fragments))
}

/// Where a watching connection stands.
pub(super) struct Watching {
    pub request: WatchRequest,
    pub peer: SocketAddr,
    pub registry: Registry,
    pub cache: Arc<WatchCache>,
    pub write_timeout: Duration,
    pub shutdown: CancellationToken,
}

/// Serves a connection that sent `watch` until the peer leaves, is too slow, or shutdown.
/// `lines` holds what the peer sent after the watch request; anything it sends while watching
/// is refused with an error line, and the watch goes on.
pub(super) async fn serve(
    watching: Watching,
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    mut lines: LineBuffer,
    mut pending: Vec<Line>,
) {
    let Watching {
        mut request,
        peer,
        registry,
        cache,
        write_timeout,
        shutdown,
    } = watching;
    let mut changes = registry.subscribe();
    let mut seen = request.version;
    let mut chunk = vec![0u8; 1024];
    tracing::debug!(%peer, services = ?request.services, ?seen, "watch started");
    loop {
        changes.borrow_and_update();
        let current = registry.version();
        let due = match seen {
            None => true,
            // Seen under another run of the registry (before a restart, or at another
            // registry): versions count from elsewhere, so the watcher gets the current state.
            Some(_) if request.run.is_some_and(|run| run != registry.run_id()) => true,
            // A version from the future comes from before a registry restart that reset the
            // count: the watcher's state cannot be trusted, so it gets the current one.
            Some(seen) if seen > current => true,
            Some(seen) => {
                let last = if request.services.is_empty() {
                    current
                } else {
                    registry.last_change(request.services.iter().map(String::as_str))
                };
                last > seen
            }
        };
        let mut out = Vec::new();
        if due {
            let (version, line) = snapshot(&registry, &cache, &request.services);
            out = line;
            seen = Some(version);
            request.run = Some(registry.run_id());
        }
        for line in pending.drain(..) {
            if let Line::Complete(line) = &line {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
            }
            let refusal = Reply::error(
                None,
                bad("this connection is watching: it takes no further requests; open another"),
            );
            out.extend_from_slice(&refusal.to_json());
            out.push(b'\n');
        }
        if !out.is_empty() {
            let written = tokio::select! {
                written = tokio::time::timeout(write_timeout, write.write_all(&out)) => written,
                _ = shutdown.cancelled() => return,
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        %peer,
                        bytes = out.len(),
                        "dropping a slow watcher: it took no push for {} (registry.watch_write_timeout)",
                        humantime::format_duration(write_timeout)
                    );
                    return;
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            n = read.read(&mut chunk) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => pending = lines.push(&chunk[..n]),
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Limits, RegistrationRequest};

    /// A push built from the last one (its instances' JSON copied) is the push built afresh,
    /// whatever changed between them: instances added, removed, or replaced by another
    /// registration of the same id.
    #[test]
    fn a_push_after_changes_is_the_push_built_afresh() {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        let register = |id: &str, port: u16| {
            let request = RegistrationRequest {
                service: "web".into(),
                id: Some(id.into()),
                address: Some("10.0.0.1".parse().unwrap()),
                port,
                weight: None,
                tags: vec!["blue".into()],
                meta: vec![("id".into(), id.into())],
                ttl: None,
            };
            registry
                .register(request.validate(registry.limits()).unwrap())
                .unwrap();
        };
        for (k, id) in ["b", "d", "f", "h"].into_iter().enumerate() {
            register(id, 80 + k as u16);
        }
        let cache = WatchCache::default();
        let web = ["web".to_string()];
        let _ = snapshot(&registry, &cache, &web);
        let changes: [&dyn Fn(); 6] = [
            &|| register("a", 1),
            &|| register("z", 2),
            &|| register("e", 3),
            &|| register("d", 4),
            &|| {
                registry.deregister("web", "b").unwrap();
            },
            &|| {
                registry.deregister("web", "z").unwrap();
                register("h", 5);
                register("c", 6);
            },
        ];
        for change in changes {
            change();
            let (_, reused) = snapshot(&registry, &cache, &web);
            let (_, afresh) = snapshot(&registry, &WatchCache::default(), &web);
            assert_eq!(
                String::from_utf8(reused).unwrap(),
                String::from_utf8(afresh).unwrap()
            );
        }
    }

    /// A watcher of every service keeps nothing cached for a service that has left.
    #[test]
    fn a_service_that_left_is_forgotten_by_a_watch_of_everything() {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        for service in ["web", "db"] {
            let request = RegistrationRequest {
                service: service.into(),
                id: Some("one".into()),
                address: Some("10.0.0.1".parse().unwrap()),
                port: 80,
                ..Default::default()
            };
            registry
                .register(request.validate(registry.limits()).unwrap())
                .unwrap();
        }
        let cache = WatchCache::default();
        let _ = snapshot(&registry, &cache, &[]);
        let cached = |cache: &WatchCache| {
            let mut names: Vec<String> = cache
                .fragments
                .lock()
                .unwrap()
                .keys()
                .map(|n| n.to_string())
                .collect();
            names.sort();
            names
        };
        assert_eq!(cached(&cache), ["db", "web"]);
        registry.deregister("db", "one").unwrap();
        let _ = snapshot(&registry, &cache, &[]);
        assert_eq!(cached(&cache), ["web"]);
    }

    #[test]
    fn a_push_is_a_reply_with_instances() {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        for (service, port) in [("web", 80), ("web", 81), ("db", 5432)] {
            let request = RegistrationRequest {
                service: service.into(),
                id: None,
                address: Some("10.0.0.1".parse().unwrap()),
                port,
                weight: None,
                tags: vec!["blue".into()],
                meta: vec![("k".into(), "v\"".into())],
                ttl: None,
            };
            registry
                .register(request.validate(registry.limits()).unwrap())
                .unwrap();
        }
        let cache = WatchCache::default();
        for services in [
            vec![],
            vec!["web".to_string()],
            vec!["db".into(), "gone".into()],
        ] {
            let (version, line) = snapshot(&registry, &cache, &services);
            let now = registry.read_now_ms();
            let views: Vec<_> = if services.is_empty() {
                registry.services()
            } else {
                services
                    .iter()
                    .filter_map(|s| registry.service(s))
                    .collect()
            };
            let expected = Reply {
                v: VERSION,
                ok: true,
                op: Some("watch".into()),
                version: Some(version),
                run: Some(registry.run_id()),
                instances: Some(
                    views
                        .iter()
                        .flat_map(|v| v.live(now))
                        .map(|i| InstanceInfo {
                            expires_in_ms: None,
                            ..InstanceInfo::new(i, now)
                        })
                        .collect(),
                ),
                ..Reply::default()
            };
            let mut expected = expected.to_json();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        let (version, line) = snapshot(&registry, &cache, &["nothing".to_string()]);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            format!(
                "{{\"v\":1,\"ok\":true,\"op\":\"watch\",\"version\":{version},\"run\":{},\"instances\":[]}}\n",
                registry.run_id()
            )
        );
    }
}
