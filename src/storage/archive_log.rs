//! The archive's append-only log (SQLite).
//!
//! A message is acknowledged, and delivered, only once its archive rows are durable. Committed
//! one message at a time into the archive's B-trees, each message cost a WAL append of every
//! page it touched: the table's last page and one leaf in each of the two owners' `(owner, id)`
//! and `(owner, peer, id)` indexes, about seven 4 KiB frames for two rows of a few hundred
//! bytes, plus the checkpoint that later copies them. That was half of the server's CPU per
//! message at 200 messages a second.
//!
//! So on SQLite the rows are first appended here, in one `write` per group of rows: a few
//! hundred bytes each, as durable against a crash of the process as a WAL commit with
//! `synchronous=NORMAL` (both are in the kernel's page cache once the call returns, and both
//! reach the disk at the next sync). The writer then inserts them into the archive in batches,
//! a few times a second, where rows of many messages share pages; every archive read and delete
//! first has the batch written (`ArchiveWriter::sync`), so nobody ever sees the archive without
//! a row that was acknowledged.
//!
//! Files: `<database>-archive-log.<n>`, one per batch: the writer starts the next file when it
//! takes a batch and deletes the old one once the batch is committed. At start-up the files
//! left by a crash are read in order and their rows inserted (`INSERT OR IGNORE`: rows already
//! committed are skipped). A lock file (`<database>-archive-log.lock`, `flock`) keeps the log to
//! one process: another process opening the same database (a CLI command while the server
//! runs) finds it held and commits its rows directly.
//!
//! Record: `len: u32 LE` (of what follows the checksum), `check: u64 LE` (FNV-1a of those bytes),
//! then `id: i64`, `ts: i64`, `outgoing: u8`, and the strings owner, stanza id, peer, full peer,
//! origin id (length `u32::MAX` for none) and xml, each `u32 LE` length then UTF-8. A torn or
//! damaged record ends the file's replay.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::archive::NewArchived;

/// The log files beside database `db`, and the one appended to.
pub struct ArchiveLog {
    /// `<database>-archive-log`: files are `<base>.<n>`.
    base: PathBuf,
    /// Number of the file appended to.
    seq: u64,
    file: File,
    /// Held (flock) for the process's lifetime.
    _lock: File,
    /// Encoding buffer, kept between appends.
    buf: Vec<u8>,
    /// Something was appended to `file`.
    appended: bool,
}

/// What `ArchiveLog::open` found and took over.
pub struct Opened {
    pub log: ArchiveLog,
    /// Rows of the files a previous run left, in their order.
    pub recovered: Vec<NewArchived>,
    /// Those files: delete them (`ArchiveLog::remove`) once their rows are committed.
    pub files: Vec<PathBuf>,
}

impl ArchiveLog {
    /// Take the log of database `db`: `Ok(None)` when another process holds it.
    pub fn open(db: &Path) -> io::Result<Option<Opened>> {
        let base = PathBuf::from(format!("{}-archive-log", db.display()));
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(format!("{}.lock", base.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut files = existing(&base)?;
        files.sort();
        let mut recovered = Vec::new();
        for (_, path) in &files {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let (rows, clean) = decode_all(&bytes);
            if !clean {
                tracing::warn!(file = %path.display(), rows = rows.len(), "archive log ends in a torn record; replaying what precedes it");
            }
            recovered.extend(rows);
        }
        let seq = files.last().map(|(n, _)| n + 1).unwrap_or(0);
        let file = create(&base, seq)?;
        let files = files.into_iter().map(|(_, p)| p).collect();
        Ok(Some(Opened { log: ArchiveLog { base, seq, file, _lock: lock, buf: Vec::new(), appended: false }, recovered, files }))
    }

    /// Append `rows` in one write.
    pub fn append<'a>(&mut self, rows: impl IntoIterator<Item = &'a NewArchived>) -> io::Result<()> {
        self.buf.clear();
        for r in rows {
            encode(r, &mut self.buf);
        }
        self.appended = true;
        let r = self.file.write_all(&self.buf);
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new(); // a burst's buffer is not kept
        }
        r
    }

    /// Go on in a new file; returns the one just finished, to delete once its rows are
    /// committed. `Err`: still appending to the same file, which must then be kept.
    pub fn rotate(&mut self) -> io::Result<PathBuf> {
        let file = create(&self.base, self.seq + 1)?;
        let old = path(&self.base, self.seq);
        self.seq += 1;
        self.file = file;
        self.appended = false;
        Ok(old)
    }

    /// From now on every append fails as on a full disk (tests of the writer's fallback).
    #[cfg(test)]
    pub fn fail_appends(&mut self) {
        self.file = OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    }

    /// Delete a finished file (its rows are committed).
    pub fn remove(file: &Path) {
        if let Err(e) = std::fs::remove_file(file) {
            tracing::warn!(file = %file.display(), error = %e, "removing an archive log file");
        }
    }
}

impl Drop for ArchiveLog {
    /// A log let go with nothing in its last file (the server closed its storage after the
    /// last commit) leaves no file behind. Anything else stays, for the next start.
    fn drop(&mut self) {
        if !self.appended {
            ArchiveLog::remove(&path(&self.base, self.seq));
        }
    }
}

fn path(base: &Path, seq: u64) -> PathBuf {
    PathBuf::from(format!("{}.{seq}", base.display()))
}

