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
    // A temporary left by a crash (or planted: a symbolic link) goes first; the temporary is
    // then created new, so whatever appears there meanwhile fails the write instead of
    // receiving it.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io(&temporary, e)),
    }
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

/// Creates `dir` (and its parents) readable by the owner only. A folder that exists
/// already is made private too.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| StateError::io(dir, e))?;
    make_dir_private(dir)
}

/// Gives `dir` mode 0700 (owner only) if it has any other mode, whoever made it.
pub(crate) fn make_dir_private(dir: &Path) -> Result<(), StateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)
            .map_err(|e| StateError::io(dir, e))?
            .permissions()
            .mode();
        if mode & 0o7777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| StateError::io(dir, e))?;
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
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

/// Creates `path`, which must not exist, for writing with the given access.
///
/// Never opens what is already there (`O_EXCL`) nor follows a symbolic link (`O_NOFOLLOW`):
/// a file or link planted at `path` makes this fail, instead of a key being written
/// wherever it points.
pub(crate) fn create_file(path: &Path, access: Access) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
        if access == Access::Private {
            options.mode(0o600);
        }
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
    fn a_temporary_left_by_a_crash_does_not_block_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        fs::write(temporary_path(&path), "half a write").unwrap();
        write_u64(&path, 9).unwrap();
        assert_eq!(read_u64(&path).unwrap(), 9);
        assert!(!temporary_path(&path).exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symbolic_link_never_receives_a_secret() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let captured = elsewhere.path().join("captured");
        fs::write(&captured, "").unwrap();
        let missing = elsewhere.path().join("missing");
        let path = dir.path().join("user.key");

        // Creating the temporary refuses a link there, to a file or to nothing, and an
        // existing file: nothing is written through, nothing is created elsewhere.
        for target in [&captured, &missing] {
            symlink(target, temporary_path(&path)).unwrap();
            let refused = create_file(&temporary_path(&path), Access::Private);
            assert!(refused.is_err(), "opened through a link to {target:?}");
            fs::remove_file(temporary_path(&path)).unwrap();
        }
        fs::write(temporary_path(&path), "").unwrap();
        assert!(create_file(&temporary_path(&path), Access::Private).is_err());
        fs::remove_file(temporary_path(&path)).unwrap();
        assert!(!missing.exists());

        // A whole write with a link planted at the temporary: the secret lands in the state
        // folder, in a private regular file; the link's target is untouched.
        symlink(&captured, temporary_path(&path)).unwrap();
        write_secret(&path, &[7; 32]).unwrap();
        assert_eq!(fs::read(&captured).unwrap(), b"");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(*read_hex32(&path).unwrap(), [7; 32]);
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_folder_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&state).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
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
