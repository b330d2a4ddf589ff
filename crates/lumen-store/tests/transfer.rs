//! Export and import, on real databases.

use lumen_store::transfer::Export;
use lumen_store::{NewAttachment, NewConversation, Role, SearchFilters, Store};

async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).await.expect("open");
    (dir, store)
}

/// A history with branches, a cancelled reply, settings and an image.
async fn sample(store: &Store) {
    let c = store
        .create_conversation(&NewConversation {
            title: "Invoice from ACME".into(),
            model: Some("llama-3.2-11b-vision".into()),
            system_prompt: Some("Be exact.".into()),
            settings: serde_json::json!({"temperature": 0.1, "top_p": 0.9}),
        })
        .await
        .expect("create");
    let q = store
        .add_message(c, None, Role::User, "What is the total?")
        .await
        .expect("q");
    store
        .add_attachment(
            q,
            &NewAttachment {
                mime: "image/png",
                width: Some(2),
                height: Some(1),
                data: &[0x89, b'P', b'N', b'G', 0, 1, 2, 255],
                thumbnail: None,
                text: "ACME total 99",
            },
        )
        .await
        .expect("attach");
    let mut r = store.begin_reply(c, Some(q), Some("m")).await.expect("r");
    r.push("It is").await.expect("push");
    r.cancel().await.expect("cancel");
    store
        .add_message(c, Some(q), Role::Assistant, "The total is 99 €.")
        .await
        .expect("branch");
    store
        .create_conversation(&NewConversation::titled("空の会話"))
        .await
        .expect("empty");
}

#[tokio::test]
async fn json_round_trip_is_lossless() {
    let (_a, from) = fresh().await;
    sample(&from).await;
    let export = from.export(None).await.expect("export");
    let json = serde_json::to_string_pretty(&export).expect("json");
    let (_b, to) = fresh().await;
    let ids = to.import_json(&json).await.expect("import");
    assert_eq!(ids.len(), 2);
    let again = to.export(None).await.expect("export again");
    assert_eq!(again, export);
    // The imported history is searchable, attachment text included.
    let hits = to
        .search("acme", &SearchFilters::default(), 0)
        .await
        .expect("search");
    assert_eq!(hits.len(), 2, "{hits:?}");
    let md = lumen_store::markdown::to_markdown(&again);
    assert!(md.contains("# Invoice from ACME"), "{md}");
    assert!(md.contains("### Assistant (stopped)"), "{md}");
    assert!(md.contains("*[image: image/png, 2×1]*"), "{md}");
}

#[tokio::test]
async fn minimal_input_gets_defaults_and_unknown_fields_are_ignored() {
    let (_d, store) = fresh().await;
    let json = r#"{"conversations": [{"created_at": "2026-01-02T03:04:05+01:00",
        "colour": "blue",
        "messages": [{"role": "user", "content": "hi", "created_at": "2026-01-02T03:04:06Z", "mood": 1}]}],
        "exported_by": "something else"}"#;
    let ids = store.import_json(json).await.expect("import");
    let c = store.conversation(ids[0]).await.expect("conversation");
    assert_eq!(c.title, "");
    assert_eq!(c.created_at, 1_767_319_445_000);
    let m = store.messages(ids[0]).await.expect("messages");
    assert_eq!(m[0].content, "hi");
    assert_eq!(m[0].status, lumen_store::Status::Complete);
}

/// Bad input names the bad field and imports nothing, not even the valid
/// conversations before it.
#[tokio::test]
async fn invalid_input_is_rejected_whole_with_the_field_path() {
    let (_d, store) = fresh().await;
    let good = r#"{"created_at": "2026-01-01T00:00:00Z", "title": "fine",
                   "messages": [{"role": "user", "content": "ok", "created_at": "2026-01-01T00:00:00Z"}]}"#;
    let cases = [
        (
            r#"{"role": "robot", "content": "x", "created_at": "2026-01-01T00:00:00Z"}"#,
            "conversations[1].messages[0].role",
        ),
        (
            r#"{"role": "user", "content": "x", "created_at": "yesterday"}"#,
            "conversations[1].messages[0].created_at",
        ),
        (
            r#"{"role": "user", "content": 5, "created_at": "2026-01-01T00:00:00Z"}"#,
            "conversations[1].messages[0].content",
        ),
        (
            r#"{"role": "user", "created_at": "2026-01-01T00:00:00Z",
                "attachments": [{"mime": "image/png", "data_base64": "***"}]}"#,
            "conversations[1].messages[0].attachments[0].data_base64",
        ),
        (
            r#"{"role": "user", "created_at": "2026-01-01T00:00:00Z",
                "attachments": [{"mime": "text/html", "data_base64": "PGI+"}]}"#,
            "conversations[1].messages[0].attachments[0].mime",
        ),
        (
            r#"{"role": "user", "created_at": "2026-01-01T00:00:00Z", "parent": 0}"#,
            "conversations[1].messages[0].parent",
        ),
    ];
    for (message, path) in cases {
        let json = format!(
            r#"{{"conversations": [{good}, {{"created_at": "2026-01-01T00:00:00Z", "messages": [{message}]}}]}}"#
        );
        let err = store.import_json(&json).await.expect_err(path).to_string();
        assert!(err.starts_with(path), "{path}: {err}");
    }
    for (json, want) in [
        ("", "EOF"),
        ("[]", "expected a JSON object"),
        (r#"{"format": "other", "conversations": []}"#, "format"),
        (r#"{"version": 9, "conversations": []}"#, "version"),
        (
            r#"{"conversations": [{"title": "no date"}]}"#,
            "conversations[0]",
        ),
    ] {
        let err = store.import_json(json).await.expect_err(json).to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
    assert!(
        store
            .list_conversations(true)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn export_of_one_conversation_and_unknown_ids() {
    let (_d, store) = fresh().await;
    sample(&store).await;
    let all = store.list_conversations(true).await.expect("list");
    let one: Export = store.export(Some(&[all[0].id])).await.expect("one");
    assert_eq!(one.conversations.len(), 1);
    let err = store
        .export(Some(&[lumen_store::ConversationId(77)]))
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("77"), "{err}");
}
