//! The commands other than `login`: each is one or two calls to the server and a result
//! handed to `output`.
//!
//! Formatting belongs to `output`, waiting to `wait` and replacing the files sshd reads to
//! `install`; these functions only turn arguments into requests and answers (or their
//! states) into results and errors.

use std::path::Path;

use moshca_proto::v1::revoke_certificates_request::Target;
use moshca_proto::v1::{
    CancelAccessRequestRequest, CreateAccessRequestRequest, Decision, GetAccessRequestRequest,
    GetCaPublicKeysRequest, GetKrlRequest, ListAccessRequestsRequest, ListAuditEventsRequest,
    ReviewAccessRequestRequest, ReviewBreakGlassRequest, RevokeCertificatesRequest, State,
    WhoAmIRequest,
};
use ssh_key::HashAlg;

use crate::cli::{
    ApproveArgs, AuditArgs, CaKeysArgs, DenyArgs, FetchArgs, HostSyncArgs, KrlArgs, RequestArgs,
    RequestsArgs, ReviewArgs, RevokeArgs,
};
use crate::clock;
use crate::error::{self, Error, Result};
use crate::install::{self, CaKeys, KrlCheck};
use crate::keys;
use crate::metrics;
use crate::output::{self, Output, SyncReport};
use crate::rpc::Client;

/// `moshca request`: asks for a certificate for an existing public key.
pub async fn request(client: &mut Client, args: &RequestArgs, out: Output) -> Result<()> {
    let key = keys::read_public_key(&args.public_key)?;
    let public_key = key.to_openssh().map_err(|err| Error::PublicKey {
        path: args.public_key.clone(),
        detail: err.to_string(),
    })?;
    let created = client
        .create_access_request(CreateAccessRequestRequest {
            role: args.role.clone(),
            principals: args.principals.clone(),
            ttl_secs: args.ttl.map_or(0, |ttl| ttl.as_secs()),
            reason: args.reason.clone(),
            public_key,
            break_glass: args.break_glass,
        })
        .await;
    let created = match created {
        Ok(created) => created.into_inner(),
        Err(status) => return Err(create_refused(client, &args.role, &status).await),
    };
    tracing::info!(request_id = %created.id, role = %created.role, "request created");
    if created.break_glass && output::state(&created) == State::Issued {
        output::break_glass_granted(&created);
    }
    out.created(&created)
}

/// The error for a refused `CreateAccessRequest`. A PERMISSION_DENIED for a role the
/// caller may not request asks `WhoAmI` for the roles they may, to suggest the closest.
pub(crate) async fn create_refused(
    client: &mut Client,
    role: &str,
    status: &tonic::Status,
) -> Error {
    let err = error::create_refused(status);
    if !matches!(
        err,
        Error::Rpc {
            code: tonic::Code::PermissionDenied,
            ..
        }
    ) {
        return err;
    }
    let Ok(who) = client.who_am_i(WhoAmIRequest {}).await else {
        return err;
    };
    let requestable = who.into_inner().requestable_roles;
    if requestable.iter().any(|r| r == role) {
        return err;
    }
    Error::UnknownRole {
        message: err.to_string(),
        suggestion: error::closest_role(role, &requestable),
        requestable,
    }
}

/// `moshca status ID`.
pub async fn status(client: &mut Client, id: &str, out: Output) -> Result<()> {
    let request = client
        .get_access_request(GetAccessRequestRequest {
            id: id.to_owned(),
            include_certificate: false,
        })
        .await
        .map_err(|status| Error::rpc("get request", &status))?
        .into_inner();
    out.request(&request)
}

/// `moshca fetch ID [--out FILE]`: the certificate of an issued, unexpired request.
pub async fn fetch(client: &mut Client, args: &FetchArgs, out: Output) -> Result<()> {
    let request = client
        .get_access_request(GetAccessRequestRequest {
            id: args.id.clone(),
            include_certificate: true,
        })
        .await
        .map_err(|status| Error::rpc("fetch certificate", &status))?
        .into_inner();
    let id = request.id.clone();
    match output::state(&request) {
        State::Issued => {}
        State::Pending | State::Unspecified => return Err(Error::Pending { id }),
        State::Denied => return Err(Error::denied(&request)),
        State::Expired => return Err(Error::Expired { id }),
        State::Cancelled => return Err(Error::Cancelled { id }),
    }
    let certificate = request.certificate.as_ref().ok_or_else(|| {
        Error::BadResponse(format!("request {id} is issued but has no certificate"))
    })?;
    if certificate.valid_before <= clock::now_unix() {
        return Err(Error::CertificateExpired {
            id,
            at: output::rfc3339(certificate.valid_before),
        });
    }
    let line = certificate.openssh.trim();
    if let Some(path) = &args.out {
        write_file(path, &format!("{line}\n"))?;
    }
    out.fetched(&request, args.out.as_deref(), line)
}

