//! `moshca login`: make an in-memory key, request access, wait for approval, check the
//! certificate and load key and certificate into ssh-agent for exactly its lifetime.
//!
//! The private key exists only in this process and in the agent; nothing here writes a
//! file, except that `--keep-pending` hands it to `pending` (memory-backed, 0600) when it
//! stops waiting, for `--resume`. Cancelling on timeout or Ctrl-C happens here, because
//! only this flow knows the request is still wanted. Waiting itself is `wait`, the agent protocol is `agent`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moshca_proto::v1::{
    AccessRequest, CancelAccessRequestRequest, CreateAccessRequestRequest, GetAccessRequestRequest,
    State,
};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};

use crate::agent::Agent;
use crate::cli::LoginArgs;
use crate::clock;
use crate::commands;
use crate::error::{Error, Result};
use crate::keys::EphemeralKey;
use crate::output::{self, Output};
use crate::pending;
use crate::rpc::Client;
use crate::wait::{self, Outcome};

/// How long to try cancelling a request we no longer wait for.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the whole login flow; see the module docs. `runtime_dir` is `XDG_RUNTIME_DIR`,
/// where `--keep-pending` keeps the key (see `pending`).
pub async fn run(
    client: &mut Client,
    args: &LoginArgs,
    socket: &Path,
    runtime_dir: Option<&Path>,
    out: Output,
) -> Result<()> {
    // Fail before anyone is asked to approve anything if the agent is unusable.
    drop(Agent::connect(socket).await?);
    if let Some(id) = &args.resume {
        return resume(client, args, id, socket, runtime_dir, out).await;
    }
    let keep = if args.keep_pending {
        Some(pending::dir(runtime_dir)?)
    } else {
        None
    };
    let role = args.role.clone().unwrap_or_default();

    let key = EphemeralKey::generate()?;
    let created = client
        .create_access_request(CreateAccessRequestRequest {
            role: role.clone(),
            principals: args.principals.clone(),
            ttl_secs: args.ttl.map_or(0, |ttl| ttl.as_secs()),
            reason: args.reason.clone().unwrap_or_default(),
            public_key: key.public_openssh()?,
            break_glass: args.break_glass,
        })
        .await;
    let created = match created {
        Ok(created) => created.into_inner(),
        Err(status) => return Err(commands::create_refused(client, &role, &status).await),
    };
    tracing::info!(
        request_id = %created.id,
        role = %created.role,
        principals = ?created.principals,
        fingerprint = %key.fingerprint(),
        "request created"
    );

    // Break-glass comes back issued: there is nobody to wait for.
    if created.break_glass && output::state(&created) == State::Issued {
        output::break_glass_granted(&created);
    }
    let waiting = Waiting {
        timeout: args.timeout,
        keep,
        principals: &args.principals,
    };
    finish(client, created, key, waiting, socket, out).await
}

/// `login --resume ID`: the key a `--keep-pending` login kept, the request, and the same
/// wait. A resumed wait always keeps the request pending when it stops again.
async fn resume(
    client: &mut Client,
    args: &LoginArgs,
    id: &str,
    socket: &Path,
    runtime_dir: Option<&Path>,
    out: Output,
) -> Result<()> {
    let dir = pending::dir(runtime_dir)?;
    let key = pending::find(&dir, id)?;
    let request = client
        .get_access_request(GetAccessRequestRequest {
            id: id.to_owned(),
            include_certificate: true,
        })
        .await
        .map_err(|status| Error::rpc("get request", &status))?
        .into_inner();
    if request.fingerprint != key.fingerprint() {
        return Err(Error::CertificateMismatch {
            id: id.to_owned(),
            detail: format!(
                "the request is for key {} but the kept key is {}",
                request.fingerprint,
                key.fingerprint()
            ),
        });
    }
    tracing::info!(request_id = %id, fingerprint = %key.fingerprint(), "resuming");
    let waiting = Waiting {
        timeout: args.timeout,
        keep: Some(dir),
        principals: &[],
    };
    finish(client, request, key, waiting, socket, out).await
}

