//! Segments made ahead of time: a thread of its own creates the next
//! segment file before the writer needs it, filled with zeros to its whole
//! [`SEGMENT_CAPACITY`] and synced once, as PostgreSQL initialises its WAL
//! files (`wal_init_zero`). A record's `fdatasync` then overwrites blocks
//! that are allocated and written already: no file size, no block
//! allocation, no journal commit to wait for. Measured on the machine of
//! `docs/performance.md`: about a third less time and system CPU per sync
//! than an append (`docs/experiments.md`).
//!
//! The file waits as `<unix ms>.seg.prepared`, so that a spare never counts
//! as a segment; the writer renames it to `<unix ms>.seg` when it starts
//! writing to it. That rename is not synced (it would cost the writer a
//! folder sync): a crash can leave a file with records under its
//! `.prepared` name, and start-up reads such a file as the segment it had
//! become (`folder`).
//!
//! Imports the options and the record format only; it must not import the
//! writer (which takes the spares), the folder or the store's handle.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use super::options::Durability;
use super::record::{unix_millis, MAGIC};

/// The size of every segment file: records fill it from the front; the
/// writer moves to the next segment when a batch does not fit in what is
/// left (or the segment's span has passed). A batch is at most a few
/// hundred KiB, so one always fits in a fresh segment.
pub(super) const SEGMENT_CAPACITY: u64 = 1 << 20;
/// Appended to a prepared segment's name until the writer takes it.
pub(crate) const PREPARED_SUFFIX: &str = ".prepared";
/// Segment files' extension.
pub(super) const SEGMENT_EXTENSION: &str = "seg";
/// Every file the store creates is private: owner read and write only.
pub(super) const FILE_MODE: u32 = 0o600;

/// A segment file made ahead of time: the magic, then zeros to
/// [`SEGMENT_CAPACITY`], durable (file and folder entry) under its
/// prepared name.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) file: File,
    /// Where it waits (`<unix ms>.seg.prepared`).
    pub(super) prepared_path: PathBuf,
    /// The segment it becomes (`<unix ms>.seg`).
    pub(super) path: PathBuf,
}

impl Prepared {
    /// Makes the spare a segment: renames it to its segment name. Not
    /// synced: see the module's documentation.
    pub(super) fn into_segment(self) -> io::Result<(File, PathBuf)> {
        std::fs::rename(&self.prepared_path, &self.path)?;
        Ok((self.file, self.path))
    }
}

/// The thread that makes spares, and the one spare asked for.
pub(super) struct Preparer {
    dir: PathBuf,
    /// The newest segment name given out, so that names never repeat.
    last_name: Arc<AtomicU64>,
    requests: mpsc::Sender<()>,
    ready: mpsc::Receiver<io::Result<Prepared>>,
    /// Whether a spare has been asked for and not yet taken.
    asked: bool,
}

impl Preparer {
    /// Starts the thread and asks it for the first spare. It stops once
    /// the preparer is dropped.
    pub(super) fn start(dir: PathBuf, durability: Durability) -> io::Result<Preparer> {
        let (requests, asks) = mpsc::channel::<()>();
        let (made, ready) = mpsc::channel();
        let last_name = Arc::new(AtomicU64::new(0));
        let (thread_dir, names) = (dir.clone(), last_name.clone());
        std::thread::Builder::new()
            .name("paypush-prepare".into())
            .spawn(move || {
                while asks.recv().is_ok() {
                    let path = segment_path(&thread_dir, &names);
                    if made.send(prepare(&thread_dir, path, durability)).is_err() {
                        break;
                    }
                }
            })?;
        let mut preparer = Preparer {
            dir,
            last_name,
            requests,
            ready,
            asked: false,
        };
        preparer.ask();
        Ok(preparer)
    }

    /// A new segment's path (`<unix ms>.seg`), never one given out before.
    pub(super) fn next_path(&self) -> PathBuf {
        segment_path(&self.dir, &self.last_name)
    }

    fn ask(&mut self) {
        self.asked = self.requests.send(()).is_ok();
    }

    /// The next spare (waiting for it if it is still being made), and asks
    /// for the one after. After a failure, the next call asks again.
    pub(super) fn take(&mut self) -> io::Result<Prepared> {
        if !self.asked {
            self.ask();
        }
        self.asked = false;
        let prepared = self
            .ready
            .recv()
            .map_err(|_| io::Error::other("the thread preparing segments has stopped"))??;
        self.ask();
        Ok(prepared)
    }

    /// Deletes the spare asked for (waiting for it if it is still being
    /// made): the folder keeps no file the writer did not write to.
    pub(super) fn discard(&mut self) {
        if !std::mem::take(&mut self.asked) {
            return;
        }
        if let Ok(Ok(prepared)) = self.ready.recv() {
            if let Err(e) = std::fs::remove_file(&prepared.prepared_path) {
                log::warn!(
                    "store: cannot delete {}: {e}",
                    prepared.prepared_path.display()
                );
            }
        }
    }
}

/// `dir/<unix ms>.seg`, the time moved past the newest name given out.
fn segment_path(dir: &Path, last_name: &AtomicU64) -> PathBuf {
    let now = unix_millis(SystemTime::now());
    let mut last = last_name.load(Ordering::Relaxed);
    let name = loop {
        let name = now.max(last + 1);
        match last_name.compare_exchange(last, name, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break name,
            Err(newer) => last = newer,
        }
    };
    dir.join(format!("{name:020}.{SEGMENT_EXTENSION}"))
}

/// Creates `path` + `.prepared` (`path` is in `dir`): the magic, zeros to
/// [`SEGMENT_CAPACITY`], and (durability `disk`) synced with its folder
/// entry.
fn prepare(dir: &Path, path: PathBuf, durability: Durability) -> io::Result<Prepared> {
    let mut prepared_path = path.clone().into_os_string();
    prepared_path.push(PREPARED_SUFFIX);
    let prepared_path = PathBuf::from(prepared_path);
    let file = create_segment_file(dir, &prepared_path, SEGMENT_CAPACITY, durability)?;
    Ok(Prepared {
        file,
        prepared_path,
        path,
    })
}

/// Creates the segment file `path` in `dir`, private: the magic, then
/// zeros up to `size` bytes (none for a segment that grows), durable (file
/// and folder entry, durability `disk`) before any record goes in. A
/// failure (a full disk, a file-size limit) removes the file.
pub(super) fn create_segment_file(
    dir: &Path,
    path: &Path,
    size: u64,
    durability: Durability,
) -> io::Result<File> {
    let made = (|| {
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(FILE_MODE)
            .open(path)?;
        let mut contents = vec![0; usize::try_from(size).unwrap_or(0).max(MAGIC.len())];
        contents[..MAGIC.len()].copy_from_slice(MAGIC);
        file.write_all(&contents)?;
        if durability == Durability::Disk {
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(file)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}
