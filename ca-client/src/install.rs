//! Installing the files sshd trusts: the CA public keys (`TrustedUserCAKeys`) and the key
//! revocation list (`RevokedKeys`).
//!
//! sshd refuses every certificate when the CA key file is empty and every public key when
//! the KRL is missing or malformed, so a host must never see a half-written, empty,
//! unparsable or older file. Every replacement therefore goes one way: a temp file in the
//! target's directory, fsync, checks on the temp file, `rename` over the target (atomic on
//! POSIX), fsync of the directory. On any failure the old file stays untouched and the temp
//! file is removed. New files get mode 0644: they are public, and `ssh-keygen -Q` must work
//! for anyone.
//!
//! This module makes no calls to the server and writes nothing to stdout: `commands`
//! fetches, `output` reports.

use std::fs::{self, File, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ssh_key::{Algorithm, PublicKey};

use crate::error::{Error, Result, one_line};

/// Mode of installed files.
pub const MODE: u32 = 0o644;

/// The first 8 bytes of every OpenSSH KRL (PROTOCOL.krl).
const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// The only KRL format version OpenSSH knows.
const KRL_FORMAT_VERSION: u32 = 1;
/// Magic, u32 format version, u64 KRL version.
const KRL_HEADER_LEN: usize = 8 + 4 + 8;

/// Why new contents for a file sshd reads were refused. The old file is kept in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key list is empty: an empty `TrustedUserCAKeys` file refuses every certificate.
    #[error(
        "the server listed no CA public keys, and an empty TrustedUserCAKeys file would refuse \
         every certificate"
    )]
    NoKeys,
    /// A line of the key list is not a plain OpenSSH public key.
    #[error("CA key line {line} is not an OpenSSH public key: {detail}")]
    BadKey {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// The bytes do not start with a KRL header OpenSSH understands.
    #[error("the server's KRL is not an OpenSSH KRL: {0}")]
    NotAKrl(&'static str),
    /// The KRL's header and the server's answer disagree on the version.
    #[error("the server's KRL has version {header} in its header but was sent as version {sent}")]
    VersionMismatch {
        /// The version in the KRL header.
        header: u64,
        /// The version in the `GetKrl` answer.
        sent: u64,
    },
    /// The KRL is older than the one installed: installing it could un-revoke certificates.
    #[error("the server's KRL has version {offered}, older than the installed version {installed}")]
    Rollback {
        /// The version of the installed KRL.
        installed: u64,
        /// The version of the KRL the server sent.
        offered: u64,
    },
    /// `ssh-keygen -Q -l -f` refused the new KRL.
    #[error("ssh-keygen -Q -l refused the new KRL: {0}")]
    Rejected(String),
    /// The chunks of the KRL did not add up to one whole KRL.
    #[error("the server's KRL did not arrive whole: {0}")]
    Incomplete(String),
}

/// Largest KRL accepted from the server: the most sshd loads (`SSHBUF_SIZE_MAX`).
pub const MAX_KRL_BYTES: u64 = 128 * 1024 * 1024;

/// A KRL being put back together from the server's chunks.
///
/// Every chunk must carry the same version and total length and start where the last one
/// ended; the whole must reach exactly that length. Anything else (a cut-short stream, a
/// chunk from another KRL, a length over [`MAX_KRL_BYTES`]) is refused, so a host never
/// installs part of a KRL.
#[derive(Debug, Default)]
pub struct KrlChunks {
    /// Version and total length, from the first chunk.
    expected: Option<(u64, u64)>,
    bytes: Vec<u8>,
}

impl KrlChunks {
    /// Adds the next chunk.
    pub fn push(
        &mut self,
        version: u64,
        total_len: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Refusal> {
        let refuse = |why: String| Err(Refusal::Incomplete(why));
        match self.expected {
            None => {
                if total_len > MAX_KRL_BYTES {
                    return refuse(format!(
                        "it would be {total_len} bytes, more than the {MAX_KRL_BYTES} sshd loads"
                    ));
                }
                self.expected = Some((version, total_len));
                // The length was just bounded, so this cannot truncate.
                self.bytes.reserve(usize::try_from(total_len).unwrap_or(0));
            }
            Some((v, _)) if v != version => {
                return refuse(format!(
                    "a chunk of version {version} came inside version {v}"
                ));
            }
            Some((_, len)) if len != total_len => {
                return refuse(format!(
                    "chunks disagree on its length ({len}, {total_len})"
                ));
            }
            Some(_) => {}
        }
        let have = self.bytes.len() as u64;
        if offset != have {
            return refuse(format!("a chunk at byte {offset} came after {have} bytes"));
        }
        if have + data.len() as u64 > total_len {
            return refuse(format!("it is longer than the {total_len} bytes announced"));
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    /// The whole KRL and its version, once every byte announced has come.
    pub fn finish(self) -> Result<(Vec<u8>, u64), Refusal> {
        let Some((version, total_len)) = self.expected else {
            return Err(Refusal::Incomplete("the server sent no chunk".into()));
        };
        if self.bytes.len() as u64 != total_len {
            return Err(Refusal::Incomplete(format!(
                "{} of {total_len} bytes came",
                self.bytes.len()
            )));
        }
        Ok((self.bytes, version))
    }
}

/// The fixed start of a KRL: enough to compare versions before replacing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KrlHeader {
    /// The KRL format version (1).
    pub format_version: u32,
    /// The KRL version, which the CA raises with every revocation.
    pub version: u64,
}

impl KrlHeader {
    /// Reads the header at the start of `bytes`: magic, u32 format version and u64 KRL
    /// version, big-endian. Sections after it are left to `ssh-keygen`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        if bytes.len() < KRL_HEADER_LEN {
            return Err(Refusal::NotAKrl("too short for a header"));
        }
        let (magic, rest) = bytes.split_at(KRL_MAGIC.len());
        if magic != KRL_MAGIC {
            return Err(Refusal::NotAKrl("bad magic"));
        }
        let (format, rest) = rest.split_at(4);
        let format_version = u32::from_be_bytes([format[0], format[1], format[2], format[3]]);
        if format_version != KRL_FORMAT_VERSION {
            return Err(Refusal::NotAKrl("unknown format version"));
        }
        let mut version = [0u8; 8];
        version.copy_from_slice(&rest[..8]);
        Ok(KrlHeader {
            format_version,
            version: u64::from_be_bytes(version),
        })
    }
}

/// How a new KRL is checked before it replaces the installed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KrlCheck {
    /// `PROGRAM -Q -l -f TEMP` must exit 0; `PROGRAM` is normally `ssh-keygen`.
    SshKeygen(PathBuf),
    /// Only the header and version are checked (`--no-check`).
    HeaderOnly,
}

