//! Several `moshca-server` replicas over one PostgreSQL database: the first [`Ca`] is
//! initialised with `--database URL`, the others join it with `--ca-key` of the first, so
//! all sign with one CA key. Each replica has its own data directory, TLS certificate and
//! port; users added through one exist on all (one database), and
//! [`Ca::share_tokens_from`] lets a test's clients use them against any replica.
//!
//! What it must not do: print the database URL (it holds the password) or start anything
//! without a deadline.

use std::thread;
use std::time::{Duration, Instant};

use crate::{Ca, signal};

impl Ca {
    /// `moshca-server init --database URL` in a fresh directory, then `policy`; not started.
    pub fn init_on_database(policy: &str, url: &str) -> Ca {
        Ca::init_with(policy, &["--database", url]).0
    }

    /// A replica joining `first`'s database at `url` (which may name other hosts than
    /// `first` was given, e.g. a multi-host URL): `init --database URL --ca-key FIRST/ca_key`,
    /// then `policy`; not started. The tokens `first` knows are shared.
    pub fn join(first: &Ca, policy: &str, url: &str) -> Ca {
        let ca_key = first.data_dir().join("ca_key");
        let ca_key = ca_key.to_str().expect("temporary paths are UTF-8");
        let mut ca = Ca::init_with(policy, &["--database", url, "--ca-key", ca_key]).0;
        ca.share_tokens_from(first);
        ca
    }

    /// Remembers every token `other` knows, for users added through another replica of the
    /// same database.
    pub fn share_tokens_from(&mut self, other: &Ca) {
        for (name, token) in &other.tokens {
            self.tokens.insert(name.clone(), token.clone());
        }
    }

    /// Crashes the server with SIGKILL and waits (at most 10 s) until it is gone. A later
    /// [`Ca::start`] serves on the same port.
    pub fn kill(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        signal(child.id(), "KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(child.try_wait(), Ok(Some(_))) {
            assert!(
                Instant::now() < deadline,
                "moshca-server still runs 10 s after SIGKILL"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `moshca-server audit verify --data-dir DIR`, which must pass; returns what it printed.
    #[track_caller]
    pub fn audit_verifies(&self) -> String {
        let out = self.admin(&["audit", "verify"]);
        out.assert_ok();
        out.stdout
    }
}
