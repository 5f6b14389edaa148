//! Reads written once for both engines. On SQLite a read runs on the caller's own thread, on a
//! connection of its own (`Readers`): a point read is a few dozen microseconds of SQLite work,
//! and a query through sqlx's pool hands it to the connection's worker thread and back, two
//! wake-ups that cost more than the read (a login makes seven). On PostgreSQL, or when a
//! SQLite read finds the database busy, the same SQL goes through the pool.
//!
//! Only short reads belong here (a few rows by key): the caller's thread is a runtime worker.
//! The same holds for a single-statement write (`write`): it is tried once on the caller's
//! thread without waiting for the write lock, and goes through the pool if someone holds it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::{Result, Storage};

/// A bound value. SQL names them `$1`, `$2`... as the rest of the storage code does.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// A result row from either engine. A column of another type than asked reads as empty or 0:
/// the schema is ours, so that is a bug to fix, not a reason to end the session.
pub trait Row {
    fn int(&self, i: usize) -> i64;
    fn text(&self, i: usize) -> String;
    fn opt_int(&self, i: usize) -> Option<i64>;
    fn opt_text(&self, i: usize) -> Option<String>;
}

impl Row for AnyRow {
    fn int(&self, i: usize) -> i64 {
        self.try_get(i).unwrap_or_default()
    }
    fn text(&self, i: usize) -> String {
        self.try_get(i).unwrap_or_default()
    }
    fn opt_int(&self, i: usize) -> Option<i64> {
        self.try_get(i).unwrap_or_default()
    }
    fn opt_text(&self, i: usize) -> Option<String> {
        self.try_get(i).unwrap_or_default()
    }
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> i64 {
        self.get(i).unwrap_or_default()
    }
    fn text(&self, i: usize) -> String {
        self.get(i).unwrap_or_default()
    }
    fn opt_int(&self, i: usize) -> Option<i64> {
        self.get(i).unwrap_or_default()
    }
    fn opt_text(&self, i: usize) -> Option<String> {
        self.get(i).unwrap_or_default()
    }
}

/// Idle read connections to the SQLite file, opened when first needed.
pub(crate) struct Readers {
    file: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Idle read connections kept: one per runtime worker is enough; more are opened when needed
/// and closed after use.
const KEEP_IDLE: usize = 4;

/// A reader that finds the database locked (a WAL restart, a schema change) waits this long,
/// then the read goes through the pool, whose connections wait longer.
const BUSY_WAIT: Duration = Duration::from_millis(20);

impl Readers {
    pub(crate) fn new(file: &Path) -> Readers {
        Readers { file: file.to_path_buf(), idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.file)?;
        conn.execute_batch(super::SQLITE_PRAGMAS)?;
        conn.busy_timeout(BUSY_WAIT)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn with<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let r = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP_IDLE {
            idle.push(conn);
        }
        r
    }

