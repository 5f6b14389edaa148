-- Group chat rooms (XEP-0045) that outlive their occupants: persistent rooms, with their
-- configuration (JSON, see modules/muc/config.rs) and subject. A room's messages are in
-- `archive` under the room's JID as owner.
CREATE TABLE muc_rooms (
    jid TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    subject_by TEXT NOT NULL DEFAULT '',
    subject_ts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- Affiliations other than none (XEP-0045 section 5.2), of persistent and live rooms alike;
-- a room's owners are here from its creation.
CREATE TABLE muc_affiliations (
    room TEXT NOT NULL,
    jid TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (room, jid)
);

-- Secrets the server made for itself and keeps across restarts (the group chat service's key for
-- occupant ids, XEP-0421).
CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
