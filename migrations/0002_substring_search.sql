-- Substring search for scripts written without spaces between words
-- (Chinese, Japanese, ...), where the word index cannot find a part of a
-- sentence: a trigram index of message text beside the word index. Titles
-- are short and searched directly.

CREATE VIRTUAL TABLE messages_trigram USING fts5 (
    content, content = 'messages', content_rowid = 'id',
    tokenize = 'trigram case_sensitive 0 remove_diacritics 1'
);
CREATE TRIGGER messages_trigram_insert AFTER INSERT ON messages
WHEN new.status <> 'streaming' BEGIN
    INSERT INTO messages_trigram (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_trigram_unindex AFTER UPDATE OF content, status ON messages
WHEN old.status <> 'streaming' BEGIN
    INSERT INTO messages_trigram (messages_trigram, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_trigram_reindex AFTER UPDATE OF content, status ON messages
WHEN new.status <> 'streaming' BEGIN
    INSERT INTO messages_trigram (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_trigram_delete AFTER DELETE ON messages
WHEN old.status <> 'streaming' BEGIN
    INSERT INTO messages_trigram (messages_trigram, rowid, content) VALUES ('delete', old.id, old.content);
END;

-- Messages stored before this migration.
INSERT INTO messages_trigram (rowid, content)
SELECT id, content FROM messages WHERE status <> 'streaming';
