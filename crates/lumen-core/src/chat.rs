//! Chat: a user message in, a streamed reply out, both kept in the history.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lumen_engine::{
    CancelToken, Chat, Completion, GenerateParams, Model, SamplingParams, Session, StopReason,
};
use lumen_store::{
    Conversation, ConversationId, Message, MessageId, MessageStats, NewConversation, Role, Status,
    StreamingMessage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{CoreError, Result};
use crate::events::CoreEvent;
use crate::images::{CheckedImage, ImageInput};
use crate::{Core, EngineState, lock};

/// A conversation's sampling and length settings (stored as its
/// `settings` JSON; unset fields take the model's recommendations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatSettings {
    /// Softmax temperature; 0 for greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling (0 = off).
    pub top_k: Option<usize>,
    /// Most tokens in a reply.
    pub max_tokens: Option<usize>,
    /// Random seed (same seed, same reply).
    pub seed: Option<u64>,
}

impl ChatSettings {
    fn params(&self, defaults: &SamplingParams) -> GenerateParams {
        let mut sampling = defaults.clone();
        if let Some(t) = self.temperature {
            sampling.temperature = t;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = p;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = k;
        }
        if let Some(s) = self.seed {
            sampling.seed = s;
        }
        GenerateParams {
            sampling,
            max_tokens: self.max_tokens.unwrap_or(2048),
            ..GenerateParams::default()
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    /// The conversation; `None` starts a new one.
    pub conversation: Option<ConversationId>,
    /// The model: a file or folder, or an installed model's id.
    pub model: String,
    /// The user's text.
    pub text: String,
    /// Images to ask about (a Llama 3.2 Vision model is needed).
    #[serde(default)]
    pub images: Vec<ImageInput>,
    /// For a new conversation: its system prompt.
    pub system_prompt: Option<String>,
    /// For a new conversation: its settings.
    pub settings: ChatSettings,
}

/// What [`Core::send`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplyStarted {
    /// The conversation (new or given).
    pub conversation_id: ConversationId,
    /// The stored user message.
    pub user_message_id: MessageId,
    /// The reply being written.
    pub reply_message_id: MessageId,
}

/// What [`Core::prepare`] gathers.
type Prepared = (Conversation, Vec<Message>, MessageId, StreamingMessage);

/// Everything a reply's generation needs.
struct ReplyJob {
    conversation: Conversation,
    history: Vec<Message>,
    text: String,
    /// This message's images.
    images: Vec<Vec<u8>>,
    model_spec: String,
    model_path: PathBuf,
    reply: StreamingMessage,
    cancel: CancelToken,
}

/// A title from the first message: its first line, at most 60 characters.
fn title_of(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", line[..cut].trim_end()),
        None => line.to_string(),
    }
}

fn stop_reason_name(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos => "eos",
        StopReason::StopString => "stop_string",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Cancelled => "cancelled",
        StopReason::ContextFull => "context_full",
    }
}

fn stats_of(c: &Completion) -> MessageStats {
    MessageStats {
        prompt_tokens: Some(c.prompt_tokens as i64),
        completion_tokens: Some(c.tokens.len() as i64),
        ttft_ms: Some(c.prefill_time.as_secs_f64() * 1000.0),
        decode_tok_s: Some(c.decode_tok_s()),
    }
}

