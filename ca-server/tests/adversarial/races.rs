//! DESIGN rule 7: one approval, one certificate, whatever the interleaving.

use super::*;

const ROUNDS: usize = 20;

/// The state a request ended in, checked for "a certificate exists iff issued".
async fn settled(h: &Harness, id: &str) -> i32 {
    let r = h.get("alice", id, true).await;
    let (events, row) = h.issuance_of(id);
    let issued = r.state == pb::State::Issued as i32;
    assert_eq!(
        r.certificate.is_some(),
        issued,
        "{id}: certificate iff issued"
    );
    assert_eq!(row, issued, "{id}: certificate row iff issued");
    assert_eq!(events, usize::from(issued), "{id}: issuance events");
    assert_eq!(r.serial != 0, issued, "{id}: serial iff issued");
    r.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_double_approval_issues_once() {
    let h = start().await;
    for round in 0..ROUNDS {
        let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
        let (a, b) = tokio::join!(
            h.approve("bob", &created.id),
            h.approve("carol", &created.id)
        );
        let ok: Vec<_> = [&a, &b].into_iter().filter(|r| r.is_ok()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert_eq!(loser.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(settled(&h, &created.id).await, pb::State::Issued as i32);
    }
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_versus_deny_has_exactly_one_outcome() {
    let h = start().await;
    let mut outcomes = BTreeMap::new();
    for round in 0..ROUNDS {
        let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
        let (a, d) = tokio::join!(h.approve("bob", &created.id), h.deny("carol", &created.id));
        assert!(a.is_ok() != d.is_ok(), "round {round}: {a:?} {d:?}");
        let state = settled(&h, &created.id).await;
        let winner = a.as_ref().or(d.as_ref()).unwrap();
        assert_eq!(winner.state, state, "round {round}");
        let expected = if a.is_ok() {
            pb::State::Issued
        } else {
            pb::State::Denied
        };
        assert_eq!(state, expected as i32, "round {round}");
        *outcomes.entry(state).or_insert(0) += 1;
    }
    assert_eq!(outcomes.values().sum::<i32>(), ROUNDS as i32);
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_versus_cancel_has_exactly_one_outcome() {
    let h = start().await;
    for round in 0..ROUNDS {
        let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
        let (a, c) = tokio::join!(
            h.approve("bob", &created.id),
            h.cancel("alice", &created.id)
        );
        assert!(a.is_ok() != c.is_ok(), "round {round}: {a:?} {c:?}");
        let state = settled(&h, &created.id).await;
        let expected = if a.is_ok() {
            pb::State::Issued
        } else {
            pb::State::Cancelled
        };
        assert_eq!(state, expected as i32, "round {round}");
    }
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_approver_racing_with_itself_counts_once() {
    let h = start().await;
    for round in 0..ROUNDS {
        let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
        let (a, b) = tokio::join!(h.approve("bob", &created.id), h.approve("bob", &created.id));
        assert!(a.is_ok() != b.is_ok(), "round {round}: {a:?} {b:?}");
        assert_eq!(settled(&h, &created.id).await, pb::State::Pending as i32);
        let r = h.get("alice", &created.id, false).await;
        assert_eq!(r.reviews.len(), 1, "round {round}");
        h.cancel("alice", &created.id).await.unwrap();
    }
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_approvals_racing_on_a_two_approval_role_issue_once() {
    let h = start().await;
    for round in 0..ROUNDS {
        let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
        h.approve("bob", &created.id).await.unwrap();
        let (c, d) = tokio::join!(
            h.approve("carol", &created.id),
            h.approve("dave", &created.id)
        );
        assert!(c.is_ok() != d.is_ok(), "round {round}: {c:?} {d:?}");
        assert_eq!(settled(&h, &created.id).await, pb::State::Issued as i32);
    }
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_creations_racing_past_the_pending_cap_leave_exactly_the_cap_pending() {
    let h = start().await;
    let cap = authority::MAX_PENDING_PER_REQUESTER;
    // Three times the cap, three rounds: the refusals stay under the per-caller limit on
    // refused calls (60 a minute), so each one is the pending cap speaking.
    let tasks = 3 * cap as usize;
    let stored_pending = || {
        h.store
            .read(|tx| tx.pending_count("alice"))
            .expect("pending count")
    };
    for round in 0..3 {
        // Every creation starts together, each on its own task and connection.
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(tasks));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let mut client = h.client();
            let msg = h.req("alice", ask("db", &[], 600));
            let start = start.clone();
            handles.push(tokio::spawn(async move {
                start.wait().await;
                client
                    .create_access_request(msg)
                    .await
                    .map(|r| r.into_inner().id)
            }));
        }
        let mut created = Vec::new();
        for handle in handles {
            match handle.await.unwrap() {
                Ok(id) => created.push(id),
                Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "round {round}: {s:?}"),
            }
        }
        assert_eq!(
            created.len() as u64,
            cap,
            "round {round}: creations accepted"
        );
        assert_eq!(stored_pending(), cap, "round {round}: pending rows stored");
        for id in &created {
            h.cancel("alice", id).await.unwrap();
        }
        assert_eq!(stored_pending(), 0, "round {round}");
    }
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_a_later_review_is_appended_and_the_earlier_rows_stay_put() {
    let h = start().await;
    let db = rusqlite::Connection::open(h.data.config.database.sqlite_path().unwrap()).unwrap();
    // (rowid per position, the request row's version)
    let stored = |id: &str| -> (Vec<i64>, i64) {
        let mut stmt = db
            .prepare("SELECT rowid FROM reviews WHERE request_id = ?1 ORDER BY position")
            .unwrap();
        let rowids = stmt
            .query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<i64>, _>>()
            .unwrap();
        let version = db
            .query_row("SELECT version FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        (rowids, version)
    };
    let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
    assert_eq!(stored(&created.id), (vec![], 0));
    h.approve("bob", &created.id).await.unwrap();
    let (first, version) = stored(&created.id);
    assert_eq!((first.len(), version), (1, 1), "one review, one save");
    // Another request's review takes the highest rowid, so rows deleted and inserted again
    // could not come back under their old ones.
    let other = h.create("alice", ask("two", &[], 600)).await.unwrap();
    h.approve("dave", &other.id).await.unwrap();
    assert!(stored(&other.id).0[0] > first[0]);
    let issued = h.approve("carol", &created.id).await.unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
    let (after, version) = stored(&created.id);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], first[0], "the first review was rewritten");
    assert_eq!(version, 2, "each decision saves the request once");
    assert_eq!(h.get("alice", &created.id, false).await.reviews.len(), 2);
    h.audit_verifies();
}
