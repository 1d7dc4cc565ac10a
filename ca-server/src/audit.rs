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
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    for row in rows {
        if row.seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                reason: format!("event {expected_seq} is missing (found {} next)", row.seq),
            });
        }
        if row.prev_hash != prev {
            return Err(Broken {
                seq: row.seq,
                reason: "previous-hash link does not match the event before it".into(),
            });
        }
        let hash = row.event.chain_hash(&prev);
        if hash != row.hash {
            return Err(Broken {
                seq: row.seq,
                reason: "content does not match its hash (edited)".into(),
            });
        }
        prev = hash;
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
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
        if !signature_ok(cp) {
            return Err(Broken {
                seq: cp.seq,
                reason: "checkpoint signature does not verify with any CA key".into(),
            });
        }
        match usize::try_from(cp.seq)
            .ok()
            .and_then(|i| hashes.get(i.wrapping_sub(1)))
        {
            None => {
                return Err(Broken {
                    seq: n + 1,
                    reason: format!(
                        "events after {n} are missing: a signed checkpoint covers event {} (tail cut)",
                        cp.seq
                    ),
                });
            }
            Some(h) if *h != cp.hash => {
                return Err(Broken {
                    seq: cp.seq,
                    reason: "chain rewritten: the signed checkpoint hash differs".into(),
                });
            }
            Some(_) => {}
        }
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
}
