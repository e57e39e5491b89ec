//! The store: outcomes and nonces on disk, so that a callback answered `200`
//! survives a restart, a `SIGKILL` and (with [`Durability::Disk`]) a power cut.
//!
//! It sits below the hub: the hub decides (first outcome wins) and hands each
//! new outcome and nonce to [`Store::append`]; it lets streams, duplicates and
//! the callback itself see the outcome only once the store says it is
//! durable. Nothing above the hub touches the store.
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
//!   the last batch held [`LOADED_BATCH`] records or more, callbacks are
//!   arriving faster than syncs finish, so the writer lets [`GATHER`]
//!   pass before it takes the next batch: half the syncs under a flood,
//!   for at most that much latency. A trickle of callbacks (batches of one)
//!   never waits.
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
//!   read or expired; the newest [`MAX_DAMAGED_COPIES`] are kept), and the
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

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::Histogram;

use super::record::{self, unix_millis, Read, Record, MAGIC};

/// When a callback's `200` may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// After `fdatasync`: survives a power cut.
    Disk,
    /// After `write`: survives a crash of paypush, not of the machine.
    Process,
}

/// Where and how the store keeps its records.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data folder.
    pub dir: PathBuf,
    /// When a record counts as stored.
    pub durability: Durability,
    /// How long outcomes are kept.
    pub outcome_ttl: Duration,
    /// How long nonces are kept.
    pub nonce_memory: Duration,
}

impl StoreConfig {
    /// How long a record of this kind is kept after its time.
    fn retention(&self, record: &Record) -> Duration {
        match record {
            Record::Outcome(_) => self.outcome_ttl,
            Record::Nonce { .. } => self.nonce_memory,
        }
    }

    /// Unix ms after which `record` may leave the disk.
    fn expiry_millis(&self, record: &Record) -> u64 {
        unix_millis(record.time() + self.retention(record))
    }
}

/// Shortest and longest time a segment takes new records.
const SEGMENT_SPAN_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// A segment's span as a fraction of the outcome TTL.
const SEGMENT_SPANS_PER_RETENTION: u32 = 8;
/// How long after a failed write the store refuses batches before it tries
/// a fresh segment: a full disk is not hammered by every callback.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The most records one write takes.
const MAX_BATCH: usize = 4096;
/// A batch this big says the callbacks outpace the syncs: gather the next.
const LOADED_BATCH: usize = 4;
/// How long the writer gathers records after a loaded batch.
const GATHER: Duration = Duration::from_micros(150);
/// The lock file's name in the data folder.
const LOCK_FILE: &str = "LOCK";
/// Segment files' extension.
const SEGMENT_EXTENSION: &str = "seg";
/// Between a damaged segment's name and the time in its copy's name
/// (`<unix ms>.seg.damaged-<unix ms>`): not a segment's extension, so the
/// store never reads or expires a copy.
const DAMAGED_INFIX: &str = ".damaged-";
/// How many copies of damaged segments the folder keeps (the newest): a
/// failing disk must not fill it with copies.
const MAX_DAMAGED_COPIES: usize = 8;
/// Appended to a segment's name while its repaired version is written.
const REPAIR_SUFFIX: &str = ".repair";
/// Every file the store creates is private: owner read and write only.
const FILE_MODE: u32 = 0o600;
/// The permission bits of a mode (set-id and sticky bits included).
const PERMISSION_BITS: u32 = 0o7777;
/// Write permission for group and others: a folder with either is refused.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// How long one segment takes new records: an eighth of the outcome TTL,
/// from one second to one minute (a segment of nonces simply waits for
/// its own last expiry).
pub fn segment_span(config: &StoreConfig) -> Duration {
    (config.outcome_ttl / SEGMENT_SPANS_PER_RETENTION)
        .clamp(SEGMENT_SPAN_RANGE.0, SEGMENT_SPAN_RANGE.1)
}

/// A write or sync failed; the records of that batch are not stored.
#[derive(Clone, Debug)]
pub struct StoreError(Arc<str>);

