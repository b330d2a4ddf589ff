//! Generation: a [`Session`] owns one conversation's KV cache and streams
//! tokens; a [`Chat`] adds messages and the chat template on top.
//!
//! KV-cache reuse: a session remembers which tokens its cache holds. A new
//! prompt is compared with them and only the part after the shared prefix is
//! computed, so the second turn of a conversation prefills only the new
//! message, not the whole history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};
use crate::llama::{KvCache, Logits};
use crate::mllama::text::ImageContext;
use crate::model::{EncodedImage, Model};
use crate::sampling::{Sampler, SamplingParams};
use crate::template::{Message, TemplateInput};

/// Stops a generation from another thread. Cheap to clone; checked before
/// every token and between prompt chunks.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Clears a previous request, so the token can be reused.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Settings for one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these; the stop string
    /// itself is not part of the reply.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks only).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 1024,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached a stop string.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The [`CancelToken`] fired.
    Cancelled,
    /// The context window is full. The reply so far is kept; start a new
    /// conversation (or drop old turns) to continue.
    ContextFull,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The reply text (without any stop string).
    pub text: String,
    /// The generated token ids (without the final end-of-sequence token).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the KV cache (not recomputed).
    pub cached_tokens: usize,
    /// Time to process the new prompt tokens (time to first token, less
    /// sampling).
    pub prefill_time: Duration,
    /// Time spent generating after the first token.
    pub decode_time: Duration,
}

impl Completion {
    /// Prompt tokens processed per second.
    pub fn prefill_tok_s(&self) -> f64 {
        let n = self.prompt_tokens - self.cached_tokens;
        n as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second (after the first).
    pub fn decode_tok_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// One conversation's state on a model: the KV cache and the tokens in it,
/// and for vision models the conversation's images.
pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    /// The tokens whose keys and values `cache` holds, in order.
    cached: Vec<u32>,
    /// The images `<|image|>` tokens refer to, in order, and their
    /// cross-attention keys and values.
    images: Vec<EncodedImage>,
    image_ctx: Option<ImageContext>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cached_tokens", &self.cached.len())
            .field("images", &self.images.len())
            .finish()
    }
}

impl Session {
    /// A new session with a context of up to `max_context` tokens (the
    /// model's trained length when `None`). Memory grows with use.
    pub fn new(model: Arc<Model>, max_context: Option<usize>) -> Self {
        let limit = max_context.unwrap_or(usize::MAX);
        let cache = model.new_cache(limit);
        Self {
            model,
            cache,
            cached: Vec::new(),
            images: Vec::new(),
            image_ctx: None,
        }
    }

    /// Sets the images the conversation's `<|image|>` tokens refer to, in
    /// order. Adding images keeps the cache; replacing or removing one
    /// forgets the cache from the first image token on.
    pub fn set_images(&mut self, images: Vec<EncodedImage>) -> Result<()> {
        let unchanged_prefix = images.len() >= self.images.len()
            && self
                .images
                .iter()
                .zip(&images)
                .all(|(a, b)| a.digest == b.digest);
        if !unchanged_prefix {
            let image_token = self.model.image_token();
            let first = self
                .cached
                .iter()
                .position(|t| Some(*t) == image_token)
                .unwrap_or(self.cached.len());
            self.cache.truncate(first);
            self.cached.truncate(first);
        }
        self.image_ctx = if images.is_empty() {
            None
        } else {
            Some(self.model.image_context(&images)?)
        };
        self.images = images;
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The context length in tokens.
    pub fn context_length(&self) -> usize {
        self.cache.max_len()
    }

    /// Tokens currently in the KV cache.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Bytes held by the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.allocated_bytes()
    }

