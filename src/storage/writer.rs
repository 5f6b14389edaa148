//! Group commit for archive rows.
//!
//! Every one-to-one message is archived twice (for the sender and for the recipient), and a
//! caller only goes on once its row is durable. Written one by one, each row is its own
//! transaction: on SQLite a WAL append of every page it touched, on PostgreSQL a round trip and
//! a commit. Instead, rows are queued and written together when one is waited for: the
//! recipient's copy of a message, queued after the sender's, shares its commit, and under load
//! the rows of many messages do. At low rates a row waits for no timer. One connection is kept
//! for these writes alone, so on SQLite its page cache stays warm (another connection's write
//! would invalidate it), and WAL checkpoints run beside it.
//!
//! On SQLite, when this process holds the archive log (`archive_log`), the caller that waits
//! appends the queued rows to the log, in one write, and goes on: its rows are durable. The
//! writer thread commits the logged rows `DEFER_FOR` later in one transaction (or at once
//! when `DEFER_ROWS` are waiting), and every archive read or delete first has them committed
//! (`sync`). Measured at 200 messages a second (500 pairs): 0.22-0.23 s of server CPU per
//! 1,000 messages against 0.295-0.385 s when each message's rows were a commit.
//!
//! Without the log (another process holds it, or it failed), on SQLite (a rusqlite
//! connection) the caller that waits writes the queued rows itself, on
//! its own thread, when no one else is writing: a commit of a message's two rows is a few dozen
//! microseconds of SQLite work, and handing it to another thread and back cost more than that
//! in wake-ups. A caller that finds the connection in use leaves its rows to the holder, who
//! writes what is queued before letting go. The writer thread takes what a caller cannot finish
//! quickly (more than a few rounds for others, the database locked by another connection, a row
//! refused): it waits out locks and retries row by row. On PostgreSQL a task on one sqlx
//! connection writes every batch.
//!
//! The writer also keeps the archive's clock: each row's id is max(now in microseconds,
//! previous id + 1), given under the same lock that queues the row, and rows reach the database
//! in id order, so a reader never sees a row before one with a smaller id that is still to come.
//! (Several processes sharing one database would each need their own id space.)

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::archive::NewArchived;
use super::archive_log::ArchiveLog;
use super::{Result, StorageError};

enum Job {
    Insert(Vec<Waiting>),
    /// Commit the rows the archive log holds (SQLite; see `archive_log`), then answer.
    Flush(Option<oneshot::Sender<()>>),
    /// Finish a WAL checkpoint on the writer's connection (SQLite; see `checkpointer`).
    Checkpoint,
    Close(oneshot::Sender<()>),
}

type Waiting = (NewArchived, oneshot::Sender<Result<()>>);

/// Rows per transaction at most.
const MAX_BATCH: usize = 256;
/// Commits a caller makes for others before it hands what is left to the writer thread.
const LEADER_ROUNDS: usize = 4;
/// Rows per INSERT statement: a batch is cut into these sizes, so only a handful of distinct
/// statements are ever prepared.
const CHUNKS: [usize; 5] = [64, 16, 4, 2, 1];
/// How often the WAL is checkpointed when rows were written (SQLite)...
const CHECKPOINT_EVERY: Duration = Duration::from_millis(2000);
/// ... or sooner, each time this many more rows were written (about 5,000 frames, 20 MB of
/// WAL). With 16,384, at 3,000 messages/s two seconds of commits made a 200 MB WAL, and the
/// first commit after it started over cut the file back to `journal_size_limit` (64 MiB):
/// 130-190 ms with every commit waiting.
const CHECKPOINT_ROWS: u64 = 2048;
/// WAL frames (pages) past which the writer finishes a checkpoint itself, so that the WAL
/// starts over (16 MiB at 4 KiB pages).
const FINISH_FRAMES: i64 = 4096;
/// The writer finishes once a pool pass copied at most this many frames (what arrived during
/// the pass before it)...
const FINISH_LEFT: i64 = 1024;
/// ... or after this many passes in a row.
const CATCH_UP_PASSES: usize = 6;
/// How long rows stay in the archive log before the writer commits them (SQLite)...
const DEFER_FOR: Duration = Duration::from_millis(500);
/// ... or sooner, once this many are waiting.
const DEFER_ROWS: usize = 4096;
const COLUMNS: &str = "id, owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml";
const PARAMS: usize = 9;
const NEWEST: &str = "SELECT COALESCE(MAX(id), 0) FROM archive";

#[derive(Clone)]
pub struct ArchiveWriter {
    queue: Arc<Mutex<Queue>>,
    /// SQLite: the writer's connection, used by whoever writes (see `write_now`); `None` once
    /// closed.
    conn: Option<Arc<Mutex<Option<rusqlite::Connection>>>>,
    /// Rows written (or tried), for the checkpointer.
    written: Arc<Written>,
    /// Wakes the task that has the log's rows committed `DEFER_FOR` later.
    deferred: Arc<tokio::sync::Notify>,
}

/// Rows written, and a wake-up for the checkpointer each `CHECKPOINT_ROWS` of them.
#[derive(Default)]
struct Written {
    rows: AtomicU64,
    burst: tokio::sync::Notify,
}

impl Written {
    fn add(&self, n: usize) {
        let before = self.rows.fetch_add(n as u64, Ordering::Relaxed);
        if before / CHECKPOINT_ROWS != (before + n as u64) / CHECKPOINT_ROWS {
            self.burst.notify_one();
        }
    }
}

/// The last id given, the rows queued and not yet being written, and the writer's channel:
/// one lock, so rows reach the database in id order.
struct Queue {
    last: i64,
    rows: Vec<Waiting>,
    /// Rows sent to the writer thread and not yet written. While there are any, rows go the
    /// same way (behind them), never straight to the database.
    handed: usize,
    tx: mpsc::UnboundedSender<Job>,
    /// SQLite: the archive log, where rows are durable before they are committed (see
    /// `archive_log`); `None` on PostgreSQL, or when another process holds it or it failed.
    log: Option<ArchiveLog>,
    /// Rows in the log, not yet taken by the writer thread, in id order.
    deferred: Vec<NewArchived>,
    /// Rows the writer thread took from `deferred` and is committing.
    committing: usize,
}

