//! `moshca ci`: a CI job's certificate. The job's OIDC ID token authenticates the request,
//! the role is auto-approved, and the ephemeral key and its certificate go to ssh-agent or
//! to two files.
//!
//! Where the token comes from is `oidc`; it reaches the server through `rpc` and this
//! module never reads it. Where the key goes is decided, and checked, before anything is
//! asked of the CA: a certificate nobody can use would still be issued and audited. The
//! private key is written only into `--out DIR`, 0600, through a temp file and a rename, so
//! no other user ever sees a partial or readable file.

use std::fs::{self, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use moshca_proto::v1::CreateAccessRequestRequest;
use tonic::Code;

use crate::agent::Agent;
use crate::cli::CiArgs;
use crate::config::{Env, Settings};
use crate::error::{Error, Result};
use crate::keys::EphemeralKey;
use crate::login;
use crate::oidc;
use crate::output::Output;
use crate::rpc::{self, Client};
use crate::wait::Outcome;

/// The private key's file name in `--out DIR`.
pub const KEY_FILE: &str = "id_ed25519";
/// The certificate's file name in `--out DIR` (where `ssh` also looks for it by itself).
pub const CERTIFICATE_FILE: &str = "id_ed25519-cert.pub";

/// Where key and certificate go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The ssh-agent listening on this socket, for the certificate's lifetime.
    Agent(PathBuf),
    /// `DIR/id_ed25519` and `DIR/id_ed25519-cert.pub`.
    Files(PathBuf),
}

/// The files `--out` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The private key, 0600.
    pub key: PathBuf,
    /// The certificate, 0644.
    pub certificate: PathBuf,
}

/// Picks the destination: `--out DIR` when given (an explicit flag wins), else the agent
/// at `SSH_AUTH_SOCK`, else an error saying what to do.
pub fn destination(out: Option<&Path>, agent: Option<&Path>) -> Result<Destination> {
    match (out, agent) {
        (Some(dir), _) => Ok(Destination::Files(dir.to_owned())),
        (None, Some(socket)) => Ok(Destination::Agent(socket.to_owned())),
        (None, None) => Err(Error::NoCiDestination),
    }
}

/// Runs `moshca ci`: destination, ID token, request, checks, install, output.
pub async fn run(settings: &Settings, env: &Env, args: &CiArgs, out: Output) -> Result<()> {
    let destination = destination(args.out.as_deref(), env.ssh_auth_sock.as_deref())?;
    let source = oidc::source(env)?;
    match &destination {
        Destination::Agent(socket) => drop(Agent::connect(socket).await?),
        Destination::Files(dir) => create_private_dir(dir)?,
    }
    let audience = oidc::audience(args.audience.as_deref(), env);
    let id_token = oidc::obtain(source, &audience).await?;
    tracing::info!(claims = %id_token.claims(), "ID token obtained");
    let mut client =
        rpc::connect(&settings.server, &settings.ca_cert, Some(id_token.token())).await?;
    let claims = id_token.claims().to_owned();
    drop(id_token);
    request(&mut client, args, &destination, &claims, out).await
}

/// Asks for the certificate, checks it and puts key and certificate at `destination`.
async fn request(
    client: &mut Client,
    args: &CiArgs,
    destination: &Destination,
    claims: &str,
    out: Output,
) -> Result<()> {
    let key = EphemeralKey::generate()?;
    let created = client
        .create_access_request(CreateAccessRequestRequest {
            role: args.role.clone(),
            principals: args.principals.clone(),
            ttl_secs: args.ttl.map_or(0, |ttl| ttl.as_secs()),
            // The CA names the job (issuer, repository, run) as the reason.
            reason: String::new(),
            public_key: key.public_openssh()?,
            break_glass: false,
        })
        .await
        .map_err(|status| refusal(&status, claims))?
        .into_inner();
    let id = created.id.clone();
    tracing::info!(
        request_id = %id,
        role = %created.role,
        principals = ?created.principals,
        fingerprint = %key.fingerprint(),
        "request created"
    );
    let issued = match Outcome::of(created) {
        Some(Outcome::Issued(request)) => request,
        Some(Outcome::Denied(request)) => return Err(Error::denied(&request)),
        Some(Outcome::Expired(_)) => return Err(Error::Expired { id }),
        Some(Outcome::Cancelled(_)) => return Err(Error::Cancelled { id }),
        Some(Outcome::TimedOut | Outcome::Interrupted) | None => {
            // Nobody will approve it while the job waits; do not leave it for approvers.
            let cancelled = login::cancel(client, &id).await;
            return Err(Error::NotAutoApproved {
                id,
                role: args.role.clone(),
                cancelled,
            });
        }
    };

    let login::Certified {
        request: issued,
        certificate,
        now,
        lifetime,
    } = login::certified(client, issued, &key, &args.principals).await?;
    tracing::info!(
        request_id = %id,
        serial = certificate.serial(),
        key_id = %certificate.key_id(),
        "certificate issued"
    );

    match destination {
        Destination::Agent(socket) => {
            let mut agent = Agent::connect(socket).await?;
            agent
                .add_certificate(&key, &certificate, lifetime, format!("moshca:{id}"))
                .await?;
            tracing::info!(request_id = %id, "certificate added to ssh-agent for {lifetime}s");
            out.ci_issued(&issued, certificate.valid_before(), now, None)
        }
        Destination::Files(dir) => {
            let line = certificate
                .to_openssh()
                .map_err(|err| Error::Key(err.to_string()))?;
            let files = write_identity(dir, &key, &line)?;
            out.ci_issued(&issued, certificate.valid_before(), now, Some(&files))
        }
    }
}

