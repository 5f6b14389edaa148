//! The message archive (XEP-0313), archiving preferences, and offline messages (XEP-0160).

use rand::distributions::Alphanumeric;
use rand::Rng;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::read::Arg;
use super::writer::PendingWrite;
use super::{Result, Storage};

/// One archived message, as stored.
#[derive(Debug, Clone)]
pub struct ArchivedRow {
    /// Row id: the archive's order.
    pub id: i64,
    pub stanza_id: String,
    /// Microseconds since the epoch, server time.
    pub ts: i64,
    pub xml: String,
}

/// A message to archive for one account. Owned: it crosses to the archive writer's task.
#[derive(Debug, Clone)]
pub struct NewArchived {
    /// Given by the archive writer (see `writer.rs`): the archive's clock, in microseconds.
    pub id: i64,
    pub owner: String,
    pub stanza_id: String,
    /// Bare JID of the peer.
    pub peer: String,
    pub peer_full: String,
    pub outgoing: bool,
    pub ts: i64,
    pub origin_id: Option<String>,
    pub xml: String,
}

/// The stanza id (XEP-0359) of archive row `id`: the id in hex, a dash, and twelve random
/// characters, since XEP-0313 wants archive ids unpredictable. The id part makes it unique and
/// lets a query find the row by its primary key.
pub fn stanza_id_for(id: i64) -> String {
    use std::fmt::Write;
    let mut sid = String::with_capacity(16 + 1 + 12);
    let _ = write!(sid, "{id:x}-");
    let mut rng = rand::thread_rng();
    sid.extend((0..12).map(|_| char::from(rng.sample(Alphanumeric))));
    sid
}

/// The row id a stanza id made by `stanza_id_for` names (the row must still be checked to
/// carry the whole stanza id). `None` for any other shape, such as ids given before
/// migration 0003 (alphanumeric only).
pub fn row_in_stanza_id(sid: &str) -> Option<i64> {
    let (hex, random) = sid.split_once('-')?;
    if hex.is_empty() || hex.len() > 15 || random.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(hex, 16).ok()
}

/// Filters and paging of an archive query, already resolved to row ids.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFilter {
    pub owner: String,
    /// Bare JID of the peer, and the full JID when the query named one.
    pub with: Option<(String, Option<String>)>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Only rows with id greater than this.
    pub after: Option<i64>,
    /// Only rows with id smaller than this.
    pub before: Option<i64>,
    /// Only these rows (ids already resolved by `archive_row_id`).
    pub ids: Vec<i64>,
    /// Newest first (for `<before/>` paging).
    pub backward: bool,
    pub limit: usize,
}

enum Param {
    I(i64),
    S(String),
}