fn create(base: &Path, seq: u64) -> io::Result<File> {
    OpenOptions::new().create(true).truncate(true).write(true).open(path(base, seq))
}

/// The log files present: (number, path).
fn existing(base: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = base.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(prefix) = base.file_name().and_then(|n| n.to_str()).map(|n| format!("{n}.")) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        found.push((n, entry.path()));
    }
    Ok(found)
}

const NONE: u32 = u32::MAX;

fn encode(r: &NewArchived, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 12]); // length and checksum, filled in below
    out.extend_from_slice(&r.id.to_le_bytes());
    out.extend_from_slice(&r.ts.to_le_bytes());
    out.push(r.outgoing as u8);
    for s in [Some(&r.owner), Some(&r.stanza_id), Some(&r.peer), Some(&r.peer_full), r.origin_id.as_ref(), Some(&r.xml)] {
        match s {
            Some(s) => {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.extend_from_slice(&NONE.to_le_bytes()),
        }
    }
    let body = start + 12;
    let len = (out.len() - body) as u32;
    let check = fnv1a(&out[body..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..body].copy_from_slice(&check.to_le_bytes());
}

/// The records of a file, and whether it ended cleanly (no torn or damaged record).
fn decode_all(mut bytes: &[u8]) -> (Vec<NewArchived>, bool) {
    let mut rows = Vec::new();
    while !bytes.is_empty() {
        match decode(bytes) {
            Some((row, rest)) => {
                rows.push(row);
                bytes = rest;
            }
            None => return (rows, false),
        }
    }
    (rows, true)
}

fn decode(bytes: &[u8]) -> Option<(NewArchived, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let check = u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
    let body = bytes.get(12..12usize.checked_add(len)?)?;
    if fnv1a(body) != check {
        return None;
    }
    let mut at = Cursor(body);
    let id = i64::from_le_bytes(at.take(8)?.try_into().ok()?);
    let ts = i64::from_le_bytes(at.take(8)?.try_into().ok()?);
    let outgoing = at.take(1)?[0] != 0;
    let (owner, stanza_id, peer, peer_full) = (at.string()??, at.string()??, at.string()??, at.string()??);
    let origin_id = at.string()?;
    let xml = at.string()??;
    if !at.0.is_empty() {
        return None;
    }
    Some((NewArchived { id, owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml }, &bytes[12 + len..]))
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    /// `None`: malformed; `Some(None)`: the absent string.
    fn string(&mut self) -> Option<Option<String>> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        if len == NONE {
            return Some(None);
        }
        let s = std::str::from_utf8(self.take(len as usize)?).ok()?;
        Some(Some(s.to_string()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, origin: Option<&str>) -> NewArchived {
        NewArchived {
            id,
            owner: "a@localhost".into(),
            stanza_id: format!("{id:x}-abc"),
            peer: "b@localhost".into(),
            peer_full: "b@localhost/r".into(),
            outgoing: id % 2 == 0,
            ts: id,
            origin_id: origin.map(String::from),
            xml: format!("<message xmlns='jabber:client'><body>é {id}</body></message>"),
        }
    }

    fn same(a: &NewArchived, b: &NewArchived) -> bool {
        (a.id, &a.owner, &a.stanza_id, &a.peer, &a.peer_full, a.outgoing, a.ts, &a.origin_id, &a.xml)
            == (b.id, &b.owner, &b.stanza_id, &b.peer, &b.peer_full, b.outgoing, b.ts, &b.origin_id, &b.xml)
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_left_out() {
        let rows = [row(1, None), row(2, Some("o-2")), row(3, Some(""))];
        let mut bytes = Vec::new();
        for r in &rows {
            encode(r, &mut bytes);
        }
        let (back, clean) = decode_all(&bytes);
        assert!(clean);
        assert_eq!(back.len(), 3);
        assert!(rows.iter().zip(&back).all(|(a, b)| same(a, b)));
        // Cut anywhere inside the last record: the first two come back, the file is not clean.
        let two = {
            let mut b = Vec::new();
            encode(&rows[0], &mut b);
            encode(&rows[1], &mut b);
            b.len()
        };
        for cut in two + 1..bytes.len() {
            let (back, clean) = decode_all(&bytes[..cut]);
            assert!(!clean && back.len() == 2, "cut at {cut}");
        }
        // A flipped byte in the second record ends the replay there.
        let mut damaged = bytes.clone();
        damaged[two - 3] ^= 1;
        let (back, clean) = decode_all(&damaged);
        assert!(!clean && back.len() == 1);
    }

    #[test]
    fn a_second_process_does_not_get_the_log_and_files_left_behind_are_replayed_in_order() {
        let dir = std::env::temp_dir().join(format!("starling-alog-{}-{}", std::process::id(), super::super::now_micros()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("t.db");
        let Opened { mut log, recovered, files } = ArchiveLog::open(&db).unwrap().unwrap();
        assert!(recovered.is_empty() && files.is_empty());
        log.append([&row(1, None), &row(2, None)]).unwrap();
        let first = log.rotate().unwrap();
        log.append([&row(3, None)]).unwrap();
        // Held: another opener (another process; flock is per open file) gets nothing.
        assert!(ArchiveLog::open(&db).unwrap().is_none());
        drop(log); // the process ends without committing anything
        let Opened { recovered, files, .. } = ArchiveLog::open(&db).unwrap().unwrap();
        assert_eq!(recovered.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0], first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
