//! CA public keys held as files: the only keys hosts are told to trust and the only keys
//! that verify audit checkpoints; and, apart from them, the host CA keys clients are told
//! to trust (`host_ca_key.pub`, `retired-host/*.pub`, see [`HostKeyFiles`]).
//!
//! The active key's public half sits beside it (`ca_key.pub`); `ca rotate` keeps each
//! retired key's under `retired/` (`retired/ca_key-<time>.pub`). The database's `ca_keys`
//! rows say which of these are still needed (a retired key only while certificates it
//! signed are valid), but a row alone never makes a key trusted: whoever can write the
//! database could otherwise add a key every host would accept. A row whose key has no file
//! is ignored and logged. Reads files; decides nothing else.

use std::path::{Path, PathBuf};

use ssh_key::{HashAlg, PrivateKey, PublicKey};

use crate::config::Config;

/// Where a data directory keeps its CA key files.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The active private key; its public key is the same path with `.pub`.
    active: PathBuf,
    /// Retired keys, private and `.pub`.
    retired_dir: PathBuf,
}

impl KeyFiles {
    /// The key files of a data directory.
    pub fn of(config: &Config) -> Self {
        KeyFiles {
            active: config.ca_key.clone(),
            retired_dir: retired_dir(config),
        }
    }

    /// Every CA public key held as a file, the active one first. A private key without
    /// its `.pub` (data directories from before `.pub` files were kept, or an interrupted
    /// rotation) counts by the public half every OpenSSH private key file carries in the
    /// clear. Unreadable files are logged and skipped.
    pub fn load(&self) -> Vec<PublicKey> {
        let mut keys = Vec::new();
        let mut add = |key: Option<PublicKey>| {
            if let Some(k) = key
                && !keys
                    .iter()
                    .any(|h: &PublicKey| h.key_data() == k.key_data())
            {
                keys.push(k);
            }
        };
        add(public_of(&self.active));
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.retired_dir) {
            Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(dir = %self.retired_dir.display(), error = %e, "cannot list retired CA keys");
                Vec::new()
            }
        };
        names.sort();
        for path in names {
            if path.extension().is_some_and(|e| e == "pub") {
                add(read_public(&path));
            } else if !path.with_extension("pub").exists() {
                add(public_of(&path));
            }
        }
        keys
    }

    /// Writes the `.pub` missing beside any key file (an upgrade of an older data
    /// directory); returns the files written.
    pub fn write_missing_public_files(&self) -> Vec<PathBuf> {
        let mut privates = vec![self.active.clone()];
        if let Ok(dir) = std::fs::read_dir(&self.retired_dir) {
            privates.extend(
                dir.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_none_or(|e| e != "pub")),
            );
        }
        let mut written = Vec::new();
        for private in privates {
            let pub_path = private.with_extension("pub");
            if pub_path.exists() || !private.exists() {
                continue;
            }
            let Some(key) = public_of(&private) else {
                continue;
            };
            let Ok(text) = key.to_openssh() else { continue };
            match std::fs::write(&pub_path, format!("{text}\n")) {
                Ok(()) => {
                    tracing::info!(file = %pub_path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "wrote the missing CA public key file");
                    written.push(pub_path);
                }
                Err(e) => {
                    tracing::warn!(file = %pub_path.display(), error = %e, "cannot write CA public key file");
                }
            }
        }
        written
    }
}

/// Where `ca rotate` keeps retired keys.
pub fn retired_dir(config: &Config) -> PathBuf {
    config.data_dir.join("retired")
}

/// Where `ca rotate --host` keeps retired host CA keys: a directory of their own, so a
/// host CA key can never be read as a user CA key (every `.pub` in `retired/` is one).
pub fn retired_host_dir(config: &Config) -> PathBuf {
    config.data_dir.join("retired-host")
}