impl From<&str> for StoreError {
    fn from(message: &str) -> Self {
        StoreError(message.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Why the store cannot open.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the folder's lock.
    Locked(PathBuf),
    /// The folder (or the folder its link points to) is writable by group
    /// or others, or owned by another user: anyone who can write there can
    /// plant a segment that marks a payment paid at the next start.
    NotPrivate {
        /// The folder as configured.
        dir: PathBuf,
        /// Where it leads, when it is a symbolic link.
        target: Option<PathBuf>,
        /// Its permission bits.
        mode: u32,
        /// Its owner, when not paypush's effective user (`uid`).
        owner: Option<(u32, u32)>,
    },
    /// The folder cannot be created, read or locked.
    Io(PathBuf, io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Locked(dir) => write!(
                f,
                "the data folder {} is in use by another paypush process",
                dir.display()
            ),
            OpenError::NotPrivate {
                dir,
                target,
                mode,
                owner,
            } => {
                write!(f, "refusing the data folder {}", dir.display())?;
                let folder = target.as_deref().unwrap_or(dir);
                if let Some(target) = target {
                    write!(f, " (a link to {})", target.display())?;
                }
                match owner {
                    Some((owner, uid)) => write!(
                        f,
                        ": mode {mode:04o}, owned by uid {owner}, not by paypush's user \
                         (uid {uid}); give it to that user (chown) or choose another folder"
                    ),
                    None => write!(
                        f,
                        ": mode {mode:04o} lets group or others write to it \
                         (chmod go-w {})",
                        folder.display()
                    ),
                }
            }
            OpenError::Io(dir, e) => write!(f, "cannot use the data folder {}: {e}", dir.display()),
        }
    }
}

/// What start-up found in the folder: every record still within its
/// retention, oldest first.
#[derive(Debug, Default)]
pub struct Replay {
    /// The live records, by their time.
    pub records: Vec<Record>,
}

/// Called once a record is stored, or could not be.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    record: Record,
    done: Done,
}

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

/// What the writer and the handles share.
struct Shared {
    dir: PathBuf,
    durability: Durability,
    /// False from a failed write until the next one succeeds.
    healthy: AtomicBool,
    /// Bytes in the folder's live segments.
    bytes: AtomicU64,
}

impl Store {
    /// Opens (creating it, mode 0700, if missing) and locks the folder,
    /// reads back its live records, and starts the writer thread.
    /// Refuses a folder that is not private (see `check_private`) before
    /// writing anything in it. `sync_seconds` observes every `fdatasync`.
    pub fn open(
        config: StoreConfig,
        sync_seconds: Histogram,
    ) -> Result<(Store, Replay), OpenError> {
        let dir = config.dir.clone();
        let io_error = |e| OpenError::Io(dir.clone(), e);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error)?;
        check_private(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(io_error)?;
        make_private(&lock_path).map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let started = Instant::now();
        let (replay, closed) = read_folder(&config).map_err(io_error)?;
        let bytes: u64 = closed.iter().map(|segment| segment.bytes).sum();
        log::info!(
            "store: read {} live records from {} segments ({bytes} bytes) in {} ms",
            replay.records.len(),
            closed.len(),
            started.elapsed().as_millis()
        );
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            durability: config.durability,
            healthy: AtomicBool::new(true),
            bytes: AtomicU64::new(bytes),
        });
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            span: segment_span(&config),
            config,
            active: None,
            closed,
            last_name: 0,
            failure: None,
            shared: shared.clone(),
            sync_seconds,
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("paypush-store".into())
            .spawn(move || writer.run(queue))
            .map_err(io_error)?;
        Ok((Store { jobs, shared }, replay))
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
            (job.done)(Err(StoreError("the store's writer has stopped".into())));
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

/// A segment that takes no more records, kept until it expires.
#[derive(Debug)]
struct Closed {
    path: PathBuf,
    /// Unix ms after which every record in it has expired.
    expires: u64,
    bytes: u64,
}

/// The segment being written.
struct Active {
    file: File,
    path: PathBuf,
    opened: Instant,
    expires: u64,
    bytes: u64,
}

impl Active {
    fn close(self) -> Closed {
        Closed {
            path: self.path,
            expires: self.expires,
            bytes: self.bytes,
        }
    }
}

/// The writer thread's state.
struct Writer {
    config: StoreConfig,
    span: Duration,
    active: Option<Active>,
    /// Older segments, oldest first.
    closed: VecDeque<Closed>,
    /// The newest segment name used, so names never repeat.
    last_name: u64,
    /// The last failure, and when: batches are refused until [`RETRY_PAUSE`] has passed.
    failure: Option<(Instant, StoreError)>,
    shared: Arc<Shared>,
    sync_seconds: Histogram,
    /// Held while the writer lives: one process per folder.
    _lock: File,
}

