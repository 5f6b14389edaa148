//! Small per-account documents: vCard (XEP-0054), private XML (XEP-0049), the block list
//! (XEP-0191) and last activity (XEP-0012).

use super::read::Arg;
use super::{Result, Storage};

impl Storage {
    pub async fn vcard(&self, owner: &str) -> Result<Option<String>> {
        self.read_one("SELECT vcard FROM vcards WHERE owner = $1", &[Arg::Text(owner)], |r| r.text(0)).await
    }

    pub async fn set_vcard(&self, owner: &str, xml: &str) -> Result<()> {
        let sql = "INSERT INTO vcards (owner, vcard) VALUES ($1, $2) ON CONFLICT (owner) DO UPDATE SET vcard = excluded.vcard";
        self.write(sql, &[Arg::Text(owner), Arg::Text(xml)]).await?;
        Ok(())
    }

    pub async fn private_xml(&self, owner: &str, namespace: &str) -> Result<Option<String>> {
        let sql = "SELECT xml FROM private_storage WHERE owner = $1 AND namespace = $2";
        self.read_one(sql, &[Arg::Text(owner), Arg::Text(namespace)], |r| r.text(0)).await
    }

    pub async fn set_private_xml(&self, owner: &str, namespace: &str, xml: &str) -> Result<()> {
        let sql = "INSERT INTO private_storage (owner, namespace, xml) VALUES ($1, $2, $3) \
            ON CONFLICT (owner, namespace) DO UPDATE SET xml = excluded.xml";
        self.write(sql, &[Arg::Text(owner), Arg::Text(namespace), Arg::Text(xml)]).await?;
        Ok(())
    }

    pub async fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        self.read("SELECT jid FROM blocked_jids WHERE owner = $1 ORDER BY jid", &[Arg::Text(owner)], |r| r.text(0)).await
    }

    pub async fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for j in jids {
            sqlx::query("INSERT INTO blocked_jids (owner, jid) VALUES ($1, $2) ON CONFLICT (owner, jid) DO NOTHING")
                .bind(owner)
                .bind(j)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Unblock the given JIDs, or all when `jids` is empty.
    pub async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if jids.is_empty() {
            sqlx::query("DELETE FROM blocked_jids WHERE owner = $1").bind(owner).execute(&mut *tx).await?;
        }
        for j in jids {
            sqlx::query("DELETE FROM blocked_jids WHERE owner = $1 AND jid = $2").bind(owner).bind(j).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>> {
        self.read_one("SELECT seen_at, status FROM last_activity WHERE owner = $1", &[Arg::Text(owner)], |r| (r.int(0), r.text(1))).await
    }

    pub async fn set_last_activity(&self, owner: &str, seen_at: i64, status: &str) -> Result<()> {
        let sql = "INSERT INTO last_activity (owner, seen_at, status) VALUES ($1, $2, $3) \
            ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at, status = excluded.status";
        self.write(sql, &[Arg::Text(owner), Arg::Int(seen_at), Arg::Text(status)]).await?;
        Ok(())
    }
}
