-- Archive row ids become the archive's clock (XEP-0313): Starling assigns each row
-- max(now in microseconds, previous id + 1), so ids are unique, increasing in commit order and
-- never earlier than the message's time. One index then serves paging and start/end filters,
-- and new stanza ids carry their row id (see storage::archive::stanza_id_for), so they need no
-- index of their own. A commit of one message (two rows) touches five B-tree pages instead of
-- ten: the table, and (owner, id) and (owner, peer, id) for each owner.
--
-- Existing rows are renumbered in their order: id_k = max(ts_k, id_(k-1) + 1). Their stanza
-- ids, which clients keep, stay as they were and resolve through archive_legacy_ids.
CREATE TABLE archive_new (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    peer_full TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    origin_id TEXT,
    xml TEXT NOT NULL
);
INSERT INTO archive_new (id, owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml)
SELECT r + MAX(ts - r) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
       owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml
FROM (SELECT archive.*, ROW_NUMBER() OVER (ORDER BY id) AS r FROM archive) numbered;

-- Stanza ids given before this migration, by owner.
CREATE TABLE archive_legacy_ids (
    owner TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (owner, stanza_id)
);
INSERT INTO archive_legacy_ids (owner, stanza_id, id) SELECT owner, stanza_id, id FROM archive_new;

DROP TABLE archive;
ALTER TABLE archive_new RENAME TO archive;
CREATE INDEX archive_owner_id ON archive (owner, id);
CREATE INDEX archive_owner_peer_id ON archive (owner, peer, id);
