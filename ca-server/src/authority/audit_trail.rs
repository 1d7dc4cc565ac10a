//! Reading and sealing the audit trail: listing for auditors, signed checkpoints,
//! verification.

use super::*;

impl Authority {
    /// Audit events for the policy's auditors, oldest first (the newest `limit`).
    pub fn audit_events(
        &self,
        caller: &Caller,
        user: Option<&str>,
        request_id: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<crate::audit::Row>> {
        let policy = self.policy();
        if !policy::selects(&policy.defaults.auditors, caller) {
            return Err(Error::PermissionDenied(
                "only the policy's auditors (defaults.auditors) may read the audit trail".into(),
            ));
        }
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as usize;
        let (rows, requests_of_user) = self.store.read(|tx| {
            let rows = tx.audit_rows_since(since)?;
            let mine: Vec<String> = match user {
                Some(u) => tx
                    .requests(&RequestFilter {
                        requester: Some(u.to_owned()),
                        limit: u32::MAX,
                        ..Default::default()
                    })?
                    .into_iter()
                    .map(|r| r.id)
                    .collect(),
                None => Vec::new(),
            };
            Ok::<_, Error>((rows, mine))
        })?;
        let mut rows: Vec<_> = rows
            .into_iter()
            .filter(|r| {
                user.is_none_or(|u| {
                    r.event.actor == u
                        || r.event
                            .request_id
                            .as_ref()
                            .is_some_and(|id| requests_of_user.contains(id))
                        || r.event.details.get("user").and_then(|v| v.as_str()) == Some(u)
                })
            })
            .filter(|r| request_id.is_none_or(|id| r.event.request_id.as_deref() == Some(id)))
            .collect();
        if rows.len() > limit {
            rows.drain(..rows.len() - limit);
        }
        Ok(rows)
    }

    /// Signs the audit chain's head if events were added since the last checkpoint; returns
    /// the checkpointed sequence number.
    pub fn checkpoint_at(&self, now: UnixTime) -> Result<Option<u64>> {
        let signer = self.signer();
        self.store.transact(|tx| {
            let Some((seq, hash)) = tx.audit_head()? else {
                return Ok(None);
            };
            if tx.checkpoints()?.last().is_some_and(|c| c.seq >= seq) {
                return Ok(None);
            }
            let signature = signer.sign_checkpoint(&crate::audit::Checkpoint::message(seq, &hash));
            // Also to the log, which lives outside the database: deleting both the tail
            // and its checkpoint rows is then still visible there.
            tracing::info!(seq, hash = %hash, signature = %signature, "audit checkpoint");
            tx.insert_checkpoint(&crate::audit::Checkpoint {
                seq,
                hash,
                ca_fingerprint: signer.fingerprint(),
                signature,
                at: now,
            })?;
            Ok(Some(seq))
        })
    }
}

/// Verifies the audit chain and its signed checkpoints; the number of events and
/// checkpoints, or the first bad event.
pub fn verify_audit(store: &Store) -> Result<Result<(u64, usize), crate::audit::Broken>> {
    let (rows, checkpoints, keys) = store
        .read(|tx| Ok::<_, Error>((tx.audit_rows()?, tx.checkpoints()?, tx.all_ca_keys()?)))?;
    let keys: Vec<PublicKey> = keys
        .iter()
        .filter_map(|k| PublicKey::from_openssh(k).ok())
        .collect();
    Ok(crate::audit::verify_with_checkpoints(
        rows,
        &checkpoints,
        |cp| {
            let msg = crate::audit::Checkpoint::message(cp.seq, &cp.hash);
            keys.iter()
                .any(|k| signer::checkpoint_signature_ok(k, &msg, &cp.signature))
        },
    ))
}
