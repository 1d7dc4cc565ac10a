//! Keys of requests `login --keep-pending` left pending, kept for `login --resume`.
//!
//! ssh-agent cannot attach a certificate to a key it already holds (adding a certificate
//! takes the private key again) and never gives a private key back, so a login that stops
//! waiting must keep the key itself to load the certificate later. It keeps it in
//! `$XDG_RUNTIME_DIR/moshca/pending/ID.key`: a per-user directory in memory (tmpfs) that
//! logind empties at logout, so the key never reaches a disk; the directory is 0700 and
//! the file 0600. The file goes away once the request is loaded, denied, expired or
//! cancelled. This module only stores and finds those files.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keys::EphemeralKey;

/// The directory of kept keys under `runtime_dir` (`XDG_RUNTIME_DIR`); an error without one.
pub fn dir(runtime_dir: Option<&Path>) -> Result<PathBuf> {
    match runtime_dir {
        Some(dir) if dir.is_absolute() => Ok(dir.join("moshca").join("pending")),
        _ => Err(Error::NoRuntimeDir),
    }
}

/// The file for request `id`; ids are ULIDs, anything else is refused so no path escapes.
fn file(dir: &Path, id: &str) -> Result<PathBuf> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::NothingToResume {
            id: id.to_owned(),
            dir: dir.to_owned(),
        });
    }
    Ok(dir.join(format!("{id}.key")))
}

/// Keeps `key` for request `id`; returns the file.
pub fn keep(dir: &Path, id: &str, key: &EphemeralKey) -> Result<PathBuf> {
    let path = file(dir, id)?;
    let write_error = |source| Error::Write {
        path: path.clone(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
    let text = key.private_openssh()?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_error)?;
    out.write_all(text.as_bytes()).map_err(write_error)?;
    Ok(path)
}

/// The key kept for request `id`.
pub fn find(dir: &Path, id: &str) -> Result<EphemeralKey> {
    let path = file(dir, id)?;
    let text =
        zeroize::Zeroizing::new(
            fs::read_to_string(&path).map_err(|_| Error::NothingToResume {
                id: id.to_owned(),
                dir: dir.to_owned(),
            })?,
        );
    EphemeralKey::from_private_openssh(&text)
}

/// Forgets the key kept for request `id`, if any.
pub fn forget(dir: &Path, id: &str) {
    if let Ok(path) = file(dir, id)
        && let Err(err) = fs::remove_file(&path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        crate::output::warning(&format!("cannot remove {}: {err}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_kept_key_comes_back_private_and_then_goes() {
        let runtime = tempfile::tempdir().unwrap();
        let dir = dir(Some(runtime.path())).unwrap();
        let key = EphemeralKey::generate().unwrap();
        let path = keep(&dir, "01JREQ", &key).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            find(&dir, "01JREQ").unwrap().fingerprint(),
            key.fingerprint()
        );
        forget(&dir, "01JREQ");
        assert!(matches!(
            find(&dir, "01JREQ"),
            Err(Error::NothingToResume { .. })
        ));
    }

    #[test]
    fn odd_ids_and_a_missing_runtime_dir_are_refused() {
        let runtime = tempfile::tempdir().unwrap();
        let dir = dir(Some(runtime.path())).unwrap();
        assert!(find(&dir, "../../etc/passwd").is_err());
        assert!(matches!(dir_of(None), Err(Error::NoRuntimeDir)));
        assert!(matches!(
            dir_of(Some(Path::new("relative"))),
            Err(Error::NoRuntimeDir)
        ));
    }

    fn dir_of(runtime: Option<&Path>) -> Result<PathBuf> {
        super::dir(runtime)
    }
}