impl KrlCheck {
    /// `ssh-keygen` from `PATH`, or only the header when `no_check`.
    pub fn new(no_check: bool) -> Self {
        if no_check {
            KrlCheck::HeaderOnly
        } else {
            KrlCheck::SshKeygen(PathBuf::from("ssh-keygen"))
        }
    }

    /// Runs the check on the temp file `file`.
    fn run(&self, file: &Path) -> Result<(), CheckError> {
        let KrlCheck::SshKeygen(program) = self else {
            return Ok(());
        };
        let output = Command::new(program)
            .args(["-Q", "-l", "-f"])
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CheckError::NotRun {
                program: program.display().to_string(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        // ssh-keygen names the temp file, which is gone by the time anyone reads this.
        let stderr = String::from_utf8_lossy(&output.stderr)
            .replace(&file.display().to_string(), "(new KRL)");
        let mut detail = one_line(&stderr);
        if detail.is_empty() {
            detail = output.status.to_string();
        }
        Err(CheckError::Refused(Refusal::Rejected(detail)))
    }
}

/// Why a check on a temp file failed: it could not run, or it refused the contents.
#[derive(Debug)]
enum CheckError {
    NotRun { program: String, source: io::Error },
    Refused(Refusal),
}

/// A checked list of CA public keys, ready to install or print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaKeys {
    lines: Vec<String>,
}

impl CaKeys {
    /// Checks the server's key lines: at least one, each a plain OpenSSH public key (no
    /// certificate, no unknown type), one per line. Blank lines are dropped.
    pub fn parse(keys: &[String]) -> Result<Self, Refusal> {
        let lines: Vec<String> = keys
            .iter()
            .flat_map(|k| k.lines())
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        if lines.is_empty() {
            return Err(Refusal::NoKeys);
        }
        for (i, line) in lines.iter().enumerate() {
            let bad = |detail: String| Refusal::BadKey {
                line: i + 1,
                detail,
            };
            let key = PublicKey::from_openssh(line).map_err(|err| bad(err.to_string()))?;
            if let Algorithm::Other(name) = key.algorithm() {
                return Err(bad(format!("unknown key type {}", name.as_str())));
            }
        }
        Ok(CaKeys { lines })
    }

