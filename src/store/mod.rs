//! The store: outcomes and nonces on disk, so that a callback answered `200`
//! survives a restart, a `SIGKILL` and (with [`Durability::Disk`]) a power cut.
//!
//! It sits below the hub: the hub decides (first outcome wins) and hands each
//! new outcome and nonce to [`Store::append`]; it lets streams, duplicates and
//! the callback itself see the outcome only once the store says it is
//! durable. Nothing above the hub writes to the store: `app` opens it at
//! start-up and hands it (with what it read back) to the hub, and a refused
//! record's [`StoreError`] reaches the API inside the backplane's one error.
//!
//! # Design
//!
//! An append-only log of time-bucketed segment files (`<unix ms>.seg` in the
//! data folder), written by one thread:
//!
//! - **Group commit.** Callbacks queue their records on a channel; the writer
//!   takes every record waiting at that moment, writes them with one `write`
//!   and (durability `disk`) one `fdatasync`, then answers them all. Under
//!   load, one sync serves a whole batch.
//! - **Gathering under load.** A sync costs CPU (70–105 µs of the writer's
//!   time on the virtual machine we measure on), whatever it carries. When
//!   the last batch held [`LOADED_BATCH`](writer::LOADED_BATCH) records or more, callbacks are
//!   arriving faster than syncs finish, so the writer lets [`GATHER`](writer::GATHER)
//!   pass before it takes the next batch: half the syncs under a flood,
//!   for at most that much latency. A trickle of callbacks (batches of one)
//!   never waits.
//! - **Segments made ahead.** A thread of its own prepares the next segment
//!   before the writer needs it: [`SEGMENT_CAPACITY`](prepare::SEGMENT_CAPACITY)
//!   bytes of zeros, synced once (PostgreSQL's `wal_init_zero`). A record's
//!   `fdatasync` then overwrites allocated, written blocks and commits no
//!   metadata: on the machine we measure on, a third less time and system
//!   CPU per sync than an append. The writer moves to the spare when a
//!   batch does not fit; the unused zeros are cut off when a segment closes
//!   (or read as its end after a crash). Where no spare can be made (a disk
//!   too full, a file-size limit) it writes to a segment that grows.
//! - **Bounded by time, not history.** Every outcome lives the outcome TTL and
//!   every nonce the nonce memory, so a segment expires whole once its newest
//!   record has: it is deleted, never rewritten. A new segment starts every
//!   [`segment_span`], so the folder holds about
//!   `rate × record size × (max(TTL, nonce memory) + span)`.
//! - **Torn writes.** Each record carries its length and a CRC-32 (see
//!   [`record`]). At start-up, a record that is cut short or fails its
//!   checksum with nothing valid after it is a torn tail (a crash mid-write,
//!   whose batch was never answered `200`; a bit flip in a file's last
//!   record cannot be told from one): it is dropped with a warning (the file
//!   is truncated there), everything before is kept.
//! - **Damage is not a torn write.** A bad record with valid records after
//!   it (a bit flip, a bad sector) has answered records on both sides:
//!   reading resumes at the next offset where a record's length and CRC
//!   check out, an ERROR names the file and offset, the file as found is
//!   kept beside it as `<segment>.damaged-<unix ms>` (not a segment: never
//!   read or expired; the newest [`MAX_DAMAGED_COPIES`](folder::MAX_DAMAGED_COPIES) are kept), and the
//!   segment is replaced (written beside it, renamed over it) by its valid
//!   records, so the next start reads it clean.
//! - **Failed writes are never retried as if they succeeded.** After a failed
//!   `write` or `fdatasync` the page cache may hold data the disk does not,
//!   so the segment is abandoned (cut back to its last stored record, so the
//!   refused records do not come back at start-up) and the batch answered
//!   with an error (the callbacks get `503`); the next batch, [`RETRY_PAUSE`]
//!   later at the earliest, starts a fresh segment. Until a write succeeds
//!   again the store reports itself unhealthy (`/readyz` is `503`).
//! - **One process per folder.** A lock on `LOCK` (`flock`) held for the
//!   writer's life; a second paypush on the folder refuses to start.
//! - **A private folder.** Whoever can write to the folder can plant a
//!   segment that marks a payment paid at the next start. So paypush refuses
//!   (before writing anything there) a folder, or the folder a symbolic link
//!   leads to, that group or others can write to or that another user owns;
//!   it creates every file `0600` (segments, `LOCK`, damaged copies), and
//!   makes private any file an older version left readable. A folder others
//!   may only read and enter (`0755`) is accepted: it shows file names, not
//!   their contents.
//!
//! # Layout
//!
//! One room per job; the imports go one way, from this handle down to the
//! leaves, and no room imports this file:
//!
//! - this file: the [`Store`] handle (open, append, health, size) and the
//!   re-exports that make the store's public surface.
//! - `folder`: opening the data folder (create, permission check, lock) and
//!   replaying it at start-up (listing, expiry, torn tails, repairs,
//!   damaged copies); gives [`Replay`] and the segments kept to the writer.
//! - `writer`: the writer thread (batches, gathering, write and sync,
//!   failures and [`RETRY_PAUSE`]) and what it shares with the handles.
//! - `segments`: segment files: names, [`segment_span`], rotation, expiry.
//! - `prepare`: the thread that makes the next segment ahead of time.
//! - `options`: [`Durability`] and [`StoreConfig`].
//! - `errors`: [`StoreError`] and [`OpenError`].
//! - [`record`]: the record format and its reader.
//!
//! `folder` and `writer` import `segments`, `options`, `errors` and
//! `record`; `segments` and `folder` import `prepare`; `segments` and
//! `prepare` import `options` and `record`; `options` imports `record`;
//! `errors` and `record` import nothing of the store.

