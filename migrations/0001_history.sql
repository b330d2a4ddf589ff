-- Lumen's chat history. Times are Unix milliseconds (UTC).

CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    title         TEXT    NOT NULL DEFAULT '',
    model         TEXT,
    system_prompt TEXT,
    -- Sampling settings as a JSON object (temperature, top_p, ...).
    settings      TEXT    NOT NULL DEFAULT '{}',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    pinned        INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    archived      INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1))
);
CREATE INDEX conversations_recent ON conversations (pinned DESC, updated_at DESC);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY,
    conversation_id   INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- The message this one follows; several children of one parent are
    -- regenerated or edited branches.
    parent_id         INTEGER REFERENCES messages (id) ON DELETE SET NULL,
    role              TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content           TEXT    NOT NULL DEFAULT '',
    status            TEXT    NOT NULL DEFAULT 'complete'
                              CHECK (status IN ('streaming', 'complete', 'cancelled', 'error')),
    error             TEXT,
    model             TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    ttft_ms           REAL,
    decode_tok_s      REAL,
    created_at        INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming';

CREATE TABLE attachments (
    id         INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    mime       TEXT    NOT NULL,
    width      INTEGER,
    height     INTEGER,
    -- The bytes live in a content-addressed folder beside the database.
    sha256     TEXT    NOT NULL,
    bytes      INTEGER NOT NULL,
    thumbnail  BLOB,
    -- A description or OCR text of the image, searchable.
    text       TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE INDEX attachments_by_message ON attachments (message_id);
CREATE INDEX attachments_by_hash ON attachments (sha256);

-- Full-text indexes (external content: the text is stored once, in the
-- tables above). unicode61 folds case and strips diacritics ("cafe" finds
-- "café"). A message is indexed once it stops streaming, so the index is
-- not rewritten for every batch of tokens.

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content, content = 'messages', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.status <> 'streaming' BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_unindex AFTER UPDATE OF content, status ON messages
WHEN old.status <> 'streaming' BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_reindex AFTER UPDATE OF content, status ON messages
WHEN new.status <> 'streaming' BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.status <> 'streaming' BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;

CREATE VIRTUAL TABLE conversations_fts USING fts5 (
    title, content = 'conversations', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER conversations_fts_insert AFTER INSERT ON conversations BEGIN
    INSERT INTO conversations_fts (rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER conversations_fts_update AFTER UPDATE OF title ON conversations BEGIN
    INSERT INTO conversations_fts (conversations_fts, rowid, title) VALUES ('delete', old.id, old.title);
    INSERT INTO conversations_fts (rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER conversations_fts_delete AFTER DELETE ON conversations BEGIN
    INSERT INTO conversations_fts (conversations_fts, rowid, title) VALUES ('delete', old.id, old.title);
END;

CREATE VIRTUAL TABLE attachments_fts USING fts5 (
    text, content = 'attachments', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER attachments_fts_insert AFTER INSERT ON attachments BEGIN
    INSERT INTO attachments_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER attachments_fts_update AFTER UPDATE OF text ON attachments BEGIN
    INSERT INTO attachments_fts (attachments_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO attachments_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER attachments_fts_delete AFTER DELETE ON attachments BEGIN
    INSERT INTO attachments_fts (attachments_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
