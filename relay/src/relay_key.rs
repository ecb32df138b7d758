//! The relay's identity key: made on first start, kept in `DATA_DIR/relay.key` (mode 0600),
//! printed so clients can pin it.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_protocol::RelayKey;
use rand_core::OsRng;
use zeroize::Zeroizing;

/// File name of the key inside the data folder.
pub const KEY_FILE: &str = "relay.key";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("relay key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold 64 hexadecimal digits.
    #[error("relay key file {0} is corrupt: expected 64 hexadecimal digits")]
    Corrupt(PathBuf),
}

/// Loads the key from `data_dir`, creating the folder and a new key if there is none.
/// Returns the key and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> Result<(RelayKey, bool), KeyFileError> {
    let (secret, created) = load_or_create_secret(data_dir, KEY_FILE, || {
        RelayKey::generate(&mut OsRng).secret_bytes()
    })?;
    Ok((RelayKey::from_secret_bytes(&secret), created))
}

/// Loads the 32-byte secret kept in hex in `data_dir/file` (mode 0600), creating the folder
/// and the file from `generate` if there is none. Returns it and whether it was just created.
pub(crate) fn load_or_create_secret(
    data_dir: &Path,
    file: &str,
    generate: impl FnOnce() -> Zeroizing<[u8; 32]>,
) -> Result<(Zeroizing<[u8; 32]>, bool), KeyFileError> {
    let path = data_dir.join(file);
    let io = |source| KeyFileError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let mut secret = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), secret.as_mut())
                .map_err(|_| KeyFileError::Corrupt(path.clone()))?;
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let secret = generate();
            let text = Zeroizing::new(hex::encode(secret.as_ref()));
            write_private(&path, text.as_bytes()).map_err(io)?;
            Ok((secret, true))
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes a file readable by its owner only, failing if it already exists.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let (again, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(key.id(), again.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyFileError::Corrupt(_))
        ));
    }
}
