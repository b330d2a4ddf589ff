//! Images in a chat: checked before anything is stored, kept as
//! attachments with thumbnails, answered by a (tiny, random-weight) Llama
//! 3.2 Vision checkpoint, and encoded again when the conversation is
//! reopened.

use std::path::Path;
use std::sync::Arc;

use lumen_core::{Core, CoreEvent, ImageInput, SendRequest};
use lumen_store::Status;

mod common;
use common::{NO_HUB, dog, follow_up, greedy, open_core, smollm2, tiny_vision_model, wait_reply};

async fn open(dir: &Path) -> Arc<Core> {
    open_core(dir, NO_HUB).await
}

/// The tiny vision checkpoint, as a model name.
fn vision_model(dir: &Path) -> String {
    tiny_vision_model(dir).to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_checked_stored_and_answered() {
    let dir = tempfile::tempdir().expect("tmp");
    let core = open(dir.path()).await;
    let image = ImageInput::Path { path: dog() };

    // A text-only model says so, and nothing is stored.
    let e = core
        .send(SendRequest {
            model: smollm2(),
            text: "What is in this picture?".into(),
            images: vec![image.clone()],
            ..SendRequest::default()
        })
        .await
        .expect_err("text-only");
    assert_eq!(e.code, "needs_vision");
    assert!(e.message.contains("reads text only"), "{}", e.message);

    // Broken images are refused clearly.
    let vision = vision_model(dir.path());
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").expect("write");
    for bad in [
        ImageInput::Path { path: broken },
        ImageInput::Path {
            path: dir.path().join("missing.jpg"),
        },
        ImageInput::Bytes {
            data: b"hello".to_vec(),
        },
        ImageInput::Bytes { data: Vec::new() },
    ] {
        let e = core
            .send(SendRequest {
                model: vision.clone(),
                text: "hi".into(),
                images: vec![bad.clone()],
                ..SendRequest::default()
            })
            .await
            .expect_err("bad image");
        assert_eq!(e.code, "bad_image", "{bad:?}: {e:?}");
    }
    assert!(
        core.store()
            .list_conversations(true)
            .await
            .expect("list")
            .is_empty()
    );

    // A vision model answers; the image is kept with a thumbnail.
    let mut rx = core.subscribe();
    let started = core
        .send(SendRequest {
            model: vision.clone(),
            text: "What is in this picture?".into(),
            images: vec![image],
            settings: greedy(6),
            ..SendRequest::default()
        })
        .await
        .expect("send");
    let id = started.conversation_id;
    let (_, end) = wait_reply(&mut rx, id).await;
    assert!(matches!(end, CoreEvent::ReplyFinished { .. }), "{end:?}");
    let attachments = core
        .store()
        .attachments(started.user_message_id)
        .await
        .expect("attachments");
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].mime, "image/jpeg");
    assert_eq!(
        (attachments[0].width, attachments[0].height),
        (Some(512), Some(512))
    );
    let thumb = attachments[0].thumbnail.as_deref().expect("thumbnail");
    let t = image::load_from_memory(thumb).expect("thumbnail decodes");
    assert!(t.width() <= 256 && t.height() <= 256);
    core.close().await;
    drop(core);

    // Reopened: the view shows the thumbnail; a follow-up is answered
    // with the image encoded again; regenerating the first reply reads the
    // image back from the history.
    let core = open(dir.path()).await;
    let view = core.open_conversation(id).await.expect("view");
    let shown = &view.messages[0].attachments;
    assert_eq!(shown.len(), 1);
    assert!(
        shown[0]
            .thumbnail
            .as_deref()
            .is_some_and(|t| t.starts_with("data:image/jpeg;base64,")),
        "{shown:?}"
    );
    assert_eq!(view.replying, None);
    let (_, end) = follow_up(&core, id, &vision, "And its colour?").await;
    assert!(matches!(end, CoreEvent::ReplyFinished { .. }), "{end:?}");
    let mut rx = core.subscribe();
    let again = core
        .regenerate(lumen_core::RegenerateRequest {
            reply: started.reply_message_id,
            model: vision.clone(),
        })
        .await
        .expect("regenerate");
    let (_, end) = wait_reply(&mut rx, id).await;
    assert!(matches!(end, CoreEvent::ReplyFinished { .. }), "{end:?}");
    assert_eq!(again.user_message_id, started.user_message_id);
    // …and with a text-only model, regenerating it says why it cannot.
    let e = core
        .regenerate(lumen_core::RegenerateRequest {
            reply: started.reply_message_id,
            model: smollm2(),
        })
        .await
        .expect_err("text-only");
    assert_eq!(e.code, "needs_vision");
    let messages = core.store().messages(id).await.expect("messages");
    assert_eq!(messages.len(), 5);
    assert!(messages.iter().all(|m| m.status == Status::Complete));
    core.close().await;
}

#[test]
fn previews_check_images_and_base64_is_checked_at_the_boundary() {
    let preview = ImageInput::Path { path: dog() }.preview().expect("preview");
    assert_eq!(preview.mime, "image/jpeg");
    assert_eq!((preview.width, preview.height), (512, 512));
    assert!(preview.thumbnail.starts_with("data:image/jpeg;base64,"));
    let bytes = std::fs::read(dog()).expect("read");
    // What the UI sends for a pasted image.
    use base64::Engine;
    let json = serde_json::json!({
        "kind": "bytes",
        "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
    });
    let input: ImageInput = serde_json::from_value(json).expect("bytes");
    assert_eq!(input.preview().expect("preview"), preview);
    let bad: Result<ImageInput, _> =
        serde_json::from_value(serde_json::json!({"kind": "bytes", "base64": "%%%"}));
    assert!(
        bad.expect_err("not base64")
            .to_string()
            .contains("not valid base64")
    );
    let e = ImageInput::Bytes {
        data: b"GIF89a broken".to_vec(),
    }
    .preview()
    .expect_err("broken");
    assert_eq!(e.code, "bad_image");
}
