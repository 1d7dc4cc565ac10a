//! The SQL both backends speak: parameters, rows, and the four statement calls the area
//! modules make ([`Tx::exec`], [`Tx::opt`], [`Tx::all`], [`Tx::each`]).
//!
//! Statements are written once, in the dialect SQLite and PostgreSQL share: `?N`
//! placeholders (rewritten to `$N` for PostgreSQL), `INSERT ... ON CONFLICT`, `RETURNING`,
//! `CAST(... AS BIGINT)`. Where the two differ (JSON functions, SQLite's index hints), an
//! area picks its text by [`Tx::dialect`], or [`for_postgres`] rewrites it. Every integer column is a 64-bit integer on both
//! (booleans are 0/1), so one [`Value`] binds the same on either.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{Error, Result, Tx};

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What can be bound as a [`Value`].
pub(crate) trait Param {
    fn value(&self) -> Value<'_>;
}

impl Param for i64 {
    fn value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}

impl Param for i32 {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Param for u32 {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null,
        }
    }
}

/// The parameters of one statement, in `?1`, `?2`, ... order.
macro_rules! params {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::sql::Param::value(&$x)),*] as &[$crate::store::sql::Value<'_>]
    };
}
pub(crate) use params;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            // PostgreSQL infers a parameter's type from where it stands (`?1 = 0` makes it
            // an INT4); bind the same number as whatever it asked for.
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound as {ty}").into()),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, which names the mismatch.
        true
    }

    to_sql_checked!();
}

/// Which SQL a backend speaks, for the few statements the two write differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// One result row.
pub(crate) enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as `T`.
    pub(crate) fn get<T: Column>(&self, i: usize) -> Result<T> {
        match self {
            Row::Sqlite(r) => T::sqlite(r, i).map_err(Error::from),
            Row::Postgres(r) => T::postgres(r, i),
        }
    }
}

/// A Rust type a column can be read as.
pub(crate) trait Column: Sized {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self>;
}

/// A PostgreSQL integer of any width (COUNT gives INT8, a literal INT4), or a boolean.
struct PgInt(i64);

impl<'a> postgres::types::FromSql<'a> for PgInt {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgInt(match *ty {
            Type::INT8 => i64::from_sql(ty, raw)?,
            Type::INT4 => i64::from(i32::from_sql(ty, raw)?),
            Type::INT2 => i64::from(i16::from_sql(ty, raw)?),
            Type::BOOL => i64::from(bool::from_sql(ty, raw)?),
            _ => return Err(format!("{ty} is not an integer").into()),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL)
    }
}

fn pg_get<'a, T: postgres::types::FromSql<'a>>(r: &'a postgres::Row, i: usize) -> Result<T> {
    r.try_get(i)
        .map_err(|e| Error::Corrupt(format!("column {i}: {e}")))
}

impl Column for i64 {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        pg_get::<PgInt>(r, i).map(|v| v.0)
    }
}

impl Column for Option<i64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        pg_get::<Option<PgInt>>(r, i).map(|v| v.map(|v| v.0))
    }
}

impl Column for u32 {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        let v = pg_get::<PgInt>(r, i)?.0;
        u32::try_from(v).map_err(|_| Error::Corrupt(format!("column {i}: {v} out of range")))
    }
}

impl Column for bool {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        pg_get::<PgInt>(r, i).map(|v| v.0 != 0)
    }
}

impl Column for String {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        pg_get(r, i)
    }
}

impl Column for Option<String> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        pg_get(r, i)
    }
}

impl Column for Vec<u8> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn postgres(r: &postgres::Row, i: usize) -> Result<Self> {
        pg_get(r, i)
    }
}

/// A PostgreSQL connection and the statements it has prepared.
///
/// The driver blocks on a runtime of its own, which a thread driving async tasks may not
/// do: statements run on blocking threads (the server's handlers use `spawn_blocking`),
/// and a connection dropped on an async thread is closed on a thread of its own.
pub(crate) struct PgConn {
    /// Always `Some` until dropped.
    client: Option<postgres::Client>,
    prepared: HashMap<String, postgres::Statement>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("moshca-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field(
                "closed",
                &self.client.as_ref().is_none_or(postgres::Client::is_closed),
            )
            .field("prepared", &self.prepared.len())
            .finish()
    }
}

impl PgConn {
    pub(crate) fn new(client: postgres::Client) -> Self {
        PgConn {
            client: Some(client),
            prepared: HashMap::new(),
        }
    }

