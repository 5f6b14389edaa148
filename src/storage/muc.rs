//! Group chat rooms that outlive their occupants, and room affiliations (XEP-0045).

use sqlx::Row;

use super::{now_secs, Result, Storage};

/// A persistent room as stored.
#[derive(Debug, Clone)]
pub struct StoredRoom {
    /// The room's configuration as JSON (`modules::muc::config::RoomConfig`).
    pub config: String,
    pub subject: String,
    /// Nick that set the subject.
    pub subject_by: String,
    pub subject_ts: i64,
}

impl Storage {
    pub async fn muc_room(&self, jid: &str) -> Result<Option<StoredRoom>> {
        let r = sqlx::query("SELECT config, subject, subject_by, subject_ts FROM muc_rooms WHERE jid = $1")
            .bind(jid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| StoredRoom { config: r.get(0), subject: r.get(1), subject_by: r.get(2), subject_ts: r.get(3) }))
    }

    pub async fn muc_save_room(&self, jid: &str, room: &StoredRoom) -> Result<()> {
        sqlx::query(
            "INSERT INTO muc_rooms (jid, config, subject, subject_by, subject_ts, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (jid) DO UPDATE SET config = excluded.config, subject = excluded.subject, \
             subject_by = excluded.subject_by, subject_ts = excluded.subject_ts",
        )
        .bind(jid)
        .bind(&room.config)
        .bind(&room.subject)
        .bind(&room.subject_by)
        .bind(room.subject_ts)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forget a room: its row, its affiliations and, when `archive` is set, its messages.
    pub async fn muc_delete_room(&self, jid: &str, archive: bool) -> Result<()> {
        if archive {
            self.archive_writer.sync().await?;
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM muc_rooms WHERE jid = $1").bind(jid).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1").bind(jid).execute(&mut *tx).await?;
        if archive {
            sqlx::query("DELETE FROM archive WHERE owner = $1").bind(jid).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Public persistent rooms: (jid, config JSON).
    pub async fn muc_rooms_on(&self, service: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT jid, config FROM muc_rooms WHERE jid LIKE $1 ORDER BY jid")
            .bind(format!("%@{service}"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// A room's affiliations: (bare JID, affiliation, reason).
    pub async fn muc_affiliations(&self, room: &str) -> Result<Vec<(String, String, String)>> {
        let rows =
            sqlx::query("SELECT jid, affiliation, reason FROM muc_affiliations WHERE room = $1").bind(room).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Set (or, with `none`, remove) affiliations of one room, all in one transaction; with
    /// `replace`, the room's other affiliations are removed first.
    pub async fn muc_set_affiliations(&self, room: &str, items: &[(String, String, String)], replace: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if replace {
            sqlx::query("DELETE FROM muc_affiliations WHERE room = $1").bind(room).execute(&mut *tx).await?;
        }
        for (jid, affiliation, reason) in items {
            if affiliation == "none" {
                sqlx::query("DELETE FROM muc_affiliations WHERE room = $1 AND jid = $2").bind(room).bind(jid).execute(&mut *tx).await?;
            } else {
                sqlx::query(
                    "INSERT INTO muc_affiliations (room, jid, affiliation, reason) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (room, jid) DO UPDATE SET affiliation = excluded.affiliation, reason = excluded.reason",
                )
                .bind(room)
                .bind(jid)
                .bind(affiliation)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Storage {
    /// The server's secret called `name`, made (32 random bytes, base64) the first time.
    pub async fn server_key(&self, name: &str) -> Result<String> {
        use rand::RngCore;
        let mut fresh = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut fresh);
        sqlx::query("INSERT INTO server_keys (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(crate::sasl::credentials::b64(&fresh))
            .execute(&self.pool)
            .await?;
        let r = sqlx::query("SELECT value FROM server_keys WHERE name = $1").bind(name).fetch_one(&self.pool).await?;
        Ok(r.get(0))
    }
}
