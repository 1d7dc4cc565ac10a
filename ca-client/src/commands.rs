//! The commands other than `login`: each is one or two calls to the server and a result
//! handed to `output`.
//!
//! Formatting belongs to `output` and waiting to `wait`; these functions only turn
//! arguments into requests and answers (or their states) into results and errors.

use std::path::Path;

use moshca_proto::v1::{
    CancelAccessRequestRequest, CreateAccessRequestRequest, Decision, GetAccessRequestRequest,
    GetCaPublicKeysRequest, ListAccessRequestsRequest, ReviewAccessRequestRequest, State,
    WhoAmIRequest,
};

use crate::cli::{ApproveArgs, CaKeysArgs, DenyArgs, FetchArgs, RequestArgs, RequestsArgs};
use crate::clock;
use crate::error::{Error, Result};
use crate::keys;
use crate::output::{self, Output};
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
        })
        .await
        .map_err(|status| Error::rpc("create request", &status))?
        .into_inner();
    tracing::info!(request_id = %created.id, role = %created.role, "request created");
    out.created(&created)
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

/// `moshca requests [--pending] [--mine]`.
pub async fn requests(client: &mut Client, args: &RequestsArgs, out: Output) -> Result<()> {
    let list = client
        .list_access_requests(ListAccessRequestsRequest {
            pending_only: args.pending,
            mine_only: args.mine,
            limit: 0,
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

/// `moshca ca-keys [--out FILE]`.
pub async fn ca_keys(client: &mut Client, args: &CaKeysArgs, out: Output) -> Result<()> {
    let keys = client
        .get_ca_public_keys(GetCaPublicKeysRequest {})
        .await
        .map_err(|status| Error::rpc("get CA public keys", &status))?
        .into_inner()
        .public_keys;
    if keys.is_empty() {
        return Err(Error::BadResponse(
            "the server listed no CA public keys".to_owned(),
        ));
    }
    if let Some(path) = &args.out {
        write_file(path, &output::ca_keys_file(&keys))?;
    }
    out.ca_keys(&keys, args.out.as_deref())
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

/// Writes public material (a certificate, CA keys) to `path`.
fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
