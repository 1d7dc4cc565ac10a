//! The node_exporter textfile `host sync --textfile` writes, so a fleet can alert on hosts
//! whose CA keys and KRL went stale.
//!
//! Formats the Prometheus text exposition and replaces the file atomically (a temp file in
//! the same directory, renamed over it), so the collector never reads half a file. Takes
//! `now`; reads no clock.

use std::io::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// The textfile after a sync that installed both files at `now`.
pub fn host_sync_text(now: i64, krl_version: u64, ca_keys: usize) -> String {
    format!(
        "# HELP moshca_host_sync_last_success_timestamp_seconds Unix time of the last moshca \
         host sync that installed both the CA keys and the KRL.\n\
         # TYPE moshca_host_sync_last_success_timestamp_seconds gauge\n\
         moshca_host_sync_last_success_timestamp_seconds {now}\n\
         # HELP moshca_host_sync_krl_version Version of the KRL installed by moshca host sync.\n\
         # TYPE moshca_host_sync_krl_version gauge\n\
         moshca_host_sync_krl_version {krl_version}\n\
         # HELP moshca_host_sync_ca_keys CA public keys installed by moshca host sync.\n\
         # TYPE moshca_host_sync_ca_keys gauge\n\
         moshca_host_sync_ca_keys {ca_keys}\n"
    )
}

/// Replaces `path` with `text` atomically, mode 0644 (node_exporter reads it as another
/// user).
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let failed = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".moshca-prom")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(failed)?;
    temp.write_all(text.as_bytes()).map_err(failed)?;
    temp.as_file().sync_all().map_err(failed)?;
    temp.persist(path).map_err(|err| failed(err.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_has_the_last_success_and_the_krl_version() {
        let text = host_sync_text(1_750_000_000, 7, 2);
        assert!(text.contains("\nmoshca_host_sync_last_success_timestamp_seconds 1750000000\n"));
        assert!(text.contains("\nmoshca_host_sync_krl_version 7\n"));
        assert!(
            text.contains("# TYPE moshca_host_sync_ca_keys gauge\nmoshca_host_sync_ca_keys 2\n")
        );
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("moshca_host_sync_"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
