//! CA key rotation on a data directory, without downtime.
//!
//! `rotate` makes a new key and publishes it at once (hosts fetch it with the next
//! `moshca host sync`), while the running server keeps signing with the old key until it
//! is reloaded (SIGHUP). The old key stays trusted until its last certificate expires,
//! then drops out of the published list. The retired private key is kept in `retired/`
//! (0600) so no data is lost; it is no longer needed and may be deleted. Its public key
//! (`retired/ca_key-<time>.pub`) must stay: hosts and `audit verify` trust only keys held
//! as files (see `ca_keys`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use crate::audit::Event;
use crate::config::Config;
use crate::server::read_passphrase;
use crate::signer::Signer;
use crate::store::Store;

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    /// Fingerprint of the new key.
    pub new_fingerprint: String,
    /// Fingerprint of the key it replaces.
    pub old_fingerprint: String,
    /// Where the old private key now lives.
    pub retired_key: PathBuf,
}

/// Replaces the data directory's CA key with a new one, publishing it at once.
pub fn rotate(
    config: &Config,
    passphrase_file: Option<&Path>,
    now: u64,
) -> anyhow::Result<Rotated> {
    let passphrase = passphrase_file
        .or(config.passphrase_file.as_deref())
        .map(read_passphrase)
        .transpose()?;
    let pass = passphrase.as_ref().map(|p| p.as_slice());
    let old = Signer::load(&config.ca_key, pass)
        .context("loading the current CA key (give --passphrase-file if it is encrypted)")?;
    // No extension: the key's `.pub` sits beside it as `<name>.pub`.
    let mut next_name = config.ca_key.file_name().unwrap_or_default().to_os_string();
    next_name.push("-next");
    let next = config.ca_key.with_file_name(next_name);
    // A leftover from an interrupted rotation is never reused: it was never published.
    let _ = std::fs::remove_file(&next);
    let _ = std::fs::remove_file(next.with_extension("pub"));
    let new = Signer::generate(&next, pass, "moshca-ca")?;
    let store = Store::open(&config.database)
        .with_context(|| format!("opening database {}", config.database))?;
    let new_text = new.public_key().to_openssh()?;
    let old_text = old.public_key().to_openssh()?;
    store.transact(|tx| {
        tx.insert_ca_key(&old.fingerprint(), &old_text, now)?;
        // The old key is retired when a server starts signing with the new one.
        tx.insert_ca_key(&new.fingerprint(), &new_text, now)?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "ca.rotated",
            None,
            json!({ "ca_fingerprint": new.fingerprint(), "previous": old.fingerprint() }),
        ))
    })?;
    // Signed with the key still in service, so the rotation itself is covered at once.
    crate::authority::checkpoint(&store, &old, Some(&config.checkpoint_file), now)?;
    let retired_key = swap_key_files(
        &config.data_dir.join("retired"),
        &format!("ca_key-{now}"),
        &old_text,
        &config.ca_key,
        &next,
    )?;
    Ok(Rotated {
        new_fingerprint: new.fingerprint(),
        old_fingerprint: old.fingerprint(),
        retired_key,
    })
}

/// Replaces the host CA key with a new one (`ca rotate --host`), publishing it at once
/// beside the old one: clients' `moshca known-hosts` lists both while certificates the
/// old key signed are valid, so hosts renewed with the new key are trusted as soon as
/// clients refresh. The old key goes to `retired-host/`, never to `retired/` (whose keys
/// are user CA keys). The server signs with the new key after a reload (SIGHUP).
pub fn rotate_host(
    config: &Config,
    passphrase_file: Option<&Path>,
    now: u64,
) -> anyhow::Result<Rotated> {
    use crate::signer::HostSigner;
    let passphrase = passphrase_file
        .or(config.passphrase_file.as_deref())
        .map(read_passphrase)
        .transpose()?;
    let pass = passphrase.as_ref().map(|p| p.as_slice());
    let store = Store::open(&config.database)
        .with_context(|| format!("opening database {}", config.database))?;
    let old = crate::init::ensure_host_ca(config, pass, &store, now)
        .context("loading the current host CA key (give --passphrase-file if it is encrypted)")?;
    let mut next_name = config
        .host_ca_key
        .file_name()
        .unwrap_or_default()
        .to_os_string();
    next_name.push("-next");
    let next = config.host_ca_key.with_file_name(next_name);
    let _ = std::fs::remove_file(&next);
    let _ = std::fs::remove_file(next.with_extension("pub"));
    let new = HostSigner::generate(&next, pass)?;
    let old_text = old.public_key().to_openssh()?;
    store.transact(|tx| {
        tx.append_audit(&Event::new(
            now,
            "operator",
            "host_ca.rotated",
            None,
            json!({ "ca_fingerprint": new.fingerprint(), "previous": old.fingerprint() }),
        ))
    })?;
    let retired_key = swap_key_files(
        &crate::ca_keys::retired_host_dir(config),
        &format!("host_ca_key-{now}"),
        &old_text,
        &config.host_ca_key,
        &next,
    )?;
    Ok(Rotated {
        new_fingerprint: new.fingerprint(),
        old_fingerprint: old.fingerprint(),
        retired_key,
    })
}

/// Moves the key at `current` (public half `old_text`) to `retired_dir/stem` and the
/// freshly made `next` (and its `.pub`) into its place; the retired key's path. The
/// retired public key file is what keeps the old key trusted (by hosts, and for checking
/// the checkpoints it signed), so it is written before the key moves: some file holds it
/// at every moment.
fn swap_key_files(
    retired_dir: &Path,
    stem: &str,
    old_text: &str,
    current: &Path,
    next: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(retired_dir)
        .with_context(|| format!("creating {}", retired_dir.display()))?;
    let retired_key = retired_dir.join(stem);
    let retired_pub = retired_key.with_extension("pub");
    std::fs::write(&retired_pub, format!("{old_text}\n"))
        .with_context(|| format!("writing {}", retired_pub.display()))?;
    std::fs::rename(current, &retired_key)
        .with_context(|| format!("moving the old key to {}", retired_key.display()))?;
    std::fs::rename(next, current).context("installing the new key")?;
    std::fs::rename(next.with_extension("pub"), current.with_extension("pub"))
        .context("installing the new public key")?;
    Ok(retired_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_publishes_new_key_and_keeps_old_while_needed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ca");
        crate::init::init(&d, None, 100).unwrap();
        let config = Config::load(&d).unwrap();
        let old = Signer::load(&config.ca_key, None).unwrap();
        let store = Store::open(&config.database).unwrap();
        store
            .transact(|tx| {
                tx.insert_ca_key(
                    &old.fingerprint(),
                    &old.public_key().to_openssh().unwrap(),
                    100,
                )
            })
            .unwrap();
        let r = rotate(&config, None, 200).unwrap();
        assert_eq!(r.old_fingerprint, old.fingerprint());
        let new = Signer::load(&config.ca_key, None).unwrap();
        assert_eq!(new.fingerprint(), r.new_fingerprint);
        assert!(r.retired_key.exists());
        // While the server still signs with the old key, both are trusted.
        let both = store
            .read(|tx| tx.trusted_ca_keys(&old.fingerprint(), 300))
            .unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[0], old.public_key().to_openssh().unwrap());
        // Once the new key is active and the old one has no live certificate, it drops out.
        store
            .transact(|tx| tx.retire_ca_keys_except(&new.fingerprint(), 300))
            .unwrap();
        let after = store
            .read(|tx| tx.trusted_ca_keys(&new.fingerprint(), 300))
            .unwrap();
        assert_eq!(after, [new.public_key().to_openssh().unwrap()]);
    }
}