impl Writer {
    /// Takes batches until every handle is gone; deletes expired segments
    /// between batches and while idle.
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        let mut loaded = false;
        loop {
            let first = match queue.recv_timeout(self.span) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.delete_expired();
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
            self.delete_expired();
        }
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
                let error = StoreError(
                    format!("cannot store in {}: {e}", self.shared.dir.display()).into(),
                );
                if self.failure.is_none() {
                    log::error!("store: {error}; callbacks get 503 until a write succeeds");
                }
                // The page cache may now hold what the disk does not: this
                // segment takes nothing more, and drops the refused records
                // (as far as the disk still obeys; else the latest outcome
                // wins at start-up, see `Hub::restore`).
                if let Some(active) = self.active.take() {
                    if let Err(e) = active.file.set_len(active.bytes) {
                        log::warn!("store: cannot cut {} back: {e}", active.path.display());
                    }
                    self.closed.push_back(active.close());
                }
                self.shared.healthy.store(false, Ordering::Relaxed);
                self.failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn append(&mut self, bytes: &[u8], expires: u64) -> io::Result<()> {
        let durability = self.config.durability;
        let active = self.active_segment()?;
        active.file.write_all(bytes)?;
        if durability == Durability::Disk {
            let started = Instant::now();
            active.file.sync_data()?;
            self.sync_seconds.observe(started.elapsed().as_secs_f64());
        }
        let active = self
            .active
            .as_mut()
            .ok_or_else(|| io::Error::other("no segment"))?;
        active.bytes += bytes.len() as u64;
        active.expires = active.expires.max(expires);
        self.shared
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The segment to write to: the active one, or a new one once it is
    /// older than the span (or there is none).
    fn active_segment(&mut self) -> io::Result<&mut Active> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.opened.elapsed() >= self.span)
        {
            if let Some(active) = self.active.take() {
                self.closed.push_back(active.close());
            }
        }
        if self.active.is_none() {
            self.active = Some(self.new_segment()?);
        }
        self.active
            .as_mut()
            .ok_or_else(|| io::Error::other("no segment"))
    }

    /// Creates a segment with its magic, durable (file and folder entry)
    /// before any record goes in.
    fn new_segment(&mut self) -> io::Result<Active> {
        let name = unix_millis(SystemTime::now()).max(self.last_name + 1);
        self.last_name = name;
        let path = self
            .shared
            .dir
            .join(format!("{name:020}.{SEGMENT_EXTENSION}"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&path)?;
        file.write_all(MAGIC)?;
        if self.config.durability == Durability::Disk {
            file.sync_data()?;
            File::open(&self.shared.dir)?.sync_all()?;
        }
        self.shared
            .bytes
            .fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
        Ok(Active {
            file,
            path,
            opened: Instant::now(),
            expires: 0,
            bytes: MAGIC.len() as u64,
        })
    }

    /// Deletes every segment whose records have all expired, the active
    /// one included.
    fn delete_expired(&mut self) {
        let now = unix_millis(SystemTime::now());
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.expires <= now && a.opened.elapsed() >= self.span)
        {
            if let Some(active) = self.active.take() {
                self.closed.push_back(active.close());
            }
        }
        let shared = &self.shared;
        self.closed.retain(|segment| {
            if segment.expires > now {
                return true;
            }
            match fs::remove_file(&segment.path) {
                Ok(()) => {
                    shared.bytes.fetch_sub(
                        segment.bytes.min(shared.bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    log::warn!("store: cannot delete {}: {e}", segment.path.display());
                    true
                }
            }
        });
    }
}

/// Refuses a folder that group or others can write to, or that another
/// user owns: following a symbolic link, it checks the folder it leads to.
/// A folder others may read (`0755`) is accepted: the files in it are
/// `0600`.
fn check_private(dir: &Path) -> Result<(), OpenError> {
    let io_error = |e| OpenError::Io(dir.to_path_buf(), e);
    let metadata = fs::metadata(dir).map_err(io_error)?;
    let is_link = fs::symlink_metadata(dir)
        .map_err(io_error)?
        .file_type()
        .is_symlink();
    let mode = metadata.permissions().mode() & PERMISSION_BITS;
    let uid = effective_uid();
    let owner = (metadata.uid() != uid).then_some((metadata.uid(), uid));
    if mode & WRITABLE_BY_OTHERS == 0 && owner.is_none() {
        return Ok(());
    }
    let target = if is_link {
        Some(fs::canonicalize(dir).map_err(io_error)?)
    } else {
        None
    };
    Err(OpenError::NotPrivate {
        dir: dir.to_path_buf(),
        target,
        mode,
        owner,
    })
}

/// paypush's effective user id: the owner of every file it creates.
fn effective_uid() -> u32 {
    // SAFETY: `geteuid` takes nothing, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Takes group and others' access away from a file an older paypush (or
/// a copy) left readable; true when it had to.
fn make_private(path: &Path) -> io::Result<bool> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & !FILE_MODE & PERMISSION_BITS == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))?;
    Ok(true)
}

