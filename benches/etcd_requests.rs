//! What etcd itself charges for the requests a beacon node sends, next to the plain requests
//! of the cluster bench's floor (`cargo bench --features etcd --bench etcd_requests`).
//!
//! A fresh three-member etcd cluster (etcd from PATH, the cluster bench's flags); one client
//! through member 1. `ETCD_REQ_N` rounds (default 1 000); in each, one request of every kind,
//! each after `ETCD_REQ_IDLE_MS` (default 5) of idle, as the cluster bench paces its changes,
//! timed from the call to its reply:
//! - `put`: a plain put (the floor's);
//! - `beacon put`: a transaction of one put under a lease (what a node writes for a
//!   registration, see `put_all` in src/cluster/etcd.rs);
//! - `delete`: a plain delete of a key put under the lease (the floor's);
//! - `beacon delete`: a transaction holding one transaction whose compare checks the key is
//!   still under the lease and whose success deletes it (what a node sends for its own
//!   instance's deregistration, see `delete_all`: a deletion never removes a newer
//!   registration);
//! - `beacon delete, flat`: the same compare and delete as the outer transaction itself.
//!
//! Then the watches: two on one prefix through member 2, one with previous values (a node's:
//! a deleted key's previous value names its lease, so the node that held it) and one without
//! (the floor's); `ETCD_REQ_N` puts under the lease, then as many deletes, through member 1,
//! each after the same idle; a sample is the call → the event read on each watch.
//!
//! Every connection is to 127.0.0.1. Figures: docs/PERFORMANCE.md, cluster mode.

mod common;

use std::time::{Duration, Instant};

use common::*;
use std::sync::{Arc, Mutex};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};

const ETCD_FLAGS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];
const KINDS: [&str; 5] = [
    "put",
    "beacon put",
    "delete",
    "beacon delete",
    "beacon delete, flat",
];

fn main() {
    let n = env_usize("ETCD_REQ_N", 1000);
    let idle = Duration::from_millis(env_usize("ETCD_REQ_IDLE_MS", 5) as u64);
    assert!(
        n >= 100,
        "ETCD_REQ_N: at least 100 (the p99 of fewer says little)"
    );
    println!("etcd's latency for beacon's requests and the floor's");
    println!(
        "command: cargo bench --features etcd --bench etcd_requests   (ETCD_REQ_N={n} ETCD_REQ_IDLE_MS={})",
        idle.as_millis()
    );
    println!("{}", machine());
    let etcd = EtcdCluster::start(3, &ETCD_FLAGS).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "etcd:    {}, 3 members on 127.0.0.1, {}; requests through member 1",
        etcd_version().unwrap_or_else(|| "etcd (version unknown)".into()),
        ETCD_FLAGS.join(" ")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let times = runtime.block_on(measure(&etcd.endpoints[0], n, idle));
    let watched = runtime.block_on(watch(&etcd.endpoints[0], &etcd.endpoints[1], n, idle));
    println!();
    println!("| ms from the call to its reply, {n} of each, interleaved, each after {} ms idle | p50 | p90 | p99 | max |", idle.as_millis());
    println!("| --- | --- | --- | --- | --- |");
    for (kind, samples) in KINDS.iter().zip(times) {
        row(kind, &samples);
    }
    println!();
    println!("| ms from the call (member 1) to the event read (member 2), {n} puts then {n} deletes | p50 | p90 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    for (what, samples) in WATCHED.iter().zip(watched) {
        row(&format!("{what} ({} seen)", samples.len()), &samples);
    }
}

/// One row: p50, p90, p99 (bold) and max of `samples`, in ms.
fn row(label: &str, samples: &[f64]) {
    let max = samples.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "| {label} | {:.3} | {:.3} | **{:.3}** | {max:.3} |",
        percentile(samples, 50.0),
        percentile(samples, 90.0),
        percentile(samples, 99.0),
    );
}

const WATCHED: [&str; 4] = [
    "put → watch",
    "put → watch with previous values",
    "delete → watch",
    "delete → watch with previous values",
];

