//! One rule for every secret the server keeps in a file, and for the data directory.
//!
//! A secret file (CA key, its passphrase file, TLS key, webhook secret, the database and
//! its WAL/SHM) must be owned by the user running moshca-server and have no group or
//! other permission bits; the data directory likewise (0700). Anything else is refused
//! with the `chmod` (or `chown`) that fixes it, as OpenSSH refuses a private key others
//! can read. Reads check the opened file, not the path, so a swap between check and read
//! changes nothing. Never puts a file's contents in an error or a log.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Why a secret file or directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    Io {
        /// What it holds ("CA key", ...).
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Group or others may access it.
    #[error(
        "{what} {} is accessible by group or others (mode {mode:o}); run `chmod {fix} {}`",
        path.display(),
        path.display()
    )]
    Exposed {
        /// What it holds.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode that fixes it: 600 for files, 700 for directories.
        fix: &'static str,
    },
    /// Another user owns it.
    #[error(
        "{what} {} is owned by uid {owner}, not by the user running moshca-server (uid {me}); run `chown {me} {}` or run moshca-server as its owner",
        path.display(),
        path.display()
    )]
    NotOwned {
        /// What it holds.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user running the server.
        me: u32,
    },
    /// It holds nothing.
    #[error("{what} {} is empty", path.display())]
    Empty {
        /// What it holds.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
    },
}

/// Secret file result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The rule itself, on metadata already read.
fn check_meta(meta: &std::fs::Metadata, path: &Path, what: &'static str) -> Result<()> {
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Err(Error::NotOwned {
            what,
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::Exposed {
            what,
            path: path.to_owned(),
            mode: mode & 0o777,
            fix: if meta.is_dir() { "700" } else { "600" },
        });
    }
    Ok(())
}

/// Refuses `path` (a file or a directory) unless it is the user's own and private.
pub fn check_private(path: &Path, what: &'static str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    })?;
    check_meta(&meta, path, what)
}

/// Like [`check_private`], for a file that may not exist (a WAL not created yet).
pub fn check_private_if_present(path: &Path, what: &'static str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) => check_meta(&meta, path, what),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            what,
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads a secret file after checking the rule on the opened file.
pub fn read_secret(path: &Path, what: &'static str) -> Result<Zeroizing<Vec<u8>>> {
    let io = |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    check_meta(&file.metadata().map_err(io)?, path, what)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Reads a one-value secret file (a passphrase, a webhook secret) without its trailing
/// newline, refusing an empty one.
pub fn read_secret_value(path: &Path, what: &'static str) -> Result<Zeroizing<Vec<u8>>> {
    let mut bytes = read_secret(path, what)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(Error::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The database and the files SQLite keeps beside it.
pub fn database_files(database: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [database.to_owned(), with("-wal"), with("-shm")]
}

/// Makes the data directory and the database files private (0700, 0600): what `init`
/// leaves behind, whatever the directory's mode was before.
/// `database` is the SQLite file, or `None` when the rows are in PostgreSQL.
pub fn make_private(data_dir: &Path, database: Option<&Path>) -> std::io::Result<()> {
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    for file in database.into_iter().flat_map(database_files) {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a data directory, database or WAL/SHM file that is not private; `serve` runs
/// this before it opens anything.
/// `database` is the SQLite file, or `None` when the rows are in PostgreSQL.
pub fn check_data_dir(data_dir: &Path, database: Option<&Path>) -> Result<()> {
    check_private(data_dir, "data directory")?;
    for file in database.into_iter().flat_map(database_files) {
        check_private_if_present(&file, "database file")?;
    }
    Ok(())
}

/// Files the server creates from here on are private to its user: the WAL and SHM files
/// SQLite creates beside the database, and anything else written while serving.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Reads the passphrase file without its trailing newline, under the secret-file rule.
pub fn read_passphrase(path: &Path) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    Ok(read_secret_value(path, "passphrase file")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn one_rule_for_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        write(&f, "s3cret\n", 0o600);
        assert_eq!(
            read_secret_value(&f, "webhook secret").unwrap().as_slice(),
            b"s3cret"
        );
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_secret(&f, "TLS key").unwrap_err().to_string();
            assert!(e.contains(&format!("`chmod 600 {}`", f.display())), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(check_private(&f, "CA key").is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private(dir.path(), "data directory")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`chmod 700 "), "{e}");
        write(&f, "\n", 0o600);
        assert!(matches!(
            read_secret_value(&f, "passphrase file"),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            read_secret(&dir.path().join("missing"), "CA key"),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        // /etc/passwd belongs to root; under root the rule holds, so check the message
        // only when the test does not run as root.
        if rustix::process::getuid().is_root() {
            return;
        }
        let e = check_private(Path::new("/etc/passwd"), "CA key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by uid 0"), "{e}");
    }
}
