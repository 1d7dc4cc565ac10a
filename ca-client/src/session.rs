//! The CA session file, `$XDG_CONFIG_HOME/moshca/session.json` (else
//! `~/.config/moshca/session.json`): the session credential `moshca auth login` got, for
//! the server it came from, and what the CA said about it.
//!
//! The file is written whole and atomically, mode 0600 in a 0700 directory, and read only
//! when it is the user's alone (like a token file). The credential leaves this module only
//! as an [`rpc::Token`]; `Debug` hides it. No clock is read here: callers pass `now`.
//!
//! [`rpc::Token`]: crate::rpc::Token

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroize as _;

use crate::config::{Env, read_secret};
use crate::error::{Error, Result};
use crate::rpc::Token;

/// What the session file holds.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionFile {
    /// The CA server URL the session belongs to.
    pub server: String,
    /// The session credential (`mcs_...`).
    token: String,
    /// The session's public id (`ses_...`).
    pub id: String,
    /// The CA user name.
    pub user: String,
    /// The groups the identity provider gave at sign-in.
    pub groups: Vec<String>,
    /// The identity provider that vouched for the user.
    pub issuer: String,
    /// Unix seconds after which the session no longer works.
    pub expires_at: i64,
}

impl fmt::Debug for SessionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionFile")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("groups", &self.groups)
            .field("issuer", &self.issuer)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Drop for SessionFile {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

impl SessionFile {
    /// The session the CA answered `CreateSession` with, for `server`.
    pub fn new(server: &str, session: &moshca_proto::v1::Session) -> Self {
        SessionFile {
            server: server.to_owned(),
            token: session.token.clone(),
            id: session.id.clone(),
            user: session.user.clone(),
            groups: session.groups.clone(),
            issuer: session.issuer.clone(),
            expires_at: session.expires_at,
        }
    }

    /// The credential, checked like a token.
    pub fn token(&self) -> Result<Token> {
        Token::parse(&self.token, "the session file")
    }

    /// Whether the session has expired at `now` (Unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

/// Where the session file lives, next to the config file; `None` without a home directory.
pub fn path(env: &Env) -> Option<PathBuf> {
    env.config_path()
        .map(|config| config.with_file_name("session.json"))
}

/// Reads the session file for `server`. `Ok(None)` when there is none, or when it belongs
/// to another server (it is then left alone).
pub fn load(path: &Path, server: &str) -> Result<Option<SessionFile>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_secret(path, "session file")?;
    // serde's messages can quote the input (the credential), so they are not shown.
    let file: SessionFile = serde_json::from_str(&text).map_err(|_| Error::Read {
        what: "session file",
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a moshca session file; delete it and run `moshca auth login`",
        ),
    })?;
    Ok((file.server.trim_end_matches('/') == server.trim_end_matches('/')).then_some(file))
}

/// Writes `file` to `path` atomically, mode 0600, creating the directory (0700) if needed.
pub fn save(path: &Path, file: &SessionFile) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_error)?;
    }
    let json = zeroize::Zeroizing::new(
        serde_json::to_string_pretty(file)
            .map_err(|err| write_error(std::io::Error::other(err.to_string())))?,
    );
    // NamedTempFile is created 0600, so the credential is never readable by others.
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    temp.write_all(json.as_bytes()).map_err(write_error)?;
    temp.write_all(b"\n").map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(path).map_err(|err| write_error(err.error))?;
    Ok(())
}

/// Deletes the session file; a missing file is not an error.
pub fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionFile {
        SessionFile {
            server: "https://ca:7443".into(),
            token: "mcs_s3cr3t".into(),
            id: "ses_0123456789abcdef".into(),
            user: "alice".into(),
            groups: vec!["eng".into()],
            issuer: "https://idp".into(),
            expires_at: 100,
        }
    }

    #[test]
    fn the_file_is_private_round_trips_and_belongs_to_one_server() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moshca").join("session.json");
        save(&path, &sample()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let read = load(&path, "https://ca:7443/").unwrap().unwrap();
        assert_eq!(read.user, "alice");
        assert!(!read.expired(99) && read.expired(100));
        assert!(load(&path, "https://other:7443").unwrap().is_none());
        assert!(!format!("{read:?}").contains("s3cr3t"));
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert!(load(&path, "https://ca:7443").unwrap().is_none());
    }
}
