//! The store's errors: [`StoreError`] (a batch was not stored) and
//! [`OpenError`] (the folder cannot be used), each with `Display` and
//! `std::error::Error`.
//!
//! A leaf: it imports nothing from the store, so every other room of the
//! store may import it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

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

impl std::error::Error for OpenError {}