/// Part 2: two watches through `via`, changes through `at`; the delays in [`WATCHED`]'s order.
async fn watch(at: &str, via: &str, n: usize, idle: Duration) -> Vec<Vec<f64>> {
    const PREFIX: &str = "/bench/watched/";
    let mut client = Client::connect([at], None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to etcd at {at}: {e}"));
    let lease = client.lease_grant(600, None).await.expect("a lease").id();
    // Per change i and slot (put/delete × without/with previous values): when the event came.
    let seen = Arc::new(Mutex::new(vec![[None::<Instant>; 4]; n]));
    let mut watchers = Vec::new();
    for previous in [false, true] {
        let mut reader = Client::connect([via], None)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to etcd at {via}: {e}"));
        let mut options = WatchOptions::new().with_prefix();
        if previous {
            options = options.with_prev_key();
        }
        let mut stream = reader.watch(PREFIX, Some(options)).await.expect("a watch");
        // Its first response says it is in place: no change is made before both are.
        let created = stream.message().await.expect("the watch's first response");
        assert!(created.is_some_and(|r| r.created()), "watch not created");
        let seen = seen.clone();
        watchers.push(tokio::spawn(async move {
            let _reader = reader;
            while let Ok(Some(response)) = stream.message().await {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                for event in response.events() {
                    let Some(i) = event
                        .kv()
                        .and_then(|kv| std::str::from_utf8(kv.key()).ok())
                        .and_then(|k| k.strip_prefix(PREFIX))
                        .and_then(|k| k.parse::<usize>().ok())
                        .filter(|&i| i < n)
                    else {
                        continue;
                    };
                    let slot = usize::from(event.event_type() == EventType::Delete) * 2
                        + usize::from(previous);
                    seen[i][slot].get_or_insert(now);
                }
            }
        }));
    }
    let value = "v".repeat(60);
    let mut sent = vec![[None::<Instant>; 2]; n];
    for phase in 0..2 {
        for (i, slot) in sent.iter_mut().enumerate() {
            tokio::time::sleep(idle).await;
            let key = format!("{PREFIX}{i}");
            slot[phase] = Some(Instant::now());
            let result = if phase == 0 {
                let options = Some(PutOptions::new().with_lease(lease));
                client.put(key, value.as_str(), options).await.map(drop)
            } else {
                client.delete(key, None).await.map(drop)
            };
            if let Err(e) = result {
                panic!("change {i}: {e}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for watcher in watchers {
        watcher.abort();
    }
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    (0..4)
        .map(|slot| {
            (0..n)
                .filter_map(|i| {
                    let (from, to) = (sent[i][slot / 2]?, seen[i][slot]?);
                    Some(to.duration_since(from).as_secs_f64() * 1000.0)
                })
                .collect()
        })
        .collect()
}

async fn measure(endpoint: &str, n: usize, idle: Duration) -> Vec<Vec<f64>> {
    let mut client = Client::connect([endpoint], None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to etcd at {endpoint}: {e}"));
    let lease = client.lease_grant(600, None).await.expect("a lease").id();
    let value = "v".repeat(60);
    let under_lease = || Some(PutOptions::new().with_lease(lease));
    let mut times = vec![Vec::with_capacity(n); KINDS.len()];
    for i in 0..n {
        for (kind, samples) in times.iter_mut().enumerate() {
            let key = format!("/bench/requests/{kind}/{i}");
            if kind >= 2 {
                // What the deletions remove: a key under the lease, as a node's instance is.
                client
                    .put(key.as_str(), value.as_str(), under_lease())
                    .await
                    .expect("a put");
            }
            tokio::time::sleep(idle).await;
            let held = || Compare::lease(key.as_str(), CompareOp::Equal, lease);
            let delete = || TxnOp::delete(key.as_str(), None);
            let started = Instant::now();
            let result = match kind {
                0 => client
                    .put(key.as_str(), value.as_str(), None)
                    .await
                    .map(drop),
                1 => client
                    .txn(Txn::new().and_then([TxnOp::put(
                        key.as_str(),
                        value.as_str(),
                        under_lease(),
                    )]))
                    .await
                    .map(drop),
                2 => client.delete(key.as_str(), None).await.map(drop),
                3 => client
                    .txn(
                        Txn::new()
                            .and_then([TxnOp::txn(Txn::new().when([held()]).and_then([delete()]))]),
                    )
                    .await
                    .map(drop),
                _ => client
                    .txn(Txn::new().when([held()]).and_then([delete()]))
                    .await
                    .map(drop),
            };
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            if let Err(e) = result {
                panic!("{}: {e}", KINDS[kind]);
            }
        }
    }
    times
}
