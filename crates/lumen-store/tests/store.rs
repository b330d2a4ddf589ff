//! The store on a real SQLite database in a temporary folder.

use lumen_store::search::HitKind;
use lumen_store::{MessageStats, NewConversation, Role, SearchFilters, Status, Store};
use sqlx::Row;

async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).await.expect("open");
    (dir, store)
}

/// Every migration applies to an empty database and gives the schema the
/// code expects, in WAL mode with foreign keys on.
#[tokio::test]
async fn migrations_build_the_schema() {
    let (_dir, store) = fresh().await;
    let names: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .expect("schema")
    .iter()
    .map(|r| r.get::<String, _>("name"))
    .collect();
    for want in [
        "attachments",
        "attachments_fts",
        "conversations",
        "conversations_fts",
        "messages",
        "messages_fts",
        "messages_fts_insert",
        "messages_fts_reindex",
        "messages_fts_unindex",
        "messages_fts_delete",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .expect("pragma")
        .get(0);
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .expect("pragma")
        .get(0);
    assert_eq!(fk, 1);
    let ok: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(store.pool())
        .await
        .expect("check")
        .get(0);
    assert_eq!(ok, "ok");
}

#[tokio::test]
async fn conversations_and_messages_round_trip() {
    let (dir, store) = fresh().await;
    let a = store
        .create_conversation(&NewConversation {
            title: "Invoices".into(),
            model: Some("llama-3.2-11b-vision".into()),
            system_prompt: Some("Be brief.".into()),
            settings: serde_json::json!({"temperature": 0.2}),
        })
        .await
        .expect("create");
    let b = store
        .create_conversation(&NewConversation::titled("Later"))
        .await
        .expect("create");
    let q = store
        .add_message(a, None, Role::User, "What is the total?")
        .await
        .expect("message");
    store
        .add_message(a, Some(q), Role::Assistant, "€1,234.50")
        .await
        .expect("message");
    store.set_pinned(b, true).await.expect("pin");
    let list = store.list_conversations(false).await.expect("list");
    assert_eq!(list.iter().map(|c| c.id).collect::<Vec<_>>(), vec![b, a]);
    let conv = store.conversation(a).await.expect("get");
    assert_eq!(conv.settings["temperature"], 0.2);
    assert_eq!(conv.system_prompt.as_deref(), Some("Be brief."));
    // Settings change in place and do not reorder the list.
    store
        .set_conversation_settings(a, None, &serde_json::json!({"top_k": 40}))
        .await
        .expect("settings");
    let conv = store.conversation(a).await.expect("get");
    assert_eq!(conv.settings, serde_json::json!({"top_k": 40}));
    assert_eq!(conv.system_prompt, None);
    assert!(
        store
            .set_conversation_settings(a, None, &serde_json::json!([1]))
            .await
            .is_err(),
        "settings must be an object"
    );
    assert_eq!(
        store.list_conversations(false).await.expect("list")[0].id,
        b
    );
    store.set_archived(b, true).await.expect("archive");
    assert_eq!(
        store.list_conversations(false).await.expect("list").len(),
        1
    );
    assert_eq!(store.list_conversations(true).await.expect("list").len(), 2);
    let msgs = store.messages(a).await.expect("messages");
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1].parent_id, Some(q));
    assert_eq!(msgs[1].status, Status::Complete);
    // Reopening finds everything.
    store.close().await;
    let again = Store::open(dir.path()).await.expect("reopen");
    assert_eq!(again.messages(a).await.expect("messages"), msgs);
    // Unknown ids are errors, not panics.
    let missing = lumen_store::ConversationId(999);
    assert!(again.rename_conversation(missing, "x").await.is_err());
    assert!(
        again
            .set_conversation_settings(missing, None, &serde_json::json!({}))
            .await
            .is_err()
    );
    assert!(
        again
            .add_message(missing, None, Role::User, "x")
            .await
            .is_err()
    );
    assert!(again.delete_conversation(missing).await.is_err());
}

