//! The writer thread: it takes the queued records in batches (group
//! commit), gathers them under load, stores each batch with one write and
//! (durability `disk`) one sync, answers every record of it, and after a
//! failed write or sync abandons the segment and refuses batches for
//! [`RETRY_PAUSE`]. Also what the thread and the store's handles share.
//!
//! Imports the options, the errors, the record format and the segments; it
//! must not import the folder or the store's handle (`mod.rs`), which start
//! it with what the folder found.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus::Histogram;

use super::errors::StoreError;
use super::options::{Durability, StoreConfig};
use super::record::Record;
use super::segments::{Closed, Segments};

/// How long after a failed write the store refuses batches before it tries
/// a fresh segment: a full disk is not hammered by every callback.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The most records one write takes.
const MAX_BATCH: usize = 4096;
/// A batch this big says the callbacks outpace the syncs: gather the next.
pub(super) const LOADED_BATCH: usize = 4;
/// How long the writer gathers records after a loaded batch.
pub(super) const GATHER: Duration = Duration::from_micros(150);

/// Called once a record is stored, or could not be.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One queued record and who to tell once it is stored.
pub(super) struct Job {
    pub(super) record: Record,
    pub(super) done: Done,
}

/// What the writer and the handles share.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) durability: Durability,
    /// False from a failed write until the next one succeeds.
    pub(super) healthy: AtomicBool,
    /// Bytes in the folder's live segments.
    pub(super) bytes: AtomicU64,
    /// Set once the writer has stopped: its segment trimmed, its spare
    /// deleted, the folder's lock released.
    pub(super) stopped: StopSignal,
}

/// A flag set once, which others may wait for.
#[derive(Default)]
pub(super) struct StopSignal {
    set: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn set(&self) {
        if let Ok(mut set) = self.set.lock() {
            *set = true;
        }
        self.changed.notify_all();
    }

    /// Waits until it is set, or `limit` has passed; true if it is set.
    pub(super) fn wait(&self, limit: Duration) -> bool {
        let Ok(set) = self.set.lock() else {
            return false;
        };
        self.changed
            .wait_timeout_while(set, limit, |set| !*set)
            .is_ok_and(|(set, _)| *set)
    }
}

/// The writer thread's state.
struct Writer {
    config: StoreConfig,
    segments: Segments,
    /// The last failure, and when: batches are refused until [`RETRY_PAUSE`] has passed.
    failure: Option<(Instant, StoreError)>,
    shared: Arc<Shared>,
    sync_seconds: Histogram,
    /// Held while the writer lives: one process per folder.
    _lock: File,
}

/// Starts the writer thread on the segments the folder kept (`closed`,
/// oldest first), holding the folder's `lock` for its life; returns the
/// queue it takes records from. It stops once every sender is gone.
pub(super) fn start(
    config: StoreConfig,
    closed: VecDeque<Closed>,
    shared: Arc<Shared>,
    sync_seconds: Histogram,
    lock: File,
) -> io::Result<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel();
    let writer = Writer {
        segments: Segments::new(&config, closed)?,
        config,
        failure: None,
        shared,
        sync_seconds,
        _lock: lock,
    };
    std::thread::Builder::new()
        .name("paypush-store".into())
        .spawn(move || writer.run(queue))?;
    Ok(jobs)
}

impl Writer {
    /// Takes batches until every handle is gone; deletes expired segments
    /// between batches and while idle. Then closes its segments and says
    /// it has stopped.
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        let mut loaded = false;
        loop {
            let first = match queue.recv_timeout(self.segments.span()) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.segments.delete_expired(&self.shared.bytes);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if loaded {
                std::thread::sleep(GATHER);
            }
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // Without syncs (durability `process`), a write is cheap enough.
            loaded = batch.len() >= LOADED_BATCH && self.config.durability == Durability::Disk;
            let result = self.write(&batch);
            for job in batch {
                (job.done)(result.clone());
            }
            self.segments.delete_expired(&self.shared.bytes);
        }
        let shared = self.shared.clone();
        self.segments.finish();
        drop(self);
        shared.stopped.set();
        log::debug!("store writer stopped");
    }

    /// Stores a batch with one write (and one sync), or fails it whole.
    fn write(&mut self, batch: &[Job]) -> Result<(), StoreError> {
        if let Some((at, error)) = &self.failure {
            if at.elapsed() < RETRY_PAUSE {
                return Err(error.clone());
            }
        }
        let mut bytes = Vec::with_capacity(batch.len() * 32);
        let mut expires = 0;
        for job in batch {
            job.record.encode(&mut bytes);
            expires = expires.max(self.config.expiry_millis(&job.record));
        }
        match self.append(&bytes, expires) {
            Ok(()) => {
                if self.failure.take().is_some() {
                    log::info!("store: writing again to {}", self.shared.dir.display());
                }
                self.shared.healthy.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let error = StoreError::from(
                    format!("cannot store in {}: {e}", self.shared.dir.display()).as_str(),
                );
                if self.failure.is_none() {
                    log::error!("store: {error}; callbacks get 503 until a write succeeds");
                }
                // The page cache may now hold what the disk does not: this
                // segment takes nothing more, and drops the refused records
                // (as far as the disk still obeys; else the latest outcome
                // wins at start-up, see `Hub::restore`).
                self.segments.abandon_active();
                self.shared.healthy.store(false, Ordering::Relaxed);
                self.failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn append(&mut self, bytes: &[u8], expires: u64) -> io::Result<()> {
        let active = self
            .segments
            .active(bytes.len() as u64, &self.shared.bytes)?;
        active.write(bytes)?;
        if self.config.durability == Durability::Disk {
            let started = Instant::now();
            active.sync()?;
            self.sync_seconds.observe(started.elapsed().as_secs_f64());
        }
        active.bytes += bytes.len() as u64;
        active.expires = active.expires.max(expires);
        self.shared
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
