//! Small durable files: atomic replacement, private (0600) secrets, the folder lock.
//!
//! Every file but the outbox journal is replaced whole: written to `NAME.tmp`, flushed to
//! disk (`fsync`), renamed over `NAME`, and the folder flushed so the rename itself is
//! durable. A crash at any point leaves either the old file or the new one, never a mix.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::StateError;

/// Who may read a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Readable by the owner only (mode 0600): keys.
    Private,
    /// The process's default mode (umask applies).
    Normal,
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> Result<(), StateError> {
    let temporary = temporary_path(path);
    let written = (|| {
        let mut file = create_file(&temporary, access)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(StateError::io(path, e));
    }
    sync_parent(path)
}

/// Reads a small text file, trimmed. The buffer is zeroized after use.
pub(crate) fn read_text(path: &Path) -> Result<Zeroizing<String>, StateError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| StateError::io(path, e))?);
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Reads a file of 64 hexadecimal digits into 32 bytes, zeroized after use.
pub(crate) fn read_hex32(path: &Path) -> Result<Zeroizing<[u8; 32]>, StateError> {
    let text = read_text(path)?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.as_bytes(), bytes.as_mut())
        .map_err(|_| StateError::corrupt(path, "expected 64 hexadecimal digits"))?;
    Ok(bytes)
}

/// Writes 32 secret bytes as hexadecimal, readable by the owner only.
pub(crate) fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), StateError> {
    let mut text = Zeroizing::new(hex::encode(secret));
    text.push('\n');
    write_atomic(path, text.as_bytes(), Access::Private)
}

/// Reads a decimal `u64` file.
pub(crate) fn read_u64(path: &Path) -> Result<u64, StateError> {
    read_text(path)?
        .parse()
        .map_err(|_| StateError::corrupt(path, "expected a decimal number"))
}

/// Writes a decimal `u64` file.
pub(crate) fn write_u64(path: &Path, value: u64) -> Result<(), StateError> {
    write_atomic(path, format!("{value}\n").as_bytes(), Access::Normal)
}

/// Creates `dir` (and its parents) readable by the owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| StateError::io(dir, e))
}

/// Takes the folder's exclusive lock, held until the returned file is dropped (the
/// operating system also releases it when the process dies, so a crash leaves no stale
/// lock).
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StateError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StateError::Locked(dir.to_owned())),
        Err(TryLockError::Error(e)) => Err(StateError::io(&path, e)),
    }
}

/// Opens `path` for writing from scratch with the given access.
pub(crate) fn create_file(path: &Path, access: Access) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if access == Access::Private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = access;
    options.open(path)
}

/// Flushes the folder holding `path`, so a rename or a new file in it is durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), StateError> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StateError::io(dir, e))?;
    }
    // Elsewhere a folder cannot be opened to flush it; the rename is as durable as the
    // platform makes it.
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `NAME.tmp` beside `NAME`.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        write_u64(&path, 7).unwrap();
        write_u64(&path, 12345).unwrap();
        assert_eq!(read_u64(&path).unwrap(), 12345);
        assert!(!temporary_path(&path).exists());
        fs::write(&path, "x").unwrap();
        assert!(matches!(read_u64(&path), Err(StateError::Corrupt { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.key");
        write_secret(&path, &[7; 32]).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(*read_hex32(&path).unwrap(), [7; 32]);
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        assert!(matches!(lock_dir(dir.path()), Err(StateError::Locked(_))));
        drop(held);
        lock_dir(dir.path()).unwrap();
    }
}