/// A reply is written in batches while it streams, searchable once
/// finished; one left streaming by a crash is cancelled at the next open,
/// with what was written kept.
#[tokio::test]
async fn streaming_replies_survive_interruption() {
    let (dir, store) = fresh().await;
    let c = store
        .create_conversation(&NewConversation::titled("Story"))
        .await
        .expect("create");
    let mut reply = store.begin_reply(c, None, Some("m")).await.expect("begin");
    for word in ["Once ", "upon ", "a ", "lighthouse"] {
        reply.push(word).await.expect("push");
    }
    reply.flush().await.expect("flush");
    let id = reply.id();
    let stored = store.message(id).await.expect("message");
    assert_eq!(stored.status, Status::Streaming);
    assert_eq!(stored.content, "Once upon a lighthouse");
    // Not indexed while streaming.
    assert!(
        store
            .search("lighthouse", &SearchFilters::default(), 0)
            .await
            .expect("search")
            .is_empty()
    );
    // The app "crashes": the reply is never finished.
    drop(reply);
    store.close().await;
    let store = Store::open(dir.path()).await.expect("reopen");
    let m = store.message(id).await.expect("message");
    assert_eq!(m.status, Status::Cancelled);
    assert_eq!(m.content, "Once upon a lighthouse");
    let hits = store
        .search("lighthouse", &SearchFilters::default(), 0)
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);

    let mut done = store
        .begin_reply(c, Some(id), Some("m"))
        .await
        .expect("begin");
    done.push("The end.").await.expect("push");
    let stats = MessageStats {
        prompt_tokens: Some(12),
        completion_tokens: Some(3),
        ttft_ms: Some(80.5),
        decode_tok_s: Some(30.0),
    };
    let id2 = done.finish(stats).await.expect("finish");
    let m = store.message(id2).await.expect("message");
    assert_eq!((m.status, m.stats), (Status::Complete, stats));
}

#[tokio::test]
async fn search_ranks_finds_prefixes_and_ignores_diacritics() {
    let (_dir, store) = fresh().await;
    let paris = store
        .create_conversation(&NewConversation::titled("Café in Paris"))
        .await
        .expect("create");
    let other = store
        .create_conversation(&NewConversation::titled("Taxes"))
        .await
        .expect("create");
    let q = store
        .add_message(
            paris,
            None,
            Role::User,
            "Which café serves the best croissant?",
        )
        .await
        .expect("message");
    store
        .add_message(
            paris,
            Some(q),
            Role::Assistant,
            "Try the CAFÉ near the river.",
        )
        .await
        .expect("message");
    store
        .add_message(other, None, Role::User, "Where is my invoice from March?")
        .await
        .expect("message");

    let all = SearchFilters::default();
    let hits = store.search("cafe", &all, 0).await.expect("search");
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(
        hits[0].kind,
        HitKind::Title,
        "titles are weighted up: {hits:?}"
    );
    for h in &hits {
        assert!(!h.highlights.is_empty(), "{h:?}");
        for &(s, e) in &h.highlights {
            assert!(h.snippet[s..e].to_lowercase().starts_with("caf"), "{h:?}");
        }
    }
    // Prefix while typing, all words required.
    assert_eq!(
        store.search("invo", &all, 0).await.expect("search").len(),
        1
    );
    assert_eq!(
        store
            .search("invoice march", &all, 0)
            .await
            .expect("s")
            .len(),
        1
    );
    assert!(
        store
            .search("invoice paris", &all, 0)
            .await
            .expect("s")
            .is_empty()
    );
    // Filters.
    let users = SearchFilters {
        role: Some(Role::User),
        ..SearchFilters::default()
    };
    let hits = store.search("cafe", &users, 0).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].message_id, Some(q));
    let in_other = SearchFilters {
        conversation: Some(other),
        ..SearchFilters::default()
    };
    assert!(
        store
            .search("cafe", &in_other, 0)
            .await
            .expect("s")
            .is_empty()
    );
    let with_image = SearchFilters {
        has_image: Some(true),
        ..SearchFilters::default()
    };
    assert!(
        store
            .search("cafe", &with_image, 0)
            .await
            .expect("s")
            .is_empty()
    );
    // Renaming re-indexes the title.
    store
        .rename_conversation(paris, "Bakeries")
        .await
        .expect("rename");
    let hits = store.search("bakeries", &all, 0).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].kind, HitKind::Title);
}

