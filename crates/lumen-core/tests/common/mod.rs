//! Helpers shared by the core's test files.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lumen_core::{ChatSettings, Core, CoreConfig, CoreEvent, SendRequest};
use lumen_hub::HubCache;
use lumen_store::ConversationId;
use tokio::sync::broadcast;

#[path = "../../../../tests/support/assets.rs"]
mod assets;
#[allow(unused_imports)] // each test file uses some
pub use assets::{asset, assets, dog, tiny_vision_model};

/// The real SmolLM2-135M-Instruct Q4_1 GGUF, as a model name.
pub fn smollm2() -> String {
    assets::smollm2_path().to_string_lossy().into_owned()
}

/// A core over `dir`, downloading from `endpoint`.
pub async fn open_core(dir: &Path, endpoint: &str) -> Arc<Core> {
    Core::open(CoreConfig {
        data_dir: dir.join("data"),
        hub_cache: HubCache::new(dir.join("hub")),
        load_options: Default::default(),
        endpoint: endpoint.into(),
        settings_file: dir.join("config/settings.json"),
    })
    .await
    .expect("open core")
}

/// Greedy decoding (the same reply every time), at most `max_tokens`.
pub fn greedy(max_tokens: u32) -> ChatSettings {
    ChatSettings {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..ChatSettings::default()
    }
}

/// An endpoint nothing listens on (tests that never download).
pub const NO_HUB: &str = "http://127.0.0.1:9";

/// The streamed text and the final event of one reply in `conversation`.
pub async fn wait_reply(
    rx: &mut broadcast::Receiver<CoreEvent>,
    conversation: ConversationId,
) -> (String, CoreEvent) {
    let mut text = String::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("a reply in time")
            .expect("event");
        match &ev {
            CoreEvent::Token {
                conversation_id,
                text: t,
                offset,
                ..
            } if *conversation_id == conversation => {
                // Followed from its start: each piece starts where the text
                // so far ends, counted as JavaScript does.
                assert_eq!(*offset, text.encode_utf16().count(), "offset of {t:?}");
                text.push_str(t);
            }
            CoreEvent::ReplyFinished {
                conversation_id, ..
            }
            | CoreEvent::ReplyFailed {
                conversation_id, ..
            } if *conversation_id == conversation => return (text, ev),
            _ => {}
        }
    }
}

/// Sends `text` into an existing conversation and waits for the reply: its
/// streamed text and final event.
pub async fn follow_up(
    core: &Arc<Core>,
    conversation: ConversationId,
    model: &str,
    text: &str,
) -> (String, CoreEvent) {
    let mut rx = core.subscribe();
    core.send(SendRequest {
        conversation: Some(conversation),
        model: model.into(),
        text: text.into(),
        ..SendRequest::default()
    })
    .await
    .expect("follow-up");
    wait_reply(&mut rx, conversation).await
}
