//! SQL of webhook notifications: the outbox of notifying audit events, their fan-out to
//! one delivery per webhook, and delivery attempts. Typed reads and writes; decides nothing.

use super::sql::{Dialect, params};

use super::{Error, Result, Tx, to_i64, to_u64};
use crate::audit;

/// Audit actions that also go to the notification outbox, in the same transaction.
pub const NOTIFY_ACTIONS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.cancelled",
    "request.expired",
    "request.break_glass",
    "request.reviewed",
    "certificate.issued",
    "certificate.revoked",
];

/// A notification waiting to be delivered to one webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The audit event it announces.
    pub event: audit::Row,
    /// Webhook name.
    pub webhook: String,
    /// Tries so far.
    pub attempts: u32,
}

impl Tx<'_> {
    /// Outbox events not yet fanned out to webhooks, oldest first.
    pub fn outbox_waiting(&self, limit: u32) -> Result<Vec<audit::Row>> {
        let seqs = self.all(
            "SELECT audit_seq FROM outbox WHERE fanned_out = 0 ORDER BY audit_seq LIMIT ?1",
            params![limit],
            |r| r.get::<i64>(0),
        )?;
        seqs.into_iter()
            .filter_map(|seq| self.audit_row(to_u64(seq)).transpose())
            .collect()
    }

    /// Creates one delivery per webhook for an outbox event and marks it fanned out.
    pub fn fan_out(&self, audit_seq: u64, webhooks: &[String], now: u64) -> Result<()> {
        for w in webhooks {
            self.exec(
                "INSERT INTO deliveries (audit_seq, webhook, next_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![to_i64(audit_seq), w, to_i64(now)],
            )?;
        }
        self.exec(
            "UPDATE outbox SET fanned_out = 1 WHERE audit_seq = ?1",
            params![to_i64(audit_seq)],
        )?;
        Ok(())
    }

    /// Claims up to `limit` deliveries to `webhook` due at `now`, oldest first, for the
    /// caller to send: they are not due again before `lease_until`, so no other replica
    /// sends them meanwhile (each records its attempt, or releases the claim with
    /// [`Tx::release_delivery`]). A replica that dies holding a claim leaves the
    /// deliveries to be sent by another once the lease ends. On PostgreSQL the rows are
    /// taken `FOR UPDATE SKIP LOCKED`: a claim never waits for, nor takes, another's.
    pub fn claim_deliveries_to(
        &self,
        webhook: &str,
        now: u64,
        limit: u32,
        lease_until: u64,
    ) -> Result<Vec<Delivery>> {
        let lock = match self.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let mut rows = self.all(
            &format!(
                "UPDATE deliveries SET next_at = ?4
                 WHERE (audit_seq, webhook) IN (
                     SELECT audit_seq, webhook FROM deliveries
                     WHERE state = 'pending' AND webhook = ?1 AND next_at <= ?2
                     ORDER BY next_at, audit_seq LIMIT ?3{lock})
                 RETURNING audit_seq, attempts"
            ),
            params![webhook, to_i64(now), limit, to_i64(lease_until)],
            |r| Ok((r.get::<i64>(0)?, r.get::<u32>(1)?)),
        )?;
        rows.sort_unstable();
        let mut out = Vec::with_capacity(rows.len());
        for (seq, attempts) in rows {
            let event = self
                .audit_row(to_u64(seq))?
                .ok_or_else(|| Error::Corrupt(format!("delivery of missing audit event {seq}")))?;
            out.push(Delivery {
                event,
                webhook: webhook.to_owned(),
                attempts,
            });
        }
        Ok(out)
    }

    /// Gives back a claimed delivery not attempted: due again at `next_at`.
    pub fn release_delivery(&self, audit_seq: u64, webhook: &str, next_at: u64) -> Result<()> {
        self.exec(
            "UPDATE deliveries SET next_at = ?3
             WHERE audit_seq = ?1 AND webhook = ?2 AND state = 'pending'",
            params![to_i64(audit_seq), webhook, to_i64(next_at)],
        )?;
        Ok(())
    }

    /// Records the outcome of one delivery attempt: `delivered`, or retry at `next_at`, or
    /// `dropped` after the last try.
    pub fn delivery_attempted(
        &self,
        audit_seq: u64,
        webhook: &str,
        state: &str,
        next_at: u64,
        error: Option<&str>,
    ) -> Result<()> {
        self.exec(
            "UPDATE deliveries SET attempts = attempts + 1, state = ?3, next_at = ?4, last_error = ?5
             WHERE audit_seq = ?1 AND webhook = ?2",
            params![to_i64(audit_seq), webhook, state, to_i64(next_at), error],
        )?;
        Ok(())
    }

    /// Counts deliveries by state (`pending`, `delivered`, `dropped`).
    pub fn delivery_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = self.all(
            "SELECT state, COUNT(*) FROM deliveries GROUP BY state ORDER BY state",
            params![],
            |r| Ok((r.get::<String>(0)?, to_u64(r.get::<i64>(1)?))),
        )?;
        Ok(rows)
    }
}
