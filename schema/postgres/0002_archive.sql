-- Message archive (XEP-0313). One row per message per archiving account. `id` orders the
-- archive (server-assigned, monotonic), so paging never depends on clocks; `ts` is the
-- server's receive time in microseconds, for start/end filters.
CREATE TABLE archive (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    peer_full TEXT NOT NULL,
    outgoing BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    origin_id TEXT,
    xml TEXT NOT NULL
);
CREATE UNIQUE INDEX archive_owner_stanza_id ON archive (owner, stanza_id);
CREATE INDEX archive_owner_id ON archive (owner, id);
CREATE INDEX archive_owner_peer_id ON archive (owner, peer, id);
CREATE INDEX archive_owner_ts ON archive (owner, ts);

-- Archiving preferences per account (XEP-0313 section 6).
CREATE TABLE archive_prefs (
    owner TEXT PRIMARY KEY,
    default_mode TEXT NOT NULL,
    always_jids TEXT NOT NULL DEFAULT '',
    never_jids TEXT NOT NULL DEFAULT ''
);

-- Messages for accounts with no available resource (XEP-0160), delivered at the next
-- initial presence; the stanza carries the same stanza-id as its archive row.
CREATE TABLE offline_messages (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    xml TEXT NOT NULL
);
CREATE INDEX offline_messages_owner_id ON offline_messages (owner, id);