/// Whatever the user types is a search: never an FTS5 syntax error.
#[tokio::test]
async fn hostile_search_text_is_just_text() {
    let (_dir, store) = fresh().await;
    let c = store
        .create_conversation(&NewConversation::titled("Notes"))
        .await
        .expect("create");
    store
        .add_message(
            c,
            None,
            Role::User,
            "NOT a drill: col:x (quoted) \"AND\" OR -minus *star",
        )
        .await
        .expect("message");
    for input in [
        "",
        " ",
        "\"",
        "\"\"",
        "\"unbalanced",
        "AND",
        "OR",
        "NOT",
        "NEAR(",
        "a AND",
        "*",
        "-",
        ":",
        "col:x",
        "(",
        ")",
        "((a)",
        "a OR b NOT",
        "^",
        "{a b}",
        "'",
        "\\",
        "%",
        "_",
        "NOT a drill",
        "\u{0}",
        "🦙🦙",
        "x\u{200b}y",
        "SELECT * FROM messages;--",
    ] {
        let hits = store
            .search(input, &SearchFilters::default(), 0)
            .await
            .unwrap_or_else(|e| panic!("{input:?}: {e}"));
        if input == "NOT a drill" || input == "col:x" || input == "AND" {
            assert_eq!(hits.len(), 1, "{input:?}");
        }
    }
    // Pages past the end are empty, not errors.
    assert!(
        store
            .search("drill", &SearchFilters::default(), usize::MAX)
            .await
            .expect("far page")
            .is_empty()
    );
}

/// Deleting a conversation removes its messages and their index entries.
#[tokio::test]
async fn delete_removes_search_entries() {
    let (_dir, store) = fresh().await;
    let c = store
        .create_conversation(&NewConversation::titled("Secret plans"))
        .await
        .expect("create");
    store
        .add_message(c, None, Role::User, "the password is swordfish")
        .await
        .expect("message");
    store.delete_conversation(c).await.expect("delete");
    let all = SearchFilters::default();
    assert!(
        store
            .search("swordfish", &all, 0)
            .await
            .expect("s")
            .is_empty()
    );
    assert!(store.search("secret", &all, 0).await.expect("s").is_empty());
    let fts_rows: i64 =
        sqlx::query("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'swordfish'")
            .fetch_one(store.pool())
            .await
            .expect("count")
            .get(0);
    assert_eq!(fts_rows, 0);
    // FTS5's own consistency check against the content table.
    sqlx::query("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        .execute(store.pool())
        .await
        .expect("messages_fts is consistent");
}

/// Many tasks writing at once: every write lands, none sees "database is
/// locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_see_a_locked_database() {
    let (_dir, store) = fresh().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let c = store
                .create_conversation(&NewConversation::titled(&format!("task {t}")))
                .await?;
            for i in 0..40 {
                store
                    .add_message(c, None, Role::User, &format!("message {i} of task {t}"))
                    .await?;
            }
            Ok::<_, lumen_store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("writes");
    }
    let n: i64 = sqlx::query("SELECT count(*) FROM messages")
        .fetch_one(store.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 8 * 40);
}

/// Text without spaces between words is found by any part of it.
#[tokio::test]
async fn cjk_text_is_found_by_a_substring() {
    let (_dir, store) = fresh().await;
    let c = store
        .create_conversation(&NewConversation::titled("旅行の計画"))
        .await
        .expect("create");
    let m = store
        .add_message(c, None, Role::User, "我们明天在北京见面，然后去上海。")
        .await
        .expect("message");
    store
        .add_message(c, None, Role::Assistant, "東京で会いましょう")
        .await
        .expect("message");
    let all = SearchFilters::default();
    for (query, want) in [
        ("北京", 1),
        ("明天在北京", 1),
        ("北京 上海", 1),
        ("東京", 1),
        ("計画", 1),
        ("广州", 0),
    ] {
        let hits = store.search(query, &all, 0).await.expect("search");
        assert_eq!(hits.len(), want, "{query}: {hits:?}");
    }
    let hit = &store.search("明天在北京", &all, 0).await.expect("search")[0];
    assert_eq!(hit.message_id, Some(m));
    assert!(
        hit.highlights
            .iter()
            .all(|&(s, e)| &hit.snippet[s..e] == "明天在北京")
    );
    assert_eq!(
        store.search("計画", &all, 0).await.expect("s")[0].kind,
        HitKind::Title
    );
}