    /// Forgets the cache (keeps its memory).
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.cached.clear();
    }

    /// Continues `prompt` (the whole conversation as tokens), streaming text
    /// pieces to `on_text` as they complete. Generation runs on a thread of
    /// rayon's pool while the calling thread waits, so `on_text` is called
    /// there (hence `Send`); a callback that blocks holds that thread.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion> {
        // The whole generation runs on a thread of rayon's pool, as each
        // forward pass does (see `Model::forward`): the decoding steps'
        // parallel operations then start on this thread instead of being
        // handed to the pool from outside, once per token.
        rayon::scope(|_| self.generate_in_pool(prompt, params, cancel, on_text))
    }

    fn generate_in_pool(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion> {
        let limit = self.cache.max_len();
        if prompt.is_empty() {
            return Err(EngineError::InvalidArgument("the prompt is empty".into()));
        }
        if prompt.len() >= limit {
            return Err(EngineError::ContextOverflow {
                needed: prompt.len() + 1,
                limit,
            });
        }
        // Reuse the shared prefix; at least one token must be fed to get logits.
        let shared = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        self.cache.truncate(shared);
        self.cached.truncate(shared);

        let rows = self.image_rows(prompt)?;
        let started = Instant::now();
        let model = self.model.clone();
        let mut out = Output::new(&model, params);
        let mut logits = None;
        for chunk in prompt[shared..].chunks(model.prefill_chunk()) {
            if cancel.is_cancelled() {
                return Ok(out.finish(StopReason::Cancelled, prompt.len(), shared, started, None));
            }
            let at = self.cache.len();
            logits = Some(self.feed(chunk, rows.as_ref().map(|r| &r[at..at + chunk.len()]))?);
        }
        let prefill_time = started.elapsed();
        let logits =
            logits.ok_or_else(|| EngineError::InvalidArgument("nothing to prefill".into()))?;
        // One buffer for every step's logits (decoding writes into it).
        let mut logits = logits.to_vec1::<f32>()?;
        if model.has_decode_pass() {
            // Generated tokens take the single-token pass, which allocates
            // nothing: what the prompt's passes kept waits for the next
            // prompt outside the process instead of in it.
            crate::alloc::trim();
        }
        let decode_start = Instant::now();
        let mut sampler = Sampler::new(params.sampling.clone());
        let eos = model.tokenizer().eos_ids();
        let finish = |out: Output, reason| {
            out.finish(
                reason,
                prompt.len(),
                shared,
                decode_start,
                Some(prefill_time),
            )
        };
        // Prompt and reply so far, for the repetition penalty.
        let mut history = Vec::with_capacity(prompt.len() + params.max_tokens.min(limit));
        history.extend_from_slice(prompt);
        self.cached.reserve(params.max_tokens.min(limit));
        loop {
            if cancel.is_cancelled() {
                return Ok(finish(out, StopReason::Cancelled));
            }
            let token = sampler.sample(&mut logits, &history);
            history.push(token);
            if !params.ignore_eos && eos.contains(&token) {
                return Ok(finish(out, StopReason::Eos));
            }
            if let Some(reason) = out.push(token, on_text)? {
                return Ok(finish(out, reason));
            }
            if out.tokens.len() >= params.max_tokens {
                return Ok(finish(out, StopReason::MaxTokens));
            }
            if self.cache.len() + 1 > limit {
                return Ok(finish(out, StopReason::ContextFull));
            }
            // New tokens see the images the last prompt token saw.
            let last = rows
                .as_ref()
                .and_then(|r| r.last())
                .map(|r| vec![r.clone()]);
            self.step(token, last.as_deref(), &mut logits)?;
        }
    }

    /// For vision sessions: per prompt token, which images it attends to.
    fn image_rows(&self, prompt: &[u32]) -> Result<Option<Vec<Vec<bool>>>> {
        let Some(image_token) = self.model.image_token() else {
            return Ok(None);
        };
        let spans = crate::mllama::masks::image_spans(prompt, image_token);
        if spans.len() != self.images.len() {
            return Err(EngineError::InvalidArgument(format!(
                "the prompt has {} <|image|> tokens but {} images were given",
                spans.len(),
                self.images.len()
            )));
        }
        if spans.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            (0..prompt.len())
                .map(|i| spans.iter().map(|&(s, e)| s <= i && i < e).collect())
                .collect(),
        ))
    }

    /// Runs one generated token through the model, appending it to the
    /// cache, and writes the next token's logits into `logits`.
    fn step(
        &mut self,
        token: u32,
        rows: Option<&[Vec<bool>]>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let images = self.image_ctx.as_ref().zip(rows);
        self.model
            .forward_one_into(token, &mut self.cache, images, logits)?;
        self.cached.push(token);
        Ok(())
    }

    /// Runs tokens through the model, appending them to the cache.
    fn feed(&mut self, tokens: &[u32], rows: Option<&[Vec<bool>]>) -> Result<candle_core::Tensor> {
        let images = self.image_ctx.as_ref().zip(rows);
        let logits = self
            .model
            .forward(tokens, &mut self.cache, images, Logits::Last)?;
        self.cached.extend_from_slice(tokens);
        Ok(logits)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Accumulates generated tokens into text, holding back anything that might
/// be the start of a stop string.
struct Output<'a> {
    decoder: crate::tokenizer::StreamDecoder<'a>,
    stop: &'a [String],
    tokens: Vec<u32>,
    text: String,
    emitted: usize,
}

