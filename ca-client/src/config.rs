//! Client settings: flags, then environment, then `~/.config/moshca/config.toml`.
//!
//! [`merge`] is pure: it takes the flag values, the environment values and the config
//! file's text as parameters, so precedence is tested without touching the process
//! environment. [`Env::from_process`] is the only reader of environment variables in the
//! client. This module reads files (the config file, the token file) but never talks to
//! the server, and never logs or displays the token.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result, one_line};
use crate::rpc::Token;

/// Setting values given as command-line flags.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--server`.
    pub server: Option<String>,
    /// `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
}

/// The environment variables the client reads. Empty variables count as unset.
///
/// Its `Debug` hides `MOSHCA_TOKEN`, `MOSHCA_ID_TOKEN` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
#[derive(Default)]
pub struct Env {
    /// `MOSHCA_SERVER`.
    pub server: Option<String>,
    /// `MOSHCA_CA_CERT`.
    pub ca_cert: Option<PathBuf>,
    /// `MOSHCA_TOKEN`: the token itself.
    pub token: Option<String>,
    /// `MOSHCA_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// `HOME`, to find the config file and expand `~/` in it.
    pub home: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`, which replaces `~/.config` when set.
    pub xdg_config_home: Option<PathBuf>,
    /// `SSH_AUTH_SOCK`: the ssh-agent for `login` and `ci`.
    pub ssh_auth_sock: Option<PathBuf>,
    /// `MOSHCA_ID_TOKEN`: a CI job's OIDC ID token (a JWT) for `ci`.
    pub id_token: Option<Zeroizing<String>>,
    /// `MOSHCA_OIDC_AUDIENCE`: the audience `ci` asks GitHub Actions for.
    pub oidc_audience: Option<String>,
    /// `ACTIONS_ID_TOKEN_REQUEST_URL`: GitHub Actions' ID token endpoint.
    pub actions_id_token_request_url: Option<String>,
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`: the bearer token for that endpoint.
    pub actions_id_token_request_token: Option<Zeroizing<String>>,
    /// `BROWSER`: the command `auth login` opens the sign-in page with (else `xdg-open`).
    pub browser: Option<String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("server", &self.server)
            .field("ca_cert", &self.ca_cert)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("home", &self.home)
            .field("xdg_config_home", &self.xdg_config_home)
            .field("ssh_auth_sock", &self.ssh_auth_sock)
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("oidc_audience", &self.oidc_audience)
            .field(
                "actions_id_token_request_url",
                &self.actions_id_token_request_url,
            )
            .field(
                "actions_id_token_request_token",
                &self
                    .actions_id_token_request_token
                    .as_ref()
                    .map(|_| "<redacted>"),
            )
            .field("browser", &self.browser)
            .finish()
    }
}