/// Reads every segment of the folder, oldest first: the live records, and
/// the segments to keep. Expired segments are deleted; a torn tail is cut
/// off, a damaged record skipped (see [`read_segment`]). Leftovers of an
/// interrupted repair are deleted, and the oldest copies of damaged segments
/// beyond [`MAX_DAMAGED_COPIES`].
fn read_folder(config: &StoreConfig) -> io::Result<(Replay, VecDeque<Closed>)> {
    let mut paths = Vec::new();
    let mut copies = Vec::new();
    for entry in fs::read_dir(&config.dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if is_segment_name(name) {
            paths.push(path);
        } else if let Some(millis) = damaged_copy_millis(name) {
            copies.push((millis, path));
        } else if name
            .strip_suffix(REPAIR_SUFFIX)
            .is_some_and(is_segment_name)
        {
            // A repair cut short: the segment it came from is still whole.
            fs::remove_file(&path)?;
        }
    }
    paths.sort();
    let now = unix_millis(SystemTime::now());
    let mut replay = Replay::default();
    let mut kept = VecDeque::new();
    let mut made_private = 0;
    for path in paths.iter().chain(copies.iter().map(|(_, path)| path)) {
        if make_private(path)? {
            made_private += 1;
        }
    }
    if made_private > 0 {
        log::warn!(
            "store: {made_private} files in {} were readable by others; made them private (0600)",
            config.dir.display()
        );
    }
    for path in paths {
        let Some((records, bytes)) = read_segment(&path, &mut copies)? else {
            continue;
        };
        let expires = records
            .iter()
            .map(|record| config.expiry_millis(record))
            .max()
            .unwrap_or(0);
        if expires <= now {
            fs::remove_file(&path)?;
            continue;
        }
        replay.records.extend(
            records
                .into_iter()
                .filter(|record| config.expiry_millis(record) > now),
        );
        kept.push_back(Closed {
            path,
            expires,
            bytes,
        });
    }
    delete_oldest_copies(copies)?;
    // Written in nearly this order already: a cheap sort.
    replay.records.sort_by_key(Record::time);
    Ok((replay, kept))
}

/// The time in a damaged copy's name (`<segment>.seg.damaged-<unix ms>`);
/// `None` for any other name.
fn damaged_copy_millis(name: &str) -> Option<u64> {
    let (segment, millis) = name.rsplit_once(DAMAGED_INFIX)?;
    is_segment_name(segment)
        .then(|| millis.parse().ok())
        .flatten()
}

/// True for a segment's file name (`<unix ms>.seg`).
fn is_segment_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| ext == SEGMENT_EXTENSION)
}

/// Keeps the newest [`MAX_DAMAGED_COPIES`] copies of damaged segments.
fn delete_oldest_copies(mut copies: Vec<(u64, PathBuf)>) -> io::Result<()> {
    if copies.len() <= MAX_DAMAGED_COPIES {
        return Ok(());
    }
    copies.sort();
    let excess = copies.len() - MAX_DAMAGED_COPIES;
    for (_, path) in copies.drain(..excess) {
        log::warn!(
            "store: deleted {}, keeping the newest {MAX_DAMAGED_COPIES} copies of damaged segments",
            path.display()
        );
        fs::remove_file(&path)?;
    }
    Ok(())
}

