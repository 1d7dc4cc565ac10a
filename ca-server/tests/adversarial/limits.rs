//! A requester cannot flood approvers: at most 5 pending requests each.

use super::*;

/// Polls the futures together (a `join_all` without the futures crate); their results
/// in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot
                && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *result = Some(v);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_cap_per_requester_holds() {
    let h = start().await;
    let cap = authority::MAX_PENDING_PER_REQUESTER;
    let mut ids = Vec::new();
    for _ in 0..cap {
        ids.push(h.create("alice", ask("db", &[], 600)).await.unwrap().id);
    }
    let before = h.snapshot().await;
    for role in ["db", "two", "locked", "glass"] {
        let what = format!("request {} on {role}", cap + 1);
        let msg = refused(
            h.create("alice", ask(role, &[], 600)).await,
            Code::ResourceExhausted,
            &what,
        );
        assert!(
            msg.contains(&format!("at most {cap} pending")),
            "{what}: {msg}"
        );
        h.unchanged(&before, &what).await;
    }
    let pending_alice = before
        .iter()
        .filter(|(_, s, ..)| *s == pb::State::Pending as i32)
        .count();
    assert_eq!(pending_alice as u64, cap);
    // A concurrent flood from another requester stops at the cap too.
    let flood = (0..3 * cap).map(|_| h.create("mallory", ask("db", &[], 600)));
    let results = join_all(flood).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok as u64, cap, "concurrent creates past the cap");
    for r in results.into_iter().filter_map(Result::err) {
        assert_eq!(r.code(), Code::ResourceExhausted, "{r:?}");
    }
    for r in h.snapshot().await {
        if r.1 == pb::State::Pending as i32 && !before.contains(&r) {
            h.cancel("mallory", &r.0).await.unwrap();
        }
    }
    // Others are not affected, and a decided request frees a slot.
    h.create("mallory", ask("db", &[], 600)).await.unwrap();
    h.cancel("alice", &ids[0]).await.unwrap();
    h.create("alice", ask("db", &[], 600)).await.unwrap();
    h.audit_verifies();
}