impl Core {
    /// The path to load for a model named by the user: an existing file
    /// or folder, else an installed model's id.
    pub fn resolve_model(&self, spec: &str) -> Result<PathBuf> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        self.library.resolve(spec).map_err(|e| match e {
            lumen_hub::HubError::NotInstalled(_) | lumen_hub::HubError::Name(_) => CoreError::new(
                "model_not_found",
                format!("`{spec}` is neither a model file nor an installed model"),
            ),
            other => other.into(),
        })
    }

    /// Stores the user's message, starts the reply and returns; the reply
    /// streams as events. One reply at a time per conversation.
    pub async fn send(self: &Arc<Self>, req: SendRequest) -> Result<ReplyStarted> {
        let text = req.text.trim().to_string();
        if text.is_empty() && req.images.is_empty() {
            return Err(CoreError::new("empty_message", "type a message first"));
        }
        let model_path = self.resolve_model(&req.model)?;
        let images: Vec<CheckedImage> = req
            .images
            .iter()
            .map(ImageInput::check)
            .collect::<Result<_>>()?;
        if !images.is_empty() && !lumen_engine::model::is_vision_model(&model_path) {
            return Err(self.needs_vision(&req.model));
        }
        let conversation_id = match req.conversation {
            Some(id) => self.store.conversation(id).await?.id,
            None => {
                let new = NewConversation {
                    title: if text.is_empty() {
                        "Image".to_string()
                    } else {
                        title_of(&text)
                    },
                    model: Some(req.model.clone()),
                    system_prompt: req.system_prompt.clone().filter(|s| !s.trim().is_empty()),
                    settings: serde_json::to_value(&req.settings)
                        .unwrap_or_else(|_| serde_json::json!({})),
                };
                self.store.create_conversation(&new).await?
            }
        };
        let cancel = CancelToken::new();
        {
            let mut running = lock(&self.running);
            if running.contains_key(&conversation_id) {
                return Err(CoreError::new(
                    "busy",
                    "a reply is still being written in this conversation; stop it first",
                ));
            }
            running.insert(conversation_id, cancel.clone());
        }
        let prepared = self
            .prepare(conversation_id, &text, &images, &req.model)
            .await;
        let (conversation, history, user, reply) = match prepared {
            Ok(p) => p,
            Err(e) => {
                lock(&self.running).remove(&conversation_id);
                return Err(e);
            }
        };
        let started = ReplyStarted {
            conversation_id,
            user_message_id: user,
            reply_message_id: reply.id(),
        };
        self.emit(CoreEvent::ReplyStarted {
            conversation_id,
            user_message_id: user,
            reply_message_id: reply.id(),
        });
        let job = ReplyJob {
            conversation,
            history,
            text,
            images: images.into_iter().map(|i| i.data).collect(),
            model_spec: req.model,
            model_path,
            reply,
            cancel,
        };
        let core = self.clone();
        tokio::spawn(async move { core.run_reply(job).await });
        Ok(started)
    }

    /// The conversation, its messages before this turn, the stored user
    /// message (with its images) and the begun reply.
    async fn prepare(
        &self,
        id: ConversationId,
        text: &str,
        images: &[CheckedImage],
        model: &str,
    ) -> Result<Prepared> {
        let conversation = self.store.conversation(id).await?;
        let history = self.store.messages(id).await?;
        let parent = history.last().map(|m| m.id);
        let user = self.store.add_message(id, parent, Role::User, text).await?;
        for image in images {
            self.store
                .add_attachment(
                    user,
                    &lumen_store::NewAttachment {
                        mime: image.mime,
                        width: Some(image.width),
                        height: Some(image.height),
                        data: &image.data,
                        thumbnail: Some(&image.thumbnail),
                        text: "",
                    },
                )
                .await?;
        }
        let reply = self.store.begin_reply(id, Some(user), Some(model)).await?;
        Ok((conversation, history, user, reply))
    }

    /// The error for images sent to a text-only model, naming the vision
    /// models that are installed.
    fn needs_vision(&self, model: &str) -> CoreError {
        let vision: Vec<String> = self
            .library
            .installed()
            .into_iter()
            .filter(|m| lumen_engine::model::is_vision_model(&m.path))
            .map(|m| m.id)
            .collect();
        let hint = if vision.is_empty() {
            "download Llama 3.2 11B Vision Instruct to ask about images".to_string()
        } else {
            format!("switch to {} to ask about images", vision.join(" or "))
        };
        CoreError::new("needs_vision", format!("`{model}` reads text only: {hint}"))
    }

    /// Stops the reply being written in `conversation` (within a token).
    /// `false` when none is.
    pub fn stop(&self, conversation: ConversationId) -> bool {
        match lock(&self.running).get(&conversation) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether a reply is being written in `conversation`.
    pub fn is_replying(&self, conversation: ConversationId) -> bool {
        lock(&self.running).contains_key(&conversation)
    }

    /// Generates on a blocking thread; streams, stores and reports.
    async fn run_reply(self: Arc<Self>, job: ReplyJob) {
        let ReplyJob {
            conversation,
            history,
            text,
            images,
            model_spec,
            model_path,
            mut reply,
            cancel,
        } = job;
        let id = conversation.id;
        let message_id = reply.id();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let core = self.clone();
        let generation = tokio::task::spawn_blocking(move || {
            let mut state = lock(&core.engine);
            let turn = Turn {
                conversation: &conversation,
                history: &history,
                text: &text,
                images: &images,
                model: (&model_spec, &model_path),
            };
            core.generate(&mut state, &turn, &cancel, &mut |piece| {
                let _ = tx.send(piece.to_string());
            })
        });
        while let Some(piece) = rx.recv().await {
            if let Err(e) = reply.push(&piece).await {
                tracing::warn!(error = %e, "could not save part of a reply");
            }
            self.emit(CoreEvent::Token {
                conversation_id: id,
                message_id,
                text: piece,
            });
        }
        let outcome = generation.await.unwrap_or_else(|e| {
            Err(CoreError::new(
                "engine",
                format!("the generation thread failed: {e}"),
            ))
        });
        let saved = match &outcome {
            Ok(c) if c.stop_reason == StopReason::Cancelled => reply.cancel().await,
            Ok(c) => reply.finish(stats_of(c)).await,
            Err(e) => reply.fail(&e.message).await,
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "could not save the end of a reply");
        }
        lock(&self.running).remove(&id);
        self.emit(match outcome {
            Ok(c) => CoreEvent::ReplyFinished {
                conversation_id: id,
                message_id,
                stats: stats_of(&c),
                stop_reason: stop_reason_name(c.stop_reason).into(),
            },
            Err(error) => CoreEvent::ReplyFailed {
                conversation_id: id,
                message_id,
                error,
            },
        });
    }

    /// Loads the model if needed, takes the live chat or rebuilds it from
    /// the history, and generates.
    fn generate(
        &self,
        state: &mut EngineState,
        turn: &Turn<'_>,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        let (spec, path) = turn.model;
        let model = self.model(state, spec, path)?;
        let mut chat = match state.live.take() {
            Some((id, p, chat)) if id == turn.conversation.id && p == path => chat,
            _ => self.rebuild(model.clone(), turn)?,
        };
        let settings: ChatSettings =
            serde_json::from_value(turn.conversation.settings.clone()).unwrap_or_default();
        let params = settings.params(model.default_sampling());
        let images = turn
            .images
            .iter()
            .map(|d| model.encode_image(d))
            .collect::<lumen_engine::Result<Vec<_>>>();
        let result = images
            .and_then(|images| chat.send_with_images(turn.text, images, &params, cancel, on_text));
        state.live = Some((turn.conversation.id, path.to_path_buf(), chat));
        Ok(result?)
    }

    /// The loaded model, loading `path` if another (or none) is loaded.
    fn model(&self, state: &mut EngineState, spec: &str, path: &Path) -> Result<Arc<Model>> {
        if let Some((p, m)) = &state.model
            && p == path
        {
            return Ok(m.clone());
        }
        // Free the old model (and the live chat's cache) before loading.
        state.live = None;
        state.model = None;
        let model = Model::load(path, &self.load_options, &mut |p| {
            self.emit(CoreEvent::ModelLoading {
                model: spec.to_string(),
                done: p.done,
                total: p.total,
            });
        })?;
        let model = Arc::new(model);
        state.model = Some((path.to_path_buf(), model.clone()));
        Ok(model)
    }
}