/// A stretch of a segment's bytes that is not a valid record.
struct BadBytes {
    /// Where it starts in the file.
    offset: usize,
    /// Where the next valid record starts; `None` for a tail.
    next: Option<usize>,
    /// Torn (the file ends inside it) or corrupt, as the reader saw it.
    torn: bool,
}

/// One segment's records and its size after any repair; `None` for a file
/// that is not a segment (skipped) or an empty one (deleted).
///
/// A bad record with nothing valid after it is a torn tail: the file is
/// truncated there, with a warning. A bad record with valid records after
/// it is damage: reading resumes at the next valid record, a copy of the
/// file as found is kept beside it (and its name pushed on `copies`), an
/// ERROR names the file and the offset, and the segment is rewritten
/// without the bad bytes so the next start reads it clean.
fn read_segment(
    path: &Path,
    copies: &mut Vec<(u64, PathBuf)>,
) -> io::Result<Option<(Vec<Record>, u64)>> {
    let bytes = fs::read(path)?;
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
        // Created but never written: nothing to keep.
        fs::remove_file(path)?;
        return Ok(None);
    }
    if !bytes.starts_with(MAGIC) {
        log::warn!(
            "store: {} is not a paypush segment; skipped",
            path.display()
        );
        return Ok(None);
    }
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        match Record::decode(&bytes[offset..]) {
            Read::Record(record, used) => {
                records.push(record);
                offset += used;
            }
            read @ (Read::Torn | Read::Corrupt) => {
                let next = record::next_record(&bytes, offset + 1);
                bad.push(BadBytes {
                    offset,
                    next,
                    torn: read == Read::Torn,
                });
                match next {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    let tail = bad.last().filter(|bad| bad.next.is_none());
    if let Some(tail) = tail {
        let what = if tail.torn { "a torn" } else { "a corrupt" };
        log::warn!(
            "store: {} ends with {what} record at byte {} (a write cut short by a crash); \
             dropped its last {} bytes, kept the {} records before it",
            path.display(),
            tail.offset,
            bytes.len() - tail.offset,
            records.len(),
        );
    }
    if bad.iter().all(|bad| bad.next.is_none()) {
        // At most a torn tail: cut it off in place.
        let Some(tail) = tail else {
            return Ok(Some((records, bytes.len() as u64)));
        };
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(tail.offset as u64)?;
        file.sync_all()?;
        return Ok(Some((records, tail.offset as u64)));
    }
    let copy = keep_damaged_copy(path, &bytes)?;
    for damage in &bad {
        let Some(next) = damage.next else { continue };
        log::error!(
            "store: {} has a damaged record at byte {} with valid records after it \
             (a bit flip or a bad sector, not a torn write): skipped {} bytes to the next \
             valid record, at byte {next}; the file as found is kept as {}",
            path.display(),
            damage.offset,
            next - damage.offset,
            copy.1.display(),
        );
    }
    copies.push(copy);
    // The file less its bad stretches: every valid record, in order.
    let mut repaired = Vec::with_capacity(bytes.len());
    let mut good_from = 0;
    for damage in &bad {
        repaired.extend_from_slice(&bytes[good_from..damage.offset]);
        good_from = damage.next.unwrap_or(bytes.len());
    }
    repaired.extend_from_slice(&bytes[good_from..]);
    replace_segment(path, &repaired)?;
    Ok(Some((records, repaired.len() as u64)))
}

/// Writes `bytes` (a damaged segment as found) beside it as
/// `<segment>.damaged-<unix ms>`, private and durable; returns its time and path.
fn keep_damaged_copy(path: &Path, bytes: &[u8]) -> io::Result<(u64, PathBuf)> {
    let millis = unix_millis(SystemTime::now());
    let mut name = path.as_os_str().to_owned();
    name.push(format!("{DAMAGED_INFIX}{millis}"));
    let copy = PathBuf::from(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&copy)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    Ok((millis, copy))
}

/// Replaces the segment at `path` with `bytes`, atomically: written beside
/// it, synced, renamed over it, and the folder synced.
fn replace_segment(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(REPAIR_SUFFIX);
    let repair = PathBuf::from(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&repair)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(&repair, path)?;
    if let Some(folder) = path.parent() {
        File::open(folder)?.sync_all()?;
    }
    Ok(())
}
