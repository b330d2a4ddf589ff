//! Tokenizers: Hugging Face `tokenizer.json`, or one built from a GGUF file's
//! `tokenizer.ggml.*` metadata, plus a streaming decoder.
//!
//! GGUF stores a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`)
//! as token strings, merges and token types, and names the pre-tokenizer
//! (`tokenizer.ggml.pre`). We rebuild the equivalent Hugging Face pipeline;
//! the regular expressions are those of the original `tokenizer.json` files
//! (and of llama.cpp's `llama-vocab.cpp`).

use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// Llama 3's pre-tokenizer split (`llama-bpe` in GGUF).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end generation wherever they are control tokens.
const END_OF_GENERATION: [&str; 6] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
];

/// The GGUF metadata arrays [`Tokenizer::from_gguf`] reads: the large
/// ones (a Llama 3 vocabulary's strings and merges), not needed once the
/// tokenizer is built.
pub(crate) const GGUF_ARRAYS: [&str; 3] = [
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
];

/// GGUF token types (llama.cpp's `llama_token_type`).
mod token_type {
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// A tokenizer with the ids the engine needs to know about.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::invalid(path, format!("tokenizer.json: {e}")))?;
        Ok(Self {
            inner,
            bos_token: None,
            eos_token: None,
            eos_ids: Vec::new(),
        })
    }

    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model").unwrap_or("(none)");
        if model != "gpt2" {
            return Err(gguf.invalid(format!(
                "tokenizer model `{model}` is not supported (Lumen supports byte-level BPE, `gpt2`)"
            )));
        }
        let [tokens_key, merges_key, types_key] = GGUF_ARRAYS;
        let tokens = string_array(gguf, tokens_key)?;
        let merges = string_array(gguf, merges_key)?;
        let types: Vec<i64> = match gguf.get(types_key).and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i64).collect(),
            None => Vec::new(),
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| gguf.invalid(format!("tokenizer merge `{m}` has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre)
            .ok_or_else(|| gguf.invalid(format!("pre-tokenizer `{pre}` is not supported")))?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| gguf.invalid(format!("tokenizer: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        // Control and user-defined tokens are matched whole in the input text,
        // as llama.cpp does when parsing special tokens.
        let added: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == token_type::CONTROL || **t == token_type::USER_DEFINED)
            .filter_map(|(i, t)| {
                let text = tokens.get(i)?;
                Some(AddedToken::from(
                    text.to_string(),
                    *t == token_type::CONTROL,
                ))
            })
            .collect();
        inner.add_special_tokens(added).map_err(tok_err)?;

        let token_at = |key: &str| -> Result<Option<String>> {
            Ok(gguf
                .get_u64(key)?
                .and_then(|id| tokens.get(id as usize).map(|s| s.to_string())))
        };
        let mut eos_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = gguf.get_u64(key)?
                && (id as usize) < tokens.len()
                && !eos_ids.contains(&(id as u32))
            {
                eos_ids.push(id as u32);
            }
        }
        // Like llama.cpp, also end on the well-known end-of-turn tokens: GGUF
        // files often name only one of Llama 3's three (128001/8/9).
        for text in END_OF_GENERATION {
            if let Some(id) = tokens.iter().position(|t| *t == text)
                && types.get(id).is_none_or(|t| *t == token_type::CONTROL)
                && !eos_ids.contains(&(id as u32))
            {
                eos_ids.push(id as u32);
            }
        }
        Ok(Self {
            inner,
            bos_token: token_at("tokenizer.ggml.bos_token_id")?,
            eos_token: token_at("tokenizer.ggml.eos_token_id")?,
            eos_ids,
        })
    }

    /// Sets the beginning/end token texts and the ids that end generation
    /// (from `tokenizer_config.json` / `generation_config.json`).
    pub fn set_special(&mut self, bos: Option<String>, eos: Option<String>, eos_ids: Vec<u32>) {
        if bos.is_some() {
            self.bos_token = bos;
        }
        if eos.is_some() {
            self.eos_token = eos;
        }
        for id in eos_ids {
            if !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
    }

    /// Encodes `text`. Special-token text in it (`<|eot_id|>`) becomes the
    /// special token. `add_special` applies the tokenizer's post-processor
    /// (e.g. prepending BOS), as Hugging Face's `add_special_tokens`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text; special tokens are kept unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The id of a token given its text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-text token's text, if known.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The end-of-text token's text, if known.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Every id that ends generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// A decoder that turns a stream of ids into text pieces.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let arr = gguf
        .get(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| gguf.invalid(format!("metadata `{key}` is missing")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| gguf.invalid(format!("`{key}` holds a non-string")))
        })
        .collect()
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name, and whether BPE
/// should look whole words up before merging (`ignore_merges`, as Llama 3).
fn pre_tokenizer(name: &str) -> Option<(PreTokenizerWrapper, bool)> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    Some(match name {
        "llama-bpe" | "llama3" | "smaug-bpe" | "dbrx" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .ok()?;
            let seq = Sequence::new(vec![PreTokenizerWrapper::Split(split), byte_level(false)]);
            (PreTokenizerWrapper::Sequence(seq), true)
        }
        // SmolLM / StarCoder: every digit alone, then GPT-2's byte-level split.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            let seq = Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]);
            (PreTokenizerWrapper::Sequence(seq), false)
        }
        "default" | "gpt2" | "gpt-2" => (byte_level(true), false),
        _ => return None,
    })
}

/// Turns a stream of token ids into text, emitting a piece only once it is
/// complete: a character split across tokens (an emoji is often 2-4 byte
/// tokens) is held back until its last byte arrives.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window re-decoded for context.
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        // Decode from a little before the new tokens so that tokenizers that
        // strip a leading space per decode call still join words correctly.
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], false)?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..], false)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Whatever is left undecoded (an incomplete character at the end of
    /// generation comes out as U+FFFD).
    pub fn flush(&mut self) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], false)?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..], false)?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(now
            .strip_prefix(&before)
            .map(str::to_string)
            .filter(|s| !s.is_empty()))
    }
}
