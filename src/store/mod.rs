//! Durable storage of the registrations (`--data-dir`), in redb: an embedded, crash-safe
//! (copy-on-write, checksummed) key-value file, rather than a file format of our own.
//!
//! What is stored is what a restart needs to answer the same live set: every instance's
//! registration, by service and id, as bytes the registry chose (not its deadline: a restored
//! instance gets a fresh lease of one TTL, so it either renews or expires), and the global
//! version. Renewals are never written.
//!
//! Writes go through a [`Journal`]: one thread that takes every change queued since its last
//! commit and commits them in one durable transaction (group commit), so an fsync is shared by
//! all the requests that arrived meanwhile. A caller that must not acknowledge before its change
//! is on disk waits for its [`Ticket`].
//!
//! The registry submits every insertion and removal under its lock (so the journal has the
//! registry's order); the protocol loops note [`Journal::issued`] before a batch of requests
//! and wait for it after, before any reply leaves; `serve` loads the store at start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::registry::{Change, ChangeLog};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Registrations by `service \0 id`, in the registry's encoding.
const INSTANCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("instances");
/// `version`: the global version after the last change written.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "beacon.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or used.
    #[error("data directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// redb refused: a corrupt file, a full disk, another process holding the file.
    #[error("store {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::Error>,
    },
}

fn key(service: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(service.len() + id.len() + 1);
    key.extend_from_slice(service.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// What a previous run left, read at once (tests).
#[cfg(test)]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The global version after the last change written.
    pub version: u64,
    /// Every stored registration, as the registry encoded it.
    pub records: Vec<Vec<u8>>,
}

/// The store file.
pub struct Store {
    db: Database,
    path: PathBuf,
}

/// redb's page cache. beacon reads the store once, at start, and then only appends changes, so
/// a large cache only keeps pages it will not read again: with redb's default (1 GiB) the
/// whole file read at start-up stayed resident (a restart over 100 000 instances took 107 MiB
/// where registering them took 73). The pages a write touches are in the kernel's cache anyway.
const CACHE_BYTES: usize = 4 << 20;

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Database {
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        Ok(Store { db, path })
    }

    fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// Everything stored, at once (tests; a server restores with [`Store::load_each`]).
    #[cfg(test)]
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut records = Vec::new();
        let version = self.load_each(|record| records.push(record.to_vec()))?;
        Ok(Loaded { version, records })
    }

    /// Hands every stored registration to `each` as it is read, without holding them all, and
    /// returns the global version stored (0 for an empty store).
    pub fn load_each(&self, mut each: impl FnMut(&[u8])) -> Result<u64, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let version = match read.open_table(META) {
            Ok(meta) => meta
                .get("version")
                .map_err(|e| self.error(e))?
                .map_or(0, |version| version.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.error(e)),
        };
        let instances = match read.open_table(INSTANCES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(version),
            Err(e) => return Err(self.error(e)),
        };
        for entry in instances.iter().map_err(|e| self.error(e))? {
            let (_, value) = entry.map_err(|e| self.error(e))?;
            each(value.value());
        }
        Ok(version)
    }

    /// Writes `changes` and `version` in one durable transaction.
    pub fn apply(&self, changes: &[Change], version: u64) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut instances = write.open_table(INSTANCES).map_err(|e| self.error(e))?;
            for change in changes {
                match change {
                    Change::Put { service, id, value } => {
                        instances
                            .insert(key(service, id).as_slice(), value.as_slice())
                            .map_err(|e| self.error(e))?;
                    }
                    Change::Delete { service, id, .. } => {
                        instances
                            .remove(key(service, id).as_slice())
                            .map_err(|e| self.error(e))?;
                    }
                }
            }
            let mut meta = write.open_table(META).map_err(|e| self.error(e))?;
            meta.insert("version", version).map_err(|e| self.error(e))?;
        }
        write.commit().map_err(|e| self.error(e))
    }
}

/// A place in the journal: durable once [`Journal::wait`] returns for it.
pub type Ticket = u64;

#[derive(Default)]
struct Queue {
    /// Changes not yet handed to the writer, with the version after the last of them.
    pending: Vec<Change>,
    version: u64,
    /// Tickets issued and made durable so far.
    issued: Ticket,
    durable: Ticket,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer (changes queued) and the waiters (a commit done).
    changed: Condvar,
}

