//! The caller's live certificates and moshca's certificates in ssh-agent: `moshca status`
//! without an id, and `moshca logout`.
//!
//! Live means issued to the caller, unrevoked, and not yet expired at `now`. Which of them
//! the agent holds is matched by serial on certificates with moshca's key id prefix.
//! Formatting is `output`'s; this module only asks the server and the agent.

use std::path::Path;

use moshca_proto::v1::{AccessRequest, ListAccessRequestsRequest, State};

use crate::agent::{self, HeldCertificate};
use crate::clock;
use crate::error::{Error, Result};
use crate::output::{self, LiveCertificate, Output, Removed};
use crate::rpc::Client;

/// How many of the caller's newest requests are looked through (the server's maximum).
const LIST_LIMIT: u32 = 100;

/// `moshca status`: the caller's live certificates, and whether the agent at `socket`
/// holds each (unknown without an agent).
pub async fn status(client: &mut Client, socket: Option<&Path>, out: Output) -> Result<()> {
    let requests = client
        .list_access_requests(ListAccessRequestsRequest {
            pending_only: false,
            mine_only: true,
            limit: LIST_LIMIT,
            unreviewed_only: false,
        })
        .await
        .map_err(|status| Error::rpc("list requests", &status))?
        .into_inner()
        .requests;
    let now = clock::now_unix();
    let held = match socket {
        Some(socket) => match agent::certificates(socket).await {
            Ok(held) => Some(held),
            Err(err) => {
                output::warning(&format!("cannot tell which are in ssh-agent: {err}"));
                None
            }
        },
        None => None,
    };
    let live: Vec<LiveCertificate<'_>> = live_at(&requests, now)
        .map(|request| LiveCertificate {
            request,
            in_agent: held.as_deref().map(|held| holds(held, request)),
        })
        .collect();
    out.live_certificates(&live, now)
}

/// The requests whose certificate is live at `now`, in the server's order (newest first).
fn live_at(requests: &[AccessRequest], now: i64) -> impl Iterator<Item = &AccessRequest> {
    requests.iter().filter(move |r| {
        output::state(r) == State::Issued && !r.revoked && r.serial != 0 && r.valid_before > now
    })
}

/// Whether the agent holds the certificate of `request`.
fn holds(held: &[HeldCertificate], request: &AccessRequest) -> bool {
    held.iter()
        .any(|h| h.is_moshca() && h.certificate.serial() == request.serial)
}

/// `moshca logout`: removes every certificate with moshca's key id prefix (and with it its
/// key) from the agent at `socket`; other keys and certificates stay.
pub async fn logout(socket: &Path, out: Output) -> Result<()> {
    let mut removed = Vec::new();
    for held in agent::certificates(socket).await? {
        if !held.is_moshca() {
            continue;
        }
        agent::remove(socket, &held).await?;
        tracing::info!(key_id = %held.certificate.key_id(), serial = held.certificate.serial(), "removed from ssh-agent");
        removed.push(Removed {
            key_id: held.certificate.key_id().to_owned(),
            serial: held.certificate.serial(),
            valid_before: held.certificate.valid_before(),
        });
    }
    out.logged_out(&removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn request(
        id: &str,
        state: State,
        serial: u64,
        valid_before: i64,
        revoked: bool,
    ) -> AccessRequest {
        AccessRequest {
            id: id.into(),
            state: state as i32,
            serial,
            valid_before,
            revoked,
            ..AccessRequest::default()
        }
    }

    #[test]
    fn only_issued_unexpired_unrevoked_certificates_are_live() {
        let requests = [
            request("live", State::Issued, 1, NOW + 60, false),
            request("expired", State::Issued, 2, NOW, false),
            request("revoked", State::Issued, 3, NOW + 60, true),
            request("pending", State::Pending, 0, 0, false),
            request("denied", State::Denied, 0, 0, false),
        ];
        let ids: Vec<&str> = live_at(&requests, NOW).map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["live"]);
    }
}
