//! Writing files hosts depend on (KRL, CA keys): atomically, checked, never half-written.
//!
//! The new content goes to a temp file in the same directory, is fsynced and checked, and
//! only then renamed over the old file. On any failure the old file stays as it was: a
//! malformed KRL or an empty CA key list would lock every user out of every host.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

/// How to check content before it replaces the old file.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// A KRL: `ssh-keygen -Q -l -f` must parse it (skipped, with a warning, when ssh-keygen
    /// is not installed).
    Krl,
}

/// Writes `bytes` to `path` (mode 0644) via a checked temp file and rename.
pub fn write_checked(path: &Path, bytes: &[u8], check: Check) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match check {
            Check::Krl => check_krl(&tmp)?,
        }
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn check_krl(path: &Path) -> anyhow::Result<()> {
    match Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-l")
        .arg("-f")
        .arg(path)
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => anyhow::bail!(
            "ssh-keygen rejects the new KRL, keeping the old file: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("ssh-keygen not found; the KRL was not checked by OpenSSH");
            Ok(())
        }
        Err(e) => Err(e).context("running ssh-keygen"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_krl_keeps_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("moshca.krl");
        std::fs::write(&out, b"old").unwrap();
        assert!(write_checked(&out, b"not a krl", Check::Krl).is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn good_krl_replaces_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("moshca.krl");
        std::fs::write(&out, b"old").unwrap();
        let krl = crate::krl::Krl {
            version: 3,
            generated_at: 1,
            comment: "t".into(),
            ..Default::default()
        }
        .encode()
        .unwrap();
        write_checked(&out, &krl, Check::Krl).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), krl);
    }
}