    /// Run one statement if the write lock is free now; `Ok(None)` if it was not.
    fn write(&self, sql: &str, args: &[Arg<'_>]) -> rusqlite::Result<Option<usize>> {
        self.with(|conn| {
            conn.busy_timeout(Duration::ZERO)?;
            let mut st = conn.prepare_cached(sql)?;
            bind(&mut st, args)?;
            let r = st.raw_execute();
            drop(st);
            conn.busy_timeout(BUSY_WAIT)?;
            match r {
                Err(e) if busy(&e) => Ok(None),
                r => r.map(Some),
            }
        })
    }

    fn rows<T>(&self, sql: &str, args: &[Arg<'_>], parse: &impl Fn(&dyn Row) -> T, limit: usize) -> rusqlite::Result<Vec<T>> {
        self.with(|conn| {
            let mut st = conn.prepare_cached(sql)?;
            bind(&mut st, args)?;
            let mut rows = st.raw_query();
            let mut out = Vec::new();
            while out.len() < limit {
                match rows.next()? {
                    Some(row) => out.push(parse(row)),
                    None => break,
                }
            }
            Ok(out)
        })
    }
}

fn bind(st: &mut rusqlite::Statement<'_>, args: &[Arg<'_>]) -> rusqlite::Result<()> {
    for i in 1..=st.parameter_count() {
        // `$n` is the n-th argument wherever it first appears in the text.
        let n = st.parameter_name(i).and_then(|name| name.strip_prefix('$')).and_then(|n| n.parse::<usize>().ok()).unwrap_or(i);
        match args.get(n.wrapping_sub(1)) {
            Some(Arg::Text(s)) => st.raw_bind_parameter(i, s)?,
            Some(Arg::Int(v)) => st.raw_bind_parameter(i, v)?,
            None => st.raw_bind_parameter(i, rusqlite::types::Null)?,
        }
    }
    Ok(())
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

impl Storage {
    /// Every row `sql` returns, each made by `parse`.
    pub(crate) async fn read<T>(&self, sql: &str, args: &[Arg<'_>], parse: impl Fn(&dyn Row) -> T) -> Result<Vec<T>> {
        self.read_at_most(sql, args, parse, usize::MAX).await
    }

    /// The first row `sql` returns, if any.
    pub(crate) async fn read_one<T>(&self, sql: &str, args: &[Arg<'_>], parse: impl Fn(&dyn Row) -> T) -> Result<Option<T>> {
        Ok(self.read_at_most(sql, args, parse, 1).await?.pop())
    }

    /// Run one statement that writes (its own transaction); returns the rows it changed.
    pub(crate) async fn write(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        if let Some(readers) = &self.readers {
            if let Some(n) = readers.write(sql, args)? {
                return Ok(n as u64);
            }
        }
        Ok(bound(sqlx::query(sql), args).execute(&self.pool).await?.rows_affected())
    }

    async fn read_at_most<T>(&self, sql: &str, args: &[Arg<'_>], parse: impl Fn(&dyn Row) -> T, limit: usize) -> Result<Vec<T>> {
        if let Some(readers) = &self.readers {
            match readers.rows(sql, args, &parse, limit) {
                Err(e) if busy(&e) => {} // the pool's connections wait longer
                r => return Ok(r?),
            }
        }
        let q = bound(sqlx::query(sql), args);
        let rows = if limit == 1 { q.fetch_optional(&self.pool).await?.into_iter().collect() } else { q.fetch_all(&self.pool).await? };
        Ok(rows.iter().map(|r| parse(r)).collect())
    }
}

fn bound<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match *a {
            Arg::Text(s) => q.bind(s),
            Arg::Int(v) => q.bind(v),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_reads_bind_by_number_and_see_the_pools_commits() {
        let dir = std::env::temp_dir().join(format!("starling-read-{}-{}", std::process::id(), super::super::now_micros()));
        let url = format!("sqlite:{}", dir.join("r.db").display());
        let s = Storage::open(&url, 2).await.expect("open");
        assert!(s.readers.is_some());
        sqlx::raw_sql("CREATE TABLE t (a TEXT NOT NULL, b BIGINT NOT NULL, c TEXT)").execute(&s.pool).await.expect("create");
        sqlx::raw_sql("INSERT INTO t VALUES ('x', 1, NULL), ('y', 2, 'z'), ('y', 3, 'w')").execute(&s.pool).await.expect("insert");
        // $2 appears before $1: each still binds its own argument.
        let sql = "SELECT a, b, c FROM t WHERE b >= $2 AND a = $1 ORDER BY b";
        let parse = |r: &dyn Row| (r.text(0), r.int(1), r.opt_text(2));
        let rows = s.read(sql, &[Arg::Text("y"), Arg::Int(3)], parse).await.expect("read");
        assert_eq!(rows, vec![("y".to_string(), 3, Some("w".to_string()))]);
        let first = s.read_one("SELECT a, b, c FROM t ORDER BY b", &[], parse).await.expect("read one");
        assert_eq!(first, Some(("x".to_string(), 1, None)));
        // A commit through the pool is seen by the next read.
        sqlx::raw_sql("DELETE FROM t WHERE b = 1").execute(&s.pool).await.expect("delete");
        let first = s.read_one("SELECT a, b, c FROM t ORDER BY b", &[], parse).await.expect("read one");
        assert_eq!(first.map(|r| r.1), Some(2));
        // Wrong types read as empty, never panic.
        let odd = s.read_one("SELECT b, a FROM t ORDER BY b", &[], |r: &dyn Row| (r.text(0), r.int(1))).await.expect("read");
        assert_eq!(odd, Some((String::new(), 0)));
        // A write on the caller's thread, seen by the pool.
        assert_eq!(s.write("UPDATE t SET c = $2 WHERE a = $1", &[Arg::Text("y"), Arg::Text("v")]).await.expect("write"), 2);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t WHERE c = 'v'").fetch_one(&s.pool).await.expect("count");
        assert_eq!(n, 2);
        // While the pool holds the write lock, the write waits for it there instead.
        let mut tx = s.pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO t VALUES ('q', 9, NULL)").execute(&mut *tx).await.expect("insert in tx");
        let s2 = s.clone();
        let later = tokio::spawn(async move { s2.write("DELETE FROM t WHERE a = $1", &[Arg::Text("q")]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!later.is_finished(), "the write waits for the lock");
        tx.commit().await.expect("commit");
        assert_eq!(later.await.expect("join").expect("write"), 1);
        s.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
