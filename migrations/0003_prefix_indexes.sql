-- Prefix indexes for search as you type: a query's last word is matched as
-- a prefix ("inv" finds "invoice"); without these, FTS5 merges the posting
-- lists of every word starting with it (all words starting with "t" for
-- "t"), which took 200 ms on 200,000 messages. The word indexes are rebuilt
-- with 1- to 3-character prefixes; the triggers refer to them by name and
-- are unchanged.

DROP TABLE messages_fts;
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content, content = 'messages', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2', prefix = '1 2 3'
);
INSERT INTO messages_fts (rowid, content)
SELECT id, content FROM messages WHERE status <> 'streaming';

DROP TABLE conversations_fts;
CREATE VIRTUAL TABLE conversations_fts USING fts5 (
    title, content = 'conversations', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2', prefix = '1 2 3'
);
INSERT INTO conversations_fts (conversations_fts) VALUES ('rebuild');

DROP TABLE attachments_fts;
CREATE VIRTUAL TABLE attachments_fts USING fts5 (
    text, content = 'attachments', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2', prefix = '1 2 3'
);
INSERT INTO attachments_fts (attachments_fts) VALUES ('rebuild');