impl Queue {
    fn new(last: i64, tx: mpsc::UnboundedSender<Job>, log: Option<ArchiveLog>) -> Arc<Mutex<Queue>> {
        Arc::new(Mutex::new(Queue { last, rows: Vec::new(), handed: 0, tx, log, deferred: Vec::new(), committing: 0 }))
    }

    fn next_id(&mut self) -> i64 {
        self.last = super::now_micros().max(self.last + 1);
        self.last
    }

    /// Hand the queued rows to the writer thread or task.
    fn flush(&mut self) {
        if !self.rows.is_empty() {
            let rows = std::mem::take(&mut self.rows);
            self.handed += rows.len();
            if let Err(mpsc::error::SendError(Job::Insert(rows))) = self.tx.send(Job::Insert(rows)) {
                for (_, done) in rows {
                    let _ = done.send(Err(closed()));
                }
            }
        }
    }
}

impl ArchiveWriter {
    /// Start the writer thread on its own connection to the SQLite database at `file`.
    /// `checkpoints` is the pool a background task checkpoints the WAL from, so that commits
    /// never wait for a whole checkpoint; the writer only finishes one (see `checkpointer`).
    pub async fn start_sqlite(file: &Path, checkpoints: AnyPool) -> Result<ArchiveWriter> {
        super::walvfs::install();
        let mut conn = rusqlite::Connection::open(file)?;
        // As the pool's connections, and no automatic checkpoint.
        conn.execute_batch(super::SQLITE_PRAGMAS)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
        let log = match ArchiveLog::open(file) {
            Ok(Some(opened)) => {
                // Rows a crash left in the log, before the clock is read from the archive.
                replay(&mut conn, &opened.recovered)?;
                for f in &opened.files {
                    ArchiveLog::remove(f);
                }
                Some(opened.log)
            }
            Ok(None) => {
                tracing::info!("the archive log is another process's: archive rows are committed one group at a time");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening the archive log: archive rows are committed one group at a time");
                None
            }
        };
        // The clock goes on from the newest row, whatever the system clock did meanwhile.
        let last: i64 = conn.query_row(NEWEST, [], |r| r.get(0))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let written = Arc::new(Written::default());
        tokio::spawn(checkpointer(checkpoints, file.to_path_buf(), written.clone(), stopped, tx.clone()));
        let deferred = Arc::new(tokio::sync::Notify::new());
        if log.is_some() {
            tokio::spawn(flusher(deferred.clone(), tx.clone()));
        }
        let writer = ArchiveWriter { queue: Queue::new(last, tx, log), conn: Some(Arc::new(Mutex::new(Some(conn)))), written, deferred };
        let thread = writer.clone();
        std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || run_sqlite(thread, rx, stop))
            .map_err(|e| StorageError::Invalid(format!("archive writer thread: {e}")))?;
        Ok(writer)
    }

    /// Start the writer task on its own connection (PostgreSQL).
    pub async fn start_task(mut conn: AnyConnection) -> Result<ArchiveWriter> {
        let last: i64 = sqlx::query_scalar(NEWEST).fetch_one(&mut conn).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = ArchiveWriter { queue: Queue::new(last, tx, None), conn: None, written: Arc::default(), deferred: Arc::default() };
        tokio::spawn(run_task(conn, rx, writer.clone()));
        Ok(writer)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue one row, made by `row` from the id it gets (keep it short: it runs under the
    /// queue's lock). The writer is told when a handle is waited for or dropped, so the rows
    /// queued meanwhile (the recipient's copy of a message after the sender's) share a commit.
    pub fn submit(&self, row: impl FnOnce(i64) -> NewArchived) -> Result<PendingWrite> {
        let (done, wait) = oneshot::channel();
        let mut q = self.queue();
        if q.tx.is_closed() {
            return Err(closed());
        }
        let id = q.next_id();
        q.rows.push((NewArchived { id, ..row(id) }, done));
        Ok(PendingWrite { wait, writer: self.clone() })
    }

    /// The queued rows are wanted now. On SQLite, when nothing is ahead of them at the writer
    /// thread and no one else is writing, the caller writes them itself, on its own thread: a
    /// commit of a message's two rows is a few dozen microseconds of SQLite work, and a
    /// hand-off to another thread and back cost as much again in wake-ups. Whoever holds the
    /// connection writes what is queued before letting it go, so a caller that finds it busy
    /// just leaves its rows; after a few rounds, or if the database is busy or refuses a row,
    /// the rest goes to the writer thread (which waits out locks and retries row by row).
    /// On PostgreSQL the rows go to the writer task.
    fn write_now(&self) {
        let mut q = self.queue();
        if q.rows.is_empty() {
            return;
        }
        if q.log.is_some() {
            return self.to_log(q);
        }
        let Some(conn) = self.conn.as_ref().filter(|_| q.handed == 0) else {
            return q.flush();
        };
        let Ok(mut conn) = conn.try_lock() else {
            return; // its holder writes these before letting go
        };
        let Some(db) = conn.as_mut() else {
            return q.flush(); // closed: the writer thread answers
        };
        let _ = db.busy_timeout(Duration::ZERO);
        for _ in 0..LEADER_ROUNDS {
            let rows = std::mem::take(&mut q.rows);
            drop(q);
            let refs: Vec<&NewArchived> = rows.iter().map(|(r, _)| r).collect();
            let result = write_sqlite(db, &refs);
            drop(refs);
            self.written.add(rows.len());
            q = self.queue();
            if result.is_err() {
                // Locked by another connection, or a row refused: the thread takes these first.
                let later = std::mem::replace(&mut q.rows, rows);
                q.flush();
                q.rows = later;
                break;
            }
            for (_, done) in rows {
                let _ = done.send(Ok(()));
            }
            if q.rows.is_empty() {
                drop(conn); // while the queue is locked: a caller that found it busy has seen this
                return;
            }
        }
        q.flush();
        drop(conn); // as above
    }

    /// SQLite with the archive log: append the queued rows to it in one write; they are then
    /// durable, and their callers go on. The writer thread commits them later (`flusher`).
    /// If the log cannot be written, it is given up: its rows and these go to the writer
    /// thread, in id order, and rows are committed one group at a time from then on.
    fn to_log(&self, mut q: std::sync::MutexGuard<'_, Queue>) {
        let rows = std::mem::take(&mut q.rows);
        let Some(log) = q.log.as_mut() else { return };
        match log.append(rows.iter().map(|(r, _)| r)) {
            Ok(()) => {
                let before = q.deferred.len();
                for (row, done) in rows {
                    q.deferred.push(row);
                    let _ = done.send(Ok(()));
                }
                if before == 0 {
                    self.deferred.notify_one();
                }
                if before < DEFER_ROWS && q.deferred.len() >= DEFER_ROWS {
                    let _ = q.tx.send(Job::Flush(None));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the archive log: archive rows are committed one group at a time from now on");
                q.log = None;
                let mut all: Vec<Waiting> = std::mem::take(&mut q.deferred).into_iter().map(|r| (r, oneshot::channel().0)).collect();
                all.extend(rows);
                q.rows = all;
                q.flush();
            }
        }
    }

    /// Have every row queued or in the archive log committed: archive reads and deletes call
    /// this first, so none misses a row whose message was acknowledged.
    pub async fn sync(&self) -> Result<()> {
        self.write_now();
        let wait = {
            let q = self.queue();
            if q.deferred.is_empty() && q.committing == 0 {
                return Ok(());
            }
            let (done, wait) = oneshot::channel();
            q.tx.send(Job::Flush(Some(done))).map_err(|_| closed())?;
            wait
        };
        wait.await.map_err(|_| closed())
    }

    /// Finish what is queued and close the connection.
    pub async fn close(&self) {
        self.write_now();
        let (done, wait) = oneshot::channel();
        let sent = {
            let mut q = self.queue();
            q.flush();
            let _ = q.tx.send(Job::Flush(None));
            q.tx.send(Job::Close(done)).is_ok()
        };
        if sent {
            let _ = wait.await;
        }
        // Let the log go (its lock, its empty last file), so that the database can be opened
        // again with its log, in this process or another. Rows that came in since the flush
        // stay in the log's files and are replayed then.
        self.queue().log = None;
    }
}

/// A queued row. A caller that has more to do (route the message, queue the recipient's
/// copy) submits, goes on, and waits at the end: both copies of a message then share one
/// commit. Dropped without waiting, the row is still written.
pub struct PendingWrite {
    wait: oneshot::Receiver<Result<()>>,
    writer: ArchiveWriter,
}

impl PendingWrite {
    /// Resolves once the row is durable: committed, or on SQLite in the archive log.
    pub async fn wait(mut self) -> Result<()> {
        self.writer.write_now();
        (&mut self.wait).await.map_err(|_| closed())?
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.writer.write_now();
    }
}

fn closed() -> StorageError {
    StorageError::Invalid("the archive writer has stopped".into())
}

/// Checkpoint the WAL after writes, PASSIVE, from a pool connection: it never waits for, nor
/// blocks, the writer, and copies most of the WAL into the database. But under a steady stream
/// of commits it never reaches the WAL's end (frames keep arriving while it runs), and the WAL
/// starts over only after a checkpoint that did: left alone, the WAL grew by the whole traffic
/// (120 MB in 20 s at 200 messages/s). So when the WAL is past `FINISH_FRAMES`, the writer
/// thread is asked to finish: it checkpoints on its own connection with no commit of its own
/// in between, which copies only what arrived since and lets the next commit restart the WAL.
///
/// Commits wait while the writer finishes, so it is asked only once the pool's passes have
/// caught up: passes follow one another while each still copies more than `FINISH_LEFT`
/// frames (the frames committed while the pass before it ran), up to `CATCH_UP_PASSES`. A
/// finishing pass that had to copy what a whole long pass let in (tens of thousands of frames
/// at 3,000 messages/s) held commits for 35-200 ms, and the latency's p99 was 300 ms.
async fn checkpointer(
    pool: AnyPool,
    db: std::path::PathBuf,
    written: Arc<Written>,
    mut stopped: oneshot::Receiver<()>,
    writer: mpsc::UnboundedSender<Job>,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    // For syncing the database before the writer finishes. Never closed: closing any
    // descriptor of a file drops every POSIX lock the process holds on it, and SQLite's
    // connections hold their shared lock on the database for as long as they are open.
    let db: Option<&'static std::fs::File> = match std::fs::File::open(&db) {
        Ok(f) => Some(Box::leak(Box::new(f))),
        Err(e) => {
            tracing::warn!(error = %e, "opening the database for checkpoints");
            None
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
            _ = written.burst.notified() => tick.reset(),
        }
        let now = written.rows.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        let mut backfilled = 0;
        for pass in 1..=CATCH_UP_PASSES {
            let Some((log, done)) = passive_checkpoint(&pool).await else { break };
            // `done` counts the frames checkpointed in the WAL as it was when the pass began
            // (frames committed meanwhile are in `log` only from the next pass); it starts
            // from zero again after the WAL started over. The first pass of a round counts
            // what earlier rounds copied too: at worst one pass more.
            let copied = if done >= backfilled { done - backfilled } else { done };
            backfilled = done;
            match after_pass(pass, log, copied) {
                AfterPass::Rest => break,
                AfterPass::Again => {}
                AfterPass::Finish => {
                    // SQLite syncs the database only in a checkpoint that reaches the WAL's
                    // end: the pages the pool's passes copied are still to be written, and
                    // the writer's pass would sync them all with commits waiting (32-70 ms
                    // here at 3,000 messages/s). Synced now, it syncs only its own.
                    if let Some(f) = db {
                        let synced =
                            tokio::task::spawn_blocking(move || f.sync_data()).await.map_err(std::io::Error::other).and_then(|r| r);
                        if let Err(e) = synced {
                            tracing::warn!(error = %e, "syncing the database before a checkpoint");
                        }
                    }
                    let _ = writer.send(Job::Checkpoint);
                    break;
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AfterPass {
    /// The WAL is short: wait for the next tick or burst.
    Rest,
    /// Another pool pass: this one copied many frames, and as many may have come meanwhile.
    Again,
    /// The writer finishes (little is left to copy), and the WAL starts over.
    Finish,
}

/// What follows pool pass number `pass` (from 1), which found `log` frames in the WAL and
/// copied `copied` of them.
fn after_pass(pass: usize, log: i64, copied: i64) -> AfterPass {
    if log < FINISH_FRAMES {
        AfterPass::Rest
    } else if copied <= FINISH_LEFT || pass >= CATCH_UP_PASSES {
        AfterPass::Finish
    } else {
        AfterPass::Again
    }
}

/// One PASSIVE checkpoint from the pool: (frames in the WAL, frames checkpointed).
async fn passive_checkpoint(pool: &AnyPool) -> Option<(i64, i64)> {
    match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await {
        // (busy, frames in the WAL, frames checkpointed)
        Ok(r) => {
            let (log, done): (i64, i64) = (r.get(1), r.get(2));
            tracing::debug!(log, done, "WAL checkpoint");
            Some((log, done))
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed");
            None
        }
    }
}

/// The writer thread's checkpoint (see `checkpointer`), with the connection held.
fn finish_checkpoint(db: &rusqlite::Connection) {
    let r = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
    match r {
        Ok((log, done)) if done < log => tracing::debug!(log, done, "WAL checkpoint incomplete (a reader is behind)"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
    }
}

/// What `collect` found besides rows.
#[derive(Default)]
struct Collected {
    checkpoint: bool,
    /// Commit the archive log's rows, then answer these.
    flush: Option<Vec<oneshot::Sender<()>>>,
    close: Option<oneshot::Sender<()>>,
}

/// Move `first` and whatever else is queued (up to about a batch) into `batch`; a close
/// request ends the batch.
fn collect(first: Job, rx: &mut mpsc::UnboundedReceiver<Job>, batch: &mut Vec<Waiting>) -> Collected {
    let mut got = Collected::default();
    let mut next = Some(first);
    while let Some(job) = next.take() {
        match job {
            Job::Insert(rows) => batch.extend(rows),
            Job::Checkpoint => got.checkpoint = true,
            Job::Flush(done) => got.flush.get_or_insert_with(Vec::new).extend(done),
            Job::Close(done) => {
                got.close = Some(done);
                break;
            }
        }
        if batch.len() < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    got
}

fn batch_failed(e: &StorageError, rows: usize) {
    // One bad row must not fail the others: each is then written alone and answered alone.
    tracing::warn!(error = %e, rows, "archive batch failed; writing its rows one by one");
}

/// Write `rows` in one transaction (SQLite); if that fails, each alone. `None`: the batch went
/// in; else each row's own result.
fn write_or_each(db: &mut rusqlite::Connection, rows: &[&NewArchived]) -> Option<Vec<Result<()>>> {
    let e = write_sqlite(db, rows).err()?;
    batch_failed(&e, rows.len());
    Some(rows.iter().map(|r| write_sqlite(db, &[*r])).collect())
}

fn run_sqlite(writer: ArchiveWriter, mut rx: mpsc::UnboundedReceiver<Job>, _stop: oneshot::Sender<()>) {
    let Some(shared) = writer.conn.clone() else { return };
    let mut batch = Vec::new();
    while let Some(job) = rx.blocking_recv() {
        let Collected { mut checkpoint, mut flush, close: closing } = collect(job, &mut rx, &mut batch);
        let mut conn = shared.lock().unwrap_or_else(|e| e.into_inner());
        // Rows of `batch` that came through the channel (counted in `handed`).
        let mut counted = batch.len();
        loop {
            match conn.as_mut() {
                Some(db) if !batch.is_empty() => {
                    writer.written.add(batch.len());
                    let _ = db.busy_timeout(Duration::from_secs(10));
                    let rows: Vec<&NewArchived> = batch.iter().map(|(r, _)| r).collect();
                    let mut each = write_or_each(db, &rows).map(Vec::into_iter);
                    drop(rows);
                    for (_, done) in batch.drain(..) {
                        let _ = done.send(each.as_mut().and_then(Iterator::next).unwrap_or(Ok(())));
                    }
                }
                _ => {
                    for (_, done) in batch.drain(..) {
                        let _ = done.send(Err(closed()));
                    }
                }
            }
            if let Some(answers) = flush.take() {
                if let Some(db) = conn.as_mut() {
                    commit_deferred(&writer, db);
                }
                for done in answers {
                    let _ = done.send(());
                }
            }
            if std::mem::take(&mut checkpoint) {
                if let Some(db) = conn.as_ref() {
                    finish_checkpoint(db);
                }
            }
            // Before letting the connection go, write what callers left queued meanwhile,
            // unless more is on its way through the channel (it is older: it goes first).
            let mut q = writer.queue();
            q.handed -= counted.min(q.handed);
            // (With the archive log, queued rows are left to their callers, who append them.)
            if q.handed == 0 && !q.rows.is_empty() && closing.is_none() && q.log.is_none() {
                batch = std::mem::take(&mut q.rows);
                counted = 0;
                continue;
            }
            drop(conn);
            break;
        }
        if let Some(done) = closing {
            *shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let _ = done.send(());
            return;
        }
    }
}

/// Wait `DEFER_FOR` after the archive log gets rows, then have the writer thread commit them.
async fn flusher(wake: Arc<tokio::sync::Notify>, tx: mpsc::UnboundedSender<Job>) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tx.closed() => return,
        }
        tokio::time::sleep(DEFER_FOR).await;
        if tx.send(Job::Flush(None)).is_err() {
            return;
        }
    }
}

/// The writer thread commits the rows the archive log holds, in one transaction, after
/// starting the next log file; the finished file is deleted once they are in. A row the
/// database refuses is logged, and its file kept: the next start replays it.
fn commit_deferred(writer: &ArchiveWriter, db: &mut rusqlite::Connection) {
    let (rows, finished) = {
        let mut q = writer.queue();
        if q.deferred.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut q.deferred);
        q.committing = rows.len();
        let finished = match q.log.as_mut().map(|l| l.rotate()) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "starting the next archive log file; the current one grows on");
                None
            }
            None => None,
        };
        (rows, finished)
    };
    writer.written.add(rows.len());
    let _ = db.busy_timeout(Duration::from_secs(10));
    let refs: Vec<&NewArchived> = rows.iter().collect();
    let mut refused = 0;
    for (r, e) in refs.iter().zip(write_or_each(db, &refs).into_iter().flatten()) {
        if let Err(e) = e {
            refused += 1;
            tracing::error!(error = %e, id = r.id, owner = %r.owner, "archive row refused; kept in the archive log for the next start");
        }
    }
    writer.queue().committing = 0;
    if let Some(f) = finished.filter(|_| refused == 0) {
        ArchiveLog::remove(&f);
    }
}

/// Insert rows left in the archive log by a crash; rows already in the archive are skipped,
/// and a row the database refuses is reported and left out (it must not keep the server from
/// starting).
fn replay(conn: &mut rusqlite::Connection, rows: &[NewArchived]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let (mut added, mut refused) = (0, 0);
    {
        let mut st = tx.prepare(&format!("INSERT OR IGNORE INTO archive ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"))?;
        for r in rows {
            match st.execute(rusqlite::params![r.id, r.owner, r.stanza_id, r.peer, r.peer_full, r.outgoing, r.ts, r.origin_id, r.xml]) {
                Ok(n) => added += n,
                Err(e) => {
                    refused += 1;
                    tracing::error!(error = %e, id = r.id, owner = %r.owner, "archive row from the archive log refused");
                }
            }
        }
    }
    tx.commit()?;
    tracing::info!(rows = rows.len(), added, refused, "archive rows replayed from the archive log");
    Ok(())
}

/// All rows in one transaction, in statements of `CHUNKS` rows, each prepared once. A batch
/// that fits one statement (the two copies of a message) is that statement alone, atomic by
/// itself, without BEGIN and COMMIT.
fn write_sqlite(conn: &mut rusqlite::Connection, rows: &[&NewArchived]) -> Result<()> {
    if CHUNKS.contains(&rows.len()) {
        return insert_sqlite(conn, rows);
    }
    let tx = conn.transaction()?;
    for chunk in chunks(rows) {
        insert_sqlite(&tx, chunk)?;
    }
    tx.commit()?;
    Ok(())
}

/// `rows` cut into statements of `CHUNKS` sizes, largest first.
fn chunks<'a, 'r>(mut rest: &'a [&'r NewArchived]) -> impl Iterator<Item = &'a [&'r NewArchived]> {
    std::iter::from_fn(move || {
        let n = CHUNKS.iter().copied().find(|c| *c <= rest.len())?;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// One INSERT of `rows` (a length from `CHUNKS`).
fn insert_sqlite(conn: &rusqlite::Connection, rows: &[&NewArchived]) -> Result<()> {
    let mut st = conn.prepare_cached(insert_sql_sqlite(rows.len()))?;
    let values = rows.iter().flat_map(|r| -> [&dyn rusqlite::ToSql; PARAMS] {
        [&r.id, &r.owner, &r.stanza_id, &r.peer, &r.peer_full, &r.outgoing, &r.ts, &r.origin_id, &r.xml]
    });
    st.execute(rusqlite::params_from_iter(values))?;
    Ok(())
}

async fn run_task(mut conn: AnyConnection, mut rx: mpsc::UnboundedReceiver<Job>, writer: ArchiveWriter) {
    let mut batch = Vec::new();
    while let Some(job) = rx.recv().await {
        let closing = collect(job, &mut rx, &mut batch).close;
        if !batch.is_empty() {
            {
                let mut q = writer.queue();
                q.handed -= batch.len().min(q.handed);
            }
            let rows: Vec<&NewArchived> = batch.iter().map(|(r, _)| r).collect();
            if let Err(e) = write(&mut conn, &rows).await {
                batch_failed(&e, batch.len());
                for (row, done) in batch.drain(..) {
                    let _ = done.send(write(&mut conn, &[&row]).await);
                }
            }
            for (_, done) in batch.drain(..) {
                let _ = done.send(Ok(()));
            }
        }
        if let Some(done) = closing {
            let _ = conn.close().await;
            let _ = done.send(());
            return;
        }
    }
}

/// All rows in one transaction. A batch that fits one statement (the usual case at moderate
/// load: the two copies of a message) is that statement alone, which is atomic by itself: one
/// round trip to the database instead of three (BEGIN, INSERT, COMMIT).
async fn write(conn: &mut AnyConnection, rows: &[&NewArchived]) -> Result<()> {
    if CHUNKS.contains(&rows.len()) {
        insert_chunk(rows).execute(&mut *conn).await?;
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    for chunk in chunks(rows) {
        insert_chunk(chunk).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One multi-row INSERT for `rows` (a length from `CHUNKS`).
fn insert_chunk<'q>(rows: &[&'q NewArchived]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(insert_sql(rows.len()));
    for r in rows {
        q = q
            .bind(r.id)
            .bind(r.owner.as_str())
            .bind(r.stanza_id.as_str())
            .bind(r.peer.as_str())
            .bind(r.peer_full.as_str())
            .bind(r.outgoing as i64)
            .bind(r.ts)
            .bind(r.origin_id.as_deref())
            .bind(r.xml.as_str());
    }
    q
}

/// `INSERT ... VALUES ($1, ..., $9), ($10, ...)` for `n` rows, built once per size.
fn insert_sql(n: usize) -> &'static str {
    static SQL: [OnceLock<String>; CHUNKS.len()] = [const { OnceLock::new() }; CHUNKS.len()];
    multi_row_insert(&SQL, "INSERT", n)
}

/// The same for SQLite, as `INSERT OR ROLLBACK`: a refused row ends the whole transaction, as
/// a failed batch does anyway (the writer thread retries its rows one by one). SQLite then
/// keeps no statement journal: with the default ABORT, every multi-row statement inside a
/// transaction (a batch of more than one chunk, under load) first copied each page it was
/// about to change, so that it alone could be undone (7% of the server's CPU at 10,000
/// messages per second).
fn insert_sql_sqlite(n: usize) -> &'static str {
    static SQL: [OnceLock<String>; CHUNKS.len()] = [const { OnceLock::new() }; CHUNKS.len()];
    multi_row_insert(&SQL, "INSERT OR ROLLBACK", n)
}

/// `verb INTO archive (...) VALUES (...), ...` for the `CHUNKS` size `n` (else a single row),
/// made once into `cache`.
fn multi_row_insert(cache: &'static [OnceLock<String>; CHUNKS.len()], verb: &str, n: usize) -> &'static str {
    let i = CHUNKS.iter().position(|c| *c == n).unwrap_or(CHUNKS.len() - 1);
    cache[i].get_or_init(|| {
        let values: Vec<String> = (0..CHUNKS[i])
            .map(|r| {
                let p: Vec<String> = (1..=PARAMS).map(|c| format!("${}", r * PARAMS + c)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        format!("{verb} INTO archive ({COLUMNS}) VALUES {}", values.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_checkpointer_is_woken_once_per_burst_of_rows() {
        let w = Written::default();
        let woken = |w: &Written| {
            let n = w.burst.notified();
            ready_at_once(n)
        };
        w.add(10);
        assert!(!woken(&w), "10 rows are no burst");
        w.add(CHECKPOINT_ROWS as usize);
        assert!(woken(&w), "crossing a multiple of CHECKPOINT_ROWS wakes it");
        w.add(1);
        assert!(!woken(&w), "once");
    }

    #[test]
    fn the_writer_finishes_a_checkpoint_only_once_the_pool_has_caught_up() {
        assert_eq!(after_pass(1, FINISH_FRAMES - 1, 40_000), AfterPass::Rest, "a short WAL is left alone");
        assert_eq!(after_pass(1, 40_000, 34_000), AfterPass::Again, "a long pass let many frames in");
        assert_eq!(after_pass(2, 44_000, 6_000), AfterPass::Again);
        assert_eq!(after_pass(3, 45_000, FINISH_LEFT), AfterPass::Finish, "little is left for the writer");
        assert_eq!(after_pass(CATCH_UP_PASSES, 90_000, 20_000), AfterPass::Finish, "the passes are bounded");
    }

    /// Whether a future is ready at its first poll.
    fn ready_at_once<F: std::future::Future>(f: F) -> bool {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn statements_number_their_parameters_in_order() {
        assert_eq!(
            insert_sql(1),
            "INSERT INTO archive (id, owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        let four = insert_sql(4);
        assert!(four.ends_with("($28, $29, $30, $31, $32, $33, $34, $35, $36)"), "{four}");
        assert_eq!(insert_sql(64).matches('(').count(), 65);
        assert_eq!(insert_sql_sqlite(2).strip_prefix("INSERT OR ROLLBACK"), insert_sql(2).strip_prefix("INSERT"));
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::storage::archive::ArchiveFilter;
    use crate::storage::Storage;

    fn row(owner: &'static str, sid: String) -> impl FnOnce(i64) -> NewArchived {
        move |id| NewArchived {
            id,
            owner: owner.into(),
            stanza_id: sid.clone(),
            peer: "peer@localhost".into(),
            peer_full: "peer@localhost/r".into(),
            outgoing: false,
            ts: id,
            origin_id: None,
            xml: format!("<message xmlns='jabber:client'><body>{sid}</body></message>"),
        }
    }

    fn all(owner: &str) -> ArchiveFilter {
        ArchiveFilter { owner: owner.into(), limit: 1000, ..Default::default() }
    }

    /// The database refuses rows of `bad@localhost` from now on, as a constraint or a full
    /// disk would.
    async fn refuse_bad_rows(s: &Storage) {
        sqlx::raw_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON archive WHEN NEW.owner = 'bad@localhost' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&s.pool)
        .await
        .unwrap();
    }

    /// A fresh database for test `name`: (its folder, the file, the storage URL).
    fn temp_db(name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("starling-writer-{name}-{}-{}", std::process::id(), super::super::now_micros()));
        let file = dir.join("t.db");
        let url = format!("sqlite:{}", file.display());
        (dir, file, url)
    }

    /// Hold the archive log of database `file`, as another process would: a writer opened
    /// meanwhile commits its rows one group at a time (the path PostgreSQL always takes).
    fn hold_log(file: &std::path::Path) -> crate::storage::archive_log::Opened {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        ArchiveLog::open(file).unwrap().expect("the log is free")
    }

    fn log_files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains("-archive-log.") && !n.ends_with(".lock"))
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_rows_are_all_committed_in_id_order_and_a_bad_row_fails_alone() {
        let (dir, file, url) = temp_db("rows");
        let _direct = hold_log(&file);
        let s = Storage::open(&url, 4).await.unwrap();
        refuse_bad_rows(&s).await;
        // 300 rows queued at once from two tasks: more than one batch, several statement sizes.
        let (a, b) = (s.clone(), s.clone());
        let one = tokio::spawn(async move {
            (0..150).map(|i| a.archive_writer.submit(row("a@localhost", format!("x{i}"))).unwrap()).collect::<Vec<_>>()
        });
        let two = tokio::spawn(async move {
            (0..150).map(|i| b.archive_writer.submit(row("a@localhost", format!("y{i}"))).unwrap()).collect::<Vec<_>>()
        });
        let mut pending = one.await.unwrap();
        pending.extend(two.await.unwrap());
        // In the same burst, the refused row: only it fails.
        let bad = s.archive_writer.submit(row("bad@localhost", "bad".into())).unwrap();
        let after = s.archive_writer.submit(row("a@localhost", "last".into())).unwrap();
        for p in pending {
            p.wait().await.unwrap();
        }
        assert!(bad.wait().await.is_err(), "the refused row must fail");
        after.wait().await.unwrap();
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        assert_eq!(rows.len(), 301);
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
        assert_eq!(rows.last().map(|r| r.stanza_id.as_str()), Some("last"), "archive order is submission order");
        let xs: Vec<&str> = rows.iter().map(|r| r.stanza_id.as_str()).filter(|x| x.starts_with('x')).collect();
        assert_eq!(xs, (0..150).map(|i| format!("x{i}")).collect::<Vec<_>>(), "one task's rows keep their order");

        // A row whose handle is dropped unwaited is written all the same.
        drop(s.archive_writer.submit(row("a@localhost", "dropped".into())).unwrap());
        let mut rows = Vec::new();
        for _ in 0..100 {
            rows = s.archive_query(&all("a@localhost")).await.unwrap();
            if rows.len() == 302 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rows.last().map(|r| r.stanza_id.as_str()), Some("dropped"));

        // The clock goes on from the newest row even when the system clock is behind it.
        let ahead = rows.last().unwrap().id + 3_600_000_000;
        sqlx::query("UPDATE archive SET id = $1 WHERE stanza_id = 'dropped'").bind(ahead).execute(&s.pool).await.unwrap();
        s.close().await;
        let s = Storage::open(&url, 4).await.unwrap();
        s.archive_writer.submit(row("a@localhost", "next".into())).unwrap().wait().await.unwrap();
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        assert_eq!(rows.last().map(|r| (r.id, r.stanza_id.as_str())), Some((ahead + 1, "next")));
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A batch of several statements is one transaction: a row refused in its last statement
    /// (here a duplicate id, which `INSERT OR ROLLBACK` answers by ending the transaction)
    /// leaves none of the batch behind, and the connection takes the next batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_of_several_statements_is_all_or_nothing() {
        let (dir, file, url) = temp_db("batch");
        let s = Storage::open(&url, 4).await.unwrap();
        let mut conn = rusqlite::Connection::open(&file).unwrap();
        let made: Vec<NewArchived> = (1..=7).map(|i| row("a@localhost", format!("r{i}"))(i)).collect();
        let refs: Vec<&NewArchived> = made.iter().collect();
        write_sqlite(&mut conn, &refs).unwrap(); // 4 + 2 + 1 rows: three statements
        let count = |c: &rusqlite::Connection| c.query_row("SELECT COUNT(*) FROM archive", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count(&conn), 7);
        let mut next: Vec<NewArchived> = (8..=14).map(|i| row("a@localhost", format!("r{i}"))(i)).collect();
        next[6].id = 3; // taken: the third statement is refused
        let refs: Vec<&NewArchived> = next.iter().collect();
        assert!(write_sqlite(&mut conn, &refs).is_err());
        assert!(conn.is_autocommit(), "no transaction left open");
        assert_eq!(count(&conn), 7, "nothing of the refused batch stays");
        next[6].id = 14;
        let refs: Vec<&NewArchived> = next.iter().collect();
        write_sqlite(&mut conn, &refs).unwrap();
        assert_eq!(count(&conn), 14);
        drop(conn);
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Under a steady stream of commits the WAL must start over now and then. (It did not:
    /// the pool's checkpoints never caught up with the writer, and the WAL grew by the whole
    /// traffic, about 10 MB/s here.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_steady_writes() {
        let (dir, _, url) = temp_db("wal");
        let s = Storage::open(&url, 4).await.unwrap();
        let wal = dir.join("t.db-wal");
        let started = std::time::Instant::now();
        let (mut commits, mut largest) = (0u64, 0u64);
        while started.elapsed() < Duration::from_secs(7) {
            let a = s.archive_writer.submit(row("a@localhost", format!("a{commits}"))).unwrap();
            let b = s.archive_writer.submit(row("b@localhost", format!("b{commits}"))).unwrap();
            a.wait().await.unwrap();
            b.wait().await.unwrap();
            commits += 1;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(commits > 2000, "steady writes: {commits} commits");
        // Two seconds of these commits are about 20 MB of WAL; without restarts it is seven.
        assert!(largest < 48 << 20, "WAL reached {} MB over {commits} commits", largest >> 20);
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_wait_out_another_connections_write_lock_and_keep_their_order() {
        use sqlx::Acquire;
        let (dir, file, url) = temp_db("busy");
        let _direct = hold_log(&file);
        let s = Storage::open(&url, 4).await.unwrap();
        // Another connection holds the write lock (as a roster or offline write would).
        let mut other = s.pool.acquire().await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("INSERT INTO archive_prefs (owner, default_mode) VALUES ('x@localhost', 'always')").execute(&mut *tx).await.unwrap();
        // The first row cannot be written by its caller: it goes to the writer thread, which
        // waits for the lock; the second goes behind it.
        let first = s.archive_writer.submit(row("a@localhost", "first".into())).unwrap();
        let first = tokio::spawn(first.wait());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = s.archive_writer.submit(row("a@localhost", "second".into())).unwrap();
        let second = tokio::spawn(second.wait());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!first.is_finished() && !second.is_finished(), "nothing is written while the lock is held");
        tx.commit().await.unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        let sids: Vec<&str> = rows.iter().map(|r| r.stanza_id.as_str()).collect();
        assert_eq!(sids, ["first", "second"]);
        assert!(rows[0].id < rows[1].id);
        // With the lock gone, a caller writes its row itself again.
        s.archive_writer.submit(row("a@localhost", "third".into())).unwrap().wait().await.unwrap();
        assert_eq!(s.archive_writer.queue().handed, 0);
        drop(other);
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// With the archive log, a row is durable as soon as it is logged: its caller goes on
    /// before it is committed, and every read first has the logged rows committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logged_rows_are_seen_by_the_next_read_in_order_and_a_refused_one_is_kept_in_the_log() {
        let (dir, file, url) = temp_db("log");
        let s = Storage::open(&url, 4).await.unwrap();
        assert!(s.archive_writer.queue().log.is_some(), "SQLite writes through the archive log");
        refuse_bad_rows(&s).await;
        let (a, b) = (s.clone(), s.clone());
        let one = tokio::spawn(async move {
            for i in 0..150 {
                a.archive_writer.submit(row("a@localhost", format!("x{i}"))).unwrap().wait().await.unwrap();
            }
        });
        let two = tokio::spawn(async move {
            for i in 0..150 {
                b.archive_writer.submit(row("a@localhost", format!("y{i}"))).unwrap().wait().await.unwrap();
            }
        });
        one.await.unwrap();
        two.await.unwrap();
        // Logged, not committed: the writer commits DEFER_FOR later, or before a read.
        let direct = rusqlite::Connection::open(&file).unwrap();
        let count = |c: &rusqlite::Connection| c.query_row("SELECT COUNT(*) FROM archive", [], |r| r.get::<_, i64>(0)).unwrap();
        let before = count(&direct);
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        assert_eq!(rows.len(), 300, "the read sees every acknowledged row ({before} were committed before it)");
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
        assert_eq!(count(&direct), 300);
        let xs: Vec<&str> = rows.iter().map(|r| r.stanza_id.as_str()).filter(|x| x.starts_with('x')).collect();
        assert_eq!(xs, (0..150).map(|i| format!("x{i}")).collect::<Vec<_>>(), "one task's rows keep their order");
        assert_eq!(log_files(&dir).len(), 1, "committed files are deleted: {:?}", log_files(&dir));

        // Without a read, the writer commits within DEFER_FOR.
        s.archive_writer.submit(row("a@localhost", "quiet".into())).unwrap().wait().await.unwrap();
        let mut waited = Duration::ZERO;
        while count(&direct) < 301 && waited < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        assert_eq!(count(&direct), 301, "committed {waited:?} after it was logged");

        // A row the database refuses: its caller got on (it was logged), the others of its
        // batch are committed, and its file stays for the next start.
        s.archive_writer.submit(row("bad@localhost", "bad".into())).unwrap().wait().await.unwrap();
        s.archive_writer.submit(row("a@localhost", "after".into())).unwrap().wait().await.unwrap();
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        assert_eq!(rows.last().map(|r| r.stanza_id.as_str()), Some("after"));
        assert_eq!(log_files(&dir).len(), 2, "the refused row's file is kept: {:?}", log_files(&dir));
        s.close().await;
        // Replayed at the next start, refused again, and the server starts all the same.
        direct.execute_batch("DROP TRIGGER refuse").unwrap();
        let s = Storage::open(&url, 4).await.unwrap();
        assert_eq!(s.archive_query(&all("bad@localhost")).await.unwrap().len(), 1, "replayed once the database accepts it");
        assert_eq!(count(&direct), 303);
        assert_eq!(log_files(&dir).len(), 1, "replayed files are deleted: {:?}", log_files(&dir));
        s.close().await;
        assert_eq!(log_files(&dir), Vec::<String>::new(), "a clean close leaves no log file");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Rows in the log when the process died (never committed) are in the archive after the
    /// next start, once, and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_left_in_the_log_by_a_crash_are_replayed_at_start() {
        let (dir, file, url) = temp_db("crash");
        // One row committed before the crash, and logged too (the file is deleted only after
        // the commit): it must not come back twice.
        let s = Storage::open(&url, 4).await.unwrap();
        s.archive_writer.submit(row("a@localhost", "committed".into())).unwrap().wait().await.unwrap();
        let committed = s.archive_query(&all("a@localhost")).await.unwrap();
        s.close().await;
        drop(s);
        let crashed = {
            let mut log = hold_log(&file).log;
            let first = committed[0].id;
            let rows: Vec<NewArchived> = (0..3).map(|i| row("a@localhost", format!("lost{i}"))(first + 1 + i)).collect();
            let again = row("a@localhost", "committed".into())(first);
            log.append([&again, &rows[0]]).unwrap();
            log.rotate().unwrap();
            log.append([&rows[1], &rows[2]]).unwrap();
            log // dropped below, as a killed process's descriptors are
        };
        drop(crashed);
        let s = Storage::open(&url, 4).await.unwrap();
        let sids: Vec<String> = s.archive_query(&all("a@localhost")).await.unwrap().into_iter().map(|r| r.stanza_id).collect();
        assert_eq!(sids, ["committed", "lost0", "lost1", "lost2"]);
        // The clock goes on after the replayed rows.
        s.archive_writer.submit(row("a@localhost", "next".into())).unwrap().wait().await.unwrap();
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        assert_eq!(rows.last().map(|r| r.stanza_id.as_str()), Some("next"));
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A log that cannot be written (a full disk) is given up: the rows it held and the rows
    /// that failed to go in are committed directly, in id order, and their callers hear of
    /// it only as a commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_that_fails_is_given_up_and_its_rows_committed_in_order() {
        let (dir, _, url) = temp_db("full");
        let s = Storage::open(&url, 4).await.unwrap();
        let w = &s.archive_writer;
        let pending = {
            // The writer thread cannot commit while the test holds its connection: the logged
            // rows stay in the log whatever the timing.
            let _busy = w.conn.as_ref().unwrap().lock().unwrap();
            let mut pending: Vec<PendingWrite> = (0..5).map(|i| w.submit(row("a@localhost", format!("logged{i}"))).unwrap()).collect();
            w.write_now();
            assert_eq!(w.queue().deferred.len(), 5, "logged, waiting for the writer");
            w.queue().log.as_mut().unwrap().fail_appends();
            pending.push(w.submit(row("a@localhost", "direct0".into())).unwrap());
            pending.push(w.submit(row("a@localhost", "direct1".into())).unwrap());
            w.write_now();
            assert!(w.queue().log.is_none(), "the log is given up");
            assert!(w.queue().deferred.is_empty(), "its rows went to the writer thread");
            pending
        };
        for p in pending {
            p.wait().await.unwrap();
        }
        s.archive_writer.submit(row("a@localhost", "after".into())).unwrap().wait().await.unwrap();
        let rows = s.archive_query(&all("a@localhost")).await.unwrap();
        let sids: Vec<&str> = rows.iter().map(|r| r.stanza_id.as_str()).collect();
        assert_eq!(sids, ["logged0", "logged1", "logged2", "logged3", "logged4", "direct0", "direct1", "after"]);
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
