//! Storage conformance: one set of scenarios, each run against SQLite and against a real
//! PostgreSQL (started by `moshca-test-postgres` in a temp directory). A scenario gets a
//! [`Backend`] and opens as many [`Store`]s on it as it needs: two stores on one database
//! are two replicas (on SQLite, two servers would never share a file, but the rules must
//! hold there too).
//!
//! What every backend must do the same: transactions are whole or absent, a stale save is
//! a conflict, reviews are appended, one chain of audit events whoever appends, serials
//! and one-time values are used once, the KRL version only grows, the pending cap holds
//! under concurrent creators, a webhook delivery is claimed by one replica, and the
//! listing queries return the same rows. `scale` does it with a million audit events.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

mod scenarios;

use moshca_server::store::{Database, PgUrl, Store};

/// A database the scenario's stores share.
#[derive(Debug)]
pub struct Backend {
    db: Database,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            db: Database::Sqlite(dir.path().join("moshca.db")),
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (a skip outside CI; in CI the harness fails
    /// the test instead) when PostgreSQL is not installed.
    fn postgres() -> Option<Backend> {
        let cluster = moshca_test_postgres::shared()?;
        Some(Backend {
            db: Database::Postgres(PgUrl::parse(&cluster.fresh_database()).unwrap()),
            _dir: None,
        })
    }

    /// A new store on this database: another replica.
    pub fn open(&self) -> Store {
        Store::open(&self.db).unwrap()
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }
}

/// One test per scenario and backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::scenarios::$name(&super::Backend::sqlite());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = super::Backend::postgres() {
                        super::scenarios::$name(&b);
                    }
                }
            )*
        }
    };
}

conformance!(
    a_failed_transaction_leaves_nothing,
    a_stale_save_is_a_conflict_and_writes_nothing,
    a_review_position_taken_is_a_conflict,
    a_disabled_users_token_authenticates_nobody,
    audit_events_from_two_replicas_form_one_chain,
    a_serial_is_stored_once,
    the_krl_version_only_grows_across_replicas,
    the_pending_cap_holds_across_replicas,
    a_delivery_is_claimed_by_one_replica,
    one_time_values_are_consumed_once_across_replicas,
    listings_filter_the_same_way,
    scale,
    a_tokens_last_use_is_recorded,
);
