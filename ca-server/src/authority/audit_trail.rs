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
        let filter = store::AuditFilter {
            since,
            user: user.map(str::to_owned),
            request_id: request_id.map(str::to_owned),
            limit: if limit == 0 { 100 } else { limit.min(10_000) },
        };
        Ok(self.store.read(|tx| tx.audit_page(&filter))?)
    }

    /// Signs the audit chain's head if events were added since the last checkpoint; returns
    /// the checkpointed sequence number. The checkpoint goes to the database, the log and
    /// the checkpoint file.
    pub fn checkpoint_at(&self, now: UnixTime) -> Result<Option<u64>> {
        checkpoint(
            &self.store,
            &self.signer(),
            self.checkpoint_file.as_deref(),
            now,
        )
    }

    /// The periodic checkpoint: [`Self::checkpoint_at`], unless some replica (this one or
    /// another on the same database) made one within the last interval. Replicas tick at
    /// their own phase; whichever comes first signs, so the chain gets one checkpoint per
    /// [`CHECKPOINT_EVERY_SECS`](crate::audit::CHECKPOINT_EVERY_SECS), not one per replica.
    pub fn periodic_checkpoint_at(&self, now: UnixTime) -> Result<Option<u64>> {
        // One second of slack: a replica ticking just before the interval ends still
        // leaves the next tick to sign.
        checkpoint_unless_within(
            &self.store,
            &self.signer(),
            self.checkpoint_file.as_deref(),
            now,
            crate::audit::CHECKPOINT_EVERY_SECS.saturating_sub(1),
        )
    }
}

/// Signs the audit chain's head with `signer` if events were added since the last
/// checkpoint, stores it, logs it (one INFO line) and appends it to `file`; returns the
/// checkpointed sequence number. Failing to append is logged, not fatal: the database
/// still has the checkpoint, and the next one covers this head too.
pub fn checkpoint(
    store: &Store,
    signer: &Signer,
    file: Option<&std::path::Path>,
    now: UnixTime,
) -> Result<Option<u64>> {
    checkpoint_unless_within(store, signer, file, now, 0)
}

/// [`checkpoint`], unless the newest checkpoint was signed less than `gap` seconds before
/// `now`; checked in the transaction that would write it, so replicas deciding at once
/// decide one after the other.
fn checkpoint_unless_within(
    store: &Store,
    signer: &Signer,
    file: Option<&std::path::Path>,
    now: UnixTime,
    gap: u64,
) -> Result<Option<u64>> {
    let made = store.transact(|tx| {
        let Some((seq, hash)) = tx.audit_head()? else {
            return Ok::<_, Error>(None);
        };
        if gap > 0
            && tx
                .last_checkpoint_at()?
                .is_some_and(|at| now < at.saturating_add(gap))
        {
            return Ok(None);
        }
        if tx.last_checkpoint_seq()?.is_some_and(|s| s >= seq) {
            return Ok(None);
        }
        let signature = signer.sign_checkpoint(&crate::audit::Checkpoint::message(seq, &hash));
        let cp = crate::audit::Checkpoint {
            seq,
            hash,
            ca_fingerprint: signer.fingerprint(),
            signature,
            at: now,
        };
        tx.insert_checkpoint(&cp)?;
        Ok(Some(cp))
    })?;
    let Some(cp) = made else { return Ok(None) };
    // Outside the database, so deleting both the tail and its checkpoint rows still shows:
    // in the checkpoint file, and in the log. With the file written, the log line is DEBUG
    // (one every 10 s under load is noise); without it, the log is the only copy outside.
    match file.map(|path| (path, append_checkpoint(path, &cp))) {
        Some((_, Ok(()))) => {
            tracing::debug!(seq = cp.seq, hash = %cp.hash, signature = %cp.signature, "audit checkpoint");
        }
        Some((path, Err(e))) => {
            tracing::error!(file = %path.display(), error = %e, seq = cp.seq, "appending the audit checkpoint to the checkpoint file failed");
            tracing::info!(seq = cp.seq, hash = %cp.hash, signature = %cp.signature, "audit checkpoint");
        }
        None => {
            tracing::info!(seq = cp.seq, hash = %cp.hash, signature = %cp.signature, "audit checkpoint");
        }
    }
    Ok(Some(cp.seq))
}

/// Appends one checkpoint as a JSON line and syncs it to disk, creating the file (and its
/// directory, 0700) when missing.
pub fn append_checkpoint(
    path: &std::path::Path,
    cp: &crate::audit::Checkpoint,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // One write of the whole line: appends from two processes never interleave.
    f.write_all(format!("{}\n", cp.to_json_line()).as_bytes())?;
    f.sync_data()
}

