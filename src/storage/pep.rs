//! Personal Eventing Protocol nodes and items (XEP-0163), per account.

use sqlx::Row;

use super::read::Arg;
use super::{Result, Storage};

/// A node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepNode {
    pub access_model: String,
    pub max_items: i64,
}

impl Storage {
    pub async fn pep_node(&self, owner: &str, node: &str) -> Result<Option<PepNode>> {
        let r = sqlx::query("SELECT access_model, max_items FROM pep_nodes WHERE owner = $1 AND node = $2")
            .bind(owner)
            .bind(node)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| PepNode { access_model: r.get(0), max_items: r.get(1) }))
    }

    /// Every node of the account, with its configuration.
    pub async fn pep_nodes(&self, owner: &str) -> Result<Vec<(String, PepNode)>> {
        let sql = "SELECT node, access_model, max_items FROM pep_nodes WHERE owner = $1 ORDER BY node";
        self.read(sql, &[Arg::Text(owner)], |r| (r.text(0), PepNode { access_model: r.text(1), max_items: r.int(2) })).await
    }

    /// Publish an item (replacing one with the same id), creating or reconfiguring the node,
    /// and drop the oldest items beyond the node's `max_items`, in one transaction.
    pub async fn pep_publish(&self, owner: &str, node: &str, config: &PepNode, item_id: &str, payload: &str, ts: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO pep_nodes (owner, node, access_model, max_items) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, node) DO UPDATE SET access_model = excluded.access_model, max_items = excluded.max_items",
        )
        .bind(owner)
        .bind(node)
        .bind(&config.access_model)
        .bind(config.max_items)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO pep_items (owner, node, item_id, payload, published) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner, node, item_id) DO UPDATE SET payload = excluded.payload, published = excluded.published",
        )
        .bind(owner)
        .bind(node)
        .bind(item_id)
        .bind(payload)
        .bind(ts)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id NOT IN \
             (SELECT item_id FROM pep_items WHERE owner = $1 AND node = $2 ORDER BY published DESC LIMIT $3)",
        )
        .bind(owner)
        .bind(node)
        .bind(config.max_items)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Items of a node, oldest first: the `max` newest, or those with the given ids.
    pub async fn pep_items(&self, owner: &str, node: &str, max: Option<i64>, ids: &[String]) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT item_id, payload, published FROM pep_items WHERE owner = $1 AND node = $2 ORDER BY published DESC LIMIT $3",
        )
        .bind(owner)
        .bind(node)
        .bind(if ids.is_empty() { max.unwrap_or(i64::MAX) } else { i64::MAX })
        .fetch_all(&self.pool)
        .await?;
        let mut items: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .filter(|(id, _)| ids.is_empty() || ids.contains(id))
            .collect();
        items.reverse();
        Ok(items)
    }

    pub async fn pep_retract(&self, owner: &str, node: &str, item_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3")
            .bind(owner)
            .bind(node)
            .bind(item_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn pep_delete_node(&self, owner: &str, node: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2").bind(owner).bind(node).execute(&mut *tx).await?;
        let r = sqlx::query("DELETE FROM pep_nodes WHERE owner = $1 AND node = $2").bind(owner).bind(node).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }
}