/// `moshca cancel ID`.
pub async fn cancel(client: &mut Client, id: &str, out: Output) -> Result<()> {
    let request = client
        .cancel_access_request(CancelAccessRequestRequest { id: id.to_owned() })
        .await
        .map_err(|status| Error::rpc("cancel request", &status))?
        .into_inner();
    tracing::info!(request_id = %id, "request cancelled");
    out.cancelled(&request)
}

/// `moshca requests [--pending] [--mine] [--unreviewed]`.
pub async fn requests(client: &mut Client, args: &RequestsArgs, out: Output) -> Result<()> {
    let list = client
        .list_access_requests(ListAccessRequestsRequest {
            pending_only: args.pending,
            mine_only: args.mine,
            limit: 0,
            unreviewed_only: args.unreviewed,
        })
        .await
        .map_err(|status| Error::rpc("list requests", &status))?
        .into_inner();
    out.requests(&list.requests)
}

/// `moshca approve ID [--ttl T] [--comment C]`.
pub async fn approve(client: &mut Client, args: &ApproveArgs, out: Output) -> Result<()> {
    let request = client
        .review_access_request(ReviewAccessRequestRequest {
            id: args.id.clone(),
            decision: Decision::Approve as i32,
            ttl_secs: args.ttl.map_or(0, |ttl| ttl.as_secs()),
            comment: args.comment.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| Error::rpc("approve request", &status))?
        .into_inner();
    tracing::info!(request_id = %args.id, "request approved");
    out.reviewed(&request, Decision::Approve)
}

/// `moshca deny ID --reason R`.
pub async fn deny(client: &mut Client, args: &DenyArgs, out: Output) -> Result<()> {
    let request = client
        .review_access_request(ReviewAccessRequestRequest {
            id: args.id.clone(),
            decision: Decision::Deny as i32,
            ttl_secs: 0,
            comment: args.reason.clone(),
        })
        .await
        .map_err(|status| Error::rpc("deny request", &status))?
        .into_inner();
    tracing::info!(request_id = %args.id, "request denied");
    out.reviewed(&request, Decision::Deny)
}

/// `moshca review ID --comment C`: marks a break-glass request reviewed.
pub async fn review(client: &mut Client, args: &ReviewArgs, out: Output) -> Result<()> {
    let request = client
        .review_break_glass(ReviewBreakGlassRequest {
            id: args.id.clone(),
            comment: args.comment.clone(),
        })
        .await
        .map_err(|status| Error::rpc("review break-glass request", &status))?
        .into_inner();
    tracing::info!(request_id = %args.id, "break-glass request reviewed");
    out.glass_reviewed(&request)
}

/// `moshca audit [--user U] [--request ID] [--since T] [--limit N]`.
pub async fn audit(client: &mut Client, args: &AuditArgs, out: Output) -> Result<()> {
    let since = args
        .since
        .map_or(0, |since| since.unix_at(clock::now_unix()));
    let list = client
        .list_audit_events(ListAuditEventsRequest {
            user: args.user.clone().unwrap_or_default(),
            request_id: args.request.clone().unwrap_or_default(),
            since,
            limit: args.limit.unwrap_or(0),
        })
        .await
        .map_err(|status| Error::audit(&status))?
        .into_inner();
    out.audit_events(&list.events)
}

/// `moshca revoke (--serial N | --request ID | --user NAME | --public-key FILE) --reason R`.
pub async fn revoke(client: &mut Client, args: &RevokeArgs, out: Output) -> Result<()> {
    let mut fingerprint = None;
    let target = match (&args.serial, &args.request, &args.user, &args.public_key) {
        (Some(serial), ..) => Some(Target::Serial(*serial)),
        (_, Some(id), ..) => Some(Target::RequestId(id.clone())),
        (_, _, Some(user), _) => Some(Target::User(user.clone())),
        (.., Some(path)) => {
            let key = keys::read_public_key(path)?;
            fingerprint = Some(key.fingerprint(HashAlg::Sha256).to_string());
            Some(Target::PublicKey(key.to_openssh().map_err(|err| {
                Error::PublicKey {
                    path: path.clone(),
                    detail: err.to_string(),
                }
            })?))
        }
        // clap requires a target; without one the server answers with the usage.
        (None, None, None, None) => None,
    };
    let revoked = client
        .revoke_certificates(RevokeCertificatesRequest {
            target,
            reason: args.reason.clone(),
        })
        .await
        .map_err(|status| Error::rpc("revoke", &status))?
        .into_inner();
    tracing::info!(serials = ?revoked.serials, krl_version = revoked.krl_version, "revoked");
    out.revoked(&revoked, fingerprint.as_deref())
}

/// `moshca ca-keys [--out FILE]`.
pub async fn ca_keys(client: &mut Client, args: &CaKeysArgs, out: Output) -> Result<()> {
    let path = args.out.as_deref();
    let keys = fetch_ca_keys(client, path).await?;
    if let Some(path) = path {
        install::install_ca_keys(path, &keys)?;
    }
    out.ca_keys(&keys, path)
}

/// `moshca krl --out FILE [--no-check]`.
pub async fn krl(client: &mut Client, args: &KrlArgs, out: Output) -> Result<()> {
    let (version, bytes) = sync_krl(client, &args.out, &KrlCheck::new(args.no_check)).await?;
    out.krl_installed(&args.out, version, bytes)
}

/// `moshca host sync --dir DIR`: installs the CA public keys, then the KRL.
///
/// A failure of one does not stop the other: each is reported on stderr as it happens, and
/// the command fails at the end naming the files it left as they were.
pub async fn host_sync(client: &mut Client, args: &HostSyncArgs, out: Output) -> Result<()> {
    let ca_keys_path = args.dir.join(&args.ca_keys_name);
    let krl_path = args.dir.join(&args.krl_name);

    // What the files held before, to tell (and print) only what changed.
    let ca_keys_before = std::fs::read(&ca_keys_path).ok();
    let krl_before = std::fs::read(&krl_path).ok();
    let ca_keys = match fetch_ca_keys(client, Some(&ca_keys_path)).await {
        Ok(keys) => install::install_ca_keys(&ca_keys_path, &keys).map(|()| keys.len()),
        Err(err) => Err(err),
    };
    let krl = sync_krl(client, &krl_path, &KrlCheck::new(args.no_check)).await;
    let changed = |path: &Path, before: Option<Vec<u8>>| std::fs::read(path).ok() != before;
    let ca_keys_changed = ca_keys.is_ok() && changed(&ca_keys_path, ca_keys_before);
    let krl_changed = krl.is_ok() && changed(&krl_path, krl_before);

    let mut failed = Vec::new();
    for (path, result) in [
        (&ca_keys_path, ca_keys.as_ref().err()),
        (&krl_path, krl.as_ref().err()),
    ] {
        if let Some(err) = result {
            error::report(err);
            failed.push(path.clone());
        }
    }
    out.host_synced(&SyncReport {
        ca_keys_path: &ca_keys_path,
        ca_keys: ca_keys.as_ref().copied(),
        krl_path: &krl_path,
        krl: krl.as_ref().copied(),
        ca_keys_changed,
        krl_changed,
    })?;
    if failed.is_empty() {
        if let (Some(textfile), Ok(keys), Ok((version, _))) = (&args.textfile, &ca_keys, &krl) {
            let text = metrics::host_sync_text(clock::now_unix(), *version, *keys);
            metrics::write_textfile(textfile, &text)?;
        }
        Ok(())
    } else {
        Err(Error::HostSync { failed })
    }
}

/// The server's CA public keys, checked: refused when empty or unparsable, naming `path`
/// (the file that will not be replaced) when there is one.
async fn fetch_ca_keys(client: &mut Client, path: Option<&Path>) -> Result<CaKeys> {
    let keys = client
        .get_ca_public_keys(GetCaPublicKeysRequest {})
        .await
        .map_err(|status| Error::rpc("get CA public keys", &status))?
        .into_inner()
        .public_keys;
    CaKeys::parse(&keys).map_err(|refusal| match path {
        Some(path) => Error::NotReplaced {
            path: path.to_owned(),
            refusal,
        },
        None => Error::BadResponse(refusal.to_string()),
    })
}

/// Fetches the KRL and installs it at `path`; returns its version and size.
async fn sync_krl(client: &mut Client, path: &Path, check: &KrlCheck) -> Result<(u64, usize)> {
    let (krl, version) = fetch_krl(client, path).await?;
    let header = install::install_krl(path, &krl, version, check)?;
    Ok((header.version, krl.len()))
}

/// The server's KRL and its version, fetched in chunks (`StreamKrl`), or whole from a
/// server too old to stream it. `path` names the file that is kept when it arrives broken.
async fn fetch_krl(client: &mut Client, path: &Path) -> Result<(Vec<u8>, u64)> {
    let rpc = |status: tonic::Status| Error::rpc("get KRL", &status);
    let mut stream = match client.stream_krl(GetKrlRequest {}).await {
        Ok(answer) => answer.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::debug!("server cannot stream the KRL; fetching it whole");
            let krl = client.get_krl(GetKrlRequest {}).await.map_err(rpc)?;
            let krl = krl.into_inner();
            return Ok((krl.krl, krl.version));
        }
        Err(status) => return Err(rpc(status)),
    };
    let refused = |refusal| Error::NotReplaced {
        path: path.to_owned(),
        refusal,
    };
    let mut chunks = install::KrlChunks::default();
    while let Some(chunk) = stream.message().await.map_err(rpc)? {
        chunks
            .push(chunk.version, chunk.total_len, chunk.offset, &chunk.data)
            .map_err(refused)?;
    }
    chunks.finish().map_err(refused)
}

/// `moshca whoami`.
pub async fn whoami(client: &mut Client, out: Output) -> Result<()> {
    let who = client
        .who_am_i(WhoAmIRequest {})
        .await
        .map_err(|status| Error::rpc("whoami", &status))?
        .into_inner();
    out.whoami(&who)
}

/// Writes a certificate to `path`.
fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