/// What [`verify_audit_anchored`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Events in the chain.
    pub events: u64,
    /// Checkpoints stored in the database.
    pub checkpoints: u64,
    /// Checkpoints read from the checkpoint file.
    pub file_checkpoints: u64,
}

/// How a verification pass stops early.
enum Stop {
    Broken(crate::audit::Broken),
    Store(store::Error),
    Io(std::io::Error),
}

impl From<store::Error> for Stop {
    fn from(e: store::Error) -> Self {
        Stop::Store(e)
    }
}

/// Verifies the audit chain's links and that each checkpoint stored in the database names
/// an event with the hash it signed; the number of events and checkpoints, or the first
/// bad event. It does not check who signed the checkpoints, nor whether they cover the
/// chain: that needs the CA key files, see [`verify_audit_anchored`].
pub fn verify_audit(store: &Store) -> Result<Result<(u64, usize), crate::audit::Broken>> {
    match verify_pass(store, None, None::<std::io::Empty>) {
        Ok(v) => Ok(Ok((
            v.events,
            usize::try_from(v.checkpoints).unwrap_or(usize::MAX),
        ))),
        Err(Stop::Broken(b)) => Ok(Err(b)),
        Err(Stop::Store(e)) => Err(e.into()),
        Err(Stop::Io(e)) => Err(store::Error::Corrupt(e.to_string()).into()),
    }
}

/// Verifies the audit chain against what lies outside the database: every checkpoint, in
/// the database and in `checkpoint_file` (JSON lines as the server appends them), must be
/// signed by a CA key held as a file (`keys`) and name an event with the hash it signed;
/// a non-empty chain needs a checkpoint, and the events after the newest may span at most
/// `audit::MAX_UNSIGNED_SPAN_SECS`. Reads the chain from a cursor, in constant memory.
pub fn verify_audit_anchored(
    store: &Store,
    keys: &[PublicKey],
    checkpoint_file: Option<impl std::io::BufRead>,
) -> anyhow::Result<Result<Verified, crate::audit::Broken>> {
    match verify_pass(store, Some(keys), checkpoint_file) {
        Ok(v) => Ok(Ok(v)),
        Err(Stop::Broken(b)) => Ok(Err(b)),
        Err(Stop::Store(e)) => Err(e.into()),
        Err(Stop::Io(e)) => Err(anyhow::Error::new(e).context("reading the checkpoint file")),
    }
}

/// One pass over the chain, then the checkpoints. With `keys`, signatures and coverage
/// are checked too.
fn verify_pass(
    store: &Store,
    keys: Option<&[PublicKey]>,
    checkpoint_file: Option<impl std::io::BufRead>,
) -> std::result::Result<Verified, Stop> {
    use crate::audit::{Broken, Chain, Checkpoint, check_checkpoint, check_coverage};
    store.read(|tx| {
        let mut chain = Chain::new();
        tx.for_each_audit_row(0, |row| chain.push(&row).map_err(Stop::Broken))?;
        let n = chain.len();
        let mut newest: Option<u64> = None;
        let mut check = |cp: &Checkpoint, source: &str| -> std::result::Result<(), Stop> {
            let signed = keys.is_none_or(|keys| {
                let msg = Checkpoint::message(cp.seq, &cp.hash);
                keys.iter()
                    .any(|k| signer::checkpoint_signature_ok(k, &msg, &cp.signature))
            });
            let hash = if cp.seq >= 1 && cp.seq <= n {
                tx.audit_row(cp.seq)?.map(|r| r.hash)
            } else {
                None
            };
            check_checkpoint(cp, n, hash.as_deref(), signed, source).map_err(Stop::Broken)?;
            newest = newest.max(Some(cp.seq));
            Ok(())
        };
        let mut stored = 0;
        tx.for_each_checkpoint(|cp| {
            stored += 1;
            check(&cp, "database")
        })?;
        let mut in_file = 0;
        if let Some(file) = checkpoint_file {
            for (i, line) in file.lines().enumerate() {
                let line = line.map_err(Stop::Io)?;
                if line.trim().is_empty() {
                    continue;
                }
                let cp = Checkpoint::from_json_line(&line).ok_or_else(|| {
                    Stop::Broken(Broken {
                        seq: 0,
                        reason: format!("checkpoint file line {} is not a checkpoint", i + 1),
                    })
                })?;
                in_file += 1;
                check(&cp, &format!("checkpoint file line {}", i + 1))?;
            }
        }
        if keys.is_some() {
            let first_unsigned_at = match newest {
                Some(s) if s < n => tx.audit_row(s + 1)?.map(|r| r.event.at),
                _ => None,
            };
            check_coverage(n, newest, first_unsigned_at, chain.last_at()).map_err(Stop::Broken)?;
        }
        Ok(Verified {
            events: n,
            checkpoints: stored,
            file_checkpoints: in_file,
        })
    })
}