/// The group-commit writer in front of a [`Store`].
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

impl Journal {
    /// Starts the writer thread.
    pub fn start(store: Store) -> Journal {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("beacon-store".into())
            .spawn(move || write_loop(store, writer))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(%e, "cannot start the store writer"));
        Journal { shared }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `change`, after which the global version is `version`. Cheap: callable under the
    /// registry's lock, which keeps the journal in the registry's order.
    pub fn submit(&self, change: Change, version: u64) -> Ticket {
        let mut queue = self.lock();
        queue.pending.push(change);
        queue.version = version;
        queue.issued += 1;
        let ticket = queue.issued;
        drop(queue);
        self.shared.changed.notify_all();
        ticket
    }

    /// The last ticket issued: waiting for it waits for every change submitted so far.
    pub fn issued(&self) -> Ticket {
        self.lock().issued
    }

    /// Blocks until every change up to `ticket` is on disk.
    pub fn wait(&self, ticket: Ticket) {
        let mut queue = self.lock();
        while queue.durable < ticket && !queue.stopping {
            queue = self
                .shared
                .changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes what is queued and stops the writer.
    pub fn stop(&self) {
        let issued = self.issued();
        self.wait(issued);
        self.lock().stopping = true;
        self.shared.changed.notify_all();
    }
}

impl ChangeLog for Journal {
    fn submit(&self, change: Change, version: u64) {
        Journal::submit(self, change, version);
    }

    fn wait_all(&self) {
        self.wait(self.issued());
    }
}

fn write_loop(store: Store, shared: Arc<Shared>) {
    loop {
        let (changes, version, upto) = {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while queue.pending.is_empty() && !queue.stopping {
                queue = shared
                    .changed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.pending.is_empty() {
                return;
            }
            (
                std::mem::take(&mut queue.pending),
                queue.version,
                queue.issued,
            )
        };
        // Nothing acknowledged may be lost, so a failed commit is retried, not dropped: the
        // requests waiting on it stay unanswered (clients retry) until the disk recovers.
        let mut pause = Duration::from_millis(10);
        while let Err(error) = store.apply(&changes, version) {
            tracing::error!(%error, "cannot write the registry to disk; retrying");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.durable = upto;
        drop(queue);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration whose stored value names its key and port.
    fn put(service: &str, id: &str, port: u16) -> Change {
        Change::Put {
            service: service.into(),
            id: id.into(),
            value: format!("{service}/{id}:{port}").into_bytes(),
        }
    }

    #[test]
    fn an_empty_store_loads_empty_and_changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), Loaded::default());
        store
            .apply(
                &[
                    put("web", "a", 80),
                    put("web", "b", 81),
                    put("db", "a", 5432),
                ],
                3,
            )
            .unwrap();
        store
            .apply(
                &[
                    Change::Delete {
                        service: "web".into(),
                        id: "a".into(),
                        remote: None,
                    },
                    put("web", "b", 82),
                    Change::Delete {
                        service: "nothing".into(),
                        id: "x".into(),
                        remote: None,
                    },
                ],
                5,
            )
            .unwrap();
        drop(store);
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.version, 5);
        let mut stored: Vec<String> = loaded
            .records
            .iter()
            .map(|v| String::from_utf8(v.clone()).unwrap())
            .collect();
        stored.sort();
        assert_eq!(stored, ["db/a:5432", "web/b:82"]);
    }

    #[test]
    fn the_journal_commits_in_groups_and_tickets_wait_for_disk() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(Store::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for i in 0..50u16 {
                        let ticket = journal.submit(put("svc", &format!("t{t}-{i}"), i + 1), 0);
                        journal.wait(ticket);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let last = journal.submit(
            Change::Delete {
                service: "svc".into(),
                id: "t0-0".into(),
                remote: None,
            },
            201,
        );
        journal.wait(last);
        journal.stop();
        // The writer thread holds the file until it exits; wait for it to let go.
        let mut store = Store::open(dir.path());
        for _ in 0..100 {
            if store.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            store = Store::open(dir.path());
        }
        let loaded = store.unwrap().load().unwrap();
        assert_eq!(loaded.version, 201);
        assert_eq!(loaded.records.len(), 199);
    }

    #[test]
    fn a_store_in_use_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path()).err().expect("the file is locked");
        assert!(second.to_string().contains(FILE_NAME), "{second}");
    }
}