/// The host CA key files of a data directory: `host_ca_key` (+ `.pub`) and the retired
/// ones in `retired-host/`. The only host CA keys ever published to clients.
#[derive(Debug, Clone)]
pub struct HostKeyFiles {
    active: PathBuf,
    retired_dir: PathBuf,
}

impl HostKeyFiles {
    /// The host key files of a data directory.
    pub fn of(config: &Config) -> Self {
        HostKeyFiles {
            active: config.host_ca_key.clone(),
            retired_dir: retired_host_dir(config),
        }
    }

    /// The active host CA public key (from its `.pub`, or the private key file).
    pub fn active(&self) -> Option<PublicKey> {
        public_of(&self.active)
    }

    /// Retired host CA public keys held as files.
    pub fn retired(&self) -> Vec<PublicKey> {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.retired_dir) {
            Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .filter_map(|p| read_public(p))
            .collect()
    }
}

/// The keys of `candidates` that are held as files (`held`), in order. The others are
/// returned as fingerprints, for the caller to log.
pub fn only_held(candidates: Vec<PublicKey>, held: &[PublicKey]) -> (Vec<PublicKey>, Vec<String>) {
    let (kept, ignored): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|k| held.iter().any(|h| h.key_data() == k.key_data()));
    let ignored = ignored
        .iter()
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
        .collect();
    (kept, ignored)
}

/// Logs CA keys that the database names but no file holds.
pub fn log_ignored(ignored: &[String], config_hint: &str) {
    for fingerprint in ignored {
        tracing::warn!(
            %fingerprint,
            "CA key registered in the database has no key file and is NOT trusted; if it is \
             one of yours (compare with the ca.rotated events of `moshca-server audit export`), \
             put its public key in {config_hint}"
        );
    }
}

fn read_public(path: &Path) -> Option<PublicKey> {
    match PublicKey::read_openssh_file(path) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable CA public key file");
            None
        }
    }
}

/// The public key of a private key file, from its `.pub` or else from the file itself.
fn public_of(private: &Path) -> Option<PublicKey> {
    let pub_path = private.with_extension("pub");
    if pub_path.exists() {
        return read_public(&pub_path);
    }
    let text = std::fs::read_to_string(private).ok()?;
    match PrivateKey::from_openssh(&text) {
        Ok(k) => Some(k.public_key().clone()),
        Err(e) => {
            tracing::warn!(file = %private.display(), error = %e, "ignoring unreadable CA key file");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::Signer;

    #[test]
    fn keys_come_from_files_and_missing_pub_files_are_derived() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ca");
        crate::init::init(&d, None, 1).unwrap();
        let config = Config::load(&d).unwrap();
        let files = KeyFiles::of(&config);
        let active = Signer::load(&config.ca_key, None).unwrap();
        assert_eq!(files.load().len(), 1);
        assert_eq!(files.load()[0].key_data(), active.public_key().key_data());
        // An older data directory: a retired private key without its `.pub`, and the
        // active key's `.pub` gone.
        std::fs::create_dir_all(retired_dir(&config)).unwrap();
        let pass = b"pw".as_slice();
        let old =
            Signer::generate(&retired_dir(&config).join("ca_key-5"), Some(pass), "o").unwrap();
        std::fs::remove_file(retired_dir(&config).join("ca_key-5.pub")).unwrap();
        std::fs::remove_file(config.ca_key.with_extension("pub")).unwrap();
        let keys = files.load();
        assert_eq!(
            keys.len(),
            2,
            "an encrypted key still shows its public half"
        );
        assert_eq!(keys[1].key_data(), old.public_key().key_data());
        assert_eq!(files.write_missing_public_files().len(), 2);
        assert!(retired_dir(&config).join("ca_key-5.pub").exists());
        assert_eq!(files.load().len(), 2);

        let stranger = Signer::generate(&dir.path().join("x"), None, "x").unwrap();
        let (kept, ignored) = only_held(
            vec![stranger.public_key().clone(), old.public_key().clone()],
            &files.load(),
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(ignored, [stranger.fingerprint()]);
    }
}
