//! DESIGN rule 3; Vault CVE-2024-7594 and #16622, BLESS #53, CVE-2026-35414.

use super::*;

#[tokio::test]
async fn hostile_principal_strings_are_refused_and_nothing_is_stored() {
    let h = start().await;
    let before = h.snapshot().await;
    let long = "a".repeat(65);
    let cases: &[(&str, Code)] = &[
        ("", Code::InvalidArgument),
        ("*", Code::InvalidArgument),
        ("postgres,root", Code::InvalidArgument),
        ("postgres,ubuntu", Code::InvalidArgument),
        ("postgres ubuntu", Code::InvalidArgument),
        (" postgres", Code::InvalidArgument),
        ("postgres ", Code::InvalidArgument),
        ("postgres\nroot", Code::InvalidArgument),
        ("postgres\r\nroot", Code::InvalidArgument),
        ("postgres\0root", Code::InvalidArgument),
        ("postgres\troot", Code::InvalidArgument),
        ("-oProxyCommand=x", Code::InvalidArgument),
        ("@postgres", Code::InvalidArgument),
        ("force-command=/bin/sh", Code::InvalidArgument),
        ("p\u{043e}stgres", Code::InvalidArgument), // Cyrillic o
        ("postgres\u{200b}", Code::InvalidArgument), // zero-width space
        (&long, Code::InvalidArgument),
        ("root", Code::PermissionDenied),
        ("POSTGRES", Code::PermissionDenied),
        ("postgres@db-prod", Code::PermissionDenied),
        ("permit-pty", Code::PermissionDenied),
    ];
    for (p, code) in cases {
        for list in [vec![*p], vec!["postgres", *p]] {
            let what = format!("principals {list:?}");
            refused(h.create("alice", ask("db", &list, 600)).await, *code, &what);
            h.unchanged(&before, &what).await;
        }
    }
}

#[tokio::test]
async fn a_second_principal_outside_the_role_is_refused() {
    // BLESS #53: only the first principal was checked.
    let h = start().await;
    let before = h.snapshot().await;
    for list in [
        &["postgres", "root"][..],
        &["ubuntu", "postgres", "root"],
        &["root", "postgres"],
        &["postgres", "ubuntu", "deploy"],
    ] {
        let what = format!("principals {list:?}");
        let msg = refused(
            h.create("alice", ask("db", list, 600)).await,
            Code::PermissionDenied,
            &what,
        );
        assert!(msg.contains("not allowed"), "{what}: {msg}");
        h.unchanged(&before, &what).await;
    }
}

#[tokio::test]
async fn thirty_three_principals_are_refused() {
    let h = start().await;
    let before = h.snapshot().await;
    let many: Vec<String> = (0..33).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let msg = refused(
        h.create("alice", ask("db", &many, 600)).await,
        Code::InvalidArgument,
        "33 principals",
    );
    assert!(msg.contains("at most 32"), "{msg}");
    h.unchanged(&before, "33 principals").await;
    // 33 copies of an allowed login are still 33 principals.
    let same = vec!["postgres"; 33];
    refused(
        h.create("alice", ask("db", &same, 600)).await,
        Code::InvalidArgument,
        "33 x postgres",
    );
    // Thousands of principals: refused, never a panic or a partial write.
    let flood: Vec<String> = (0..5000).map(|i| format!("p{i}")).collect();
    let flood: Vec<&str> = flood.iter().map(String::as_str).collect();
    let status = h.create("alice", ask("db", &flood, 600)).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{status:?}"
    );
    h.unchanged(&before, "5000 principals").await;
}

#[tokio::test]
async fn empty_list_means_the_roles_logins_never_an_empty_certificate() {
    let h = start().await;
    let r = h.issue("alice", "db", &[]).await;
    let cert = parsed(&h, &r).await;
    assert_eq!(cert.valid_principals(), ["postgres", "ubuntu"]);
    // A duplicate is signed once.
    let r = h.issue("alice", "db", &["ubuntu", "ubuntu"]).await;
    assert_eq!(parsed(&h, &r).await.valid_principals(), ["ubuntu"]);
    h.audit_verifies();
}
