//! SQLite's write-ahead log written with one system call per commit.
//!
//! SQLite writes each WAL frame as two `pwrite`s, its 24-byte header and then its page, so a
//! commit of an archived message (six or seven frames) was thirteen system calls, and the
//! pages, 24 bytes off the page cache's alignment, touched two kernel pages each. That was a
//! fifth of the server's CPU for 1:1 chat.
//!
//! This is a shim over the default (unix) VFS, registered as the default for every connection
//! of the process (the archive writer's rusqlite connection and sqlx's pool alike). Files other
//! than a WAL pass straight through. A WAL file keeps the writes that continue one another in a
//! buffer and hands them to the real file as one write:
//! - right after the page of a commit frame (a frame header whose "database size after commit"
//!   field is set), so a commit is in the kernel, as before, when SQLite's write returns, and an
//!   error there fails the commit as it would have;
//! - before anything else touches the file (read, truncate, sync, size, locks, file controls,
//!   close) and before a write that does not continue the buffer (SQLite overwriting a frame of
//!   the running transaction);
//! - when the connection's database file gets `xShmBarrier`, which SQLite calls just before it
//!   publishes a new WAL-index header: no reader can be told of a frame that is not in the file.
//!
//! Durability is unchanged: with `synchronous=NORMAL` SQLite does not sync at commit, and a
//! commit is in the operating system's cache before `sqlite3_step` returns, as without the shim.

use rusqlite::ffi;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

/// Size of a WAL frame header (SQLite's file format, section 4.1).
const FRAME_HEADER: usize = 24;
/// A buffer that grew past this (a large transaction) is released after its flush.
const KEEP_CAPACITY: usize = 256 * 1024;
/// A transaction bigger than this reaches the file before its commit.
const MAX_PENDING: usize = 1024 * 1024;
/// The unix VFS writes at most 128 KiB - 1 per `pwrite` (it masks the length with 0x1ffff):
/// the buffer reaches it in pieces below that.
const MAX_WRITE: usize = 124 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Main,
    Wal,
    Other,
}

/// The shim's file: SQLite allocates `szOsFile` bytes for it; the default VFS's own file lives
/// right after it, at `real`.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    kind: Kind,
    /// Main: the connection's WAL file, while it is open. Wal: the connection's main file.
    peer: *mut File,
    /// Wal: bytes written by SQLite, not yet handed to the real file, starting at `start`.
    pending: Vec<u8>,
    start: i64,
    /// Wal: the last write was a commit frame's header; its page follows.
    commit_page_next: bool,
}

struct Vfs {
    shim: ffi::sqlite3_vfs,
    real: *mut ffi::sqlite3_vfs,
}

// SAFETY: the VFS objects are written once, before registration, and only read afterwards
// (by SQLite and by this module), from any thread.
unsafe impl Send for Vfs {}
unsafe impl Sync for Vfs {}

static VFS: OnceLock<Box<Vfs>> = OnceLock::new();

/// Register the shim as SQLite's default VFS (once per process; later calls do nothing).
/// Call before opening the first SQLite connection.
pub fn install() {
    VFS.get_or_init(|| {
        // The page cache is configured before SQLite initializes (sqlite3_vfs_find does that).
        super::pcache::install();
        // SAFETY: sqlite3_vfs_find initializes SQLite and returns the default VFS, which lives
        // for the whole process.
        let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
        assert!(!real.is_null(), "SQLite has no default VFS");
        // SAFETY: `real` is a valid VFS; copying it keeps every method of the default VFS.
        let mut shim = unsafe { ptr::read(real) };
        let offset = real_offset();
        shim.szOsFile = (offset + unsafe { (*real).szOsFile } as usize) as c_int;
        shim.pNext = ptr::null_mut();
        shim.zName = c"starling-wal".as_ptr();
        shim.xOpen = Some(open);
        let vfs = Box::new(Vfs { shim, real });
        // SAFETY: the box never moves or drops (it lives in a static); makeDflt=1.
        let rc = unsafe { ffi::sqlite3_vfs_register(&vfs.shim as *const _ as *mut _, 1) };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the SQLite VFS shim");
        vfs
    });
}