/// How a login waits: for how long, whether to keep the request pending (and where its
/// key goes) when it stops, and the principals asked for.
struct Waiting<'a> {
    timeout: Option<Duration>,
    keep: Option<PathBuf>,
    principals: &'a [String],
}

/// Waits for `request` to be decided, then checks the certificate and loads it with `key`.
async fn finish(
    client: &mut Client,
    request: AccessRequest,
    key: EphemeralKey,
    waiting: Waiting<'_>,
    socket: &Path,
    out: Output,
) -> Result<()> {
    let id = request.id.clone();
    let outcome = match Outcome::of(request.clone()) {
        Some(outcome) => outcome,
        None => {
            wait::announce(&request);
            if waiting.keep.is_some() {
                wait::until_decided_keeping(client, &request, waiting.timeout, ctrl_c()).await?
            } else {
                wait::until_decided(client, &request, waiting.timeout, ctrl_c()).await?
            }
        }
    };
    let forget = || {
        if let Some(dir) = &waiting.keep {
            pending::forget(dir, &id);
        }
    };
    let issued = match outcome {
        Outcome::Issued(request) => request,
        Outcome::Denied(request) => {
            forget();
            return Err(Error::denied(&request));
        }
        Outcome::Expired(_) => {
            forget();
            return Err(Error::Expired { id });
        }
        Outcome::Cancelled(_) => {
            forget();
            return Err(Error::Cancelled { id });
        }
        Outcome::TimedOut | Outcome::Interrupted => {
            let after = matches!(outcome, Outcome::TimedOut).then(|| {
                waiting
                    .timeout
                    .map_or_else(String::new, |t| humantime::format_duration(t).to_string())
            });
            if let Some(dir) = &waiting.keep {
                let path = pending::keep(dir, &id, &key)?;
                tracing::info!(request_id = %id, "key kept in {} for --resume", path.display());
                return Err(Error::StillPending {
                    id,
                    after,
                    expires: output::rfc3339(request.expires_at),
                });
            }
            let cancelled = cancel(client, &id).await;
            return Err(match after {
                Some(after) => Error::TimedOut {
                    id,
                    after,
                    cancelled,
                },
                None => Error::Interrupted { id, cancelled },
            });
        }
    };

    let Certified {
        request: issued,
        certificate,
        now,
        lifetime,
    } = certified(client, issued, &key, waiting.principals).await?;

    let mut agent = Agent::connect(socket).await?;
    agent
        .add_certificate(&key, &certificate, lifetime, format!("moshca:{id}"))
        .await?;
    forget();
    tracing::info!(
        request_id = %id,
        serial = certificate.serial(),
        key_id = %certificate.key_id(),
        "certificate added to ssh-agent for {lifetime}s"
    );
    output::approver_comments(&issued);
    out.logged_in(&issued, certificate.valid_before(), now)
}

/// Resolves on Ctrl-C; never, if the signal handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Asks the server to cancel `id`; true if it did. Failures are warned about, not fatal:
/// the caller is already failing, and a pending request expires on its own.
pub(crate) async fn cancel(client: &mut Client, id: &str) -> bool {
    let call = client.cancel_access_request(CancelAccessRequestRequest { id: id.to_owned() });
    match tokio::time::timeout(CANCEL_TIMEOUT, call).await {
        Ok(Ok(_)) => {
            tracing::info!(request_id = %id, "request cancelled");
            true
        }
        Ok(Err(status)) => {
            output::warning(&Error::rpc("cancel request", &status).to_string());
            false
        }
        Err(_) => {
            output::warning(&format!(
                "cancel request: no answer within {CANCEL_TIMEOUT:?}"
            ));
            false
        }
    }
}

/// The issued request with its certificate, asking again if the first answer lacked it.
/// An issued request's certificate, checked against the key and the principals asked for.
pub(crate) struct Certified {
    /// The request, with its certificate.
    pub request: AccessRequest,
    /// The certificate, parsed.
    pub certificate: Certificate,
    /// When it was checked (Unix seconds).
    pub now: i64,
    /// Seconds it has left.
    pub lifetime: u32,
}

