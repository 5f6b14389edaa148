-- Personal Eventing Protocol (XEP-0163): each account's own pubsub nodes (avatars, nicknames,
-- bookmarks, OMEMO device lists and bundles...), created by the first publish.
CREATE TABLE pep_nodes (
    owner TEXT NOT NULL,
    node TEXT NOT NULL,
    -- open, presence (the default), roster or whitelist (the owner only).
    access_model TEXT NOT NULL DEFAULT 'presence',
    -- Items kept; the oldest go first.
    max_items BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (owner, node)
);

CREATE TABLE pep_items (
    owner TEXT NOT NULL,
    node TEXT NOT NULL,
    item_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- Microseconds since the epoch: the order of the items.
    published BIGINT NOT NULL,
    PRIMARY KEY (owner, node, item_id)
);
CREATE INDEX pep_items_by_time ON pep_items (owner, node, published);
