//! Chat: a user message in, a streamed reply out, both kept in the history.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::views::{effective_parents, thread};
use crate::{Core, EngineState, lock};

/// A conversation's sampling and length settings (stored as its
/// `settings` JSON; unset fields take the model's recommendations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(default)]
pub struct ChatSettings {
    /// Softmax temperature; 0 for greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling (0 = off).
    pub top_k: Option<u32>,
    /// Most tokens in a reply.
    pub max_tokens: Option<u32>,
    /// Random seed (same seed, same reply).
    pub seed: Option<u32>,
}

impl ChatSettings {
    /// A conversation's settings; malformed ones mean the defaults.
    pub(crate) fn of(conversation: &Conversation) -> Self {
        serde_json::from_value(conversation.settings.clone()).unwrap_or_default()
    }

    /// Refuses values no sampler can use.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(CoreError::new("invalid_argument", what.to_string()));
        match self.temperature {
            Some(t) if !(0.0..=2.0).contains(&t) => {
                return bad("temperature must be between 0 and 2");
            }
            _ => {}
        }
        match self.top_p {
            Some(p) if !(0.0..=1.0).contains(&p) => return bad("top-p must be between 0 and 1"),
            _ => {}
        }
        if self.max_tokens == Some(0) {
            return bad("a reply needs at least one token");
        }
        Ok(())
    }

    fn params(&self, defaults: &SamplingParams) -> GenerateParams {
        let mut sampling = defaults.clone();
        if let Some(t) = self.temperature {
            sampling.temperature = t;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = p;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = k as usize;
        }
        if let Some(s) = self.seed {
            sampling.seed = u64::from(s);
        }
        GenerateParams {
            sampling,
            max_tokens: self.max_tokens.map_or(2048, |n| n as usize),
            ..GenerateParams::default()
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SendRequest {
    /// The conversation; `None` starts a new one.
    pub conversation: Option<ConversationId>,
    /// The message this one follows (the end of the thread on screen);
    /// `None` continues after the conversation's newest message.
    #[serde(default)]
    pub parent: Option<MessageId>,
    /// The model: a file or folder, or an installed model's id.
    pub model: String,
    /// The user's text.
    pub text: String,
    /// Images to ask about (a Llama 3.2 Vision model is needed).
    #[serde(default)]
    pub images: Vec<ImageInput>,
    /// For a new conversation: its system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// For a new conversation: its settings.
    #[serde(default)]
    pub settings: ChatSettings,
}

/// Another reply to the question `reply` answered (kept beside it, as a
/// branch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RegenerateRequest {
    /// The reply to write again.
    pub reply: MessageId,
    /// The model to write it with.
    pub model: String,
}

/// A new version of a question (kept beside the old one, as a branch, with
/// the same images), and its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct EditRequest {
    /// The user message edited.
    pub message: MessageId,
    /// Its new text.
    pub text: String,
    /// The model to answer with.
    pub model: String,
}

/// What [`Core::send`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ReplyStarted {
    /// The conversation (new or given).
    pub conversation_id: ConversationId,
    /// The user message answered.
    pub user_message_id: MessageId,
    /// The reply being written.
    pub reply_message_id: MessageId,
}

/// A turn to answer: the stored user message and the thread before it.
struct NewTurn {
    /// When the user sent it.
    sent: Instant,
    conversation: ConversationId,
    /// The thread before the user message, root first.
    history: Vec<Message>,
    user: MessageId,
    text: String,
    images: Vec<Vec<u8>>,
    model_spec: String,
    model_path: PathBuf,
    cancel: CancelToken,
}

/// Where a new question goes.
enum Place {
    /// After this message (`None`: after the conversation's newest).
    After(Option<MessageId>),
    /// Beside this question, as another version of it.
    Beside(MessageId),
}

/// A question to store and answer.
struct Question {
    sent: Instant,
    conversation: ConversationId,
    place: Place,
    text: String,
    images: Vec<Picture>,
}

/// An image with what the history keeps of it.
struct Picture {
    data: Vec<u8>,
    mime: String,
    width: Option<u32>,
    height: Option<u32>,
    thumbnail: Option<Vec<u8>>,
    /// Searchable text (a description), if any.
    text: String,
}