/// Fetches the certificate of an issued request if the answer lacked it, parses it, and
/// checks it before anything is handed to ssh-agent or written.
pub(crate) async fn certified(
    client: &mut Client,
    issued: AccessRequest,
    key: &EphemeralKey,
    principals: &[String],
) -> Result<Certified> {
    let request = with_certificate(client, issued).await?;
    let certificate = parse_certificate(&request)?;
    let now = clock::now_unix();
    let lifetime = check_certificate_at(&certificate, key.public_key(), &request, principals, now)?;
    Ok(Certified {
        request,
        certificate,
        now,
        lifetime,
    })
}

async fn with_certificate(client: &mut Client, issued: AccessRequest) -> Result<AccessRequest> {
    if issued.certificate.is_some() {
        return Ok(issued);
    }
    client
        .get_access_request(GetAccessRequestRequest {
            id: issued.id.clone(),
            include_certificate: true,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::rpc("fetch certificate", &status))
}

/// The certificate of an issued request, parsed.
fn parse_certificate(issued: &AccessRequest) -> Result<Certificate> {
    let id = &issued.id;
    let openssh = issued
        .certificate
        .as_ref()
        .map(|c| c.openssh.as_str())
        .ok_or_else(|| {
            Error::BadResponse(format!("request {id} is issued but has no certificate"))
        })?;
    Certificate::from_openssh(openssh).map_err(|err| {
        Error::BadResponse(format!(
            "the certificate of request {id} does not parse: {err}"
        ))
    })
}

/// Checks that `certificate` is the one asked for and returns the agent lifetime for it.
///
/// It must certify `key` as a user, carry a valid self-signature, and name exactly the
/// request's principals (and, when the user listed principals, exactly those). The
/// lifetime is `valid_before - now` seconds, at least 1; an expired certificate is refused.
fn check_certificate_at(
    certificate: &Certificate,
    key: &PublicKey,
    request: &AccessRequest,
    asked: &[String],
    now: i64,
) -> Result<u32> {
    let mismatch = |detail: String| Error::CertificateMismatch {
        id: request.id.clone(),
        detail,
    };
    if certificate.public_key() != key.key_data() {
        return Err(mismatch("it certifies a different key".to_owned()));
    }
    if certificate.cert_type() != CertType::User {
        return Err(mismatch("it is not a user certificate".to_owned()));
    }
    if certificate.verify_signature().is_err() {
        return Err(mismatch("its signature does not verify".to_owned()));
    }
    let got = sorted(certificate.valid_principals());
    if got.is_empty() {
        return Err(mismatch(
            "it names no principals, which OpenSSH reads as any login".to_owned(),
        ));
    }
    let want = sorted(&request.principals);
    if got != want {
        return Err(mismatch(format!(
            "it is for {} but the request is for {}",
            got.join(","),
            want.join(",")
        )));
    }
    if !asked.is_empty() && sorted(asked) != want {
        return Err(mismatch(format!(
            "the request is for {} but you asked for {}",
            want.join(","),
            sorted(asked).join(",")
        )));
    }
    let now = u64::try_from(now).unwrap_or(0);
    let valid_before = certificate.valid_before();
    if valid_before <= now {
        return Err(Error::CertificateExpired {
            id: request.id.clone(),
            at: output::rfc3339(i64::try_from(valid_before).unwrap_or(i64::MAX)),
        });
    }
    Ok(u32::try_from(valid_before - now).unwrap_or(u32::MAX).max(1))
}

/// `names` sorted and without duplicates.
fn sorted(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;
    use ssh_key::certificate::Builder;
    use ssh_key::{Algorithm, PrivateKey};

    const NOW: i64 = 1_750_000_000;

    fn ca() -> PrivateKey {
        PrivateKey::random(&mut StdRng::seed_from_u64(7), Algorithm::Ed25519).unwrap()
    }

    fn sign(
        subject: &PublicKey,
        principals: &[&str],
        cert_type: CertType,
        before: i64,
    ) -> Certificate {
        let mut rng = StdRng::seed_from_u64(8);
        let mut builder = Builder::new_with_random_nonce(
            &mut rng,
            subject.key_data().clone(),
            (NOW - 60) as u64,
            before as u64,
        )
        .unwrap();
        builder
            .serial(42)
            .unwrap()
            .key_id("moshca:req=01JREQ")
            .unwrap();
        builder.cert_type(cert_type).unwrap();
        if principals.is_empty() {
            builder.all_principals_valid().unwrap();
        }
        for p in principals {
            builder.valid_principal(*p).unwrap();
        }
        builder.sign(&ca()).unwrap()
    }

    fn request(principals: &[&str]) -> AccessRequest {
        AccessRequest {
            id: "01JREQ".into(),
            state: State::Issued as i32,
            principals: principals.iter().map(|p| p.to_string()).collect(),
            ..AccessRequest::default()
        }
    }

    fn detail(err: Error) -> String {
        match err {
            Error::CertificateMismatch { detail, .. } => detail,
            other => panic!("not a mismatch: {other:?}"),
        }
    }

    #[test]
    fn a_matching_certificate_gets_its_remaining_lifetime() {
        let key = EphemeralKey::generate().unwrap();
        let cert = sign(
            key.public_key(),
            &["ubuntu", "postgres"],
            CertType::User,
            NOW + 1800,
        );
        let req = request(&["postgres", "ubuntu"]);
        assert_eq!(
            check_certificate_at(&cert, key.public_key(), &req, &[], NOW).unwrap(),
            1800
        );
        let asked = ["ubuntu".to_owned(), "postgres".to_owned()];
        assert_eq!(
            check_certificate_at(&cert, key.public_key(), &req, &asked, NOW + 1799).unwrap(),
            1
        );
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let ours = EphemeralKey::generate().unwrap();
        let theirs = EphemeralKey::generate().unwrap();
        let cert = sign(
            theirs.public_key(),
            &["postgres"],
            CertType::User,
            NOW + 600,
        );
        let err = check_certificate_at(&cert, ours.public_key(), &request(&["postgres"]), &[], NOW);
        assert!(detail(err.unwrap_err()).contains("different key"));
    }

    #[test]
    fn principals_must_match_the_request_and_the_ask() {
        let key = EphemeralKey::generate().unwrap();
        let cert = sign(key.public_key(), &["root"], CertType::User, NOW + 600);
        let err = check_certificate_at(&cert, key.public_key(), &request(&["postgres"]), &[], NOW);
        assert_eq!(
            detail(err.unwrap_err()),
            "it is for root but the request is for postgres"
        );

        let cert = sign(
            key.public_key(),
            &["postgres", "ubuntu"],
            CertType::User,
            NOW + 600,
        );
        let req = request(&["postgres", "ubuntu"]);
        let err = check_certificate_at(&cert, key.public_key(), &req, &["postgres".into()], NOW);
        assert!(detail(err.unwrap_err()).contains("you asked for postgres"));
    }

    #[test]
    fn empty_principals_and_host_certificates_are_refused() {
        let key = EphemeralKey::generate().unwrap();
        let cert = sign(key.public_key(), &[], CertType::User, NOW + 600);
        let err = check_certificate_at(&cert, key.public_key(), &request(&[]), &[], NOW);
        assert!(detail(err.unwrap_err()).contains("any login"));

        let cert = sign(key.public_key(), &["postgres"], CertType::Host, NOW + 600);
        let err = check_certificate_at(&cert, key.public_key(), &request(&["postgres"]), &[], NOW);
        assert!(detail(err.unwrap_err()).contains("not a user certificate"));
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let key = EphemeralKey::generate().unwrap();
        let cert = sign(key.public_key(), &["postgres"], CertType::User, NOW);
        let err = check_certificate_at(&cert, key.public_key(), &request(&["postgres"]), &[], NOW)
            .unwrap_err();
        assert!(matches!(err, Error::CertificateExpired { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 4);
    }
}