mod errors;
mod folder;
mod options;
mod prepare;
pub(crate) mod record;
mod segments;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use prometheus::Histogram;

pub(crate) use errors::{OpenError, StoreError};
pub(crate) use folder::Replay;
pub(crate) use options::{Durability, StoreConfig};
pub(crate) use record::Record;
use writer::{Job, Shared, StopSignal};

/// A handle to the store; the writer thread runs while one exists.
pub struct Store {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .field("durability", &self.shared.durability)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it, mode 0700, if missing) and locks the folder,
    /// reads back its live records, and starts the writer thread.
    /// Refuses a folder that is not private (see `folder::check_private`)
    /// before writing anything in it. `sync_seconds` observes every
    /// `fdatasync`.
    pub fn open(
        config: StoreConfig,
        sync_seconds: Histogram,
    ) -> Result<(Store, Replay), OpenError> {
        let opened = folder::open(&config)?;
        let dir = config.dir.clone();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            durability: config.durability,
            healthy: AtomicBool::new(true),
            bytes: AtomicU64::new(opened.bytes),
            stopped: StopSignal::default(),
        });
        let jobs = writer::start(
            config,
            opened.closed,
            shared.clone(),
            sync_seconds,
            opened.lock,
        )
        .map_err(|e| OpenError::Io(dir, e))?;
        Ok((Store { jobs, shared }, opened.replay))
    }

    /// Queues `record`; `done` runs on the writer thread once it is stored
    /// (or could not be). Records are stored in the order they are queued.
    pub fn append(
        &self,
        record: Record,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let job = Job {
            record,
            done: Box::new(done),
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            (job.done)(Err(StoreError::from("the store's writer has stopped")));
        }
    }

    /// False from a failed write until a write succeeds again.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Bytes in the folder's live segments.
    pub fn bytes_on_disk(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// What tells when the writer has stopped, once every handle is gone.
    pub fn stopped(&self) -> Stopped {
        Stopped(self.shared.clone())
    }

    /// Says where and how, for the start-up line.
    pub fn describe(&self) -> String {
        let durability = match self.shared.durability {
            Durability::Disk => "disk",
            Durability::Process => "process",
        };
        format!(
            "store in {} (durability {durability})",
            self.shared.dir.display()
        )
    }
}

/// Tells when the store's writer has stopped (its segment trimmed, its
/// spare deleted, the folder unlocked): it stops once every [`Store`]
/// handle is gone. Held by the process's `main` so that it exits after
/// the writer, not in the middle of its last steps.
#[derive(Clone)]
pub struct Stopped(Arc<Shared>);

impl fmt::Debug for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stopped").field(&self.0.dir).finish()
    }
}

impl Stopped {
    /// Waits until the writer has stopped, or `limit` has passed; true if
    /// it has stopped.
    pub fn wait(&self, limit: Duration) -> bool {
        self.0.stopped.wait(limit)
    }
}
