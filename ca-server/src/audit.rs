//! Audit events and their hash chain.
//!
//! Each event's hash is SHA-256 over the previous event's hash and the event's canonical
//! encoding, so editing, deleting or reordering a stored event breaks the chain at that
//! event. Pure: the store appends rows inside the transaction of the change they record,
//! and [`verify`] walks stored rows. Never put a token, JWT or private key in `details`.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    /// Who did it (a user name, or `moshca-server` for the server itself).
    pub actor: String,
    /// What, as `noun.verb` (`request.created`, `request.approved`, `certificate.issued`).
    pub action: String,
    /// The request concerned, when there is one.
    pub request_id: Option<String>,
    /// Further facts, a JSON object.
    pub details: serde_json::Value,
}

impl Event {
    /// A new event.
    pub fn new(
        at: u64,
        actor: &str,
        action: &str,
        request_id: Option<&str>,
        details: serde_json::Value,
    ) -> Self {
        Event {
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            request_id: request_id.map(str::to_owned),
            details,
        }
    }

    /// The canonical encoding hashed into the chain: JSON with a fixed field order.
    pub fn canonical(&self) -> Vec<u8> {
        // Serializing a struct with plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// This event's hash after `prev_hash`.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(b"\n");
        h.update(self.canonical());
        hex::encode(h.finalize())
    }
}

/// A stored event with its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Position, from 1, without gaps.
    pub seq: u64,
    /// The event.
    pub event: Event,
    /// The previous row's hash as stored.
    pub prev_hash: String,
    /// This row's hash as stored.
    pub hash: String,
}

/// The first row that does not fit the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at event {seq}: {reason}")]
pub struct Broken {
    /// Sequence number of the first bad row.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Walks rows in order and returns how many verified, or the first bad one.
pub fn verify(rows: impl IntoIterator<Item = Row>) -> Result<u64, Broken> {
    let mut chain = Chain::new();
    for row in rows {
        chain.push(&row)?;
    }
    Ok(chain.len())
}

/// [`verify`] one row at a time, so a chain of any length is checked in constant memory.
#[derive(Debug, Clone)]
pub struct Chain {
    prev: String,
    next_seq: u64,
    last_at: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// Before the first event.
    pub fn new() -> Self {
        Chain {
            prev: GENESIS.to_owned(),
            next_seq: 1,
            last_at: 0,
        }
    }

    /// Checks the next row; the first bad one is an error and the walk should stop there.
    pub fn push(&mut self, row: &Row) -> Result<(), Broken> {
        let expected_seq = self.next_seq;
        if row.seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                reason: format!("event {expected_seq} is missing (found {} next)", row.seq),
            });
        }
        if row.prev_hash != self.prev {
            return Err(Broken {
                seq: row.seq,
                reason: "previous-hash link does not match the event before it".into(),
            });
        }
        let hash = row.event.chain_hash(&self.prev);
        if hash != row.hash {
            return Err(Broken {
                seq: row.seq,
                reason: "content does not match its hash (edited)".into(),
            });
        }
        self.prev = hash;
        self.next_seq += 1;
        self.last_at = row.event.at;
        Ok(())
    }

    /// Events verified so far.
    pub fn len(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether no event was verified.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Time of the last event verified (0 before any).
    pub fn last_at(&self) -> u64 {
        self.last_at
    }
}

/// A signed statement of the chain's head at some point: cutting the tail below it, or
/// rewriting the chain up to it, is detected even though every remaining link is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sequence number of the head event.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// Fingerprint of the CA key that signed it.
    pub ca_fingerprint: String,
    /// Hex Ed25519 signature over [`Checkpoint::message`].
    pub signature: String,
    /// When it was made.
    pub at: u64,
}

impl Checkpoint {
    /// The bytes signed for a head.
    pub fn message(seq: u64, hash: &str) -> Vec<u8> {
        format!("moshca-audit-checkpoint\n{seq}\n{hash}\n").into_bytes()
    }
}

/// How often the server signs the chain's head while events arrive (and once at start and
/// at shutdown).
pub const CHECKPOINT_EVERY_SECS: u64 = 10;

