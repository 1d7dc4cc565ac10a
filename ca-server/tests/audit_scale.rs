//! Memory of `moshca-server audit export` and `audit verify` over 1,000,000 events: both
//! read the trail from a cursor, so their peak RSS stays flat whatever its length.
//!
//! A measurement: `cargo test --release -p moshca-server --test audit_scale -- --ignored --nocapture`
//! (about 1 GB of disk; needs `/usr/bin/time`).

#![allow(clippy::unwrap_used)] // a failed setup step should fail the measurement loudly

use std::process::{Command, Stdio};
use std::time::Instant;

use moshca_server::audit::Event;
use moshca_server::config::Config;
use moshca_server::signer::Signer;
use moshca_server::store::Store;
use moshca_server::{authority, init};

const EVENTS: u64 = 1_000_000;
const LIMIT_KIB: u64 = 64 * 1024;

/// Peak RSS in KiB of `moshca-server ARGS`, its output thrown away.
fn max_rss_kib(args: &[&str]) -> u64 {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_moshca-server"))
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{stderr}");
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .unwrap_or_else(|| panic!("no RSS in:\n{stderr}"))
        .parse()
        .unwrap()
}

#[test]
#[ignore = "a measurement: 1,000,000 events, about 1 GB of disk"]
fn export_and_verify_of_a_million_events_stay_under_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    init::init(&data, None, 1).unwrap();
    let config = Config::load(&data).unwrap();
    let store = Store::open(&config.database).unwrap();
    let started = Instant::now();
    let now = moshca_server::clock::now();
    for batch in 0..EVENTS / 10_000 {
        store
            .transact(|tx| {
                for i in 0..10_000 {
                    let n = batch * 10_000 + i;
                    let id = format!("01KAT3P8W2M4C1XQ9R{n:08}");
                    tx.append_audit(&Event::new(
                        now,
                        "ci-bot",
                        "certificate.issued",
                        Some(&id),
                        serde_json::json!({
                            "serial": n.to_string(),
                            "principals": ["deploy"],
                            "key_id": format!("moshca:req={id}:user=ci-bot:role=deploy:by=auto"),
                            "fingerprint": "SHA256:LHsP/pHEnngRcyHZhxXe+c2QUeJQqGb5algFvQbDHAo",
                            "valid_after": now,
                            "valid_before": now + 300,
                        }),
                    ))?;
                }
                Ok::<_, moshca_server::store::Error>(())
            })
            .unwrap();
    }
    let signer = Signer::load(&config.ca_key, None).unwrap();
    authority::checkpoint(&store, &signer, Some(&config.checkpoint_file), now).unwrap();
    drop(store);
    let db_bytes = std::fs::metadata(config.database.sqlite_path().unwrap())
        .unwrap()
        .len();
    println!(
        "filled {EVENTS} events in {:.1} s; database {} MiB",
        started.elapsed().as_secs_f64(),
        db_bytes >> 20
    );
    let d = data.to_str().unwrap();
    let t = Instant::now();
    let export = max_rss_kib(&["audit", "export", "--data-dir", d]);
    println!(
        "audit export: max RSS {} KiB ({:.1} MiB), {:.1} s",
        export,
        export as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let verify = max_rss_kib(&["audit", "verify", "--data-dir", d]);
    println!(
        "audit verify: max RSS {} KiB ({:.1} MiB), {:.1} s",
        verify,
        verify as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );
    assert!(export < LIMIT_KIB, "export peaked at {export} KiB");
    assert!(verify < LIMIT_KIB, "verify peaked at {verify} KiB");
}
