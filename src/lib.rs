//! # Starling, an XMPP server
//!
//! ## Architecture
//!
//! A stanza's path, top to bottom of `src/`:
//!
//! ```text
//! socket -> stream::tls::Transport (TCP / TLS, or the pipe of a WebSocket / BOSH link
//!           framed by `http::websocket` / `http::bosh`) -> xml::XmlReader (limits)
//!        -> session::c2s (negotiation: STARTTLS, SASL, bind; then the session loop)
//!        -> stanza::Stanza (typed envelope, parsed once) -> c2s policy (stamp `from`)
//!        -> modules (presence broadcast, outbound subscriptions) -> router::route
//!        -> destination: server IQ handlers (modules), local account (presence/roster
//!           inbound, delivery rules), a local service (group chat: the room's task, which fans
//!           out to its occupants' mailboxes, or relays to occupants that are not local
//!           sessions), an external component (`session::component`), an HTTP bot
//!           (`modules::bots`), or another server's domain (`s2s`: the link for that pair
//!           of domains, STARTTLS, SASL EXTERNAL or dialback; incoming streams from other servers enter here
//!           too, at the router)
//!        -> session::registry mailbox -> the target session's loop -> one write per batch
//! ```
//!
//! `s2s` is federation: outgoing links per pair of domains and the listener for other servers.
//! `http` is the HTTP listener: webhooks into bots, the REST API (`http::api`), the WebSocket
//! and BOSH links for browsers, and `/metrics`.
//!
//! The core is `xml`, `jid`, `stanza`, `stream`, `sasl`, `session`, `router`, `storage`;
//! features are `modules`, each declaring its specifications, disco features and IQ handlers as
//! data (`modules::MODULES`). Errors become wire errors only in `error.rs`. The routing table
//! is documented on [`router`]. Archive rows go through one writer with group commit
//! (`storage::writer`): the two copies of a message share one write. On SQLite that write is
//! an append to the archive log (`storage::archive_log`), and the writer inserts the logged rows
//! into the archive in batches a few times a second, and before any archive read; on
//! PostgreSQL the rows are committed at once. Row ids are the archive's clock.
//!
//! Memory per connection is kept small on purpose: one task per bound session (its pending
//! read is a future that owns the XML reader), negotiation and stanza handling in short-lived
//! allocations, and no buffer held while a connection is idle (`xml::buf::IdleBuf`, the output
//! buffer, `session::mailbox`, and TLS: rustls runs the handshake, then `stream::record` seals
//! and opens records with the traffic keys, holding nothing else between records).

pub mod config;
pub mod error;
pub mod http;
pub mod jid;
pub mod metrics;
pub mod modules;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod session;
pub mod stanza;
pub mod storage;
pub mod stream;
pub mod xml;