    /// The key lines.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Never true: [`CaKeys::parse`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The file's text: one key per line.
    pub fn text(&self) -> String {
        self.lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

/// Replaces `path` with the CA public keys.
pub fn install_ca_keys(path: &Path, keys: &CaKeys) -> Result<()> {
    replace(path, keys.text().as_bytes(), |_| Ok(()))?;
    tracing::info!(path = %path.display(), keys = keys.len(), "CA public keys installed");
    Ok(())
}

/// Replaces `path` (a host's `..._key-cert.pub`, which sshd's HostCertificate names)
/// with one certificate line, atomically: sshd never reads half a certificate.
pub fn install_host_certificate(path: &Path, line: &str) -> Result<()> {
    replace(path, format!("{}\n", line.trim()).as_bytes(), |_| Ok(()))?;
    tracing::info!(path = %path.display(), "host certificate installed");
    Ok(())
}

/// Replaces `path` with known_hosts lines (`@cert-authority PATTERN KEY`), atomically.
pub fn install_known_hosts(path: &Path, text: &str) -> Result<()> {
    replace(path, text.as_bytes(), |_| Ok(()))?;
    tracing::info!(path = %path.display(), "known_hosts lines installed");
    Ok(())
}

/// Replaces `path` with `krl`, which the server sent as version `sent`.
///
/// Refused, keeping the old file: bytes that are not a KRL, a header version other than
/// `sent`, a version lower than the installed file's, and (with [`KrlCheck::SshKeygen`]) a
/// KRL that `ssh-keygen -Q -l` does not accept. An equal version is fine: only the
/// generation date differs.
pub fn install_krl(path: &Path, krl: &[u8], sent: u64, check: &KrlCheck) -> Result<KrlHeader> {
    let refused = |refusal| Error::NotReplaced {
        path: path.to_owned(),
        refusal,
    };
    let header = KrlHeader::parse(krl).map_err(refused)?;
    if header.version != sent {
        return Err(refused(Refusal::VersionMismatch {
            header: header.version,
            sent,
        }));
    }
    if let Some(installed) = installed_krl_version(path)?
        && installed > header.version
    {
        return Err(refused(Refusal::Rollback {
            installed,
            offered: header.version,
        }));
    }
    replace(path, krl, |temp| match check.run(temp) {
        Ok(()) => Ok(()),
        Err(CheckError::Refused(refusal)) => Err(refused(refusal)),
        Err(CheckError::NotRun { program, source }) => Err(Error::NoSshKeygen { program, source }),
    })?;
    tracing::info!(path = %path.display(), krl_version = header.version, "KRL installed");
    Ok(header)
}

/// The version of the KRL installed at `path`; `None` when there is none to protect.
///
/// A missing or empty file has no version. A file that is not a KRL (corrupt, or an old
/// plain key list) is replaced with a warning: sshd may be refusing every key because of it.
fn installed_krl_version(path: &Path) -> Result<Option<u64>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                what: "installed KRL",
                path: path.to_owned(),
                source,
            });
        }
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    match KrlHeader::parse(&bytes) {
        Ok(header) => Ok(Some(header.version)),
        Err(refusal) => {
            tracing::warn!(path = %path.display(), "replacing a file that is not a KRL: {refusal}");
            Ok(None)
        }
    }
}