impl From<CheckedImage> for Picture {
    fn from(i: CheckedImage) -> Self {
        Self {
            data: i.data,
            mime: i.mime.to_string(),
            width: Some(i.width),
            height: Some(i.height),
            thumbnail: Some(i.thumbnail),
            text: String::new(),
        }
    }
}

impl Picture {
    fn as_new_attachment(&self) -> lumen_store::NewAttachment<'_> {
        lumen_store::NewAttachment {
            mime: &self.mime,
            width: self.width,
            height: self.height,
            data: &self.data,
            thumbnail: self.thumbnail.as_deref(),
            text: &self.text,
        }
    }
}

/// The message `id` follows in `all` (its effective parent).
fn parent_in(all: &[Message], id: MessageId) -> Option<MessageId> {
    let parents = effective_parents(all);
    all.iter().position(|m| m.id == id).and_then(|i| parents[i])
}

/// Everything a reply's generation needs.
struct ReplyJob {
    /// When the user sent the message.
    sent: Instant,
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

/// The conversation whose KV cache is kept between turns.
pub(crate) struct LiveChat {
    conversation: ConversationId,
    /// The model file it runs on.
    path: PathBuf,
    /// The system prompt it was built with.
    system_prompt: Option<String>,
    /// The last reply it holds: a turn that follows it continues the chat;
    /// any other (a regenerated reply, an edited question, another branch)
    /// rebuilds it from the history.
    last: MessageId,
    chat: Chat,
}

/// A reply being written in a conversation.
pub(crate) struct Running {
    cancel: CancelToken,
    /// The reply, once begun.
    reply: Option<MessageId>,
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

/// A reply's statistics. The time to first token is what the user
/// waited: from sending to the first words on screen (reading images,
/// rebuilding a reopened conversation and, the first time, loading the
/// model, included); the model's own prompt time when no words came.
fn stats_of(c: &Completion, first_token: Option<Duration>) -> MessageStats {
    let ttft = first_token.unwrap_or(c.prefill_time);
    MessageStats {
        prompt_tokens: Some(c.prompt_tokens as i64),
        completion_tokens: Some(c.tokens.len() as i64),
        ttft_ms: Some(ttft.as_secs_f64() * 1000.0),
        decode_tok_s: Some(c.decode_tok_s()),
    }
}

fn invalid(message: impl Into<String>) -> CoreError {
    CoreError::new("invalid_argument", message)
}

impl Core {
    /// The path to load for a model named by the user: an existing file
    /// or folder, else an installed model's id.
    pub fn resolve_model(&self, spec: &str) -> Result<PathBuf> {
        let path = Path::new(spec);
        if spec.trim().is_empty() {
            return Err(CoreError::new(
                "model_not_found",
                "no model chosen: download one on the models page, or pick a model file",
            ));
        }
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
        let sent = Instant::now();
        let text = req.text.trim().to_string();
        if text.is_empty() && req.images.is_empty() {
            return Err(CoreError::new("empty_message", "type a message first"));
        }
        let images: Vec<Picture> = req
            .images
            .iter()
            .map(|i| i.check().map(Picture::from))
            .collect::<Result<_>>()?;
        let model_path = self.model_for(&req.model, !images.is_empty())?;
        let conversation = match req.conversation {
            Some(id) => self.store.conversation(id).await?.id,
            None => {
                req.settings.check()?;
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
        let question = Question {
            sent,
            conversation,
            place: Place::After(req.parent),
            text,
            images,
        };
        self.ask(question, req.model, model_path).await
    }

    /// Writes another reply to the question `req.reply` answered; the old
    /// reply stays as a branch.
    pub async fn regenerate(self: &Arc<Self>, req: RegenerateRequest) -> Result<ReplyStarted> {
        let sent = Instant::now();
        let reply = self.store.message(req.reply).await?;
        if reply.role != Role::Assistant {
            return Err(invalid("only a reply can be written again"));
        }
        let conversation = reply.conversation_id;
        let all = self.store.messages(conversation).await?;
        let question = parent_in(&all, reply.id)
            .and_then(|q| all.iter().find(|m| m.id == q))
            .filter(|q| q.role == Role::User)
            .ok_or_else(|| invalid("this reply answers no question"))?
            .clone();
        let images = self.images_of(question.id).await?;
        let model_path = self.model_for(&req.model, !images.is_empty())?;
        let cancel = self.claim(conversation)?;
        self.start_reply(NewTurn {
            sent,
            conversation,
            history: thread(&all, parent_in(&all, question.id)),
            user: question.id,
            text: question.content,
            images: images.into_iter().map(|p| p.data).collect(),
            model_spec: req.model,
            model_path,
            cancel,
        })
        .await
    }

    /// Stores a new version of a question beside the old one (same
    /// images) and answers it.
    pub async fn edit(self: &Arc<Self>, req: EditRequest) -> Result<ReplyStarted> {
        let sent = Instant::now();
        let original = self.store.message(req.message).await?;
        if original.role != Role::User {
            return Err(invalid("only your own messages can be edited"));
        }
        let text = req.text.trim().to_string();
        let images = self.images_of(original.id).await?;
        if text.is_empty() && images.is_empty() {
            return Err(CoreError::new("empty_message", "type a message first"));
        }
        let model_path = self.model_for(&req.model, !images.is_empty())?;
        let question = Question {
            sent,
            conversation: original.conversation_id,
            place: Place::Beside(original.id),
            text,
            images,
        };
        self.ask(question, req.model, model_path).await
    }

    /// The model file to answer with; refused when there are images and
    /// it reads text only.
    fn model_for(&self, spec: &str, with_images: bool) -> Result<PathBuf> {
        let path = self.resolve_model(spec)?;
        if with_images && !lumen_engine::model::is_vision_model(&path) {
            return Err(self.needs_vision(spec));
        }
        Ok(path)
    }

    /// Stores a question (with its images) where it goes, and starts its
    /// reply.
    async fn ask(
        self: &Arc<Self>,
        question: Question,
        model_spec: String,
        model_path: PathBuf,
    ) -> Result<ReplyStarted> {
        let Question {
            sent,
            conversation,
            place,
            text,
            images,
        } = question;
        let cancel = self.claim(conversation)?;
        let stored = async {
            let all = self.store.messages(conversation).await?;
            let parent = match place {
                Place::After(Some(p)) if all.iter().any(|m| m.id == p) => Some(p),
                Place::After(Some(p)) => {
                    return Err(CoreError::new(
                        "not_found",
                        format!("message {} is not in this conversation", p.0),
                    ));
                }
                Place::After(None) => all.last().map(|m| m.id),
                Place::Beside(sibling) => parent_in(&all, sibling),
            };
            let user = self
                .store
                .add_message(conversation, parent, Role::User, &text)
                .await?;
            for image in &images {
                self.store
                    .add_attachment(user, &image.as_new_attachment())
                    .await?;
            }
            Ok((thread(&all, parent), user))
        }
        .await;
        let (history, user) = self.released_on_error(conversation, stored)?;
        self.start_reply(NewTurn {
            sent,
            conversation,
            history,
            user,
            text,
            images: images.into_iter().map(|p| p.data).collect(),
            model_spec,
            model_path,
            cancel,
        })
        .await
    }

    /// Changes a conversation's system prompt and sampling settings; the
    /// next turn uses them.
    pub async fn set_conversation_settings(
        &self,
        id: ConversationId,
        system_prompt: Option<String>,
        settings: ChatSettings,
    ) -> Result<()> {
        settings.check()?;
        let prompt = system_prompt.filter(|s| !s.trim().is_empty());
        let json = serde_json::to_value(&settings).map_err(|e| invalid(e.to_string()))?;
        Ok(self
            .store
            .set_conversation_settings(id, prompt.as_deref(), &json)
            .await?)
    }

    /// Deletes a conversation with its messages and images; a reply being
    /// written in it is stopped first (and waited for, a few seconds at
    /// most, so that its last write does not race the delete).
    pub async fn delete_conversation(&self, id: ConversationId) -> Result<()> {
        if self.stop(id) {
            let ended = async {
                loop {
                    // Registered before the check, so an end between the
                    // check and the wait is not missed.
                    let ended = self.reply_ended.notified();
                    let mut ended = std::pin::pin!(ended);
                    ended.as_mut().enable();
                    if !self.is_replying(id) {
                        break;
                    }
                    ended.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
        }
        Ok(self.store.delete_conversation(id).await?)
    }

    /// A message's images, read back from the history.
    async fn images_of(&self, message: MessageId) -> Result<Vec<Picture>> {
        let mut out = Vec::new();
        for a in self.store.attachments(message).await? {
            let data = self.store.attachment_data(&a).await?;
            out.push(Picture {
                data,
                mime: a.mime,
                width: a.width,
                height: a.height,
                thumbnail: a.thumbnail,
                text: a.text,
            });
        }
        Ok(out)
    }

    /// Marks a reply as being written in `conversation`; `busy` when one
    /// already is.
    fn claim(&self, conversation: ConversationId) -> Result<CancelToken> {
        let mut running = lock(&self.running);
        if running.contains_key(&conversation) {
            return Err(CoreError::new(
                "busy",
                "a reply is still being written in this conversation; stop it first",
            ));
        }
        let cancel = CancelToken::new();
        running.insert(
            conversation,
            Running {
                cancel: cancel.clone(),
                reply: None,
            },
        );
        Ok(cancel)
    }

    /// Passes `result` on, ending the claim on `conversation` if it failed.
    fn released_on_error<T>(&self, conversation: ConversationId, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.end_running(conversation);
        }
        result
    }

    /// Ends the claim on `conversation` and wakes whoever waits for its
    /// reply to end (`delete_conversation`).
    fn end_running(&self, conversation: ConversationId) {
        lock(&self.running).remove(&conversation);
        self.reply_ended.notify_waiters();
    }

    /// Begins the stored reply and the generation that writes it.
    async fn start_reply(self: &Arc<Self>, turn: NewTurn) -> Result<ReplyStarted> {
        let id = turn.conversation;
        let begun = async {
            let conversation = self.store.conversation(id).await?;
            let reply = self
                .store
                .begin_reply(id, Some(turn.user), Some(&turn.model_spec))
                .await?;
            Ok((conversation, reply))
        }
        .await;
        let (conversation, reply) = self.released_on_error(id, begun)?;
        if let Some(r) = lock(&self.running).get_mut(&id) {
            r.reply = Some(reply.id());
        }
        let started = ReplyStarted {
            conversation_id: id,
            user_message_id: turn.user,
            reply_message_id: reply.id(),
        };
        self.emit(CoreEvent::ReplyStarted {
            conversation_id: id,
            user_message_id: turn.user,
            reply_message_id: reply.id(),
        });
        let job = ReplyJob {
            sent: turn.sent,
            conversation,
            history: turn.history,
            text: turn.text,
            images: turn.images,
            model_spec: turn.model_spec,
            model_path: turn.model_path,
            reply,
            cancel: turn.cancel,
        };
        let core = self.clone();
        tokio::spawn(async move { core.run_reply(job).await });
        Ok(started)
    }

    /// The error for images sent to a text-only model, naming the vision
    /// models that are installed.
    fn needs_vision(&self, model: &str) -> CoreError {
        let vision: Vec<String> = self
            .installed_models()
            .into_iter()
            .filter(|m| m.vision)
            .map(|m| m.model.id)
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
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether a reply is being written in `conversation`.
    pub fn is_replying(&self, conversation: ConversationId) -> bool {
        lock(&self.running).contains_key(&conversation)
    }

    /// The reply being written in `conversation`, if any.
    pub(crate) fn replying_message(&self, conversation: ConversationId) -> Option<MessageId> {
        lock(&self.running).get(&conversation).and_then(|r| r.reply)
    }

    /// Generates on a blocking thread; streams, stores and reports.
    async fn run_reply(self: Arc<Self>, job: ReplyJob) {
        let ReplyJob {
            sent,
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
                reply: message_id,
            };
            core.generate(&mut state, &turn, &cancel, &mut |piece| {
                let _ = tx.send(piece.to_string());
            })
        });
        let mut first_token = None;
        // The reply's length so far, in UTF-16 code units.
        let mut offset = 0;
        while let Some(piece) = rx.recv().await {
            first_token.get_or_insert_with(|| sent.elapsed());
            if let Err(e) = reply.push(&piece).await {
                tracing::warn!(error = %e, "could not save part of a reply");
            }
            let units = piece.encode_utf16().count();
            self.emit(CoreEvent::Token {
                conversation_id: id,
                message_id,
                offset,
                text: piece,
            });
            offset += units;
        }
        let outcome = generation.await.unwrap_or_else(|e| {
            Err(CoreError::new(
                "engine",
                format!("the generation thread failed: {e}"),
            ))
        });
        let saved = match &outcome {
            Ok(c) if c.stop_reason == StopReason::Cancelled => reply.cancel().await,
            Ok(c) => reply.finish(stats_of(c, first_token)).await,
            Err(e) => reply.fail(&e.message).await,
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "could not save the end of a reply");
        }
        self.end_running(id);
        self.emit(match outcome {
            Ok(c) => CoreEvent::ReplyFinished {
                conversation_id: id,
                message_id,
                stats: stats_of(&c, first_token),
                stop_reason: stop_reason_name(c.stop_reason).into(),
            },
            Err(error) => CoreEvent::ReplyFailed {
                conversation_id: id,
                message_id,
                error,
            },
        });
    }

    /// Loads the model if needed, continues the live chat or rebuilds it
    /// from the thread, and generates.
    fn generate(
        &self,
        state: &mut EngineState,
        turn: &Turn<'_>,
        cancel: &CancelToken,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion> {
        let (spec, path) = turn.model;
        let model = self.model(state, spec, path, turn.conversation.id)?;
        let follows = turn.history.last().map(|m| m.id);
        let mut chat = match state.live.take() {
            Some(live)
                if live.conversation == turn.conversation.id
                    && live.path == path
                    && live.system_prompt == turn.conversation.system_prompt
                    && Some(live.last) == follows =>
            {
                live.chat
            }
            _ => self.rebuild(model.clone(), turn)?,
        };
        let params = ChatSettings::of(turn.conversation).params(model.default_sampling());
        let images = turn
            .images
            .iter()
            .map(|d| model.encode_image(d))
            .collect::<lumen_engine::Result<Vec<_>>>();
        let result = images
            .and_then(|images| chat.send_with_images(turn.text, images, &params, cancel, on_text));
        // A chat whose generation failed may hold half a turn: the next
        // turn rebuilds it from the history instead.
        if result.is_ok() {
            state.live = Some(LiveChat {
                conversation: turn.conversation.id,
                path: path.to_path_buf(),
                system_prompt: turn.conversation.system_prompt.clone(),
                last: turn.reply,
                chat,
            });
        }
        Ok(result?)
    }

    /// The loaded model, loading `path` (for `conversation`'s reply) if
    /// another (or none) is loaded.
    fn model(
        &self,
        state: &mut EngineState,
        spec: &str,
        path: &Path,
        conversation: ConversationId,
    ) -> Result<Arc<Model>> {
        if let Some((p, m)) = &state.model
            && p == path
        {
            return Ok(m.clone());
        }
        // Free the old model (and the live chat's cache) before loading.
        state.live = None;
        state.model = None;
        let mut options = lock(&self.load_options).clone();
        // Nobody chooses a quantization in the app: vision checkpoints
        // load at Q4_K as the catalogue sizes them.
        options.quantize = options
            .quantize
            .or_else(|| lumen_engine::model::default_quantization(path));
        let model = Model::load(path, &options, &mut |p| {
            self.emit(CoreEvent::ModelLoading {
                conversation_id: conversation,
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
    /// The thread before this turn's question, root first.
    history: &'a [Message],
    text: &'a str,
    images: &'a [Vec<u8>],
    /// As named by the user, and its path.
    model: (&'a str, &'a Path),
    /// The reply being written.
    reply: MessageId,
}

impl Core {
    /// A chat holding a thread's messages (complete or stopped ones;
    /// failed replies are left out), their images read back from the
    /// history and encoded again. Only when the live chat is not this
    /// thread's: the images are not read on every turn. Runs on the
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