/// Migrations 2 (the trigram index) and 3 (word indexes rebuilt with
/// prefix indexes) applied to a database that already has history from
/// migration 1: the old messages are found by word, prefix and substring,
/// the indexes are consistent, and nothing is lost.
#[tokio::test]
async fn migration_2_indexes_existing_history() {
    let dir = tempfile::tempdir().expect("tmp");
    let first_only = dir.path().join("migrations");
    std::fs::create_dir(&first_only).expect("mkdir");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    std::fs::copy(
        repo.join("0001_history.sql"),
        first_only.join("0001_history.sql"),
    )
    .expect("copy");
    let db = dir.path().join("data");
    std::fs::create_dir(&db).expect("mkdir");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db.join(lumen_store::DATABASE_FILE))
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.expect("pool");
        sqlx::migrate::Migrator::new(first_only.as_path())
            .await
            .expect("migrator")
            .run(&pool)
            .await
            .expect("migration 1");
        sqlx::query(
            "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (1, 'Old', 0, 0)",
        )
        .execute(&pool)
        .await
        .expect("conversation");
        for (id, status, text) in [
            (1, "complete", "去年我们在北京见过"),
            (2, "streaming", "中断的回答在北京"),
        ] {
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, role, content, status, created_at)
                 VALUES (?, 1, 'assistant', ?, ?, 0)",
            )
            .bind(id)
            .bind(text)
            .bind(status)
            .execute(&pool)
            .await
            .expect("message");
        }
        pool.close().await;
    }
    let store = Store::open(&db).await.expect("upgrade");
    let msgs = store
        .messages(lumen_store::ConversationId(1))
        .await
        .expect("messages");
    assert_eq!(msgs.len(), 2);
    // The interrupted reply was recovered after the migration, and both
    // are indexed once.
    assert_eq!(msgs[1].status, Status::Cancelled);
    let hits = store
        .search("在北京", &SearchFilters::default(), 0)
        .await
        .expect("search");
    assert_eq!(hits.len(), 2, "{hits:?}");
    // "Old" is a title; "O" is a one-letter prefix (prefix index).
    for query in ["old", "O"] {
        let hits = store
            .search(query, &SearchFilters::default(), 0)
            .await
            .expect("search");
        assert_eq!(hits.len(), 1, "{query}: {hits:?}");
    }
    for table in ["messages_fts", "messages_trigram", "conversations_fts"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} ({table}) VALUES ('integrity-check')"
        )))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
}

/// Ages a file past the garbage collector's grace period.
fn age(path: &std::path::Path) {
    let old = std::time::SystemTime::now() - lumen_store::attachments::GRACE * 2;
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
}