fn real_offset() -> usize {
    std::mem::size_of::<File>().next_multiple_of(16)
}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    VFS.get().map(|v| v.real).unwrap_or(ptr::null_mut())
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs();
    let f = file as *mut File;
    let real = (file as *mut u8).add(real_offset()) as *mut ffi::sqlite3_file;
    let kind = if flags & ffi::SQLITE_OPEN_WAL != 0 {
        Kind::Wal
    } else if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        Kind::Main
    } else {
        Kind::Other
    };
    ptr::write(
        f,
        File {
            base: ffi::sqlite3_file { pMethods: ptr::null() },
            real,
            kind,
            peer: ptr::null_mut(),
            pending: Vec::new(),
            start: 0,
            commit_page_next: false,
        },
    );
    let Some(real_open) = (*real_vfs).xOpen else { return ffi::SQLITE_ERROR };
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK || (*real).pMethods.is_null() {
        ptr::drop_in_place(f);
        (*f).base.pMethods = ptr::null();
        return rc;
    }
    if (*(*real).pMethods).iVersion < 3 {
        // Not the unix VFS this shim was written against: hand the file back unwrapped.
        close_real(real);
        ptr::drop_in_place(f);
        (*f).base.pMethods = ptr::null();
        return ffi::SQLITE_CANTOPEN;
    }
    if kind == Kind::Wal && !name.is_null() {
        // The WAL's name is the one SQLite derives from its database's, so this finds the
        // database file of the same connection (one of ours, opened through this VFS).
        let main = ffi::sqlite3_database_file_object(name) as *mut File;
        if !main.is_null() && ptr::eq((*main).base.pMethods, &METHODS) && (*main).kind == Kind::Main {
            (*main).peer = f;
            (*f).peer = main;
        }
    }
    (*f).base.pMethods = &METHODS;
    rc
}

unsafe fn methods(f: *mut File) -> &'static ffi::sqlite3_io_methods {
    &*(*(*f).real).pMethods
}

unsafe fn close_real(real: *mut ffi::sqlite3_file) -> c_int {
    match (*(*real).pMethods).xClose {
        Some(x) => x(real),
        None => ffi::SQLITE_OK,
    }
}

