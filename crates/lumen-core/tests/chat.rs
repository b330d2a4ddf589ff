//! Chat through the core with the real SmolLM2 GGUF and a real SQLite
//! history in a temporary folder.

use std::sync::Arc;
use std::time::Duration;

use lumen_core::{Core, CoreEvent, SendRequest};
use lumen_store::{ConversationId, Role, Status};

mod common;
use common::{NO_HUB, follow_up, greedy, open_core, smollm2, wait_reply};

async fn open(dir: &tempfile::TempDir) -> Arc<Core> {
    open_core(dir.path(), NO_HUB).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_is_kept_and_the_conversation_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let core = open(&dir).await;
    let mut rx = core.subscribe();
    let started = core
        .send(SendRequest {
            model: smollm2(),
            text: "What is the capital of France?".into(),
            settings: greedy(24),
            ..SendRequest::default()
        })
        .await
        .expect("send");
    let id = started.conversation_id;
    let (streamed, end) = wait_reply(&mut rx, id).await;
    let CoreEvent::ReplyFinished {
        stats, stop_reason, ..
    } = end
    else {
        panic!("{end:?}");
    };
    assert!(!streamed.trim().is_empty());
    assert!(stats.completion_tokens.is_some_and(|n| n > 0));
    // What the user waited, from sending (the model's load included).
    assert!(stats.ttft_ms.is_some_and(|t| t > 0.0), "{stats:?}");
    assert!(
        ["eos", "max_tokens"].contains(&stop_reason.as_str()),
        "{stop_reason}"
    );
    let messages = core.store().messages(id).await.expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].role, Role::User);
    assert_eq!(
        messages[1].content, streamed,
        "what streamed is what is kept"
    );
    assert_eq!(messages[1].status, Status::Complete);
    let title = core.store().conversation(id).await.expect("conv").title;
    assert_eq!(title, "What is the capital of France?");

    // A second turn continues the live conversation.
    let (second, _) = follow_up(&core, id, &smollm2(), "And of Germany?").await;
    core.close().await;
    drop(core);

    // Restart: the conversation is there, and a third turn is answered
    // from the history (the chat is rebuilt from the stored messages).
    let core = open(&dir).await;
    let messages = core.store().messages(id).await.expect("messages");
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[3].content, second);
    let (_, end) = follow_up(&core, id, &smollm2(), "Thanks!").await;
    assert!(matches!(end, CoreEvent::ReplyFinished { .. }), "{end:?}");
    let messages = core.store().messages(id).await.expect("messages");
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages[4].parent_id,
        Some(messages[3].id),
        "the turn follows the last message"
    );
    core.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_reply_within_a_token_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let core = open(&dir).await;
    let mut rx = core.subscribe();
    let started = core
        .send(SendRequest {
            model: smollm2(),
            text: "Write a long story about a lighthouse keeper.".into(),
            settings: greedy(400),
            ..SendRequest::default()
        })
        .await
        .expect("send");
    let id = started.conversation_id;
    // Another message in the same conversation waits for this one.
    let busy = core
        .send(SendRequest {
            conversation: Some(id),
            model: smollm2(),
            text: "hello".into(),
            ..SendRequest::default()
        })
        .await
        .expect_err("busy");
    assert_eq!(busy.code, "busy");

    let mut tokens_before_stop = 0;
    let mut tokens_after_stop = 0;
    let mut stopped = false;
    let end = loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .expect("in time")
            .expect("event");
        match ev {
            CoreEvent::Token { .. } if stopped => tokens_after_stop += 1,
            CoreEvent::Token { .. } => {
                tokens_before_stop += 1;
                if tokens_before_stop == 5 {
                    assert!(core.stop(id));
                    stopped = true;
                }
            }
            e @ CoreEvent::ReplyFinished { .. } => break e,
            e @ CoreEvent::ReplyFailed { .. } => panic!("{e:?}"),
            _ => {}
        }
    };
    let CoreEvent::ReplyFinished { stop_reason, .. } = end else {
        unreachable!()
    };
    assert_eq!(stop_reason, "cancelled");
    assert!(
        tokens_after_stop <= 1,
        "{tokens_after_stop} pieces after stop"
    );
    assert!(!core.is_replying(id));
    let messages = core.store().messages(id).await.expect("messages");
    assert_eq!(messages.len(), 2, "the refused message was not stored");
    assert_eq!(messages[1].status, Status::Cancelled);
    assert!(!messages[1].content.is_empty(), "what was written is kept");
    assert!(!core.stop(id), "nothing left to stop");
    core.close().await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().expect("tmp");
    let core = open(&dir).await;
    let e = core
        .send(SendRequest {
            model: smollm2(),
            text: "   \n".into(),
            ..SendRequest::default()
        })
        .await
        .expect_err("empty");
    assert_eq!(e.code, "empty_message");
    for model in [
        "nobody/nothing",
        "/no/such/model.gguf",
        "../../etc/passwd",
        "",
    ] {
        let e = core
            .send(SendRequest {
                model: model.into(),
                text: "hi".into(),
                ..SendRequest::default()
            })
            .await
            .expect_err(model);
        assert_eq!(e.code, "model_not_found", "{model}: {e:?}");
    }
    let e = core
        .send(SendRequest {
            conversation: Some(ConversationId(999)),
            model: smollm2(),
            text: "hi".into(),
            ..SendRequest::default()
        })
        .await
        .expect_err("no such conversation");
    assert_eq!(e.code, "not_found");
    assert!(
        core.store()
            .list_conversations(true)
            .await
            .expect("list")
            .is_empty()
    );

    // A file that is not a model fails the reply with a message, and the
    // user's words are kept.
    let not_a_model = dir.path().join("notes.gguf");
    std::fs::write(&not_a_model, b"GGUF but not really").expect("write");
    let mut rx = core.subscribe();
    let started = core
        .send(SendRequest {
            model: not_a_model.to_string_lossy().into_owned(),
            text: "hi".into(),
            ..SendRequest::default()
        })
        .await
        .expect("starts");
    let (_, end) = wait_reply(&mut rx, started.conversation_id).await;
    let CoreEvent::ReplyFailed { error, .. } = end else {
        panic!("{end:?}");
    };
    assert_eq!(error.code, "engine");
    let messages = core
        .store()
        .messages(started.conversation_id)
        .await
        .expect("messages");
    assert_eq!(messages[0].content, "hi");
    assert_eq!(messages[1].status, Status::Error);
    core.close().await;
}