#[tokio::test]
async fn attachments_are_stored_once_searchable_and_collected() {
    use lumen_store::NewAttachment;
    let (dir, store) = fresh().await;
    let png: &[u8] = b"\x89PNG\r\n\x1a\n not really a png, but bytes are bytes";
    let image = |text: &'static str| NewAttachment {
        mime: "image/png",
        width: Some(640),
        height: Some(480),
        data: png,
        thumbnail: Some(b"thumb"),
        text,
    };
    let a = store
        .create_conversation(&NewConversation::titled("A"))
        .await
        .expect("create");
    let b = store
        .create_conversation(&NewConversation::titled("B"))
        .await
        .expect("create");
    let ma = store
        .add_message(a, None, Role::User, "look")
        .await
        .expect("m");
    let mb = store
        .add_message(b, None, Role::User, "look")
        .await
        .expect("m");
    let id = store
        .add_attachment(ma, &image("an invoice from ACME"))
        .await
        .expect("attach");
    store.add_attachment(mb, &image("")).await.expect("attach");
    let stored = store.attachments(ma).await.expect("list");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].bytes, png.len() as u64);
    assert_eq!(stored[0].thumbnail.as_deref(), Some(&b"thumb"[..]));
    assert_eq!(store.attachment_data(&stored[0]).await.expect("data"), png);
    // A conversation's attachments in one query: its own only, in order.
    let second = store
        .add_message(a, Some(ma), Role::User, "and this")
        .await
        .expect("m");
    let later = store
        .add_attachment(second, &image("a chart"))
        .await
        .expect("attach");
    let of_a = store.conversation_attachments(a).await.expect("list");
    let ids: Vec<_> = of_a.iter().map(|x| (x.id, x.message_id)).collect();
    assert_eq!(ids, vec![(id, ma), (later, second)]);
    assert_eq!(of_a[0], stored[0]);
    let of_b = store.conversation_attachments(b).await.expect("list");
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].message_id, mb);
    // One file for all three.
    let files: Vec<_> = walk(&dir.path().join("attachments"));
    assert_eq!(files.len(), 1, "{files:?}");

    // Attachment text is searchable, and has_image filters on attachments.
    let all = SearchFilters::default();
    let hits = store.search("acme", &all, 0).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].kind, HitKind::Attachment);
    store
        .set_attachment_text(id, "a receipt")
        .await
        .expect("text");
    assert!(store.search("acme", &all, 0).await.expect("s").is_empty());
    let with = SearchFilters {
        has_image: Some(true),
        ..SearchFilters::default()
    };
    assert_eq!(store.search("look", &with, 0).await.expect("s").len(), 2);
    let without = SearchFilters {
        has_image: Some(false),
        ..SearchFilters::default()
    };
    assert!(
        store
            .search("look", &without, 0)
            .await
            .expect("s")
            .is_empty()
    );

    // Deleting A keeps the file B still uses; deleting B removes it.
    age(&files[0]);
    store.delete_conversation(a).await.expect("delete a");
    assert_eq!(walk(&dir.path().join("attachments")).len(), 1);
    store.delete_conversation(b).await.expect("delete b");
    assert!(walk(&dir.path().join("attachments")).is_empty());
}

#[tokio::test]
async fn bad_attachments_are_refused_and_damage_is_reported() {
    use lumen_store::NewAttachment;
    let (dir, store) = fresh().await;
    let c = store
        .create_conversation(&NewConversation::titled("A"))
        .await
        .expect("create");
    let m = store
        .add_message(c, None, Role::User, "x")
        .await
        .expect("m");
    let new = |mime, data| NewAttachment {
        mime,
        width: None,
        height: None,
        data,
        thumbnail: None,
        text: "",
    };
    let err = store
        .add_attachment(m, &new("application/x-sh", b"#!/bin/sh"))
        .await
        .expect_err("not an image");
    assert!(err.to_string().contains("not supported"), "{err}");
    assert!(
        store
            .add_attachment(m, &new("image/png", b""))
            .await
            .is_err()
    );
    let err = store
        .add_attachment(lumen_store::MessageId(999), &new("image/png", b"x"))
        .await
        .expect_err("no such message");
    assert!(err.to_string().contains("message 999"), "{err}");
    store
        .add_attachment(m, &new("image/jpeg", b"jpeg bytes"))
        .await
        .expect("attach");
    let a = store.attachments(m).await.expect("list").remove(0);
    // The refused attachments left no file behind.
    let mut files = walk(&dir.path().join("attachments"));
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files.remove(0);
    std::fs::write(&file, b"JPEG BYTES").expect("damage");
    let err = store.attachment_data(&a).await.expect_err("damaged");
    assert!(err.to_string().contains("damaged"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
/// A statement that fails inside SQLite (here a foreign-key violation)
/// must not leave its pooled connection reading an old snapshot or unable
/// to write (sqlx 0.9 leaves the transaction open; the store closes it).
async fn failed_statements_leave_no_stale_connection() {
    let (_dir, store) = fresh().await;
    let c = store
        .create_conversation(&NewConversation::titled("A"))
        .await
        .expect("create");
    for _ in 0..4 {
        let r = sqlx::query("INSERT INTO messages (conversation_id, role, content, created_at) VALUES (999, 'user', 'x', 0)")
            .execute(store.pool())
            .await;
        assert!(r.is_err());
    }
    for i in 0..20 {
        store
            .add_message(c, None, Role::User, "y")
            .await
            .expect("add");
        let n: i64 = sqlx::query("SELECT count(*) FROM messages")
            .fetch_one(store.pool())
            .await
            .expect("n")
            .get(0);
        assert_eq!(n, i + 1, "stale read after {i} writes");
    }
}