impl Env {
    /// Reads the variables from this process's environment.
    pub fn from_process() -> Self {
        let text = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Env {
            server: text("MOSHCA_SERVER"),
            ca_cert: path("MOSHCA_CA_CERT"),
            token: text("MOSHCA_TOKEN"),
            token_file: path("MOSHCA_TOKEN_FILE"),
            home: path("HOME"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            ssh_auth_sock: path("SSH_AUTH_SOCK"),
            id_token: text("MOSHCA_ID_TOKEN").map(Zeroizing::new),
            oidc_audience: text("MOSHCA_OIDC_AUDIENCE"),
            actions_id_token_request_url: text("ACTIONS_ID_TOKEN_REQUEST_URL"),
            actions_id_token_request_token: text("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
                .map(Zeroizing::new),
            browser: text("BROWSER"),
        }
    }

    /// Where the config file lives: `$XDG_CONFIG_HOME/moshca/config.toml`, else
    /// `~/.config/moshca/config.toml`; `None` without a home directory.
    pub fn config_path(&self) -> Option<PathBuf> {
        let base = match (&self.xdg_config_home, &self.home) {
            (Some(xdg), _) if xdg.is_absolute() => xdg.clone(),
            (_, Some(home)) => home.join(".config"),
            _ => return None,
        };
        Some(base.join("moshca").join("config.toml"))
    }
}

/// The config file's text and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct File<'a> {
    /// The file, for error messages and for relative paths in it.
    pub path: &'a Path,
    /// Its contents.
    pub contents: &'a str,
}

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<String>,
    ca_cert: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

/// Where the bearer token comes from.
#[derive(Debug)]
pub enum TokenSource {
    /// `MOSHCA_TOKEN`.
    Env(Token),
    /// A file holding the token.
    File(PathBuf),
}

/// Settings after merging every layer.
#[derive(Debug)]
pub struct Settings {
    /// The server URL (`https://...`).
    pub server: String,
    /// PEM file with the server's TLS certificate.
    pub ca_cert: PathBuf,
    /// Where the token comes from, if anywhere.
    pub token: Option<TokenSource>,
}

impl Settings {
    /// The bearer token, reading the token file if that is where it lives.
    pub fn token(&self) -> Result<Token> {
        match &self.token {
            None => Err(Error::MissingToken),
            Some(TokenSource::Env(token)) => Ok(token.clone()),
            Some(TokenSource::File(path)) => {
                let text = read_secret(path, "token file")?;
                Token::parse(&text, &path.display().to_string())
            }
        }
    }
}

/// Reads a file holding a secret (a token), refusing one that is not the user's alone:
/// owned by the user, no group or other permission bits, checked on the opened file. The
/// same rule as the server's for its secret files; the error names the `chmod` that fixes
/// it.
pub fn read_secret(path: &Path, what: &'static str) -> Result<Zeroizing<String>> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let read_error = |source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let me = rustix::process::getuid().as_raw();
    let problem = if meta.uid() != me {
        Some(format!(
            "is owned by uid {}, not by you (uid {me}); use a file of your own",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "is accessible by group or others (mode {:o}); run `chmod 600 {}`",
            meta.mode() & 0o777,
            path.display()
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(Error::ExposedSecret {
            what,
            path: path.to_owned(),
            problem,
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}

/// Reads the config file (if there is one) and merges it under `env` and `flags`.
pub fn load(flags: &Flags, env: &Env) -> Result<Settings> {
    let path = env.config_path();
    let contents = match &path {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Read {
                    what: "config file",
                    path: path.clone(),
                    source,
                });
            }
        },
    };
    let file = match (&path, &contents) {
        (Some(path), Some(contents)) => Some(File { path, contents }),
        _ => None,
    };
    merge(flags, env, file)
}

/// Merges the layers: a flag beats its environment variable, which beats the config file.
///
/// For the token: `--token-file` beats `MOSHCA_TOKEN`, which beats `MOSHCA_TOKEN_FILE`,
/// which beats `token_file` in the config file. Paths in the config file are relative to
/// its directory; a leading `~/` means the home directory.
pub fn merge(flags: &Flags, env: &Env, file: Option<File<'_>>) -> Result<Settings> {
    let raw = match file {
        None => RawFile::default(),
        Some(file) => {
            toml::from_str::<RawFile>(file.contents).map_err(|err| Error::ConfigFile {
                path: file.path.to_owned(),
                message: one_line(err.message()),
            })?
        }
    };
    let file_path = |p: &PathBuf| resolve_file_path(p, file.map(|f| f.path), env.home.as_deref());

    let server = flags
        .server
        .clone()
        .or_else(|| env.server.clone())
        .or(raw.server)
        .filter(|s| !s.is_empty())
        .ok_or(Error::MissingServer)?;
    let ca_cert = flags
        .ca_cert
        .clone()
        .or_else(|| env.ca_cert.clone())
        .or_else(|| raw.ca_cert.as_ref().map(file_path))
        .ok_or(Error::MissingCaCert)?;

    let token = if let Some(path) = &flags.token_file {
        Some(TokenSource::File(path.clone()))
    } else if let Some(text) = &env.token {
        Some(TokenSource::Env(Token::parse(text, "MOSHCA_TOKEN")?))
    } else if let Some(path) = &env.token_file {
        Some(TokenSource::File(path.clone()))
    } else {
        raw.token_file
            .as_ref()
            .map(|p| TokenSource::File(file_path(p)))
    };

    Ok(Settings {
        server: server.trim_end_matches('/').to_owned(),
        ca_cert,
        token,
    })
}

/// A path from the config file, made absolute against `~` or the file's directory.
fn resolve_file_path(path: &Path, file: Option<&Path>, home: Option<&Path>) -> PathBuf {
    if let (Ok(rest), Some(home)) = (path.strip_prefix("~"), home) {
        return home.join(rest);
    }
    match file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
server = "https://file:7443"
ca_cert = "ca.pem"
token_file = "~/token"
"#;

    fn file() -> File<'static> {
        File {
            path: Path::new("/home/al/.config/moshca/config.toml"),
            contents: FILE,
        }
    }

    fn env() -> Env {
        Env {
            server: Some("https://env:7443".into()),
            ca_cert: Some("/env/ca.pem".into()),
            token_file: Some("/env/token".into()),
            home: Some("/home/al".into()),
            ..Env::default()
        }
    }

    fn flags() -> Flags {
        Flags {
            server: Some("https://flag:7443".into()),
            ca_cert: Some("/flag/ca.pem".into()),
            token_file: Some("/flag/token".into()),
        }
    }

    fn token_path(settings: &Settings) -> &Path {
        match &settings.token {
            Some(TokenSource::File(path)) => path,
            other => panic!("not a token file: {other:?}"),
        }
    }

    #[test]
    fn flags_beat_env() {
        let s = merge(&flags(), &env(), Some(file())).unwrap();
        assert_eq!(s.server, "https://flag:7443");
        assert_eq!(s.ca_cert, Path::new("/flag/ca.pem"));
        assert_eq!(token_path(&s), Path::new("/flag/token"));
    }

    #[test]
    fn env_beats_file() {
        let s = merge(&Flags::default(), &env(), Some(file())).unwrap();
        assert_eq!(s.server, "https://env:7443");
        assert_eq!(s.ca_cert, Path::new("/env/ca.pem"));
        assert_eq!(token_path(&s), Path::new("/env/token"));
    }

    #[test]
    fn file_fills_the_rest_with_its_paths_resolved() {
        let env = Env {
            home: Some("/home/al".into()),
            ..Env::default()
        };
        let s = merge(&Flags::default(), &env, Some(file())).unwrap();
        assert_eq!(s.server, "https://file:7443");
        assert_eq!(s.ca_cert, Path::new("/home/al/.config/moshca/ca.pem"));
        assert_eq!(token_path(&s), Path::new("/home/al/token"));
    }

    #[test]
    fn moshca_token_beats_moshca_token_file() {
        let env = Env {
            token: Some("mca_fromenv".into()),
            ..env()
        };
        let s = merge(&Flags::default(), &env, Some(file())).unwrap();
        assert!(matches!(s.token, Some(TokenSource::Env(_))), "{s:?}");
        // An explicit flag still wins over both.
        let s = merge(&flags(), &env, None).unwrap();
        assert_eq!(token_path(&s), Path::new("/flag/token"));
    }

    #[test]
    fn settings_debug_hides_the_token() {
        let env = Env {
            token: Some("mca_s3cr3t".into()),
            id_token: Some(Zeroizing::new("eyJhbGciOi.s3cr3t.sig".into())),
            actions_id_token_request_token: Some(Zeroizing::new("ghs_s3cr3t".into())),
            ..env()
        };
        let s = merge(&Flags::default(), &env, None).unwrap();
        let debug = format!("{s:?} {env:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn missing_server_gives_the_hint() {
        let env = Env {
            ca_cert: Some("/ca.pem".into()),
            ..Env::default()
        };
        let err = merge(&Flags::default(), &env, None).unwrap_err();
        assert!(matches!(err, Error::MissingServer), "{err:?}");
        let hint = err.hint().unwrap();
        assert!(
            hint.contains("MOSHCA_SERVER") && hint.contains("--server"),
            "{hint}"
        );
    }

    #[test]
    fn missing_ca_cert_and_token_are_reported() {
        let env = Env {
            server: Some("https://env:7443".into()),
            ..Env::default()
        };
        let err = merge(&Flags::default(), &env, None).unwrap_err();
        assert!(matches!(err, Error::MissingCaCert), "{err:?}");

        let s = merge(&flags_without_token(), &env, None).unwrap();
        assert!(matches!(s.token(), Err(Error::MissingToken)));
    }

    fn flags_without_token() -> Flags {
        Flags {
            token_file: None,
            ..flags()
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let bad = File {
            path: Path::new("/c.toml"),
            contents: "server = \"https://x\"\ntoken = \"mca_inline\"\n",
        };
        let err = merge(&flags(), &env(), Some(bad)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::ConfigFile { .. }), "{err:?}");
        assert!(
            message.contains("/c.toml") && message.contains("token"),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn finding_9_a_token_file_is_read_trimmed_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "mca_abc\n").unwrap();
        let s = Settings {
            server: "https://x".into(),
            ca_cert: "/ca".into(),
            token: Some(TokenSource::File(path.clone())),
        };
        {
            use std::os::unix::fs::PermissionsExt as _;
            // A token file others can read is refused, with the command that fixes it.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = s.token().unwrap_err();
            assert!(matches!(err, Error::ExposedSecret { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains(&format!("run `chmod 600 {}`", path.display())),
                "{message}"
            );
            assert!(!message.contains("mca_abc"), "{message}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(s.token().unwrap().expose(), "mca_abc");

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(s.token(), Err(Error::Read { .. })));
    }

    #[test]
    fn config_path_prefers_xdg() {
        let mut env = Env {
            home: Some("/home/al".into()),
            ..Env::default()
        };
        assert_eq!(
            env.config_path().unwrap(),
            Path::new("/home/al/.config/moshca/config.toml")
        );
        env.xdg_config_home = Some("/xdg".into());
        assert_eq!(
            env.config_path().unwrap(),
            Path::new("/xdg/moshca/config.toml")
        );
        env.home = None;
        env.xdg_config_home = None;
        assert_eq!(env.config_path(), None);
    }
}
