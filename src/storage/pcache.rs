//! SQLite's page cache, without a scan of the whole cache at the end of a commit.
//!
//! When a commit splits or merges B-tree pages, SQLite sorts the new pages by page number,
//! swapping two of them through a temporary page number: the page that holds the "pending
//! byte" (1 GiB into the file, page 262,145 at 4 KiB pages). The default page cache remembers
//! that number as its largest key. At the end of every transaction SQLite asks the cache to drop
//! the pages past the end of the database; with a largest key that far past the end, the cache
//! walks its whole hash table to find none. perf showed that walk as the largest single item of
//! 1:1 chat (8.5% of the server's CPU at 200 archived messages per second; a fifth of the
//! commits had split a page).
//!
//! This wraps the default cache (every method goes straight to it) and keeps, per cache, an
//! upper bound of the keys it holds: every key fetched with leave to create, or given by a rekey, except the
//! temporary one, which is counted while it is in use. A truncation that cannot drop anything
//! (nothing is held at or past its limit) is not passed on; every other one is, and then the
//! bound comes down with it. The bound only ever overestimates (the cache may evict pages
//! without saying so), so a needed truncation is never skipped.
//!
//! Installed once per process by [`install`], before SQLite initializes; if SQLite was already
//! initialized (by other code in the process), the default cache stays as it is.

use rusqlite::ffi;
use std::os::raw::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// SQLite's default `PENDING_BYTE` (the start of the locking region, 0x40000000).
const PENDING_BYTE: u64 = 0x4000_0000;

/// The default cache's methods, as SQLite gave them.
struct Inner(ffi::sqlite3_pcache_methods2);
// SAFETY: written once before SQLite uses it, only read afterwards; the methods are SQLite's
// own thread-safe functions.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

static INNER: OnceLock<Inner> = OnceLock::new();

/// Truncations not passed on, and passed on (for tests and diagnosis).
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static PASSED: AtomicU64 = AtomicU64::new(0);

/// (truncations not passed on, truncations passed on) since the process started.
pub fn truncations() -> (u64, u64) {
    (SKIPPED.load(Ordering::Relaxed), PASSED.load(Ordering::Relaxed))
}

/// One connection's cache: the default cache it wraps, and what is known of its keys.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// Page number SQLite uses as a temporary key while it sorts new pages.
    temp_key: c_uint,
    /// Pages currently rekeyed to `temp_key` (an overestimate).
    temp_live: u32,
    /// At least every key the cache holds, other than `temp_key`.
    max_key: c_uint,
}

/// Wrap SQLite's default page cache (once per process). Call before SQLite initializes, that
/// is before the first connection or VFS lookup. Returns whether the wrapper is in place.
pub fn install() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        let mut default = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
        // SAFETY: GETPCACHE2 fills the struct it is given (installing the default first).
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr()) };
        if rc != ffi::SQLITE_OK {
            tracing::debug!("SQLite already initialized: its default page cache stays");
            return false;
        }
        // SAFETY: filled by SQLite above.
        let default = unsafe { default.assume_init() };
        if default.xCreate.is_none() || default.xTruncate.is_none() {
            return false;
        }
        let inner = INNER.get_or_init(|| Inner(default));
        let ours = ffi::sqlite3_pcache_methods2 {
            iVersion: inner.0.iVersion,
            pArg: inner.0.pArg,
            xInit: inner.0.xInit,
            xShutdown: inner.0.xShutdown,
            xCreate: Some(create),
            xCachesize: Some(cachesize),
            xPagecount: Some(pagecount),
            xFetch: Some(fetch),
            xUnpin: Some(unpin),
            xRekey: Some(rekey),
            xTruncate: Some(truncate),
            xDestroy: Some(destroy),
            xShrink: Some(shrink),
        };
        // SAFETY: SQLite copies the struct; the functions live for the whole process.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &ours as *const ffi::sqlite3_pcache_methods2) };
        rc == ffi::SQLITE_OK
    })
}

fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    &INNER.get().expect("page cache wrapper installed before use").0
}

/// # Safety
/// `p` is a cache made by [`create`].
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    &mut *(p as *mut Cache)
}

