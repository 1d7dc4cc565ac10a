//! SQL of certificate requests and their reviews, and the listing queries over them.
//! Typed reads and writes; decides nothing.

use super::sql::{Dialect, Value, params};

use super::{Error, Result, Tx, json_list, parse_list, to_i64, to_u64};
use crate::approvals::{Request, Review, State, Verdict};

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only pending ones.
    pub pending_only: bool,
    /// Only break-glass requests not reviewed yet.
    pub unreviewed_only: bool,
    /// Only this requester's.
    pub requester: Option<String>,
    /// Only requests this caller may see: their own, or of these roles (None = all).
    pub visible_to: Option<(String, Vec<String>)>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// The listing filter on all requests: newest first, read backwards from
/// `requests_by_created` until the page is full.
const LIST_ALL: &str =
    "WHERE (?1 = 0 OR state = 'pending') AND (CAST(?2 AS TEXT) IS NULL OR requester = ?2)
       AND (?3 = 0 OR (break_glass = 1 AND glass_reviewed_at IS NULL))
       AND (CAST(?4 AS TEXT) IS NULL OR requester = ?4 OR role IN (SELECT value FROM json_each(?5)))
     ORDER BY created_at DESC, id DESC
     LIMIT ?6";

/// The same for pending requests only: read just those from their partial index (left
/// to itself, SQLite would rather walk every request newest first than sort a few).
const LIST_PENDING: &str = "INDEXED BY requests_pending WHERE state = 'pending' AND ?1 = 1 AND (CAST(?2 AS TEXT) IS NULL OR requester = ?2)
       AND (?3 = 0 OR (break_glass = 1 AND glass_reviewed_at IS NULL))
       AND (CAST(?4 AS TEXT) IS NULL OR requester = ?4 OR role IN (SELECT value FROM json_each(?5)))
     ORDER BY created_at DESC, id DESC
     LIMIT ?6";