/// Hand the buffered WAL bytes to the real file.
unsafe fn flush(f: *mut File) -> c_int {
    let file = &mut *f;
    file.commit_page_next = false;
    if file.pending.is_empty() {
        return ffi::SQLITE_OK;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut offset = file.start;
    for piece in file.pending.chunks(MAX_WRITE) {
        rc = match methods(f).xWrite {
            Some(x) => x(file.real, piece.as_ptr() as *const c_void, piece.len() as c_int, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        };
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += piece.len() as i64;
    }
    file.pending.clear();
    if file.pending.capacity() > KEEP_CAPACITY {
        file.pending = Vec::new();
    }
    rc
}

/// Flush a WAL file before an operation that must see the file as SQLite wrote it.
unsafe fn settle(f: *mut File) -> c_int {
    if (*f).kind == Kind::Wal {
        flush(f)
    } else {
        ffi::SQLITE_OK
    }
}

macro_rules! settled {
    ($f:expr) => {{
        let rc = settle($f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let f = file as *mut File;
    let flushed = settle(f);
    let peer = (*f).peer;
    if !peer.is_null() {
        (*peer).peer = ptr::null_mut();
    }
    let rc = close_real((*f).real);
    ptr::drop_in_place(f);
    (*f).base.pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        rc
    }
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, offset: i64) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xRead {
        Some(x) => x((*f).real, buf, amt, offset),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, buf: *const c_void, amt: c_int, offset: i64) -> c_int {
    let f = file as *mut File;
    if (*f).kind != Kind::Wal || amt <= 0 {
        return match methods(f).xWrite {
            Some(x) => x((*f).real, buf, amt, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        };
    }
    let bytes = std::slice::from_raw_parts(buf as *const u8, amt as usize);
    let file = &mut *f;
    let continues = !file.pending.is_empty() && offset == file.start + file.pending.len() as i64;
    if !continues {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        file.start = offset;
    }
    let file = &mut *f;
    file.pending.extend_from_slice(bytes);
    if file.commit_page_next {
        // The page of a commit frame: the transaction is complete.
        return flush(f);
    }
    // A frame header's bytes 4..8 hold the database size after a commit, zero otherwise.
    file.commit_page_next = bytes.len() == FRAME_HEADER && bytes[4..8] != [0, 0, 0, 0];
    if file.pending.len() >= MAX_PENDING && !file.commit_page_next {
        return flush(f);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xTruncate {
        Some(x) => x((*f).real, size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xSync {
        Some(x) => x((*f).real, flags),
        None => ffi::SQLITE_IOERR_FSYNC,
    }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xFileSize {
        Some(x) => x((*f).real, size),
        None => ffi::SQLITE_IOERR_FSTAT,
    }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xLock {
        Some(x) => x((*f).real, level),
        None => ffi::SQLITE_IOERR_LOCK,
    }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xUnlock {
        Some(x) => x((*f).real, level),
        None => ffi::SQLITE_IOERR_UNLOCK,
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let f = file as *mut File;
    match methods(f).xCheckReservedLock {
        Some(x) => x((*f).real, out),
        None => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
    }
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    let f = file as *mut File;
    settled!(f);
    match methods(f).xFileControl {
        Some(x) => x((*f).real, op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let f = file as *mut File;
    match methods(f).xSectorSize {
        Some(x) => x((*f).real),
        None => 4096,
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let f = file as *mut File;
    match methods(f).xDeviceCharacteristics {
        Some(x) => x((*f).real),
        None => 0,
    }
}

unsafe extern "C" fn shm_map(file: *mut ffi::sqlite3_file, page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int {
    let f = file as *mut File;
    match methods(f).xShmMap {
        Some(x) => x((*f).real, page, size, extend, out),
        None => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    let f = file as *mut File;
    match methods(f).xShmLock {
        Some(x) => x((*f).real, offset, n, flags),
        None => ffi::SQLITE_IOERR_SHMLOCK,
    }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let f = file as *mut File;
    // SQLite is about to publish a WAL-index header: every frame it names must be in the file.
    let wal = (*f).peer;
    if (*f).kind == Kind::Main && !wal.is_null() {
        let rc = flush(wal);
        if rc != ffi::SQLITE_OK {
            tracing::error!(rc, "writing the SQLite WAL before publishing its index failed");
        }
    }
    if let Some(x) = methods(f).xShmBarrier {
        x((*f).real)
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let f = file as *mut File;
    match methods(f).xShmUnmap {
        Some(x) => x((*f).real, delete),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn fetch(file: *mut ffi::sqlite3_file, offset: i64, amt: c_int, out: *mut *mut c_void) -> c_int {
    let f = file as *mut File;
    match methods(f).xFetch {
        Some(x) => x((*f).real, offset, amt, out),
        None => {
            *out = ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    let f = file as *mut File;
    match methods(f).xUnfetch {
        Some(x) => x((*f).real, offset, p),
        None => ffi::SQLITE_OK,
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use std::path::{Path, PathBuf};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-walvfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn connect(file: &Path, cache_pages: i64) -> Connection {
        super::install();
        let c = Connection::open(file).expect("open");
        c.execute_batch(super::super::SQLITE_PRAGMAS).expect("pragmas");
        c.execute_batch(&format!("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size={cache_pages}")).expect("pragmas");
        c
    }

    fn count(c: &Connection) -> (i64, i64) {
        c.query_row("SELECT count(*), coalesce(sum(n), 0) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).expect("count")
    }

    /// The database and its WAL as a crash would leave them: copied while the connections
    /// are open, then opened elsewhere, so SQLite recovers the WAL from the file alone
    /// (checking every frame's checksum) and ignores any memory the process had.
    fn recovered(dir: &Path, name: &str) -> Connection {
        let copy = dir.join(name);
        std::fs::create_dir_all(&copy).expect("copy directory");
        std::fs::copy(dir.join("db"), copy.join("db")).expect("copy database");
        std::fs::copy(dir.join("db-wal"), copy.join("db-wal")).expect("copy WAL");
        let c = connect(&copy.join("db"), 2000);
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
        assert_eq!(ok, "ok");
        c
    }

    #[test]
    fn each_commit_is_in_the_file_when_it_returns() {
        let dir = scratch("commit");
        let writer = connect(&dir.join("db"), 2000);
        writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT); CREATE INDEX t_n ON t (n)").expect("schema");
        let reader = connect(&dir.join("db"), 2000);
        let mut expected = (0, 0);
        for i in 0..300i64 {
            let rows = 1 + i % 4;
            let tx = writer.unchecked_transaction().expect("begin");
            for k in 0..rows {
                tx.execute("INSERT INTO t (n, s) VALUES (?1, ?2)", rusqlite::params![i * 10 + k, "x".repeat(300)]).expect("insert");
                expected.0 += 1;
                expected.1 += i * 10 + k;
            }
            tx.commit().expect("commit");
            // Another connection reads the new frames from the file, through the WAL index
            // the commit published.
            assert_eq!(count(&reader), expected, "after commit {i}");
        }
        // And a crash right now would keep all of them.
        assert_eq!(count(&recovered(&dir, "after-commits")), expected);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn large_transactions_that_spill_and_roll_back_stay_consistent() {
        let dir = scratch("spill");
        // A cache of 10 pages: a big transaction spills frames into the WAL before its commit,
        // then overwrites them, and SQLite rewrites their checksums at the commit.
        let writer = connect(&dir.join("db"), 10);
        writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT); CREATE INDEX t_n ON t (n)").expect("schema");
        let reader = connect(&dir.join("db"), 2000);

        let tx = writer.unchecked_transaction().expect("begin");
        for n in 0..3000i64 {
            tx.execute("INSERT INTO t (n, s) VALUES (?1, ?2)", rusqlite::params![n, "y".repeat(200)]).expect("insert");
        }
        tx.execute("UPDATE t SET n = n + 1", []).expect("update");
        tx.execute("UPDATE t SET s = 'z'", []).expect("update");
        tx.commit().expect("commit");
        let expected = (3000, (1..=3000).sum::<i64>());
        assert_eq!(count(&reader), expected);

        // A transaction that spills and is rolled back leaves nothing behind.
        let tx = writer.unchecked_transaction().expect("begin");
        for n in 0..3000i64 {
            tx.execute("INSERT INTO t (n, s) VALUES (?1, ?2)", rusqlite::params![n, "w".repeat(500)]).expect("insert");
        }
        tx.rollback().expect("rollback");
        assert_eq!(count(&reader), expected);
        writer.execute("INSERT INTO t (n, s) VALUES (7, 'after')", []).expect("insert after rollback");
        let expected = (expected.0 + 1, expected.1 + 7);
        assert_eq!(count(&reader), expected);
        assert_eq!(count(&recovered(&dir, "after-spill")), expected);

        // A checkpoint (from the reader's connection) and a WAL that starts over.
        reader.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("checkpoint");
        for n in 0..50i64 {
            writer.execute("INSERT INTO t (n, s) VALUES (?1, 'again')", [n]).expect("insert after restart");
        }
        let expected = (expected.0 + 50, expected.1 + (0..50).sum::<i64>());
        assert_eq!(count(&reader), expected);
        assert_eq!(count(&recovered(&dir, "after-restart")), expected);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
