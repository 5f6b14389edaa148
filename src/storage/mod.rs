//! Storage: one pool over SQLite or PostgreSQL (sqlx `Any`), the SQL written once where both
//! engines accept it; only the DDL in `schema/<engine>/` differs. Migrations are embedded and
//! applied at start-up. One file per table group.

pub mod account;
pub mod archive;
pub mod archive_log;
pub mod muc;
pub mod pcache;
pub mod pep;
pub mod read;
pub mod roster;
pub mod users;
pub mod walvfs;
pub mod writer;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Migrations per engine, in order. Each file is applied once, inside a transaction.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../schema/sqlite/0001_core.sql")),
    (2, include_str!("../../schema/sqlite/0002_archive.sql")),
    (3, include_str!("../../schema/sqlite/0003_archive_ids.sql")),
    (4, include_str!("../../schema/sqlite/0004_muc.sql")),
    (5, include_str!("../../schema/sqlite/0005_pep.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../schema/postgres/0001_core.sql")),
    (2, include_str!("../../schema/postgres/0002_archive.sql")),
    (3, include_str!("../../schema/postgres/0003_archive_ids.sql")),
    (4, include_str!("../../schema/postgres/0004_muc.sql")),
    (5, include_str!("../../schema/postgres/0005_pep.sql")),
];

/// Every SQLite connection's settings. WAL: readers never wait for the writer; NORMAL sync is
/// durable against a crash of the process. busy_timeout: writers queue instead of failing.
/// journal_size_limit: a WAL file that grew in a burst is cut back to 64 MiB when it starts over.
/// No memory map: in WAL mode a connection that sees another's commit drops its whole mapping
/// (`munmap`, a TLB shootdown across cores) and faults the pages in again, which on a server that
/// archives all the time was every checkpoint and nearly every read; pages come through the page
/// cache instead.
pub(crate) const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000; \
    PRAGMA mmap_size=0; PRAGMA cache_size=-16384; PRAGMA journal_size_limit=67108864;";

#[derive(Clone)]
pub struct Storage {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Archive rows go through one writer with group commit.
    archive_writer: writer::ArchiveWriter,
    /// SQLite: connections for reads on the caller's thread (see `read`).
    readers: Option<std::sync::Arc<read::Readers>>,
}

impl Storage {
    /// Connect (creating the SQLite file and its directory if needed) and migrate.
    pub async fn open(url: &str, max_connections: u32) -> Result<Storage> {
        sqlx::any::install_default_drivers();
        let mut sqlite_file = None;
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let file = path.split('?').next().unwrap_or(path);
            sqlite_file = Some(std::path::PathBuf::from(file));
            if let Some(dir) = std::path::Path::new(file).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| StorageError::Invalid(format!("{}: {e}", dir.display())))?;
                }
            }
            let url = if path.contains('?') { format!("sqlite://{path}") } else { format!("sqlite://{path}?mode=rwc") };
            // Before the first connection: every SQLite connection writes its WAL through it.
            walvfs::install();
            (Backend::Sqlite, url)
        } else {
            (Backend::Postgres, url.to_string())
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { max_connections.max(2) } else { max_connections })
            .acquire_timeout(Duration::from_secs(30))
            // A SQLite connection cannot go stale, and the check is one more round trip to its
            // worker thread per query (two context switches). A PostgreSQL connection can (a
            // server restart), so it is still checked there.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        migrate(&pool, backend).await?;
        let readers = sqlite_file.as_deref().map(|f| std::sync::Arc::new(read::Readers::new(f)));
        let archive_writer = match sqlite_file {
            Some(file) => writer::ArchiveWriter::start_sqlite(&file, pool.clone()).await?,
            // The writer's connection leaves the pool (which opens another in its place).
            None => writer::ArchiveWriter::start_task(pool.acquire().await?.detach()).await?,
        };
        Ok(Storage { pool, backend, archive_writer, readers })
    }

    /// Finish queued archive writes, then close every connection.
    pub async fn close(&self) {
        self.archive_writer.close().await;
        self.pool.close().await;
    }
}

async fn migrate(pool: &AnyPool, backend: Backend) -> Result<()> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(pool)
        .await?;
    let done: Vec<i64> =
        sqlx::query("SELECT version FROM schema_migrations").fetch_all(pool).await?.iter().map(|r: &AnyRow| r.get::<i64, _>(0)).collect();
    let list = match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    };
    for (version, sql) in list {
        if done.contains(version) {
            continue;
        }
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(now_secs())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
