//! SQL of the audit trail: the hash chain (appended with its outbox row), signed
//! checkpoints of its head, and the listing and export reads. Decides nothing.

use super::outbox::NOTIFY_ACTIONS;
use super::sql::{Dialect, Row, Value, params};
use super::{Error, Result, Tx, to_i64, to_u64};
use crate::audit::{self, Event};

/// Which audit events to list ([`Tx::audit_page`]).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Events at or after this time (Unix seconds).
    pub since: u64,
    /// Events by this user, about their requests, or naming them in `details.user`.
    pub user: Option<String>,
    /// Events of this request.
    pub request_id: Option<String>,
    /// The newest this many.
    pub limit: u32,
}

/// The user expression `audit_by_user` indexes, per backend; queries must spell it
/// exactly so.
fn audit_user(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "(CASE WHEN json_valid(details) THEN details ->> '$.user' END)",
        Dialect::Postgres => "(details::jsonb ->> 'user')",
    }
}

/// The columns of an audit row, in the order [`audit_row_from`] reads them.
const AUDIT_COLUMNS: &str = "seq, at, actor, action, request_id, details, prev_hash, hash";

/// The seq of the first event at or after time `?1`, from `audit_by_at`; past the end when
/// there is none. Reads start there instead of filtering the whole trail by time: event
/// times grow with seq (each is stamped from the clock as it commits), so only events
/// written right after the clock was stepped back could be missed.
const AUDIT_START: &str = "COALESCE((SELECT seq FROM audit WHERE at >= ?1 ORDER BY at, seq LIMIT 1), 9223372036854775807)";

