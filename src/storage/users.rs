//! Accounts and their credentials.

use sqlx::Row;

use super::read::Arg;
use super::{now_secs, Result, Storage};
use crate::sasl::credentials::{b64, unb64, Credentials, ScramKeys};

/// Every table holding per-account data, keyed by the account's bare JID (`owner`).
const ACCOUNT_TABLES: &[&str] = &[
    "roster_items",
    "roster_versions",
    "subscription_requests",
    "vcards",
    "private_storage",
    "blocked_jids",
    "pep_nodes",
    "pep_items",
    "last_activity",
    "archive",
    "archive_legacy_ids",
    "archive_prefs",
    "offline_messages",
];

impl Storage {
    /// Create an account; `false` if it already exists.
    pub async fn create_user(&self, host: &str, username: &str, c: &Credentials) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO users (host, username, scram_salt, scram_iterations, scram_sha1_stored_key, scram_sha1_server_key, \
             scram_sha256_stored_key, scram_sha256_server_key, argon2_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (host, username) DO NOTHING",
        )
        .bind(host)
        .bind(username)
        .bind(b64(&c.salt))
        .bind(c.iterations as i64)
        .bind(b64(&c.sha1.stored_key))
        .bind(b64(&c.sha1.server_key))
        .bind(b64(&c.sha256.stored_key))
        .bind(b64(&c.sha256.server_key))
        .bind(&c.argon2)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_password(&self, host: &str, username: &str, c: &Credentials) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET scram_salt = $3, scram_iterations = $4, scram_sha1_stored_key = $5, scram_sha1_server_key = $6, \
             scram_sha256_stored_key = $7, scram_sha256_server_key = $8, argon2_hash = $9 WHERE host = $1 AND username = $2",
        )
        .bind(host)
        .bind(username)
        .bind(b64(&c.salt))
        .bind(c.iterations as i64)
        .bind(b64(&c.sha1.stored_key))
        .bind(b64(&c.sha1.server_key))
        .bind(b64(&c.sha256.stored_key))
        .bind(b64(&c.sha256.server_key))
        .bind(&c.argon2)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Delete an account and everything stored for it.
    pub async fn delete_user(&self, host: &str, username: &str) -> Result<bool> {
        let owner = format!("{username}@{host}");
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM users WHERE host = $1 AND username = $2").bind(host).bind(username).execute(&mut *tx).await?;
        for table in ACCOUNT_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE owner = $1")).bind(&owner).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn user_exists(&self, host: &str, username: &str) -> Result<bool> {
        let row =
            self.read_one("SELECT 1 FROM users WHERE host = $1 AND username = $2", &[Arg::Text(host), Arg::Text(username)], |_| ()).await?;
        Ok(row.is_some())
    }

    pub async fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>> {
        let sql = "SELECT scram_salt, scram_iterations, scram_sha1_stored_key, scram_sha1_server_key, scram_sha256_stored_key, \
             scram_sha256_server_key, argon2_hash FROM users WHERE host = $1 AND username = $2";
        self.read_one(sql, &[Arg::Text(host), Arg::Text(username)], |row| {
            let d = |i: usize| -> Vec<u8> { unb64(&row.text(i)).unwrap_or_default() };
            Credentials {
                salt: d(0),
                iterations: row.int(1) as u32,
                sha1: ScramKeys { stored_key: d(2), server_key: d(3) },
                sha256: ScramKeys { stored_key: d(4), server_key: d(5) },
                argon2: row.text(6),
            }
        })
        .await
    }

    /// Accounts as (host, username), optionally for one host.
    pub async fn list_users(&self, host: Option<&str>) -> Result<Vec<(String, String)>> {
        let rows = match host {
            Some(h) => {
                sqlx::query("SELECT host, username FROM users WHERE host = $1 ORDER BY username").bind(h).fetch_all(&self.pool).await?
            }
            None => sqlx::query("SELECT host, username FROM users ORDER BY host, username").fetch_all(&self.pool).await?,
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