    /// The connection.
    pub(crate) fn client(&mut self) -> &mut postgres::Client {
        match &mut self.client {
            Some(c) => c,
            None => unreachable!("a connection is taken only when dropped"),
        }
    }

    /// The prepared form of `sql` (written with `?N`), prepared once per connection.
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client().prepare(&for_postgres(sql))?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// A statement as PostgreSQL reads it: SQLite's index hints dropped, `json_each` over a
/// bound JSON array as `json_array_elements_text`, `?N` placeholders as `$N`. (A
/// parameter PostgreSQL cannot type from its first use, `?N IS NULL OR col = ?N`, is cast
/// in the statement itself: `CAST(?N AS TEXT) IS NULL`.)
pub(crate) fn for_postgres(sql: &str) -> String {
    static HINT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"INDEXED BY \w+\s*").unwrap_or_else(|_| unreachable!())
    });
    static JSON_EACH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"json_each\((\?\d+)\)").unwrap_or_else(|_| unreachable!())
    });
    let sql = HINT.replace_all(sql, "");
    let sql = JSON_EACH.replace_all(&sql, "json_array_elements_text(CAST($1 AS JSON))");
    dollar_placeholders(&sql)
}

/// `?N` placeholders as PostgreSQL's `$N`. Statements hold no `?` inside string literals.
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// The connection a [`Tx`] runs its statements on.
pub(crate) enum Conn<'c> {
    Sqlite(&'c rusqlite::Connection),
    Postgres(&'c RefCell<PgConn>),
}

fn pg_params<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Tx<'_> {
    /// The SQL this transaction's backend speaks.
    pub(crate) fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn exec(&self, sql: &str, params: &[Value<'_>]) -> Result<usize> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?),
            Conn::Postgres(c) => {
                let mut c = c.borrow_mut();
                let s = c.statement(sql)?;
                let n = c.client().execute(&s, &pg_params(params))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// The first row of a query, if any.
    pub(crate) fn opt<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                match rows.next()? {
                    Some(r) => f(&Row::Sqlite(r)).map(Some),
                    None => Ok(None),
                }
            }
            Conn::Postgres(c) => {
                let row = {
                    let mut c = c.borrow_mut();
                    let s = c.statement(sql)?;
                    c.client().query_opt(&s, &pg_params(params))?
                };
                row.map(|r| f(&Row::Postgres(&r))).transpose()
            }
        }
    }

    /// The one row a query must return (an aggregate, `RETURNING`).
    pub(crate) fn one<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.opt(sql, params, f)?
            .ok_or_else(|| Error::Corrupt(format!("no row from {}", first_words(sql))))
    }

    /// Every row of a query.
    pub(crate) fn all<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.each(sql, params, |r| {
            out.push(f(r)?);
            Ok::<_, Error>(())
        })?;
        Ok(out)
    }

    /// Runs `f` on each row as it arrives, without holding them all (exports, KRLs).
    /// `f` must not run statements on this transaction.
    pub(crate) fn each<E: From<Error>>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(Error::from)?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params))
                    .map_err(Error::from)?;
                while let Some(r) = rows.next().map_err(Error::from)? {
                    f(&Row::Sqlite(r))?;
                }
                Ok(())
            }
            Conn::Postgres(c) => {
                use postgres::fallible_iterator::FallibleIterator as _;
                let mut c = c.borrow_mut();
                let s = c.statement(sql)?;
                let mut rows = c
                    .client()
                    .query_raw(&s, params.iter())
                    .map_err(Error::from)?;
                while let Some(r) = rows.next().map_err(Error::from)? {
                    f(&Row::Postgres(&r))?;
                }
                Ok(())
            }
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_placeholders_become_dollar_ones() {
        assert_eq!(
            for_postgres("SELECT a FROM t WHERE b = ?1 AND (?12 IS NULL OR c = ?12)"),
            "SELECT a FROM t WHERE b = $1 AND ($12 IS NULL OR c = $12)"
        );
        assert_eq!(
            for_postgres(
                "SELECT a FROM requests INDEXED BY requests_pending WHERE role IN (SELECT value FROM json_each(?5))"
            ),
            "SELECT a FROM requests WHERE role IN (SELECT value FROM json_array_elements_text(CAST($5 AS JSON)))"
        );
        // A `?` not followed by a digit is left alone.
        assert_eq!(dollar_placeholders("SELECT '?' || x"), "SELECT '?' || x");
    }
}