impl Tx<'_> {
    /// Appends an event to the hash chain.
    pub fn append_audit(&self, event: &Event) -> Result<()> {
        self.append_audits(std::slice::from_ref(event))
    }

    /// Appends events to the hash chain in order, one statement per thousand: bulk loads
    /// (imports, the scale tests) pay one round trip per thousand events, not per event.
    pub fn append_audits(&self, events: &[Event]) -> Result<()> {
        const ROWS: usize = 1000;
        let (mut seq, mut prev) = self
            .audit_head()?
            .map_or((0, audit::GENESIS.to_owned()), |(s, h)| (to_i64(s), h));
        for chunk in events.chunks(ROWS) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                seq += 1;
                let hash = e.chain_hash(&prev);
                rows.push((
                    seq,
                    e,
                    e.details.to_string(),
                    std::mem::replace(&mut prev, hash.clone()),
                    hash,
                ));
            }
            let mut values = Vec::with_capacity(rows.len() * 8);
            let mut tuples = Vec::with_capacity(rows.len());
            for (i, (seq, e, details, prev, hash)) in rows.iter().enumerate() {
                let n = i * 8;
                tuples.push(format!(
                    "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6,
                    n + 7,
                    n + 8
                ));
                values.extend([
                    Value::Int(*seq),
                    Value::Int(to_i64(e.at)),
                    Value::Text(&e.actor),
                    Value::Text(&e.action),
                    e.request_id.as_deref().map_or(Value::Null, Value::Text),
                    Value::Text(details),
                    Value::Text(prev),
                    Value::Text(hash),
                ]);
            }
            self.exec(
                &format!(
                    "INSERT INTO audit (seq, at, actor, action, request_id, details, prev_hash, hash)
                     VALUES {}",
                    tuples.join(", ")
                ),
                &values,
            )?;
            if self.outbox {
                for (seq, e, ..) in &rows {
                    if NOTIFY_ACTIONS.contains(&e.action.as_str()) {
                        self.exec(
                            "INSERT INTO outbox (audit_seq, action, request_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                            params![*seq, e.action, e.request_id, to_i64(e.at)],
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The last audit event's sequence number and hash.
    pub fn audit_head(&self) -> Result<Option<(u64, String)>> {
        self.opt(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            params![],
            |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
        )
    }

    /// The details of the newest event of `action`, if any.
    pub fn latest_audit_details(&self, action: &str) -> Result<Option<serde_json::Value>> {
        self.opt(
            "SELECT details FROM audit WHERE action = ?1 ORDER BY seq DESC LIMIT 1",
            params![action],
            |r| {
                let text: String = r.get(0)?;
                serde_json::from_str(&text)
                    .map_err(|e| Error::Corrupt(format!("audit details: {e}")))
            },
        )
    }

    /// Stores a signed checkpoint of the audit chain's head.
    pub fn insert_checkpoint(&self, c: &audit::Checkpoint) -> Result<()> {
        self.exec(
            "INSERT INTO audit_checkpoints (seq, hash, ca_fingerprint, signature, at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash,
                 ca_fingerprint = excluded.ca_fingerprint, signature = excluded.signature,
                 at = excluded.at",
            params![
                to_i64(c.seq),
                c.hash,
                c.ca_fingerprint,
                c.signature,
                to_i64(c.at)
            ],
        )?;
        Ok(())
    }

    /// One audit row by sequence number.
    pub fn audit_row(&self, seq: u64) -> Result<Option<audit::Row>> {
        Ok(self
            .query_audit("WHERE seq = ?1", params![to_i64(seq)])?
            .pop())
    }

    /// Every audit row, in order.
    pub fn audit_rows(&self) -> Result<Vec<audit::Row>> {
        self.query_audit("ORDER BY seq", params![])
    }

    /// Audit rows at or after `since`, in order.
    pub fn audit_rows_since(&self, since: u64) -> Result<Vec<audit::Row>> {
        self.query_audit("WHERE at >= ?1 ORDER BY seq", params![to_i64(since)])
    }

    /// Calls `f` with every audit row at or after `since`, in order, one at a time from a
    /// cursor: memory stays flat however long the trail. Stops at `f`'s first error.
    pub fn for_each_audit_row<E: From<Error>>(
        &self,
        since: u64,
        mut f: impl FnMut(audit::Row) -> Result<(), E>,
    ) -> Result<(), E> {
        // Everything: by seq alone, so an event whose time is out of order is still read.
        let sql = if since == 0 {
            format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE ?1 = 0 ORDER BY seq")
        } else {
            format!(
                "SELECT {AUDIT_COLUMNS} FROM audit
                 WHERE seq >= {AUDIT_START} AND at >= ?1 ORDER BY seq"
            )
        };
        self.each(&sql, params![to_i64(since)], |r| f(audit_row_from(r)?))
    }

    /// Calls `f` with every stored checkpoint, by sequence number. They are read first
    /// (a few hundred bytes each, one per checkpoint interval), so `f` may read the store.
    pub fn for_each_checkpoint<E: From<Error>>(
        &self,
        mut f: impl FnMut(audit::Checkpoint) -> Result<(), E>,
    ) -> Result<(), E> {
        let all = self.all(
            "SELECT seq, hash, ca_fingerprint, signature, at FROM audit_checkpoints ORDER BY seq",
            params![],
            |r| {
                Ok(audit::Checkpoint {
                    seq: to_u64(r.get(0)?),
                    hash: r.get(1)?,
                    ca_fingerprint: r.get(2)?,
                    signature: r.get(3)?,
                    at: to_u64(r.get(4)?),
                })
            },
        )?;
        all.into_iter().try_for_each(&mut f)
    }

    /// When the newest checkpoint was signed.
    pub fn last_checkpoint_at(&self) -> Result<Option<u64>> {
        Ok(self
            .opt(
                "SELECT at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
                params![],
                |r| r.get::<i64>(0),
            )?
            .map(to_u64))
    }

    /// The newest checkpoint's sequence number.
    pub fn last_checkpoint_seq(&self) -> Result<Option<u64>> {
        Ok(self
            .one("SELECT max(seq) FROM audit_checkpoints", params![], |r| {
                r.get::<Option<i64>>(0)
            })?
            .map(to_u64))
    }

    /// The newest `limit` events matching `f`, oldest first. Filtered and limited in SQL on
    /// the audit indexes: the work is bounded by the matching events, not the trail.
    pub fn audit_page(&self, f: &AuditFilter) -> Result<Vec<audit::Row>> {
        let sql = audit_page_sql(f, self.dialect());
        let mut rows = self.all(
            &sql,
            params![to_i64(f.since), f.user, f.request_id, f.limit],
            audit_row_from,
        )?;
        rows.reverse();
        Ok(rows)
    }

    fn query_audit(&self, clause: &str, args: &[Value<'_>]) -> Result<Vec<audit::Row>> {
        let rows = self.all(
            &format!(
                "SELECT seq, at, actor, action, request_id, details, prev_hash, hash
             FROM audit {clause}"
            ),
            args,
            |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<i64>(1)?,
                    r.get::<String>(2)?,
                    r.get::<String>(3)?,
                    r.get::<Option<String>>(4)?,
                    r.get::<String>(5)?,
                    r.get::<String>(6)?,
                    r.get::<String>(7)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|r| {
                Ok(audit::Row {
                    seq: to_u64(r.0),
                    event: Event {
                        at: to_u64(r.1),
                        actor: r.2,
                        action: r.3,
                        request_id: r.4,
                        // A row whose details are not JSON was tampered with: keep the raw
                        // text so `audit::verify` reports that very event as edited.
                        details: serde_json::from_str(&r.5)
                            .unwrap_or(serde_json::Value::String(r.5)),
                    },
                    prev_hash: r.6,
                    hash: r.7,
                })
            })
            .collect()
    }
}

/// The query of [`Tx::audit_page`]: `?1` since, `?2` user, `?3` request, `?4` limit.
fn audit_page_sql(f: &AuditFilter, dialect: Dialect) -> String {
    let mut clauses = vec![format!("seq >= {AUDIT_START}"), "at >= ?1".to_owned()];
    if f.request_id.is_some() {
        clauses.push("request_id = ?3".into());
    } else if dialect == Dialect::Postgres {
        // PostgreSQL wants a type for every parameter bound, used or not.
        clauses.push("CAST(?3 AS TEXT) IS NULL".into());
    }
    if f.user.is_some() {
        // A user's requests are those whose `request.created` event they are the actor
        // of: found on `audit_by_actor`, without reading the requests table.
        clauses.push(format!(
            "(actor = ?2
              OR request_id IN (SELECT request_id FROM audit
                                WHERE actor = ?2 AND action = 'request.created')
              OR {} = ?2)",
            audit_user(dialect)
        ));
    } else if dialect == Dialect::Postgres {
        clauses.push("CAST(?2 AS TEXT) IS NULL".into());
    }
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE {} ORDER BY seq DESC LIMIT ?4",
        clauses.join(" AND ")
    )
}

/// An audit row from a cursor over [`AUDIT_COLUMNS`].
fn audit_row_from(r: &Row<'_>) -> Result<audit::Row> {
    let details: String = r.get(5)?;
    Ok(audit::Row {
        seq: to_u64(r.get(0)?),
        event: Event {
            at: to_u64(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            request_id: r.get(4)?,
            // Not JSON: tampered with; kept raw so `audit::verify` names this event.
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        },
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::plan;

    #[test]
    fn audit_chain_in_store_verifies_and_detects_edits() {
        let s = Store::open_in_memory().unwrap();
        for i in 0..4 {
            s.transact(|tx| {
                tx.append_audit(&Event::new(
                    i,
                    "a",
                    "x.y",
                    None,
                    serde_json::json!({"i": i}),
                ))
            })
            .unwrap();
        }
        assert_eq!(
            audit::verify(s.read(|tx| tx.audit_rows()).unwrap()).unwrap(),
            4
        );
        s.raw_execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
            .unwrap();
        let err = audit::verify(s.read(|tx| tx.audit_rows()).unwrap()).unwrap_err();
        assert_eq!(err.seq, 2);
    }

    /// SQLite's plan for the query [`Tx::audit_page`] runs for `f`.
    fn audit_page_plan(s: &Store, f: &AuditFilter) -> String {
        plan(s, &audit_page_sql(f, Dialect::Sqlite))
    }

    #[test]
    fn finding_11_audit_listing_filters_and_limits_in_sql_on_indexes() {
        let s = Store::open_in_memory().unwrap();
        // 3,000 events: alice's requests (created by her, approved by bob), user events
        // naming carol, and noise by a bot.
        s.transact(|tx| {
            for i in 0..1000u64 {
                let id = format!("R{i:04}");
                let (who, action) = if i % 10 == 0 {
                    ("alice", "request.created")
                } else {
                    ("bot", "request.created")
                };
                tx.append_audit(&Event::new(
                    i,
                    who,
                    action,
                    Some(&id),
                    serde_json::json!({}),
                ))?;
                tx.append_audit(&Event::new(
                    i,
                    "bob",
                    "request.approved",
                    Some(&id),
                    serde_json::json!({}),
                ))?;
                let user = if i % 100 == 0 { "carol" } else { "dan" };
                tx.append_audit(&Event::new(
                    i,
                    "operator",
                    "user.token_issued",
                    None,
                    serde_json::json!({ "user": user }),
                ))?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let page = |f: AuditFilter| s.read(|tx| tx.audit_page(&f)).unwrap();

        // The attack: "the newest 5 events" used to load all 3,000 and keep 5.
        let newest = page(AuditFilter {
            limit: 5,
            ..Default::default()
        });
        assert_eq!(
            newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [2996, 2997, 2998, 2999, 3000]
        );
        let since = page(AuditFilter {
            since: 998,
            limit: 100,
            ..Default::default()
        });
        assert_eq!(since.len(), 6);
        assert!(since.iter().all(|r| r.event.at >= 998));
        let alice = page(AuditFilter {
            user: Some("alice".into()),
            limit: 1000,
            ..Default::default()
        });
        // Her 100 requests and their 100 approvals.
        assert_eq!(alice.len(), 200);
        assert!(alice.windows(2).all(|w| w[0].seq < w[1].seq));
        let alice_recent = page(AuditFilter {
            user: Some("alice".into()),
            since: 900,
            limit: 3,
            ..Default::default()
        });
        assert_eq!(alice_recent.len(), 3);
        assert_eq!(alice_recent[2].event.request_id.as_deref(), Some("R0990"));
        let carol = page(AuditFilter {
            user: Some("carol".into()),
            limit: 1000,
            ..Default::default()
        });
        assert_eq!(carol.len(), 10);
        let one = page(AuditFilter {
            request_id: Some("R0500".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(one.len(), 2);
        assert!(
            page(AuditFilter {
                since: 5000,
                limit: 10,
                ..Default::default()
            })
            .is_empty()
        );

        // Each shape reads an index, never the whole table, and needs no sort of it.
        for (what, f, index) in [
            ("newest", AuditFilter::default(), "INTEGER PRIMARY KEY"),
            (
                "request",
                AuditFilter {
                    request_id: Some("R".into()),
                    ..Default::default()
                },
                "audit_by_request",
            ),
            (
                "user",
                AuditFilter {
                    user: Some("u".into()),
                    ..Default::default()
                },
                "audit_by_actor",
            ),
        ] {
            let p = audit_page_plan(&s, &f);
            assert!(p.contains(index), "{what}: {p}");
            assert!(
                p.contains("audit_by_at"),
                "{what}: since is not a seek: {p}"
            );
            assert!(
                !p.split("; ").any(|step| step == "SCAN audit"),
                "{what} scans the table: {p}"
            );
        }
        let p = audit_page_plan(
            &s,
            &AuditFilter {
                user: Some("u".into()),
                ..Default::default()
            },
        );
        assert!(p.contains("audit_by_user"), "user: {p}");
        assert!(
            !audit_page_plan(&s, &AuditFilter::default()).contains("TEMP B-TREE"),
            "the newest events come straight from the key, unsorted"
        );
    }
}
