//! Segment files: their names (`<unix ms>.seg`, and those of damaged copies
//! and of repairs under way), how long one takes new records
//! ([`segment_span`]), and the writer's set of them: the active segment
//! (taken from the [`Preparer`], filled up to its capacity), its rotation,
//! and the deletion of segments whose records have all expired.
//!
//! Imports the options, the record format and the preparer only; it must
//! not import the writer (which drives [`Segments`]), the folder (which
//! lists segments at start-up) or the store's handle.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::options::{Durability, StoreConfig};
use super::prepare::{create_segment_file, Preparer, SEGMENT_CAPACITY, SEGMENT_EXTENSION};
use super::record::{unix_millis, MAGIC};

/// Shortest and longest time a segment takes new records.
const SEGMENT_SPAN_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// A segment's span as a fraction of the outcome TTL.
const SEGMENT_SPANS_PER_RETENTION: u32 = 8;
/// Between a damaged segment's name and the time in its copy's name
/// (`<unix ms>.seg.damaged-<unix ms>`): not a segment's extension, so the
/// store never reads or expires a copy.
pub(super) const DAMAGED_INFIX: &str = ".damaged-";
/// Appended to a segment's name while its repaired version is written.
pub(super) const REPAIR_SUFFIX: &str = ".repair";

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
    file: File,
    path: PathBuf,
    opened: Instant,
    /// Unix ms after which every record in it has expired.
    pub(super) expires: u64,
    /// Bytes written: the magic and the records. The next write goes here.
    pub(super) bytes: u64,
    /// The file's size when prepared ([`SEGMENT_CAPACITY`]); `None` for
    /// one made when no spare could be (it grows with each write).
    capacity: Option<u64>,
}

impl Active {
    /// Whether `more` bytes fit in what is left of a prepared file.
    fn fits(&self, more: u64) -> bool {
        self.capacity
            .is_none_or(|capacity| self.bytes + more <= capacity)
    }

    /// Writes `bytes` after the records (over a prepared segment's zeros).
    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.bytes)
    }

    /// Waits until the disk has every byte written (`fdatasync`).
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Takes no more records: the unused zeros are cut off (not synced: a
    /// crash may bring them back, which start-up reads as the end).
    fn close(self) -> Closed {
        if self.capacity.is_some() {
            if let Err(e) = self.file.set_len(self.bytes) {
                log::warn!("store: cannot trim {}: {e}", self.path.display());
            }
        }
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
    /// Makes the next segment ahead of time.
    preparer: Preparer,
    /// Whether the last spare could not be made (said once, not per segment).
    unprepared: bool,
}

impl Segments {
    /// The segments found at start-up (`closed`, oldest first); the first
    /// record written starts a new one. Starts the thread that prepares
    /// segments.
    pub(super) fn new(config: &StoreConfig, closed: VecDeque<Closed>) -> io::Result<Self> {
        Ok(Segments {
            dir: config.dir.clone(),
            durability: config.durability,
            span: segment_span(config),
            active: None,
            closed,
            preparer: Preparer::start(config.dir.clone(), config.durability)?,
            unprepared: false,
        })
    }

    /// How long one segment takes new records.
    pub(super) fn span(&self) -> Duration {
        self.span
    }

    /// The segment to write `more` bytes to: the active one, or a new one
    /// once it is older than the span or too full (or there is none).
    pub(super) fn active(&mut self, more: u64, bytes: &AtomicU64) -> io::Result<&mut Active> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.opened.elapsed() >= self.span || !a.fits(more))
        {
            self.close_active();
        }
        if self.active.is_none() {
            let active = self.new_segment()?;
            bytes.fetch_add(active.bytes, Ordering::Relaxed);
            self.active = Some(active);
        }
        self.active
            .as_mut()
            .ok_or_else(|| io::Error::other("no segment"))
    }

    /// The next segment: the spare the preparer made, or, when it could
    /// not make one (a disk too full for a whole segment, a file-size
    /// limit), one made here that grows with each write, as long as the
    /// disk takes it.
    fn new_segment(&mut self) -> io::Result<Active> {
        let (file, path, capacity) = match self.preparer.take() {
            Ok(prepared) => {
                if std::mem::take(&mut self.unprepared) {
                    log::info!("store: preparing segments ahead again");
                }
                let (file, path) = prepared.into_segment()?;
                (file, path, Some(SEGMENT_CAPACITY))
            }
            Err(e) => {
                if !std::mem::replace(&mut self.unprepared, true) {
                    log::warn!(
                        "store: cannot prepare a segment of {SEGMENT_CAPACITY} bytes in {} \
                         ({e}); writing to one that grows instead",
                        self.dir.display()
                    );
                }
                let (file, path) = self.growing_segment()?;
                (file, path, None)
            }
        };
        Ok(Active {
            file,
            path,
            opened: Instant::now(),
            expires: 0,
            bytes: MAGIC.len() as u64,
            capacity,
        })
    }

    /// Creates a segment holding only its magic, durable (file and folder
    /// entry) before any record goes in.
    fn growing_segment(&mut self) -> io::Result<(File, PathBuf)> {
        let path = self.preparer.next_path();
        let file = create_segment_file(&self.dir, &path, MAGIC.len() as u64, self.durability)?;
        Ok((file, path))
    }

    /// Closes the active segment, if any.
    fn close_active(&mut self) {
        if let Some(active) = self.active.take() {
            self.closed.push_back(active.close());
        }
    }

    /// At the writer's end: closes the active segment and deletes the
    /// spare made for the next one.
    pub(super) fn finish(&mut self) {
        self.close_active();
        self.preparer.discard();
    }

    /// Closes the active segment after a failed write or sync, cut back to
    /// its last stored record: the next batch starts a fresh one.
    pub(super) fn abandon_active(&mut self) {
        if let Some(mut active) = self.active.take() {
            if let Err(e) = active.file.set_len(active.bytes) {
                log::warn!("store: cannot cut {} back: {e}", active.path.display());
            }
            active.capacity = None;
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
            self.close_active();
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