/// Longest span of event time the unsigned tail may cover: six checkpoint intervals. The
/// running server signs every event within [`CHECKPOINT_EVERY_SECS`], so a longer unsigned
/// tail means checkpoint rows were deleted (or events were written while no server ran).
pub const MAX_UNSIGNED_SPAN_SECS: u64 = 6 * CHECKPOINT_EVERY_SECS;

impl Checkpoint {
    /// One line of the checkpoint file: a JSON object, no newline.
    pub fn to_json_line(&self) -> String {
        serde_json::json!({
            // A string, as every 64-bit number moshca writes in JSON.
            "seq": self.seq.to_string(),
            "hash": self.hash,
            "ca_fingerprint": self.ca_fingerprint,
            "signature": self.signature,
            "at": self.at,
        })
        .to_string()
    }

    /// Parses a line written by [`Checkpoint::to_json_line`].
    pub fn from_json_line(line: &str) -> Option<Checkpoint> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Checkpoint {
            seq: v.get("seq")?.as_str()?.parse().ok()?,
            hash: v.get("hash")?.as_str()?.to_owned(),
            ca_fingerprint: v.get("ca_fingerprint")?.as_str()?.to_owned(),
            signature: v.get("signature")?.as_str()?.to_owned(),
            at: v.get("at")?.as_u64()?,
        })
    }
}