fn row(r: &AnyRow) -> ArchivedRow {
    ArchivedRow { id: r.get(0), stanza_id: r.get(1), ts: r.get(2), xml: r.get(3) }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    pub default_mode: String,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

impl Storage {
    /// Queue one archived message for the group commit (see `writer.rs`), made by `m` from
    /// its row id; the handle resolves once it is durable. Every read and delete of the
    /// archive below first has queued and logged rows committed (`ArchiveWriter::sync`).
    pub fn archive_submit(&self, m: impl FnOnce(i64) -> NewArchived) -> Result<PendingWrite> {
        self.archive_writer.submit(m)
    }

    /// Store one archived message; returns once it is durable.
    pub async fn archive_insert(&self, m: impl FnOnce(i64) -> NewArchived) -> Result<()> {
        self.archive_submit(m)?.wait().await
    }

    /// Row id of an archived stanza id.
    pub async fn archive_row_id(&self, owner: &str, stanza_id: &str) -> Result<Option<i64>> {
        self.archive_writer.sync().await?;
        let r = match row_in_stanza_id(stanza_id) {
            Some(id) => sqlx::query("SELECT id FROM archive WHERE owner = $1 AND id = $2 AND stanza_id = $3").bind(owner).bind(id),
            None => sqlx::query("SELECT id FROM archive_legacy_ids WHERE owner = $1 AND stanza_id = $2").bind(owner),
        };
        Ok(r.bind(stanza_id).fetch_optional(&self.pool).await?.map(|r| r.get(0)))
    }

    /// One archived message by row id: (stanza id, xml).
    pub async fn archive_row(&self, owner: &str, id: i64) -> Result<Option<(String, String)>> {
        self.archive_writer.sync().await?;
        let r = sqlx::query("SELECT stanza_id, xml FROM archive WHERE owner = $1 AND id = $2")
            .bind(owner)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| (r.get(0), r.get(1))))
    }

    /// Replace an archived message's stanza (a tombstone for a retracted one, XEP-0425).
    pub async fn archive_replace(&self, owner: &str, id: i64, xml: &str) -> Result<()> {
        self.archive_writer.sync().await?;
        sqlx::query("UPDATE archive SET xml = $3 WHERE owner = $1 AND id = $2").bind(owner).bind(id).bind(xml).execute(&self.pool).await?;
        Ok(())
    }

    /// Rows matching the filter, in the query's direction, at most `limit`.
    pub async fn archive_query(&self, f: &ArchiveFilter) -> Result<Vec<ArchivedRow>> {
        self.archive_writer.sync().await?;
        let mut sql = String::from("SELECT id, stanza_id, ts, xml FROM archive WHERE owner = $1");
        let mut params = vec![Param::S(f.owner.clone())];
        let mut add = |sql: &mut String, cond: &str, p: Param| {
            params.push(p);
            sql.push_str(&cond.replace('?', &format!("${}", params.len())));
        };
        if let Some((bare, full)) = &f.with {
            add(&mut sql, " AND peer = ?", Param::S(bare.clone()));
            if let Some(full) = full {
                add(&mut sql, " AND peer_full = ?", Param::S(full.clone()));
            }
        }
        // Ids are the archive's clock (never earlier than the message's time, and increasing),
        // so time filters are id ranges on the same index as paging.
        if let Some(s) = f.start {
            add(&mut sql, " AND id >= ?", Param::I(s));
        }
        if let Some(e) = f.end {
            add(&mut sql, " AND id <= ?", Param::I(e));
        }
        if let Some(a) = f.after {
            add(&mut sql, " AND id > ?", Param::I(a));
        }
        if let Some(b) = f.before {
            add(&mut sql, " AND id < ?", Param::I(b));
        }
        if !f.ids.is_empty() {
            sql.push_str(" AND id IN (");
            for (i, id) in f.ids.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                add(&mut sql, "?", Param::I(*id));
            }
            sql.push(')');
        }
        sql.push_str(if f.backward { " ORDER BY id DESC" } else { " ORDER BY id ASC" });
        sql.push_str(&format!(" LIMIT {}", f.limit));
        let mut q = sqlx::query(&sql);
        for p in params {
            q = match p {
                Param::I(i) => q.bind(i),
                Param::S(s) => q.bind(s),
            };
        }
        Ok(q.fetch_all(&self.pool).await?.iter().map(row).collect())
    }

    /// First and last archived rows (XEP-0313 metadata).
    pub async fn archive_bounds(&self, owner: &str) -> Result<Option<(ArchivedRow, ArchivedRow)>> {
        self.archive_writer.sync().await?;
        let first = sqlx::query("SELECT id, stanza_id, ts, xml FROM archive WHERE owner = $1 ORDER BY id ASC LIMIT 1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        let last = sqlx::query("SELECT id, stanza_id, ts, xml FROM archive WHERE owner = $1 ORDER BY id DESC LIMIT 1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match (first, last) {
            (Some(f), Some(l)) => Some((row(&f), row(&l))),
            _ => None,
        })
    }

    /// Retention: drop archived messages older than `ts` (microseconds; ids are the archive's
    /// clock, so this is a range of the primary key).
    pub async fn archive_expire(&self, ts: i64) -> Result<u64> {
        self.archive_writer.sync().await?;
        sqlx::query("DELETE FROM archive_legacy_ids WHERE id < $1").bind(ts).execute(&self.pool).await?;
        Ok(sqlx::query("DELETE FROM archive WHERE id < $1").bind(ts).execute(&self.pool).await?.rows_affected())
    }

    pub async fn archive_prefs(&self, owner: &str) -> Result<Option<Prefs>> {
        let r = sqlx::query("SELECT default_mode, always_jids, never_jids FROM archive_prefs WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        let split = |s: String| s.split('\n').filter(|x| !x.is_empty()).map(String::from).collect();
        Ok(r.map(|r| Prefs { default_mode: r.get(0), always: split(r.get(1)), never: split(r.get(2)) }))
    }

    pub async fn set_archive_prefs(&self, owner: &str, p: &Prefs) -> Result<()> {
        sqlx::query(
            "INSERT INTO archive_prefs (owner, default_mode, always_jids, never_jids) VALUES ($1, $2, $3, $4) ON CONFLICT (owner) DO UPDATE SET \
             default_mode = excluded.default_mode, always_jids = excluded.always_jids, never_jids = excluded.never_jids",
        )
        .bind(owner)
        .bind(&p.default_mode)
        .bind(p.always.join("\n"))
        .bind(p.never.join("\n"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn offline_insert(&self, owner: &str, stanza_id: &str, ts: i64, xml: &str) -> Result<()> {
        let sql = "INSERT INTO offline_messages (owner, stanza_id, ts, xml) VALUES ($1, $2, $3, $4)";
        self.write(sql, &[Arg::Text(owner), Arg::Text(stanza_id), Arg::Int(ts), Arg::Text(xml)]).await?;
        Ok(())
    }

    pub async fn offline_count(&self, owner: &str) -> Result<usize> {
        let n = self.read_one("SELECT COUNT(*) FROM offline_messages WHERE owner = $1", &[Arg::Text(owner)], |r| r.int(0)).await?;
        Ok(n.unwrap_or(0) as usize)
    }

    /// Offline messages in arrival order: (row id, ts, xml).
    pub async fn offline_messages(&self, owner: &str) -> Result<Vec<(i64, i64, String)>> {
        let sql = "SELECT id, ts, xml FROM offline_messages WHERE owner = $1 ORDER BY id";
        self.read(sql, &[Arg::Text(owner)], |r| (r.int(0), r.int(1), r.text(2))).await
    }

    /// Keep several messages for one account in one transaction (a session's unacknowledged
    /// messages when it ends): all of them or none. Each is (stanza id, ts, xml).
    pub async fn offline_insert_many(&self, owner: &str, rows: &[(String, i64, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (sid, ts, xml) in rows {
            sqlx::query("INSERT INTO offline_messages (owner, stanza_id, ts, xml) VALUES ($1, $2, $3, $4)")
                .bind(owner)
                .bind(sid)
                .bind(*ts)
                .bind(xml)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forget offline messages the client has acknowledged, by row id.
    pub async fn offline_delete(&self, owner: &str, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(200) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!("DELETE FROM offline_messages WHERE owner = $1 AND id IN ({})", marks.join(", "));
            let mut q = sqlx::query(&sql).bind(owner);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_ids_carry_their_row_and_nothing_else_parses() {
        let id = 1_795_000_000_123_456;
        let a = stanza_id_for(id);
        let b = stanza_id_for(id);
        assert_ne!(a, b, "the random part differs");
        assert_eq!(row_in_stanza_id(&a), Some(id));
        assert_eq!(row_in_stanza_id(&b), Some(id));
        // Ids given before migration 0003 (18 alphanumerics), UUIDs from elsewhere, junk.
        for other in ["aB3dE5gH7jK9mN1pQ2", "-x", "12-", "zz-abc", "", "1234567890abcdef0-abc", "-"] {
            assert_eq!(row_in_stanza_id(other), None, "{other}");
        }
        assert_eq!(row_in_stanza_id("550e8400-e29b-41d4-a716-446655440000"), Some(0x550e8400), "checked against the row's stanza id");
    }
}