/// Atomically replaces `path` with `contents` (mode [`MODE`]) once `check` accepts the
/// written temp file. On any failure `path` is untouched and the temp file removed.
fn replace(path: &Path, contents: &[u8], check: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let failed = |step: &'static str| {
        move |source: io::Error| Error::Install {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let name = path.file_name().ok_or_else(|| {
        failed("name a temp file")(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not end in a file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // A dot name in the same directory: same file system, so `rename` is atomic, and
    // sshd never reads it. `NamedTempFile` removes it when dropped, including on error.
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|err| failed("create a temp file")(without_path(err)))?;
    temp.write_all(contents).map_err(failed("write"))?;
    temp.as_file()
        .set_permissions(Permissions::from_mode(MODE))
        .map_err(failed("set the mode"))?;
    temp.as_file().sync_all().map_err(failed("fsync"))?;
    check(temp.path())?;
    temp.persist(path)
        .map_err(|err| failed("rename into place")(err.error))?;
    // The rename is durable only once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed("fsync the directory"))?;
    Ok(())
}

/// `err` without the ` at path "..."` that `tempfile` appends: the message already names
/// the target, and the temp file never existed.
fn without_path(err: io::Error) -> io::Error {
    let text = err.to_string();
    match text.rfind(" at path \"") {
        Some(end) => io::Error::new(err.kind(), &text[..end]),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krl_chunks_reassemble_only_a_whole_krl() {
        let krl: Vec<u8> = (0..=255u8).cycle().take(2500).collect();
        let push_all = |chunks: &mut KrlChunks, pieces: &[(u64, &[u8])]| {
            for (offset, data) in pieces {
                chunks.push(7, 2500, *offset, data)?;
            }
            Ok::<_, Refusal>(())
        };
        let mut whole = KrlChunks::default();
        push_all(
            &mut whole,
            &[
                (0, &krl[..1000]),
                (1000, &krl[1000..2000]),
                (2000, &krl[2000..]),
            ],
        )
        .unwrap();
        assert_eq!(whole.finish().unwrap(), (krl.clone(), 7));

        // Cut short: the last chunk never came.
        let mut short = KrlChunks::default();
        push_all(&mut short, &[(0, &krl[..1000]), (1000, &krl[1000..2000])]).unwrap();
        assert!(matches!(short.finish(), Err(Refusal::Incomplete(_))));
        // Nothing at all.
        assert!(matches!(
            KrlChunks::default().finish(),
            Err(Refusal::Incomplete(_))
        ));
        // Out of order, repeated, overlong.
        let mut gap = KrlChunks::default();
        assert!(push_all(&mut gap, &[(0, &krl[..1000]), (2000, &krl[2000..])]).is_err());
        let mut again = KrlChunks::default();
        assert!(push_all(&mut again, &[(0, &krl[..1000]), (0, &krl[..1000])]).is_err());
        let mut long = KrlChunks::default();
        assert!(push_all(&mut long, &[(0, &krl[..]), (2500, b"x")]).is_err());
        // A chunk of another version or length.
        let mut mixed = KrlChunks::default();
        mixed.push(7, 2500, 0, &krl[..1000]).unwrap();
        assert!(mixed.push(8, 2500, 1000, &krl[1000..2000]).is_err());
        assert!(mixed.push(7, 2600, 1000, &krl[1000..2000]).is_err());
        // More than sshd loads is refused before anything is kept.
        let mut huge = KrlChunks::default();
        assert!(huge.push(7, MAX_KRL_BYTES + 1, 0, b"SSHKRL").is_err());
    }

    const KEY_1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDLbOqLvUFQCnTgDzs/Twlg6Sg5Q31pTlExq1AVYhvOA test-ca";
    const KEY_2: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLTna0zxfhgN/OYW3qoSJTdgWnJwuiJe4dikBOvkbE/HvZOrbKswl2Fyo/jNn5l4C03+sBvnsadhFwYsVSHdPNg= ca2";

    /// `KEY_2` certified by `KEY_1` (`ssh-keygen -s`): a certificate is never a CA key.
    const CERT: &str = "ecdsa-sha2-nistp256-cert-v01@openssh.com AAAAKGVjZHNhLXNoYTItbmlzdHAyNTYtY2VydC12MDFAb3BlbnNzaC5jb20AAAAg3YwwI+IT/I+QspZq/JT8kcKSzPdJYd1UHZE3FAmWjvYAAAAIbmlzdHAyNTYAAABBBLTna0zxfhgN/OYW3qoSJTdgWnJwuiJe4dikBOvkbE/HvZOrbKswl2Fyo/jNn5l4C03+sBvnsadhFwYsVSHdPNgAAAAAAAAAAAAAAAEAAAAEdGVzdAAAAAUAAAABYQAAAABrBOo8AAAAAH3DvpUAAAAAAAAAggAAABVwZXJtaXQtWDExLWZvcndhcmRpbmcAAAAAAAAAF3Blcm1pdC1hZ2VudC1mb3J3YXJkaW5nAAAAAAAAABZwZXJtaXQtcG9ydC1mb3J3YXJkaW5nAAAAAAAAAApwZXJtaXQtcHR5AAAAAAAAAA5wZXJtaXQtdXNlci1yYwAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACAy2zqi71BUAp04A87P08JYOkoOUN9aU5RMatQFWIbzgAAAAFMAAAALc3NoLWVkMjU1MTkAAABAm8hV464zZtxU/B55CXtKfQAZUpm5ZZHY9mBS8I4lbX4icitr3ciHMzORt6roTqwdR6ZgsD9kFkiYkfgwSo8hBg== ca2";

    /// A KRL with no sections: header, generation date, flags, reserved and comment.
    fn krl(version: u64, generated: u64) -> Vec<u8> {
        let mut bytes = KRL_MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&generated.to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes
    }

    fn keys(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|&l| l.to_owned()).collect()
    }

    /// Every name in `dir`, sorted: shows leftover temp files.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn failing_check() -> KrlCheck {
        KrlCheck::SshKeygen("/bin/false".into())
    }

    #[test]
    fn krl_header_is_read() {
        let header = KrlHeader::parse(&krl(7, 1_700_000_000)).unwrap();
        assert_eq!(
            header,
            KrlHeader {
                format_version: 1,
                version: 7
            }
        );
        assert_eq!(
            KrlHeader::parse(&krl(7, 0)[..19]),
            Err(Refusal::NotAKrl("too short for a header"))
        );
        let mut bad = krl(7, 0);
        bad[0] = b'X';
        assert_eq!(KrlHeader::parse(&bad), Err(Refusal::NotAKrl("bad magic")));
        let mut bad = krl(7, 0);
        bad[11] = 2;
        assert_eq!(
            KrlHeader::parse(&bad),
            Err(Refusal::NotAKrl("unknown format version"))
        );
    }

    #[test]
    fn krl_is_installed_with_mode_0644_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        let header = install_krl(&path, &krl(3, 1), 3, &KrlCheck::HeaderOnly).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(fs::read(&path).unwrap(), krl(3, 1));
        assert_eq!(mode(&path), 0o644);
        assert_eq!(names(dir.path()), ["moshca.krl"]);
    }

    #[test]
    fn mode_is_0644_whatever_the_old_file_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca_ca.pub");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let ca = CaKeys::parse(&keys(&[KEY_1])).unwrap();
        install_ca_keys(&path, &ca).unwrap();
        assert_eq!(mode(&path), 0o644);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{KEY_1}\n"));
    }

    #[test]
    fn failed_check_keeps_the_old_krl_and_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        fs::write(&path, krl(2, 1)).unwrap();
        let err = install_krl(&path, &krl(3, 2), 3, &failing_check()).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::NotReplaced {
                    refusal: Refusal::Rejected(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), krl(2, 1));
        assert_eq!(names(dir.path()), ["moshca.krl"]);
    }

    #[test]
    fn missing_ssh_keygen_is_an_error_unless_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        fs::write(&path, krl(2, 1)).unwrap();
        let check = KrlCheck::SshKeygen("/nonexistent/ssh-keygen".into());
        let err = install_krl(&path, &krl(3, 2), 3, &check).unwrap_err();
        assert!(matches!(err, Error::NoSshKeygen { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("--no-check"));
        assert_eq!(fs::read(&path).unwrap(), krl(2, 1));
        assert_eq!(names(dir.path()), ["moshca.krl"]);

        install_krl(&path, &krl(3, 2), 3, &KrlCheck::new(true)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), krl(3, 2));
    }

    #[test]
    fn older_krl_is_refused_and_equal_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        fs::write(&path, krl(5, 1)).unwrap();
        let err = install_krl(&path, &krl(4, 2), 4, &KrlCheck::HeaderOnly).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::NotReplaced {
                    refusal: Refusal::Rollback {
                        installed: 5,
                        offered: 4
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("older than the installed version 5")
        );
        assert_eq!(fs::read(&path).unwrap(), krl(5, 1));

        install_krl(&path, &krl(5, 2), 5, &KrlCheck::HeaderOnly).unwrap();
        assert_eq!(fs::read(&path).unwrap(), krl(5, 2));
        assert_eq!(names(dir.path()), ["moshca.krl"]);
    }

    #[test]
    fn bad_krls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        fs::write(&path, krl(1, 1)).unwrap();
        let err = install_krl(&path, b"<html>", 2, &KrlCheck::HeaderOnly).unwrap_err();
        assert!(matches!(
            err,
            Error::NotReplaced {
                refusal: Refusal::NotAKrl(_),
                ..
            }
        ));
        let err = install_krl(&path, &krl(3, 1), 2, &KrlCheck::HeaderOnly).unwrap_err();
        assert!(matches!(
            err,
            Error::NotReplaced {
                refusal: Refusal::VersionMismatch { header: 3, sent: 2 },
                ..
            }
        ));
        assert_eq!(fs::read(&path).unwrap(), krl(1, 1));
    }

    #[test]
    fn an_empty_or_foreign_installed_file_has_no_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        assert_eq!(installed_krl_version(&path).unwrap(), None);
        fs::write(&path, b"").unwrap();
        install_krl(&path, &krl(1, 1), 1, &KrlCheck::HeaderOnly).unwrap();
        fs::write(&path, format!("{KEY_1}\n")).unwrap();
        install_krl(&path, &krl(1, 1), 1, &KrlCheck::HeaderOnly).unwrap();
        assert_eq!(installed_krl_version(&path).unwrap(), Some(1));
    }

    #[test]
    fn ssh_keygen_accepts_a_good_krl_and_refuses_trailing_junk() {
        let check = KrlCheck::new(false);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca.krl");
        match install_krl(&path, &krl(1, 1), 1, &check) {
            Err(Error::NoSshKeygen { .. }) => return, // OpenSSH is not installed here
            other => assert_eq!(other.unwrap().version, 1),
        }
        let mut junk = krl(2, 1);
        junk.extend_from_slice(b"\x09junk");
        let err = install_krl(&path, &junk, 2, &check).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("ssh-keygen -Q -l refused"), "{message}");
        assert!(!message.contains(".moshca.krl."), "{message}");
        assert_eq!(fs::read(&path).unwrap(), krl(1, 1));
        assert_eq!(names(dir.path()), ["moshca.krl"]);
    }

    #[test]
    fn empty_key_list_is_refused() {
        assert_eq!(CaKeys::parse(&[]), Err(Refusal::NoKeys));
        assert_eq!(CaKeys::parse(&keys(&["", " \n"])), Err(Refusal::NoKeys));
        assert!(
            Refusal::NoKeys
                .to_string()
                .contains("refuse every certificate")
        );
    }

    #[test]
    fn every_key_line_must_parse() {
        let ca = CaKeys::parse(&keys(&[KEY_1, &format!("{KEY_2}\n")])).unwrap();
        assert_eq!(ca.len(), 2);
        assert_eq!(ca.text(), format!("{KEY_1}\n{KEY_2}\n"));

        for bad in ["# comment", "ssh-ed25519 AAAA", "hello", CERT] {
            let err = CaKeys::parse(&keys(&[KEY_1, bad])).unwrap_err();
            assert!(
                matches!(err, Refusal::BadKey { line: 2, .. }),
                "{bad}: {err:?}"
            );
        }
        let ca = CaKeys::parse(&keys(&[&format!("{KEY_1}\n\n {KEY_2}\n")])).unwrap();
        assert_eq!(ca.lines(), [KEY_1, KEY_2]);
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should go: the rename fails.
        let path = dir.path().join("moshca_ca.pub");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), "x").unwrap();
        let ca = CaKeys::parse(&keys(&[KEY_1])).unwrap();
        let err = install_ca_keys(&path, &ca).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Install {
                    step: "rename into place",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(names(dir.path()), ["moshca_ca.pub"]);
        assert_eq!(names(&path), ["keep"]);

        let missing = dir.path().join("no-such-dir").join("moshca_ca.pub");
        let err = install_ca_keys(&missing, &ca).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("no-such-dir/moshca_ca.pub (create a temp file)"),
            "{message}"
        );
        assert!(!message.contains(".moshca_ca.pub."), "{message}");
    }
}
