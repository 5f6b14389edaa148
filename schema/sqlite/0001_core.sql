-- Accounts: no password in the clear; SCRAM keys (RFC 5802 / 7677) and an argon2id hash.
CREATE TABLE users (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    scram_salt TEXT NOT NULL,
    scram_iterations INTEGER NOT NULL,
    scram_sha1_stored_key TEXT NOT NULL,
    scram_sha1_server_key TEXT NOT NULL,
    scram_sha256_stored_key TEXT NOT NULL,
    scram_sha256_server_key TEXT NOT NULL,
    argon2_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (host, username)
);

-- Roster items (RFC 6121 section 2); owner is the account's bare JID.
CREATE TABLE roster_items (
    owner TEXT NOT NULL,
    contact TEXT NOT NULL,
    name TEXT,
    subscription TEXT NOT NULL DEFAULT 'none',
    ask_subscribe INTEGER NOT NULL DEFAULT 0,
    approved INTEGER NOT NULL DEFAULT 0,
    groups_list TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (owner, contact)
);

-- Roster version per account (XEP-0237), bumped on every change.
CREATE TABLE roster_versions (
    owner TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);

-- Inbound subscription requests not yet answered (RFC 6121 section 3.1.3), redelivered at login.
CREATE TABLE subscription_requests (
    owner TEXT NOT NULL,
    contact TEXT NOT NULL,
    stanza TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (owner, contact)
);

-- vcard-temp (XEP-0054), one document per account.
CREATE TABLE vcards (
    owner TEXT PRIMARY KEY,
    vcard TEXT NOT NULL
);

-- Private XML storage (XEP-0049), one document per account and namespace.
CREATE TABLE private_storage (
    owner TEXT NOT NULL,
    namespace TEXT NOT NULL,
    xml TEXT NOT NULL,
    PRIMARY KEY (owner, namespace)
);

-- Blocking command (XEP-0191).
CREATE TABLE blocked_jids (
    owner TEXT NOT NULL,
    jid TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
);

-- Last activity (XEP-0012): when the last resource went offline, and its status.
CREATE TABLE last_activity (
    owner TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT ''
);
