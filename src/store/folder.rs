//! Opening the data folder at start-up: creating it, refusing one that is
//! not private, taking its lock, and replaying it: listing its files,
//! deleting expired segments and leftovers, cutting off torn tails,
//! repairing damaged segments (their copies kept beside them) and reading
//! back every live record.
//!
//! Imports the options, the errors, the record format, the segments'
//! names and the names of prepared ones; it must not import the writer or
//! the store's handle (`mod.rs`), which receive what it found.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::errors::OpenError;
use super::options::StoreConfig;
use super::prepare::{FILE_MODE, PREPARED_SUFFIX};
use super::record::{self, unix_millis, Read, Record, MAGIC};
use super::segments::{damaged_copy_millis, is_segment_name, Closed, DAMAGED_INFIX, REPAIR_SUFFIX};

/// The lock file's name in the data folder.
const LOCK_FILE: &str = "LOCK";
/// How many copies of damaged segments the folder keeps (the newest): a
/// failing disk must not fill it with copies.
pub(super) const MAX_DAMAGED_COPIES: usize = 8;
/// The permission bits of a mode (set-id and sticky bits included).
const PERMISSION_BITS: u32 = 0o7777;
/// Write permission for group and others: a folder with either is refused.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// What start-up found in the folder: every record still within its
/// retention, oldest first.
#[derive(Debug, Default)]
pub struct Replay {
    /// The live records, by their time.
    pub records: Vec<Record>,
}

/// The folder, opened: what the writer takes over.
pub(super) struct Opened {
    /// The folder's lock, to hold while the writer lives.
    pub(super) lock: File,
    /// The live records, for the hub.
    pub(super) replay: Replay,
    /// The segments kept, oldest first.
    pub(super) closed: VecDeque<Closed>,
    /// Bytes in those segments.
    pub(super) bytes: u64,
}

/// Opens (creating it, mode 0700, if missing) and locks the folder, and
/// reads back its live records. Refuses a folder that is not private (see
/// [`check_private`]) before writing anything in it.
pub(super) fn open(config: &StoreConfig) -> Result<Opened, OpenError> {
    let dir = &config.dir;
    let io_error = |e| OpenError::Io(dir.clone(), e);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error)?;
    check_private(dir)?;
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
        Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.clone())),
        Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
    }
    let started = Instant::now();
    let (replay, closed) = read_folder(config).map_err(io_error)?;
    let bytes: u64 = closed.iter().map(|segment| segment.bytes).sum();
    log::info!(
        "store: read {} live records from {} segments ({bytes} bytes) in {} ms",
        replay.records.len(),
        closed.len(),
        started.elapsed().as_millis()
    );
    Ok(Opened {
        lock,
        replay,
        closed,
        bytes,
    })
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
        } else if let Some(segment) = name
            .strip_suffix(PREPARED_SUFFIX)
            .filter(|segment| is_segment_name(segment))
        {
            // A spare: unused (read as an empty segment, then deleted), or
            // the active segment whose unsynced rename a crash undid.
            let segment = path.with_file_name(segment);
            if segment.exists() {
                fs::remove_file(&path)?;
            } else {
                fs::rename(&path, &segment)?;
                paths.push(segment);
            }
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
    if (bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes)) || is_zeros(&bytes) {
        // Created, or being prepared, but never written: nothing to keep.
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
    // Where the records end: the file's end, or the start of the zeros a
    // prepared segment holds past its last record.
    let mut end = bytes.len();
    while offset < bytes.len() {
        if is_zeros(&bytes[offset..]) {
            end = offset;
            break;
        }
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
            if end < bytes.len() {
                // The unused zeros of a prepared segment: cut off, not
                // synced (back after a crash, they are read as the end again).
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(end as u64)?;
            }
            return Ok(Some((records, end as u64)));
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

/// Whether every byte is zero: a prepared segment's unused end (a record
/// never starts with a zero byte: its length, little-endian, is 1 to 73).
fn is_zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
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
