//! Proto <-> domain conversions, and the one place errors become `tonic::Status`.
//!
//! Internal failures are logged whole here and reach clients only as "internal error":
//! no SQL, paths or key material ever goes over the wire.

use moshca_proto::v1 as pb;
use tonic::Status;

use crate::approvals::{State, Verdict};
use crate::authority::{self, RequestView};

impl From<authority::Error> for Status {
    fn from(e: authority::Error) -> Self {
        use authority::Error as E;
        match e {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::Unauthenticated(m) => Status::unauthenticated(m),
            E::PermissionDenied(m) => Status::permission_denied(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::NotFound(m) => Status::not_found(m),
            E::ResourceExhausted(m) => Status::resource_exhausted(m),
            E::Store(ref inner) if inner.kind() == crate::store::ErrorKind::Conflict => {
                // Another writer saved the request first; nothing of this call was stored.
                tracing::warn!(error = %inner, "write conflict");
                Status::aborted("the request changed while this call ran; try again")
            }
            E::Store(ref inner) => {
                tracing::error!(error = %inner, "store failure");
                if is_unavailable(inner) {
                    Status::unavailable(
                        "the CA cannot write to its database right now; try again shortly",
                    )
                } else {
                    Status::internal("internal error")
                }
            }
            E::Krl(ref inner) => {
                tracing::error!(error = %inner, "KRL failure");
                Status::internal("internal error")
            }
            E::Signer(ref inner) => {
                tracing::error!(error = %inner, "signer failure");
                Status::internal("internal error")
            }
        }
    }
}

/// Disk full, read-only or locked database, or a failed commit: the client should retry;
/// nothing was issued.
fn is_unavailable(e: &crate::store::Error) -> bool {
    e.kind() == crate::store::ErrorKind::Unavailable
}

/// Unix seconds for the wire.
fn wire_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn state(s: State) -> pb::State {
    match s {
        State::Pending => pb::State::Pending,
        State::Issued => pb::State::Issued,
        State::Denied => pb::State::Denied,
        State::Cancelled => pb::State::Cancelled,
        State::Expired => pb::State::Expired,
    }
}

fn decision(v: Verdict) -> pb::Decision {
    match v {
        Verdict::Approve => pb::Decision::Approve,
        Verdict::Deny => pb::Decision::Deny,
    }
}

/// Reads a review decision off the wire.
pub fn verdict(d: i32) -> Result<Verdict, Status> {
    match pb::Decision::try_from(d) {
        Ok(pb::Decision::Approve) => Ok(Verdict::Approve),
        Ok(pb::Decision::Deny) => Ok(Verdict::Deny),
        _ => Err(Status::invalid_argument(
            "decision must be DECISION_APPROVE or DECISION_DENY",
        )),
    }
}

/// A create request off the wire, every string within its bound. A zero ttl means the
/// role's default.
pub fn new_request(
    m: pb::CreateAccessRequestRequest,
) -> Result<crate::authority::NewRequest, authority::Error> {
    use crate::text::{self, bounded};
    let invalid = authority::Error::InvalidArgument;
    bounded("role", &m.role, text::MAX_NAME_LEN).map_err(invalid)?;
    if m.principals.len() > text::MAX_PRINCIPALS {
        return Err(invalid(format!(
            "{} principals requested; at most {} per certificate",
            m.principals.len(),
            text::MAX_PRINCIPALS
        )));
    }
    for p in &m.principals {
        bounded("a principal", p, text::MAX_PRINCIPAL_LEN).map_err(invalid)?;
    }
    bounded("reason", &m.reason, text::MAX_FREE_TEXT_LEN).map_err(invalid)?;
    bounded("public key", &m.public_key, text::MAX_PUBLIC_KEY_LEN).map_err(invalid)?;
    Ok(crate::authority::NewRequest {
        role: m.role,
        principals: m.principals,
        ttl_secs: (m.ttl_secs != 0).then_some(m.ttl_secs),
        reason: m.reason,
        public_key: m.public_key,
        break_glass: m.break_glass,
    })
}

/// A request view for the wire.
pub fn request(v: RequestView) -> pb::AccessRequest {
    let r = v.request;
    let serial = v.certificate.as_ref().map_or(0, |c| c.serial);
    let revoked = v
        .certificate
        .as_ref()
        .is_some_and(|c| c.revoked_at.is_some());
    let valid_before = v
        .certificate
        .as_ref()
        .map_or(0, |c| wire_time(c.valid_before));
    let certificate = v
        .certificate
        .filter(|_| v.certificate_visible)
        .map(|c| pb::Certificate {
            openssh: c.openssh,
            serial: c.serial,
            key_id: c.key_id,
            principals: c.principals,
            valid_after: wire_time(c.valid_after),
            valid_before: wire_time(c.valid_before),
        });
    let break_glass_review = r.break_glass_review.map(|rev| pb::Review {
        approver: rev.approver,
        decision: decision(rev.verdict) as i32,
        comment: rev.comment,
        at: wire_time(rev.at),
    });
    pb::AccessRequest {
        break_glass: r.break_glass,
        break_glass_review,
        id: r.id,
        requester: r.requester,
        role: r.role,
        principals: r.principals,
        ttl_secs: r.ttl_secs,
        reason: r.reason,
        fingerprint: r.fingerprint,
        state: state(r.state) as i32,
        reviews: r
            .reviews
            .into_iter()
            .map(|rev| pb::Review {
                approver: rev.approver,
                decision: decision(rev.verdict) as i32,
                comment: rev.comment,
                at: wire_time(rev.at),
            })
            .collect(),
        created_at: wire_time(r.created_at),
        expires_at: wire_time(r.expires_at),
        approvers: v.approvers,
        approvals_required: r.approvals_required,
        certificate,
        serial,
        valid_before,
        notified: Vec::new(),
        revoked,
    }
}

/// The CA keys with their types: user keys (OpenSSH lines, as published), then host keys.
pub fn typed_ca_keys(user: &[String], host: &[ssh_key::PublicKey]) -> Vec<pb::CaPublicKey> {
    let user = user.iter().map(|k| pb::CaPublicKey {
        openssh: k.clone(),
        r#type: pb::CaKeyType::User as i32,
    });
    let host = host
        .iter()
        .filter_map(|k| k.to_openssh().ok())
        .map(|k| pb::CaPublicKey {
            openssh: k,
            r#type: pb::CaKeyType::Host as i32,
        });
    user.chain(host).collect()
}

/// An enrolment off the wire, every string within its bound: the join token, the host
/// public key and the principals asked for.
pub fn enroll_host(
    m: pb::EnrollHostRequest,
) -> Result<(crate::auth::Token, String, Vec<String>), Status> {
    use crate::text::{self, bounded};
    let invalid = Status::invalid_argument;
    bounded("join token", &m.token, 128).map_err(invalid)?;
    bounded("public key", &m.public_key, text::MAX_PUBLIC_KEY_LEN).map_err(invalid)?;
    if m.principals.len() > text::MAX_PRINCIPALS {
        return Err(invalid(format!(
            "{} principals asked for; at most {}",
            m.principals.len(),
            text::MAX_PRINCIPALS
        )));
    }
    for p in &m.principals {
        bounded("a principal", p, crate::signer::MAX_HOST_NAME_LEN).map_err(invalid)?;
    }
    Ok((
        crate::auth::Token::from_presented(m.token.trim()),
        m.public_key,
        m.principals,
    ))
}

/// A host certificate for the wire.
pub fn host_certificate(c: crate::authority::HostCert) -> pb::HostCertificate {
    let r = c.record;
    pb::HostCertificate {
        openssh: r.openssh,
        serial: r.serial,
        key_id: r.key_id,
        principals: r.principals,
        valid_after: wire_time(r.valid_after),
        valid_before: wire_time(r.valid_before),
    }
}

/// An audit row for the wire.
pub fn audit_event(row: crate::audit::Row) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: row.seq,
        at: wire_time(row.event.at),
        actor: row.event.actor,
        action: row.event.action,
        request_id: row.event.request_id.unwrap_or_default(),
        details_json: row.event.details.to_string(),
        hash: row.hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> authority::Error {
        authority::Error::Store(crate::store::Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            Some("/var/lib/moshca/moshca.db: secret path".into()),
        )))
    }

    #[test]
    fn storage_trouble_is_unavailable_and_reveals_nothing() {
        for code in [rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_READONLY] {
            let s = Status::from(sqlite(code));
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert!(!s.message().contains("/var/lib"), "{}", s.message());
        }
        let s = Status::from(sqlite(rusqlite::ffi::SQLITE_CORRUPT));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), "internal error");
    }

    #[test]
    fn a_write_conflict_is_aborted_and_says_to_try_again() {
        let e = authority::Error::Store(crate::store::Error::Conflict("request 01J".into()));
        let s = Status::from(e);
        assert_eq!(s.code(), tonic::Code::Aborted);
        assert!(s.message().contains("try again"), "{}", s.message());
    }
}