unsafe extern "C" fn create(sz_page: c_int, sz_extra: c_int, purgeable: c_int) -> *mut ffi::sqlite3_pcache {
    let Some(x) = methods().xCreate else { return std::ptr::null_mut() };
    let inner = x(sz_page, sz_extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let temp_key = (PENDING_BYTE / sz_page.max(512) as u64 + 1) as c_uint;
    Box::into_raw(Box::new(Cache { inner, temp_key, temp_live: 0, max_key: 0 })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(x) = methods().xCachesize {
        x(cache(p).inner, n)
    }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    match methods().xPagecount {
        Some(x) => x(cache(p).inner),
        None => 0,
    }
}

unsafe extern "C" fn fetch(p: *mut ffi::sqlite3_pcache, key: c_uint, create: c_int) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    // Only a fetch that may create a page adds a key (a lookup does not: SQLite looks up the
    // temporary key before every rekey to it). Counted whether or not the page is created.
    if create != 0 {
        c.max_key = c.max_key.max(key);
    }
    match methods().xFetch {
        Some(x) => x(c.inner, key, create),
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn unpin(p: *mut ffi::sqlite3_pcache, page: *mut ffi::sqlite3_pcache_page, discard: c_int) {
    if let Some(x) = methods().xUnpin {
        x(cache(p).inner, page, discard)
    }
}

unsafe extern "C" fn rekey(p: *mut ffi::sqlite3_pcache, page: *mut ffi::sqlite3_pcache_page, old: c_uint, new: c_uint) {
    let c = cache(p);
    if old == c.temp_key {
        c.temp_live = c.temp_live.saturating_sub(1);
    }
    if new == c.temp_key {
        c.temp_live += 1;
    } else {
        c.max_key = c.max_key.max(new);
    }
    if let Some(x) = methods().xRekey {
        x(c.inner, page, old, new)
    }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = cache(p);
    if c.temp_live == 0 && limit > c.max_key {
        // Nothing is held at or past `limit`.
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    PASSED.fetch_add(1, Ordering::Relaxed);
    if let Some(x) = methods().xTruncate {
        x(c.inner, limit)
    }
    if limit > 0 {
        c.max_key = c.max_key.min(limit - 1);
    }
    if limit <= c.temp_key {
        c.temp_live = 0;
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p as *mut Cache);
    if let Some(x) = methods().xDestroy {
        x(c.inner)
    }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(x) = methods().xShrink {
        x(cache(p).inner)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    /// Page splits (and their sort through the temporary page number), rollbacks that drop
    /// pages past the end, and a database that shrinks: the data read back is what was
    /// written, and SQLite's own check finds nothing wrong.
    #[test]
    fn splits_rollbacks_and_shrinking_keep_the_data() {
        super::super::walvfs::install();
        assert!(super::install(), "the wrapper is installed before SQLite initializes");
        let (skipped0, passed0) = super::truncations();
        let dir = std::env::temp_dir().join(format!("starling-pcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let c = Connection::open(dir.join("db")).expect("open");
        c.execute_batch(super::super::SQLITE_PRAGMAS).expect("pragmas");
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v TEXT); CREATE INDEX t_k ON t (k, id);").expect("schema");
        let mut expected = 0i64;
        for round in 0..200i64 {
            let tx = c.unchecked_transaction().expect("begin");
            for i in 0..20i64 {
                let n = round * 20 + i;
                // Keys in a scattered order, so index pages split in the middle.
                let k = format!("{:08}", (n * 7919) % 4001);
                tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", rusqlite::params![k, "x".repeat(200)]).expect("insert");
            }
            if round % 7 == 3 {
                // Pages allocated in this transaction lie past the end once it is undone.
                tx.rollback().expect("rollback");
            } else {
                tx.commit().expect("commit");
                expected += 20;
            }
        }
        let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
        assert_eq!(n, expected);
        c.execute_batch("DELETE FROM t WHERE id % 2 = 0; VACUUM;").expect("shrink");
        let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
        assert_eq!(n, expected - expected / 2);
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
        assert_eq!(ok, "ok");
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
        // Commits skipped the needless walk; rollbacks and the shrink were passed on.
        let (skipped, passed) = super::truncations();
        assert!(skipped > skipped0, "no truncation was skipped");
        assert!(passed > passed0, "no truncation was passed on");
    }
}