/// The error for a refused `CreateAccessRequest`: the ID token (UNAUTHENTICATED) or the
/// role (PERMISSION_DENIED), each with the token's claims for the hint.
fn refusal(status: &tonic::Status, claims: &str) -> Error {
    // A bad argument (a ttl out of range among them) exits as in `login` and `request`.
    if let invalid @ Error::Invalid { .. } = crate::error::create_refused(status) {
        return invalid;
    }
    match (status.code(), Error::rpc("create request", status)) {
        (Code::Unauthenticated, Error::Rpc { message, .. }) => Error::IdTokenRejected {
            message: format!("create request: {message}"),
            claims: claims.to_owned(),
        },
        (Code::PermissionDenied, Error::Rpc { message, .. }) => Error::WorkloadDenied {
            message: format!("create request: {message}"),
            claims: claims.to_owned(),
        },
        (_, err) => err,
    }
}

/// Creates `dir` (and missing parents) 0700; an existing directory is left as it is.
fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `DIR/id_ed25519` (0600, OpenSSH format) and `DIR/id_ed25519-cert.pub` (0644).
fn write_identity(dir: &Path, key: &EphemeralKey, certificate: &str) -> Result<IdentityFiles> {
    let private = key.private_openssh()?;
    let key_path = replace_file(dir, KEY_FILE, private.as_bytes(), 0o600)?;
    let certificate_path = replace_file(
        dir,
        CERTIFICATE_FILE,
        format!("{}\n", certificate.trim()).as_bytes(),
        0o644,
    )?;
    Ok(IdentityFiles {
        key: key_path,
        certificate: certificate_path,
    })
}

/// Replaces `dir/name` with `contents` and `mode`: a temp file (created 0600) in `dir`,
/// its mode, the contents, fsync, then a rename over the old file.
fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
    let path = dir.join(name);
    let fail = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let mut file = tempfile::Builder::new()
        .prefix(".moshca-")
        .tempfile_in(dir)
        .map_err(fail)?;
    file.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(fail)?;
    file.write_all(contents).map_err(fail)?;
    file.as_file().sync_all().map_err(fail)?;
    file.persist(&path).map_err(|err| fail(err.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn out_wins_over_the_agent_and_one_is_needed() {
        let dir = Path::new("/tmp/m");
        let sock = Path::new("/tmp/agent.sock");
        assert_eq!(
            destination(Some(dir), Some(sock)).unwrap(),
            Destination::Files(dir.to_owned())
        );
        assert_eq!(
            destination(None, Some(sock)).unwrap(),
            Destination::Agent(sock.to_owned())
        );
        let err = destination(None, None).unwrap_err();
        assert!(matches!(err, Error::NoCiDestination), "{err:?}");
        let hint = err.hint().unwrap();
        assert!(
            hint.contains("--out") && hint.contains("ssh-agent"),
            "{hint}"
        );
    }

    #[test]
    fn files_get_their_modes_and_a_new_directory_is_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("moshca");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let key = EphemeralKey::generate().unwrap();
        let files = write_identity(&dir, &key, "ssh-ed25519-cert-v01@openssh.com AAAA x").unwrap();
        assert_eq!(files.key, dir.join("id_ed25519"));
        assert_eq!(files.certificate, dir.join("id_ed25519-cert.pub"));
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.certificate), 0o644);
        let text = fs::read_to_string(&files.key).unwrap();
        let parsed = ssh_key::PrivateKey::from_openssh(&text).unwrap();
        assert_eq!(parsed.public_key().key_data(), key.public_key().key_data());
        assert_eq!(
            fs::read_to_string(&files.certificate).unwrap(),
            "ssh-ed25519-cert-v01@openssh.com AAAA x\n"
        );
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
    }

    #[test]
    fn an_old_readable_key_file_is_replaced_by_a_private_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(KEY_FILE);
        fs::write(&old, "old").unwrap();
        fs::set_permissions(&old, Permissions::from_mode(0o644)).unwrap();
        // An existing directory keeps its mode.
        fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        create_private_dir(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o755);

        let key = EphemeralKey::generate().unwrap();
        write_identity(dir.path(), &key, "cert").unwrap();
        assert_eq!(mode(&old), 0o600);
        assert!(
            fs::read_to_string(&old)
                .unwrap()
                .starts_with("-----BEGIN OPENSSH")
        );
    }

    #[test]
    fn refusals_split_into_token_and_role() {
        let claims = "iss=https://gh repository=acme/app";
        let err = refusal(&tonic::Status::unauthenticated("ID token expired"), claims);
        assert!(matches!(err, Error::IdTokenRejected { .. }), "{err:?}");
        assert_eq!(err.to_string(), "create request: ID token expired");
        assert_eq!(err.exit_code(), 1);
        assert!(err.hint().unwrap().contains(claims));

        let err = refusal(&tonic::Status::permission_denied("no workload"), claims);
        assert!(matches!(err, Error::WorkloadDenied { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 3);

        let err = refusal(&tonic::Status::invalid_argument("bad ttl"), claims);
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 2);
        let err = refusal(
            &tonic::Status::permission_denied("ttl 2h exceeds role deploy's max_ttl 1h"),
            claims,
        );
        assert_eq!(err.exit_code(), 2);
    }
}