/// One turn, as the blocking generation thread sees it.
struct Turn<'a> {
    conversation: &'a Conversation,
    history: &'a [Message],
    text: &'a str,
    images: &'a [Vec<u8>],
    /// As named by the user, and its path.
    model: (&'a str, &'a Path),
}

impl Core {
    /// A chat holding a stored conversation's messages (complete or stopped
    /// ones; failed replies are left out), their images read back from the
    /// history and encoded again. Only when the live chat is not this
    /// conversation's: the images are not read on every turn. Runs on the
    /// generation's blocking thread, so it may wait for the store.
    fn rebuild(&self, model: Arc<Model>, turn: &Turn<'_>) -> Result<Chat> {
        let runtime = tokio::runtime::Handle::current();
        let mut chat = Chat::new(
            Session::new(model.clone(), None),
            turn.conversation.system_prompt.as_deref(),
        );
        for m in turn.history {
            if !matches!(m.status, Status::Complete | Status::Cancelled) || m.role == Role::System {
                continue;
            }
            if m.role != Role::User {
                chat.push_history(m.role.as_str(), &m.content);
                continue;
            }
            let mut images = Vec::new();
            for a in runtime.block_on(self.store.attachments(m.id))? {
                let data = runtime.block_on(self.store.attachment_data(&a))?;
                images.push(model.encode_image(&data)?);
            }
            chat.push_history_with_images(&m.content, images)?;
        }
        Ok(chat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_the_first_line_cut_short() {
        assert_eq!(title_of("  Hello there\nsecond"), "Hello there");
        let long = "é".repeat(80);
        let t = title_of(&long);
        assert_eq!(t.chars().count(), 61);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn settings_override_the_model_defaults() {
        let defaults = SamplingParams::default();
        let s: ChatSettings =
            serde_json::from_value(serde_json::json!({"temperature": 0.0, "max_tokens": 7}))
                .expect("settings");
        let p = s.params(&defaults);
        assert_eq!(p.sampling.temperature, 0.0);
        assert_eq!(p.max_tokens, 7);
        assert_eq!(p.sampling.top_p, defaults.top_p);
        // Unknown or malformed settings fall back to defaults.
        let s: ChatSettings =
            serde_json::from_value(serde_json::json!({"temperature": "hot"})).unwrap_or_default();
        assert_eq!(s, ChatSettings::default());
    }
}
