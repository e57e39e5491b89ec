//! Segment files: their names (`<unix ms>.seg`, and those of damaged copies
//! and of repairs under way), how long one takes new records
//! ([`segment_span`]), and the writer's set of them: the active segment,
//! its rotation, and the deletion of segments whose records have all
//! expired.
//!
//! Imports the options and the record format only; it must not import the
//! writer (which drives [`Segments`]), the folder (which lists segments at
//! start-up) or the store's handle.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::options::{Durability, StoreConfig};
use super::record::{unix_millis, MAGIC};

/// Shortest and longest time a segment takes new records.
const SEGMENT_SPAN_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// A segment's span as a fraction of the outcome TTL.
const SEGMENT_SPANS_PER_RETENTION: u32 = 8;
/// Segment files' extension.
const SEGMENT_EXTENSION: &str = "seg";
/// Between a damaged segment's name and the time in its copy's name
/// (`<unix ms>.seg.damaged-<unix ms>`): not a segment's extension, so the
/// store never reads or expires a copy.
pub(super) const DAMAGED_INFIX: &str = ".damaged-";
/// Appended to a segment's name while its repaired version is written.
pub(super) const REPAIR_SUFFIX: &str = ".repair";
/// Every file the store creates is private: owner read and write only.
pub(super) const FILE_MODE: u32 = 0o600;

/// How long one segment takes new records: an eighth of the outcome TTL,
/// from one second to one minute (a segment of nonces simply waits for
/// its own last expiry).
pub(crate) fn segment_span(config: &StoreConfig) -> Duration {
    (config.outcome_ttl / SEGMENT_SPANS_PER_RETENTION)
        .clamp(SEGMENT_SPAN_RANGE.0, SEGMENT_SPAN_RANGE.1)
}

/// True for a segment's file name (`<unix ms>.seg`).
pub(super) fn is_segment_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| ext == SEGMENT_EXTENSION)
}

/// The time in a damaged copy's name (`<segment>.seg.damaged-<unix ms>`);
/// `None` for any other name.
pub(super) fn damaged_copy_millis(name: &str) -> Option<u64> {
    let (segment, millis) = name.rsplit_once(DAMAGED_INFIX)?;
    is_segment_name(segment)
        .then(|| millis.parse().ok())
        .flatten()
}

/// A segment that takes no more records, kept until it expires.
#[derive(Debug)]
pub(super) struct Closed {
    pub(super) path: PathBuf,
    /// Unix ms after which every record in it has expired.
    pub(super) expires: u64,
    pub(super) bytes: u64,
}

/// The segment being written.
pub(super) struct Active {
    pub(super) file: File,
    path: PathBuf,
    opened: Instant,
    /// Unix ms after which every record in it has expired.
    pub(super) expires: u64,
    pub(super) bytes: u64,
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

/// The writer's segments: the one being written and the older ones, with
/// the rotation from one to the next. `bytes` arguments are the count of
/// bytes in the folder's live segments that the store's handle reads.
pub(super) struct Segments {
    dir: PathBuf,
    durability: Durability,
    span: Duration,
    active: Option<Active>,
    /// Older segments, oldest first.
    closed: VecDeque<Closed>,
    /// The newest segment name used, so names never repeat.
    last_name: u64,
}

impl Segments {
    /// The segments found at start-up (`closed`, oldest first); the first
    /// record written starts a new one.
    pub(super) fn new(config: &StoreConfig, closed: VecDeque<Closed>) -> Self {
        Segments {
            dir: config.dir.clone(),
            durability: config.durability,
            span: segment_span(config),
            active: None,
            closed,
            last_name: 0,
        }
    }

    /// How long one segment takes new records.
    pub(super) fn span(&self) -> Duration {
        self.span
    }

    /// The segment to write to: the active one, or a new one once it is
    /// older than the span (or there is none).
    pub(super) fn active(&mut self, bytes: &AtomicU64) -> io::Result<&mut Active> {
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
            self.active = Some(self.new_segment(bytes)?);
        }
        self.active
            .as_mut()
            .ok_or_else(|| io::Error::other("no segment"))
    }

    /// Creates a segment with its magic, durable (file and folder entry)
    /// before any record goes in.
    fn new_segment(&mut self, bytes: &AtomicU64) -> io::Result<Active> {
        let name = unix_millis(SystemTime::now()).max(self.last_name + 1);
        self.last_name = name;
        let path = self.dir.join(format!("{name:020}.{SEGMENT_EXTENSION}"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&path)?;
        file.write_all(MAGIC)?;
        if self.durability == Durability::Disk {
            file.sync_data()?;
            File::open(&self.dir)?.sync_all()?;
        }
        bytes.fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
        Ok(Active {
            file,
            path,
            opened: Instant::now(),
            expires: 0,
            bytes: MAGIC.len() as u64,
        })
    }

    /// Closes the active segment after a failed write or sync, cut back to
    /// its last stored record: the next batch starts a fresh one.
    pub(super) fn abandon_active(&mut self) {
        if let Some(active) = self.active.take() {
            if let Err(e) = active.file.set_len(active.bytes) {
                log::warn!("store: cannot cut {} back: {e}", active.path.display());
            }
            self.closed.push_back(active.close());
        }
    }

    /// Deletes every segment whose records have all expired, the active
    /// one included.
    pub(super) fn delete_expired(&mut self, bytes: &AtomicU64) {
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
        self.closed.retain(|segment| {
            if segment.expires > now {
                return true;
            }
            match fs::remove_file(&segment.path) {
                Ok(()) => {
                    bytes.fetch_sub(
                        segment.bytes.min(bytes.load(Ordering::Relaxed)),
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
