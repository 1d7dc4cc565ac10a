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
}