impl Tx<'_> {
    /// Stores a new request, at its `version`, with the reviews it already has.
    pub fn insert_request(&self, r: &Request) -> Result<()> {
        self.exec(
            "INSERT INTO requests (id, requester, role, principals, ttl_secs, reason, public_key,
                 fingerprint, state, created_at, expires_at, decided_at, approvals_required,
                 break_glass, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                r.id,
                r.requester,
                r.role,
                json_list(&r.principals),
                to_i64(r.ttl_secs),
                r.reason,
                r.public_key,
                r.fingerprint,
                r.state.as_str(),
                to_i64(r.created_at),
                to_i64(r.expires_at),
                r.decided_at.map(to_i64),
                r.approvals_required,
                i64::from(r.break_glass),
                to_i64(r.version),
            ],
        )?;
        for (position, review) in r.reviews.iter().enumerate() {
            self.append_review(&r.id, position, review)?;
        }
        Ok(())
    }

    /// Writes a request's state, ttl and break-glass review over the version it was read at
    /// (`r.version`), and moves `r.version` to the stored one. A request some other writer
    /// saved since is refused with [`Error::Conflict`] and nothing is written. Reviews are
    /// not written here: add them with [`Tx::append_review`].
    pub fn save_request(&self, r: &mut Request) -> Result<()> {
        let saved = self.exec(
            "UPDATE requests SET state = ?2, ttl_secs = ?3, decided_at = ?4,
                     glass_reviewer = ?5, glass_comment = ?6, glass_reviewed_at = ?7,
                     version = version + 1
                 WHERE id = ?1 AND version = ?8",
            params![
                r.id,
                r.state.as_str(),
                to_i64(r.ttl_secs),
                r.decided_at.map(to_i64),
                r.break_glass_review.as_ref().map(|g| g.approver.clone()),
                r.break_glass_review.as_ref().map(|g| g.comment.clone()),
                r.break_glass_review.as_ref().map(|g| to_i64(g.at)),
                to_i64(r.version),
            ],
        )?;
        if saved == 0 {
            return Err(Error::Conflict(format!("request {}", r.id)));
        }
        r.version += 1;
        self.announce(&r.id)?;
        Ok(())
    }

    /// Adds one review of a request at `position` (its index among the request's reviews,
    /// oldest first); the reviews before it are left as they are. A review already stored
    /// at that position (another writer got there first) is [`Error::Conflict`].
    pub fn append_review(&self, request_id: &str, position: usize, rev: &Review) -> Result<()> {
        let inserted = self.exec(
            "INSERT INTO reviews (request_id, position, approver, verdict, ttl_secs, comment, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            params![
                request_id,
                i64::try_from(position).unwrap_or(i64::MAX),
                rev.approver,
                rev.verdict.as_str(),
                rev.ttl_secs.map(to_i64),
                rev.comment,
                to_i64(rev.at)
            ],
        )?;
        if inserted == 0 {
            return Err(Error::Conflict(format!(
                "review {position} of request {request_id}"
            )));
        }
        self.announce(request_id)
    }

    /// Tells the other replicas, when this transaction commits, that request `id`
    /// changed (PostgreSQL `NOTIFY`; see [`Store::listen_for_decisions`]). Nothing to do
    /// on SQLite: one server makes every change itself.
    ///
    /// [`Store::listen_for_decisions`]: super::Store::listen_for_decisions
    fn announce(&self, id: &str) -> Result<()> {
        if self.dialect() == Dialect::Postgres {
            self.one(
                "SELECT CAST(pg_notify(?1, ?2) AS TEXT)",
                params![super::postgres::DECISIONS, id],
                |_| Ok(()),
            )?;
        }
        Ok(())
    }

    /// A request with its reviews.
    pub fn request(&self, id: &str) -> Result<Option<Request>> {
        let mut found = self.query_requests("WHERE id = ?1", params![id])?;
        Ok(found.pop())
    }

    /// Requests matching the filter, newest first.
    pub fn requests(&self, f: &RequestFilter) -> Result<Vec<Request>> {
        let (viewer, roles) = match &f.visible_to {
            Some((user, roles)) => (Some(user.as_str()), Some(json_list(roles))),
            None => (None, None),
        };
        // Filtered and limited in SQL, so a long history is never loaded to list a page.
        let clause = if f.pending_only {
            LIST_PENDING
        } else {
            LIST_ALL
        };
        self.query_requests(
            clause,
            params![
                i64::from(f.pending_only),
                f.requester,
                i64::from(f.unreviewed_only),
                viewer,
                roles,
                i64::from(f.limit),
            ],
        )
    }

    /// Pending requests whose time is up at `now`.
    pub fn expired_pending(&self, now: u64) -> Result<Vec<Request>> {
        self.query_requests(
            "WHERE state = 'pending' AND expires_at <= ?1",
            params![to_i64(now)],
        )
    }

    /// How many requests are pending overall.
    pub fn pending_total(&self) -> Result<u64> {
        let n: i64 = self.one(
            "SELECT COUNT(*) FROM requests WHERE state = 'pending'",
            params![],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    /// How many requests of `requester` are pending.
    pub fn pending_count(&self, requester: &str) -> Result<u64> {
        let n: i64 = self.one(
            "SELECT COUNT(*) FROM requests WHERE requester = ?1 AND state = 'pending'",
            params![requester],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    fn query_requests(&self, clause: &str, args: &[Value<'_>]) -> Result<Vec<Request>> {
        let sql = format!(
            "SELECT id, requester, role, principals, ttl_secs, reason, public_key, fingerprint,
                    state, created_at, expires_at, decided_at, approvals_required,
                    break_glass, glass_reviewer, glass_comment, glass_reviewed_at, version
             FROM requests {clause}"
        );
        let rows = self.all(&sql, args, |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<i64>(4)?,
                r.get::<String>(5)?,
                r.get::<String>(6)?,
                r.get::<String>(7)?,
                r.get::<String>(8)?,
                r.get::<i64>(9)?,
                r.get::<i64>(10)?,
                r.get::<Option<i64>>(11)?,
                r.get::<u32>(12)?,
                (
                    r.get::<i64>(13)?,
                    r.get::<Option<String>>(14)?,
                    r.get::<Option<String>>(15)?,
                    r.get::<Option<i64>>(16)?,
                    r.get::<i64>(17)?,
                ),
            ))
        })?;
        rows.into_iter()
            .map(|row| {
                let state = State::parse(&row.8)
                    .ok_or_else(|| Error::Corrupt(format!("request state {:?}", row.8)))?;
                Ok(Request {
                    reviews: self.reviews(&row.0)?,
                    id: row.0,
                    requester: row.1,
                    role: row.2,
                    principals: parse_list(&row.3)?,
                    ttl_secs: to_u64(row.4),
                    reason: row.5,
                    public_key: row.6,
                    fingerprint: row.7,
                    state,
                    created_at: to_u64(row.9),
                    expires_at: to_u64(row.10),
                    decided_at: row.11.map(to_u64),
                    approvals_required: row.12,
                    break_glass: row.13.0 != 0,
                    break_glass_review: match (row.13.1, row.13.3) {
                        (Some(approver), Some(at)) => Some(Review {
                            approver,
                            verdict: Verdict::Approve,
                            ttl_secs: None,
                            comment: row.13.2.unwrap_or_default(),
                            at: to_u64(at),
                        }),
                        _ => None,
                    },
                    version: to_u64(row.13.4),
                })
            })
            .collect()
    }

    fn reviews(&self, request_id: &str) -> Result<Vec<Review>> {
        let rows = self.all(
            "SELECT approver, verdict, ttl_secs, comment, at FROM reviews
             WHERE request_id = ?1 ORDER BY position",
            params![request_id],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Option<i64>>(2)?,
                    r.get::<String>(3)?,
                    r.get::<i64>(4)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(approver, verdict, ttl, comment, at)| {
                Ok(Review {
                    verdict: Verdict::parse(&verdict)
                        .ok_or_else(|| Error::Corrupt(format!("verdict {verdict:?}")))?,
                    approver,
                    ttl_secs: ttl.map(to_u64),
                    comment,
                    at: to_u64(at),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::{plan, req};

    #[test]
    fn lookups_read_indexes_never_the_whole_table() {
        let s = Store::open_in_memory().unwrap();
        let select = "SELECT id FROM requests ";
        for (what, sql, index) in [
            (
                "pending total",
                "SELECT COUNT(*) FROM requests WHERE state = 'pending'".to_owned(),
                "requests_pending",
            ),
            (
                "pending per requester",
                "SELECT COUNT(*) FROM requests WHERE requester = ?1 AND state = 'pending'"
                    .to_owned(),
                "requests_pending_by_requester",
            ),
            (
                "expired pending",
                format!("{select} WHERE state = 'pending' AND expires_at <= ?1"),
                "requests_pending",
            ),
            (
                "listing",
                format!("{select} {LIST_ALL}"),
                "requests_by_created",
            ),
            (
                "listing pending",
                format!("{select} {LIST_PENDING}"),
                "requests_pending",
            ),
        ] {
            let p = plan(&s, &sql);
            assert!(p.contains(index), "{what}: {p}");
            assert!(
                !p.split("; ").any(|step| step == "SCAN requests"),
                "{what} scans the table: {p}"
            );
        }
        // Revoking by user or by key reads only the live certificates.
        let certs = "SELECT serial FROM certificates WHERE";
        for (what, sql) in [
            (
                "live certificates of a user",
                format!("{certs} requester = ?1 AND valid_before > ?2 AND revoked_at IS NULL"),
            ),
            (
                "live certificates of a key",
                format!("{certs} fingerprint = ?1 AND valid_before > ?2 AND revoked_at IS NULL"),
            ),
        ] {
            let p = plan(&s, &sql);
            assert!(p.contains("certificates_live"), "{what}: {p}");
        }
        // Newest first straight from the index: no sort of the whole table.
        let p = plan(&s, &format!("{select} {LIST_ALL}"));
        assert!(!p.contains("TEMP B-TREE"), "listing sorts: {p}");
    }

    #[test]
    fn listing_filters_visibility_and_limit_in_sql() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| {
            for (i, (who, role)) in [
                ("alice", "db"),
                ("bob", "web"),
                ("carol", "db"),
                ("dave", "ops"),
            ]
            .iter()
            .enumerate()
            {
                let mut r = req(&format!("R{i}"), i as u64);
                r.requester = (*who).into();
                r.role = (*role).into();
                tx.insert_request(&r)?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let ids = |f: RequestFilter| -> Vec<String> {
            s.read(|tx| tx.requests(&f))
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        // bob sees his own and the db role's, newest first.
        let visible = RequestFilter {
            visible_to: Some(("bob".into(), vec!["db".into()])),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(ids(visible.clone()), ["R2", "R1", "R0"]);
        assert_eq!(
            ids(RequestFilter {
                limit: 2,
                ..visible
            }),
            ["R2", "R1"]
        );
        let nobody = RequestFilter {
            visible_to: Some(("eve".into(), vec![])),
            limit: 10,
            ..Default::default()
        };
        assert!(ids(nobody).is_empty());
    }

    #[test]
    fn request_roundtrip_with_reviews() {
        let s = Store::open_in_memory().unwrap();
        let mut r = req("A", 10);
        s.transact(|tx| tx.insert_request(&r)).unwrap();
        r.reviews.push(Review {
            approver: "bob".into(),
            verdict: Verdict::Deny,
            ttl_secs: None,
            comment: "no".into(),
            at: 11,
        });
        r.state = State::Denied;
        r.decided_at = Some(11);
        s.transact(|tx| {
            tx.append_review("A", 0, &r.reviews[0])?;
            tx.save_request(&mut r)
        })
        .unwrap();
        assert_eq!(r.version, 1);
        assert_eq!(s.read(|tx| tx.request("A")).unwrap().unwrap(), r);
    }

    fn review(approver: &str, at: u64) -> Review {
        Review {
            approver: approver.into(),
            verdict: Verdict::Approve,
            ttl_secs: None,
            comment: "ok".into(),
            at,
        }
    }

    #[test]
    fn finding_1_a_save_over_a_stale_version_is_refused_and_changes_nothing() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| tx.insert_request(&req("A", 10))).unwrap();
        let mut current = s.read(|tx| tx.request("A")).unwrap().unwrap();
        let mut stale = current.clone();
        stale.version = 0;
        current.state = State::Cancelled;
        current.decided_at = Some(11);
        s.transact(|tx| tx.save_request(&mut current)).unwrap();
        let before = s.read(|tx| tx.request("A")).unwrap().unwrap();
        assert_eq!(before.version, 1);

        stale.state = State::Denied;
        stale.decided_at = Some(12);
        stale.ttl_secs = 60;
        let err = s.transact(|tx| tx.save_request(&mut stale)).unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        assert_eq!(err.kind(), crate::store::ErrorKind::Conflict);
        assert_eq!(stale.version, 0, "a refused save leaves the version read");
        assert_eq!(s.read(|tx| tx.request("A")).unwrap().unwrap(), before);
    }

    #[test]
    fn finding_1_two_saves_from_the_same_read_the_second_is_a_conflict() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| tx.insert_request(&req("A", 10))).unwrap();
        let read = s.read(|tx| tx.request("A")).unwrap().unwrap();
        let (mut first, mut second) = (read.clone(), read);
        first.state = State::Cancelled;
        first.decided_at = Some(11);
        second.state = State::Denied;
        second.decided_at = Some(11);
        s.transact(|tx| tx.save_request(&mut first)).unwrap();
        let err = s.transact(|tx| tx.save_request(&mut second)).unwrap_err();
        assert_eq!(err.kind(), crate::store::ErrorKind::Conflict);
        let stored = s.read(|tx| tx.request("A")).unwrap().unwrap();
        assert_eq!(stored.state, State::Cancelled);
        assert_eq!(stored, first);
        // Inside one transaction as well.
        let read = s.read(|tx| tx.request("A")).unwrap().unwrap();
        let err = s
            .transact(|tx| {
                tx.save_request(&mut read.clone())?;
                tx.save_request(&mut read.clone())
            })
            .unwrap_err();
        assert_eq!(err.kind(), crate::store::ErrorKind::Conflict);
        assert_eq!(s.read(|tx| tx.request("A")).unwrap().unwrap(), first);
    }

    #[test]
    fn finding_2_a_review_row_stays_put_when_a_later_review_is_appended() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| {
            tx.insert_request(&req("A", 10))?;
            tx.append_review("A", 0, &review("bob", 11))
        })
        .unwrap();
        let rowid = |position: i64| -> i64 {
            s.read(|tx| {
                tx.one(
                    "SELECT rowid FROM reviews WHERE request_id = 'A' AND position = ?1",
                    params![position],
                    |r| r.get(0),
                )
            })
            .unwrap()
        };
        let first = rowid(0);
        // Another request's review takes the highest rowid, so a row deleted and inserted
        // again could not come back under its old one.
        s.transact(|tx| {
            tx.insert_request(&req("B", 10))?;
            tx.append_review("B", 0, &review("dave", 11))
        })
        .unwrap();
        s.transact(|tx| tx.append_review("A", 1, &review("carol", 12)))
            .unwrap();
        assert_eq!(
            rowid(0),
            first,
            "the first review was deleted and re-inserted"
        );
        assert_ne!(rowid(1), first);
        let reviews = s.read(|tx| tx.request("A")).unwrap().unwrap().reviews;
        assert_eq!(reviews, [review("bob", 11), review("carol", 12)]);
        // A second writer appending at a taken position is a conflict, not a second row.
        let err = s
            .transact(|tx| tx.append_review("A", 1, &review("dave", 13)))
            .unwrap_err();
        assert_eq!(err.kind(), crate::store::ErrorKind::Conflict);
        assert_eq!(rowid(0), first);
    }
}