/// Checks one checkpoint against a verified chain of `n` events: its signature
/// (`signature_ok`), and that the event at its seq exists with the signed hash
/// (`hash_at_seq`, `None` when there is no such event). `source` names where the
/// checkpoint came from in the report.
pub fn check_checkpoint(
    cp: &Checkpoint,
    n: u64,
    hash_at_seq: Option<&str>,
    signature_ok: bool,
    source: &str,
) -> Result<(), Broken> {
    if !signature_ok {
        return Err(Broken {
            seq: cp.seq,
            reason: format!(
                "checkpoint ({source}) signature does not verify with any CA key held as a file"
            ),
        });
    }
    match hash_at_seq {
        None => Err(Broken {
            seq: n + 1,
            reason: format!(
                "events after {n} are missing: a signed checkpoint ({source}) covers event {} (tail cut)",
                cp.seq
            ),
        }),
        Some(h) if h != cp.hash => Err(Broken {
            seq: cp.seq,
            reason: format!("chain rewritten: the signed checkpoint hash ({source}) differs"),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether signed checkpoints cover the chain well enough: a chain of `n` events needs one,
/// and the events after the newest (`signed`, with `first_unsigned_at` the time of the
/// event after it and `last_at` the last event's) may span at most
/// [`MAX_UNSIGNED_SPAN_SECS`].
pub fn check_coverage(
    n: u64,
    signed: Option<u64>,
    first_unsigned_at: Option<u64>,
    last_at: u64,
) -> Result<(), Broken> {
    if n == 0 {
        return Ok(());
    }
    let Some(signed) = signed else {
        return Err(Broken {
            seq: 1,
            reason: format!(
                "no signed checkpoint covers any of the {n} events (the server signs one at start, every {CHECKPOINT_EVERY_SECS} s and at shutdown): checkpoints were deleted"
            ),
        });
    };
    if signed >= n {
        return Ok(());
    }
    let first = first_unsigned_at.unwrap_or(last_at);
    let span = last_at.saturating_sub(first);
    if span > MAX_UNSIGNED_SPAN_SECS {
        return Err(Broken {
            seq: signed + 1,
            reason: format!(
                "events {}..{n} span {span} s without a signed checkpoint (at most {MAX_UNSIGNED_SPAN_SECS} s expected): checkpoints were deleted, or these events were written while no server ran (start the server and compare with the checkpoint file)",
                signed + 1
            ),
        });
    }
    Ok(())
}

/// [`verify`], then every checkpoint: its event must exist with the signed hash, and its
/// signature must verify (`signature_ok`). Reports the first problem.
pub fn verify_with_checkpoints(
    rows: Vec<Row>,
    checkpoints: &[Checkpoint],
    signature_ok: impl Fn(&Checkpoint) -> bool,
) -> Result<(u64, usize), Broken> {
    let hashes: Vec<String> = rows.iter().map(|r| r.hash.clone()).collect();
    let n = verify(rows)?;
    for cp in checkpoints {
        let hash = usize::try_from(cp.seq)
            .ok()
            .and_then(|i| hashes.get(i.wrapping_sub(1)));
        check_checkpoint(
            cp,
            n,
            hash.map(String::as_str),
            signature_ok(cp),
            "database",
        )?;
    }
    Ok((n, checkpoints.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Row> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let event = Event::new(
                    1_790_000_000 + seq,
                    "alice",
                    "request.created",
                    Some("01J"),
                    serde_json::json!({"n": seq}),
                );
                let hash = event.chain_hash(&prev);
                let row = Row {
                    seq,
                    event,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(chain(5)).unwrap(), 5);
        assert_eq!(verify(Vec::new()).unwrap(), 0);
    }

    #[test]
    fn edit_is_caught_at_the_edited_event() {
        let mut rows = chain(5);
        rows[2].event.actor = "mallory".into();
        assert_eq!(verify(rows).unwrap_err().seq, 3);
    }

    #[test]
    fn delete_is_caught() {
        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(verify(rows).unwrap_err().seq, 2);
    }

    #[test]
    fn reorder_is_caught() {
        let mut rows = chain(5);
        rows.swap(1, 2);
        let (a, b) = (rows[1].seq, rows[2].seq);
        rows[1].seq = b;
        rows[2].seq = a;
        assert_eq!(verify(rows).unwrap_err().seq, 2);
    }

    #[test]
    fn rehashing_one_row_breaks_the_next_link() {
        let mut rows = chain(4);
        rows[1].event.details = serde_json::json!({"n": 99});
        rows[1].hash = rows[1].event.chain_hash(&rows[1].prev_hash);
        assert_eq!(verify(rows).unwrap_err().seq, 3);
    }

    fn checkpoint(rows: &[Row], seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            hash: rows[seq as usize - 1].hash.clone(),
            ca_fingerprint: "SHA256:x".into(),
            signature: "good".into(),
            at: 0,
        }
    }

    #[test]
    fn cut_tail_below_a_checkpoint_is_caught() {
        let rows = chain(6);
        let cps = [checkpoint(&rows, 3), checkpoint(&rows, 6)];
        let ok = |c: &Checkpoint| c.signature == "good";
        assert_eq!(
            verify_with_checkpoints(rows.clone(), &cps, ok).unwrap(),
            (6, 2)
        );
        let mut cut = rows.clone();
        cut.truncate(4);
        let err = verify_with_checkpoints(cut, &cps, ok).unwrap_err();
        assert_eq!(err.seq, 5);
        assert!(err.reason.contains("tail cut"));
        let mut forged = cps.clone();
        forged[1].signature = "bad".into();
        assert!(verify_with_checkpoints(rows, &forged, ok).is_err());
    }

    #[test]
    fn coverage_needs_a_checkpoint_and_a_short_unsigned_tail() {
        assert!(check_coverage(0, None, None, 0).is_ok());
        // Every checkpoint row deleted.
        let none = check_coverage(5, None, None, 100).unwrap_err();
        assert_eq!(none.seq, 1);
        assert!(none.reason.contains("no signed checkpoint"), "{none}");
        assert!(check_coverage(5, Some(5), None, 100).is_ok());
        // Events after the newest checkpoint within a few intervals: a running server.
        assert!(check_coverage(5, Some(3), Some(100), 100 + MAX_UNSIGNED_SPAN_SECS).is_ok());
        // Longer: checkpoints after event 3 were deleted.
        let stale =
            check_coverage(5, Some(3), Some(100), 101 + MAX_UNSIGNED_SPAN_SECS).unwrap_err();
        assert_eq!(stale.seq, 4);
    }

    #[test]
    fn checkpoint_lines_round_trip() {
        let cp = Checkpoint {
            seq: 7,
            hash: "ab".into(),
            ca_fingerprint: "SHA256:x".into(),
            signature: "cd".into(),
            at: 9,
        };
        assert_eq!(Checkpoint::from_json_line(&cp.to_json_line()), Some(cp));
        assert_eq!(Checkpoint::from_json_line("{\"seq\": 1}"), None);
    }
}