impl<'a> Output<'a> {
    fn new(model: &'a Model, params: &'a GenerateParams) -> Self {
        Self {
            decoder: model.tokenizer().stream_decoder(),
            stop: &params.stop,
            tokens: Vec::new(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns `Some(StopString)` when a stop string appeared.
    fn push(
        &mut self,
        token: u32,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<StopReason>> {
        self.tokens.push(token);
        if let Some(piece) = self.decoder.push(token)? {
            self.text.push_str(&piece);
        }
        if let Some(at) = self.find_stop() {
            self.text.truncate(at);
            self.emit_up_to(at, on_text);
            return Ok(Some(StopReason::StopString));
        }
        let safe = self.text.len() - self.partial_stop_len();
        self.emit_up_to(safe, on_text);
        Ok(None)
    }

    fn find_stop(&self) -> Option<usize> {
        let longest = self.stop.iter().map(String::len).max()?;
        // Only the new text (plus overlap) can hold a new match.
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest suffix of the text that begins a stop string.
    fn partial_stop_len(&self) -> usize {
        self.stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(move |&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    fn emit_up_to(&mut self, end: usize, on_text: &mut (dyn FnMut(&str) + Send)) {
        if end > self.emitted {
            on_text(&self.text[self.emitted..end]);
            self.emitted = end;
        }
    }

    fn finish(
        mut self,
        reason: StopReason,
        prompt_tokens: usize,
        cached_tokens: usize,
        since: Instant,
        prefill_time: Option<Duration>,
    ) -> Completion {
        if reason != StopReason::StopString {
            if let Ok(Some(rest)) = self.decoder.flush() {
                self.text.push_str(&rest);
            }
            self.emit_up_to(self.text.len(), &mut |_| {});
        }
        let (prefill_time, decode_time) = match prefill_time {
            Some(p) => (p, since.elapsed()),
            None => (since.elapsed(), Duration::ZERO),
        };
        Completion {
            text: self.text,
            tokens: self.tokens,
            stop_reason: reason,
            prompt_tokens,
            cached_tokens,
            prefill_time,
            decode_time,
        }
    }
}

/// A multi-turn conversation: messages, the chat template, and a session
/// whose cache carries over between turns.
#[derive(Debug)]
pub struct Chat {
    session: Session,
    messages: Vec<Message>,
    tools: Vec<serde_json::Value>,
    date_string: Option<String>,
    /// The previous turn's prompt text and tokens, and the reply as stored
    /// and as generated, so the next turn reuses the model's own tokens and
    /// tokenizes only what is new.
    seen_text: String,
    seen_tokens: Vec<u32>,
    last_reply: (String, Vec<u32>),
    /// Every image attached so far, in order.
    images: Vec<EncodedImage>,
}

impl Chat {
    /// A new conversation, optionally with a system prompt.
    pub fn new(session: Session, system: Option<&str>) -> Self {
        let messages = system
            .filter(|s| !s.trim().is_empty())
            .map(|s| vec![Message::new("system", s)])
            .unwrap_or_default();
        Self {
            session,
            messages,
            tools: Vec::new(),
            date_string: None,
            seen_text: String::new(),
            seen_tokens: Vec::new(),
            last_reply: (String::new(), Vec::new()),
            images: Vec::new(),
        }
    }

    /// Appends a message from an earlier session (a conversation reopened
    /// from the history) without generating anything. The next turn's
    /// prompt includes it; nothing is in the KV cache for it yet.
    pub fn push_history(&mut self, role: &str, content: &str) {
        self.messages.push(Message::new(role, content));
    }

    /// Like [`Chat::push_history`] for a user message that came with
    /// images (encoded again by [`Model::encode_image`]), placed before its
    /// text as in [`Chat::send_with_images`].
    pub fn push_history_with_images(
        &mut self,
        content: &str,
        images: Vec<EncodedImage>,
    ) -> Result<()> {
        if images.is_empty() {
            self.push_history("user", content);
            return Ok(());
        }
        let text = "<|image|>".repeat(images.len()) + content;
        self.images.extend(images);
        self.session.set_images(self.images.clone())?;
        self.push_history("user", &text);
        Ok(())
    }

    /// Sets the tool definitions offered to the model.
    pub fn set_tools(&mut self, tools: Vec<serde_json::Value>) {
        self.tools = tools;
    }

    /// Fixes the date the template shows (today when unset).
    pub fn set_date_string(&mut self, date: Option<String>) {
        self.date_string = date;
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Renders the conversation plus an open assistant turn: the text and
    /// its tokens.
    pub fn render_prompt(&self) -> Result<(String, Vec<u32>)> {
        let model = self.session.model();
        let text = model.template().render(&TemplateInput {
            messages: &self.messages,
            tools: (!self.tools.is_empty()).then_some(self.tools.as_slice()),
            add_generation_prompt: true,
            date_string: self.date_string.clone(),
            extra: None,
        })?;
        let tokens = match self.splice(&text)? {
            Some(tokens) => tokens,
            None => model.tokenizer().encode(&text, false)?,
        };
        Ok((text, tokens))
    }

    /// The tokens of `text` built from the previous turn's: its prompt
    /// tokens, then the reply as the model generated it (templates often
    /// re-render a reply trimmed, which would otherwise change its tokens and
    /// void the cache), then the new part. `None` when `text` does not
    /// extend the previous prompt (the template rewrote history).
    fn splice(&self, text: &str) -> Result<Option<Vec<u32>>> {
        if self.seen_text.is_empty() {
            return Ok(None);
        }
        let Some(rest) = text.strip_prefix(self.seen_text.as_str()) else {
            return Ok(None);
        };
        let tok = self.session.model().tokenizer();
        let (reply, reply_tokens) = &self.last_reply;
        let spelled = tok.decode(reply_tokens, false)?;
        let mut tokens = self.seen_tokens.clone();
        let after_reply = [reply.as_str(), reply.trim()]
            .into_iter()
            .find_map(|shown| rest.strip_prefix(shown))
            .filter(|_| spelled.trim() == reply.trim());
        match after_reply {
            Some(after) => {
                tokens.extend_from_slice(reply_tokens);
                tokens.extend(tok.encode(after, false)?);
            }
            None => tokens.extend(tok.encode(rest, false)?),
        }
        Ok(Some(tokens))
    }

    /// Adds a user message and generates the reply, streaming it. The reply
    /// is added to the conversation even when cancelled (what was produced is
    /// kept). On error, the user message is removed again.
    pub fn send(
        &mut self,
        user: &str,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion> {
        self.messages.push(Message::new("user", user));
        let result = self.reply(params, cancel, on_text);
        if result.is_err() {
            self.messages.pop();
        }
        result
    }

    /// Like [`Chat::send`], with images (encoded by
    /// [`Model::encode_image`]) placed before the text as `<|image|>` tokens.
    /// Earlier images stay in the conversation; text-only turns may follow.
    pub fn send_with_images(
        &mut self,
        user: &str,
        images: Vec<EncodedImage>,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion> {
        if images.is_empty() {
            return self.send(user, params, cancel, on_text);
        }
        let before = self.images.len();
        let content = "<|image|>".repeat(images.len()) + user;
        self.images.extend(images);
        let result = self
            .session
            .set_images(self.images.clone())
            .and_then(|()| self.send(&content, params, cancel, on_text));
        if result.is_err() {
            self.images.truncate(before);
            // Best effort: the session goes back to the previous images.
            let _ = self.session.set_images(self.images.clone());
        }
        result
    }

    fn reply(
        &mut self,
        params: &GenerateParams,
        cancel: &CancelToken,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion> {
        let (text, prompt) = self.render_prompt()?;
        let completion = self.session.generate(&prompt, params, cancel, on_text)?;
        self.seen_text = text;
        self.seen_tokens = prompt;
        self.last_reply = (completion.text.clone(), completion.tokens.clone());
        self.messages
            .push(Message::new("assistant", completion.text.clone()));
        Ok(completion)
    }
}
