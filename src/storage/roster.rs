//! Rosters (RFC 6121 section 2), roster versions (XEP-0237) and pending inbound subscription
//! requests (RFC 6121 section 3.1.3).

use sqlx::Row as _;

use super::read::{Arg, Row};
use super::{now_secs, Result, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Subscription {
        match s {
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => Subscription::None,
        }
    }

    /// The account receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the account's presence.
    pub fn from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    pub fn with(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (true, true) => Subscription::Both,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (false, false) => Subscription::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    pub contact: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// An outbound subscription request is pending ("ask='subscribe'").
    pub ask: bool,
    /// The account pre-approved the contact's subscription (RFC 6121 section 3.4).
    pub approved: bool,
    pub groups: Vec<String>,
}

impl RosterItem {
    pub fn new(contact: impl Into<String>) -> Self {
        RosterItem {
            contact: contact.into(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        }
    }

    fn from_row(r: &dyn Row) -> RosterItem {
        Self::from_row_at(r, 0)
    }

    /// The item whose `ITEM_COLUMNS` start at column `at`.
    fn from_row_at(r: &dyn Row, at: usize) -> RosterItem {
        let groups = r.text(at + 5);
        RosterItem {
            contact: r.text(at),
            name: r.opt_text(at + 1),
            subscription: Subscription::parse(&r.text(at + 2)),
            ask: r.int(at + 3) != 0,
            approved: r.int(at + 4) != 0,
            groups: groups.split('\n').filter(|g| !g.is_empty()).map(String::from).collect(),
        }
    }
}

// The item columns, in the order `RosterItem::from_row_at` reads them.
const ROSTER: &str =
    "SELECT contact, name, subscription, ask_subscribe, approved, groups_list FROM roster_items WHERE owner = $1 ORDER BY contact";
const ROSTER_ITEM: &str =
    "SELECT contact, name, subscription, ask_subscribe, approved, groups_list FROM roster_items WHERE owner = $1 AND contact = $2";
const ROSTER_WITH_VERSION: &str = "SELECT COALESCE((SELECT version FROM roster_versions WHERE owner = $1), 0), \
    contact, name, subscription, ask_subscribe, approved, groups_list \
    FROM (SELECT 1 AS one) AS o LEFT JOIN roster_items ON roster_items.owner = $1 ORDER BY contact";

impl Storage {
    pub async fn roster(&self, owner: &str) -> Result<Vec<RosterItem>> {
        self.read(ROSTER, &[Arg::Text(owner)], RosterItem::from_row).await
    }

    /// The roster and its version in one query (a login's roster get without `ver`).
    pub async fn roster_with_version(&self, owner: &str) -> Result<(i64, Vec<RosterItem>)> {
        // No items: one row whose item columns are null.
        let rows = self
            .read(ROSTER_WITH_VERSION, &[Arg::Text(owner)], |r| (r.int(0), r.opt_text(1).map(|_| RosterItem::from_row_at(r, 1))))
            .await?;
        let version = rows.first().map(|r| r.0).unwrap_or(0);
        Ok((version, rows.into_iter().filter_map(|r| r.1).collect()))
    }

    pub async fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
        self.read_one(ROSTER_ITEM, &[Arg::Text(owner), Arg::Text(contact)], RosterItem::from_row).await
    }

    pub async fn roster_len(&self, owner: &str) -> Result<usize> {
        let n = self.read_one("SELECT COUNT(*) FROM roster_items WHERE owner = $1", &[Arg::Text(owner)], |r| r.int(0)).await?;
        Ok(n.unwrap_or(0) as usize)
    }

    pub async fn roster_version(&self, owner: &str) -> Result<i64> {
        let v = self.read_one("SELECT version FROM roster_versions WHERE owner = $1", &[Arg::Text(owner)], |r| r.int(0)).await?;
        Ok(v.unwrap_or(0))
    }

    /// Insert or replace an item; returns the new roster version.
    pub async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO roster_items (owner, contact, name, subscription, ask_subscribe, approved, groups_list) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, \
             subscription = excluded.subscription, ask_subscribe = excluded.ask_subscribe, approved = excluded.approved, \
             groups_list = excluded.groups_list",
        )
        .bind(owner)
        .bind(&item.contact)
        .bind(item.name.clone())
        .bind(item.subscription.as_str())
        .bind(item.ask as i64)
        .bind(item.approved as i64)
        .bind(item.groups.join("\n"))
        .execute(&mut *tx)
        .await?;
        let v = bump_version(&mut tx, owner).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Remove an item; returns the new roster version.
    pub async fn delete_roster_item(&self, owner: &str, contact: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM roster_items WHERE owner = $1 AND contact = $2").bind(owner).bind(contact).execute(&mut *tx).await?;
        let v = bump_version(&mut tx, owner).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Remember an inbound subscription request until it is answered.
    pub async fn put_subscription_request(&self, owner: &str, contact: &str, stanza: &str) -> Result<()> {
        let sql = "INSERT INTO subscription_requests (owner, contact, stanza, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, contact) DO UPDATE SET stanza = excluded.stanza";
        self.write(sql, &[Arg::Text(owner), Arg::Text(contact), Arg::Text(stanza), Arg::Int(now_secs())]).await?;
        Ok(())
    }

    /// Forget a pending request; `true` if there was one.
    pub async fn take_subscription_request(&self, owner: &str, contact: &str) -> Result<bool> {
        let sql = "DELETE FROM subscription_requests WHERE owner = $1 AND contact = $2";
        Ok(self.write(sql, &[Arg::Text(owner), Arg::Text(contact)]).await? > 0)
    }

    pub async fn has_subscription_request(&self, owner: &str, contact: &str) -> Result<bool> {
        let r = self
            .read_one(
                "SELECT 1 FROM subscription_requests WHERE owner = $1 AND contact = $2",
                &[Arg::Text(owner), Arg::Text(contact)],
                |_| (),
            )
            .await?;
        Ok(r.is_some())
    }

    /// Pending requests as (contact, serialized stanza), oldest first.
    pub async fn subscription_requests(&self, owner: &str) -> Result<Vec<(String, String)>> {
        let sql = "SELECT contact, stanza FROM subscription_requests WHERE owner = $1 ORDER BY created_at, contact";
        self.read(sql, &[Arg::Text(owner)], |r| (r.text(0), r.text(1))).await
    }
}

async fn bump_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>, owner: &str) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO roster_versions (owner, version) VALUES ($1, 1) ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1 RETURNING version",
    )
    .bind(owner)
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.get::<i64, _>(0))
}
