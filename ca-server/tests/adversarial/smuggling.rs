//! DESIGN rule 5: critical options and extensions come from policy only.

use super::*;

fn role_options() -> BTreeMap<String, String> {
    [
        ("force-command", "/usr/local/bin/report"),
        ("source-address", "10.0.0.0/8,192.0.2.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn role_extensions() -> BTreeMap<String, String> {
    ["permit-port-forwarding", "permit-pty"]
        .into_iter()
        .map(|k| (k.to_owned(), String::new()))
        .collect()
}

fn options(cert: &Certificate) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let c = cert
        .critical_options()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let e = cert
        .extensions()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (c, e)
}

#[tokio::test]
async fn request_fields_cannot_add_options_or_extensions() {
    let h = start().await;
    let smuggled_reasons = [
        "INC-1 force-command=/bin/sh",
        "INC-1 source-address=0.0.0.0/0 permit-X11-forwarding permit-agent-forwarding",
        "INC-1 \"permit-user-rc\" no-touch-required verify-required",
        "INC-1 ,force-command=\"/bin/sh\",permit-pty",
    ];
    for reason in smuggled_reasons {
        let mut m = ask("locked", &["deploy"], 600);
        m.reason = reason.into();
        m.public_key = format!(
            "{} force-command=/bin/sh permit-agent-forwarding",
            new_key()
        );
        let created = h.create("alice", m).await.unwrap();
        h.review(
            "bob",
            &created.id,
            pb::Decision::Approve,
            0,
            "force-command=/bin/sh permit-X11-forwarding",
        )
        .await
        .unwrap();
        let r = h.get("alice", &created.id, true).await;
        let cert = parsed(&h, &r).await;
        let (crit, ext) = options(&cert);
        assert_eq!(crit, role_options(), "{reason}");
        assert_eq!(ext, role_extensions(), "{reason}");
        assert_eq!(cert.valid_principals(), ["deploy"]);
        assert!(cert.key_id().bytes().all(|b| b.is_ascii_graphic()));
    }
    // A role without options gets none, and exactly the default extension.
    let r = h.issue("alice", "db", &[]).await;
    let (crit, ext) = options(&parsed(&h, &r).await);
    assert!(crit.is_empty(), "{crit:?}");
    assert_eq!(ext.keys().collect::<Vec<_>>(), ["permit-pty"]);
    h.audit_verifies();
}

#[tokio::test]
async fn control_characters_in_reasons_and_comments_are_refused() {
    let h = start().await;
    let before = h.snapshot().await;
    for reason in [
        "INC-1 lag\nforce-command=/bin/sh",
        "INC-1 lag\r\npermit-X11-forwarding",
        "INC-1 lag\0force-command",
        "INC-1 lag\u{1b}[2J",
    ] {
        let mut m = ask("locked", &["deploy"], 600);
        m.reason = reason.into();
        let what = format!("reason {reason:?}");
        refused(h.create("alice", m).await, Code::InvalidArgument, &what);
        h.unchanged(&before, &what).await;
    }
    let created = h.create("alice", ask("locked", &[], 600)).await.unwrap();
    let before = h.snapshot().await;
    for comment in ["ok\nforce-command=/bin/sh", "ok\0", &"x".repeat(2000)] {
        let what = format!("comment of {} bytes", comment.len());
        refused(
            h.review("bob", &created.id, pb::Decision::Approve, 0, comment)
                .await,
            Code::InvalidArgument,
            &what,
        );
        h.unchanged(&before, &what).await;
    }
    refused(
        h.review("bob", &created.id, pb::Decision::Deny, 0, "  ")
            .await,
        Code::InvalidArgument,
        "deny without reason",
    );
    h.unchanged(&before, "deny without reason").await;
}

#[tokio::test]
async fn option_names_as_principals_are_refused() {
    let h = start().await;
    let before = h.snapshot().await;
    for p in [
        "permit-pty",
        "permit-X11-forwarding",
        "force-command",
        "source-address",
    ] {
        refused(
            h.create("alice", ask("locked", &["deploy", p], 600)).await,
            Code::PermissionDenied,
            p,
        );
        h.unchanged(&before, p).await;
    }
}
