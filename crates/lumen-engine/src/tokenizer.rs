//! Tokenizers: Hugging Face `tokenizer.json`, or one built from a GGUF file's
//! `tokenizer.ggml.*` metadata, plus a streaming decoder.
//!
//! GGUF stores a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`)
//! as token strings, merges and token types, and names the pre-tokenizer
//! (`tokenizer.ggml.pre`). We rebuild the equivalent Hugging Face pipeline;
//! the regular expressions are those of the original `tokenizer.json` files
//! (and of llama.cpp's `llama-vocab.cpp`).

use std::path::Path;

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, SplitDelimiterBehavior, TokenizerImpl,
};

use crate::bpe::FlatBpe;
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
    inner: Inner,
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

/// The `tokenizers` pipeline around the model `M`.
type Pipeline<M> =
    TokenizerImpl<M, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// The `tokenizers` pipeline around a byte-level BPE in flat arrays.
type FlatTokenizer = Pipeline<FlatBpe>;

/// The pipeline: around a [`FlatBpe`] (a fifth of the memory) for a GGUF
/// file and a `tokenizer.json` BPE it encodes exactly; `tokenizers`' own
/// for any other `tokenizer.json`.
#[derive(Clone)]
enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Flat(Box<FlatTokenizer>),
}

/// Runs `$body` with `$t` bound to whichever pipeline `$inner` holds (the
/// two share the methods used here).
macro_rules! with_pipeline {
    ($inner:expr, $t:ident => $body:expr) => {
        match &$inner {
            Inner::Hf($t) => $body,
            Inner::Flat($t) => $body,
        }
    };
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. A byte-level BPE (Llama 3's)
    /// is kept in flat arrays (see [`FlatBpe`]); other models as
    /// `tokenizers` loads them.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        // `tokenizers` reads the whole pipeline while another thread reads
        // the vocabulary and merges again into flat arrays (Llama 3's: 0.2
        // s each).
        let (hf, flat) = std::thread::scope(|s| {
            let flat =
                std::thread::Builder::new().spawn_scoped(s, || FlatBpe::from_tokenizer_json(&json));
            let hf = json.parse::<tokenizers::Tokenizer>();
            let flat = match flat {
                Ok(thread) => thread.join().ok().flatten(),
                Err(_) => FlatBpe::from_tokenizer_json(&json),
            };
            (hf, flat)
        });
        let hf = hf.map_err(|e| EngineError::invalid(path, format!("tokenizer.json: {e}")))?;
        let inner = match flat.and_then(|model| flat_pipeline(&hf, model)) {
            Some(flat) => Inner::Flat(Box::new(flat)),
            None => Inner::Hf(Box::new(hf)),
        };
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
        let types = token_types(gguf, types_key);
        if let Some(m) = merges.iter().find(|m| !m.contains(' ')) {
            return Err(gguf.invalid(format!("tokenizer merge `{m}` has no space")));
        }
        // (Each has a space: checked above.)
        let pairs = merges.iter().map(|m| m.split_once(' ').unwrap_or((m, "")));
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre)
            .ok_or_else(|| gguf.invalid(format!("pre-tokenizer `{pre}` is not supported")))?;
        let bpe = FlatBpe::new(&tokens, pairs, ignore_merges)
            .map_err(|e| gguf.invalid(format!("tokenizer: {e}")))?;
        let inner = gguf_pipeline(bpe, pre_tokenizer, gguf_special_tokens(&tokens, &types))?;

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
            inner: Inner::Flat(Box::new(inner)),
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
        let enc = with_pipeline!(self.inner, t => t.encode(text, add_special)).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text; special tokens are kept unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        with_pipeline!(self.inner, t => t.decode(ids, skip_special)).map_err(tok_err)
    }

    /// The id of a token given its text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        with_pipeline!(self.inner, t => t.token_to_id(token))
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        with_pipeline!(self.inner, t => t.id_to_token(id))
    }

    /// Number of ids, including added tokens.
    pub fn vocab_size(&self) -> usize {
        with_pipeline!(self.inner, t => t.get_vocab_size(true))
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

/// `hf`'s pipeline around a [`FlatBpe`] of its model, when that encodes
/// exactly as `hf` does: a BPE without dropout, unknown token, byte
/// fallback or word prefixes/suffixes, whose tokens all keep their ids.
fn flat_pipeline(hf: &tokenizers::Tokenizer, model: FlatBpe) -> Option<FlatTokenizer> {
    let ModelWrapper::BPE(bpe) = hf.get_model() else {
        return None;
    };
    if bpe.dropout.is_some_and(|p| p > 0.0)
        || bpe.unk_token.is_some()
        || bpe.continuing_subword_prefix.is_some()
        || bpe.end_of_word_suffix.is_some()
        || bpe.byte_fallback
        || bpe.ignore_merges != model.ignore_merges()
    {
        return None;
    }
    // Duplicate texts would shrink `tokenizers`' count: keep its decoding.
    if model.get_vocab_size() != bpe.get_vocab_size() {
        return None;
    }
    let mut flat = FlatTokenizer::new(model);
    flat.with_normalizer(hf.get_normalizer().cloned()).ok()?;
    flat.with_pre_tokenizer(hf.get_pre_tokenizer().cloned());
    flat.with_post_processor(hf.get_post_processor().cloned());
    flat.with_decoder(hf.get_decoder().cloned());
    flat.with_truncation(hf.get_truncation().cloned()).ok()?;
    flat.with_padding(hf.get_padding().cloned());
    flat.with_added_vocabulary(hf.get_added_vocabulary().clone());
    let same_ids = hf
        .get_added_tokens_decoder()
        .iter()
        .all(|(id, t)| flat.token_to_id(&t.content) == Some(*id));
    same_ids.then_some(flat)
}

/// The pipeline around a GGUF file's BPE model: its pre-tokenizer,
/// byte-level decoding and its special tokens.
fn gguf_pipeline<M: tokenizers::Model>(
    model: M,
    pre_tokenizer: PreTokenizerWrapper,
    special: Vec<AddedToken>,
) -> Result<Pipeline<M>> {
    let mut pipeline = Pipeline::new(model);
    pipeline.with_pre_tokenizer(Some(pre_tokenizer));
    pipeline.with_decoder(Some(ByteLevel::default()));
    pipeline.add_special_tokens(special).map_err(tok_err)?;
    Ok(pipeline)
}

/// The GGUF token types under `key` (none if absent; a non-number counts
/// as a normal token, 1).
fn token_types(gguf: &GgufFile, key: &str) -> Vec<i64> {
    match gguf.get(key).and_then(|v| v.as_array()) {
        Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i64).collect(),
        None => Vec::new(),
    }
}

/// Control and user-defined tokens, which are matched whole in the input
/// text, as llama.cpp does when parsing special tokens.
fn gguf_special_tokens(tokens: &[&str], types: &[i64]) -> Vec<AddedToken> {
    types
        .iter()
        .zip(tokens)
        .filter(|(t, _)| **t == token_type::CONTROL || **t == token_type::USER_DEFINED)
        .map(|(t, text)| AddedToken::from(text.to_string(), *t == token_type::CONTROL))
        .collect()
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

#[cfg(test)]
mod tests {
    use tokenizers::models::bpe::{BPE, Vocab};

    use super::*;
    use crate::sampling::SplitMix64;

    /// Text pieces of every kind the pre-tokenizers split on, for random
    /// strings.
    const PIECES: &[&str] = &[
        "the",
        "The",
        " quick",
        "BROWN",
        "fox's",
        " I'LL",
        "they're",
        "ok",
        "a",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        " \n ",
        "   \t",
        "0",
        "7",
        "42",
        "2024",
        "123456789",
        "3.14",
        ",",
        ".",
        "!?",
        "...",
        "--",
        "\"",
        "'",
        "(",
        ")",
        "{}",
        "[]",
        "=>",
        "::",
        "fn main()",
        "<div>",
        "#",
        "@",
        "%",
        "$",
        "é",
        "naïve",
        "ß",
        "Ø",
        "café",
        "Ελληνικά",
        "русский",
        "العربية",
        "עברית",
        "हिन्दी",
        "日本語",
        "中文",
        "한국어",
        "😀",
        "👍🏽",
        "👨‍👩‍👧‍👦",
        "e\u{301}",
        "\u{200b}",
        "\u{feff}",
        "<|eot_id|>",
        "<|begin_of_text|>",
        "<|eot",
        "|>",
        "<|im_end|>",
        "aaaaaaaaaaaaaaaa",
    ];

    /// Seeded random texts: pieces and random code points.
    fn random_texts(seed: u64, n: usize) -> Vec<String> {
        let mut rng = SplitMix64(seed);
        let mut below = |n: u64| (rng.next_u64() % n) as usize;
        (0..n)
            .map(|_| {
                let mut text = String::new();
                for _ in 0..below(24) {
                    if below(5) == 0 {
                        // Any character, mostly from the lower planes.
                        let top = [0x80, 0x800, 0x3_0000][below(3)];
                        if let Some(c) = char::from_u32(below(top) as u32 + 0x20) {
                            text.push(c);
                        }
                    } else {
                        text.push_str(PIECES[below(PIECES.len() as u64)]);
                    }
                }
                text
            })
            .collect()
    }

    /// The tiny Llama 3 GGUF fixture: the real Llama 3 vocabulary and merges.
    fn llama3_gguf() -> GgufFile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-llama3/tiny-llama3-f32.gguf");
        GgufFile::open(path).expect("fixture")
    }

    type HfPipeline = Pipeline<BPE>;

    /// The fixture's tokenizer in both pipelines, with the pre-tokenizer
    /// named `pre`: (flat, `tokenizers`' BPE).
    fn llama3_pipelines(pre: &str) -> (FlatTokenizer, HfPipeline) {
        let gguf = llama3_gguf();
        let tokens = string_array(&gguf, "tokenizer.ggml.tokens").expect("tokens");
        let merges = string_array(&gguf, "tokenizer.ggml.merges").expect("merges");
        let types = token_types(&gguf, "tokenizer.ggml.token_type");
        assert_eq!(types.len(), tokens.len(), "the fixture's token types");
        let pairs = || merges.iter().map(|m| m.split_once(' ').expect("pair"));
        let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).expect("known");
        let special = gguf_special_tokens(&tokens, &types);
        let flat = FlatBpe::new(&tokens, pairs(), ignore_merges).expect("flat");
        let flat = gguf_pipeline(flat, pre_tokenizer.clone(), special.clone()).expect("flat");
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = pairs().map(|(a, b)| (a.to_string(), b.to_string()));
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges.collect())
            .ignore_merges(ignore_merges)
            .build()
            .expect("bpe");
        (
            flat,
            gguf_pipeline(bpe, pre_tokenizer, special).expect("hf"),
        )
    }

    /// Random texts, and the text of every `step`th token of `flat` alone:
    /// some words are tokens that merging would not reach (what
    /// `ignore_merges` is for).
    fn texts(flat: &FlatTokenizer, step: usize) -> Vec<String> {
        let mut texts = random_texts(0x70c3, 3000);
        let n = flat.get_vocab_size(false) as u32;
        texts.extend(
            (0..n)
                .step_by(step)
                .filter_map(|id| flat.decode(&[id], false).ok()),
        );
        texts
    }

    /// Asserts that `got` encodes and decodes every text as `want` does.
    fn assert_same(
        what: &str,
        texts: &[String],
        got: impl Fn(&str) -> (Vec<u32>, String),
        want: impl Fn(&str) -> (Vec<u32>, String),
    ) {
        for text in texts {
            assert_eq!(got(text), want(text), "{what}: {text:?}");
        }
    }

    /// Ids and their decoding, from one of the pipelines.
    macro_rules! round_trip {
        ($pipeline:expr) => {
            |text: &str| {
                let enc = $pipeline.encode(text, false).expect("encode");
                let ids = enc.get_ids().to_vec();
                let back = $pipeline.decode(&ids, false).expect("decode");
                (ids, back)
            }
        };
    }

    #[test]
    fn flat_bpe_encodes_random_text_as_tokenizers_bpe() {
        // Llama 3's split with whole-word lookup; SmolLM's without.
        for pre in ["llama-bpe", "smollm"] {
            let (flat, hf) = llama3_pipelines(pre);
            let texts = texts(&flat, 5);
            assert_same(pre, &texts, round_trip!(flat), round_trip!(hf));
        }
    }

    #[test]
    fn tokenizer_json_bpe_loads_flat_and_encodes_the_same() {
        let (_, hf) = llama3_pipelines("llama-bpe");
        let hf = tokenizers::Tokenizer::from(hf);
        let json = hf.to_string(false).expect("json");
        // The same file with merges written the older way, `"a b"`.
        let mut legacy: serde_json::Value = serde_json::from_str(&json).expect("json");
        for m in legacy["model"]["merges"].as_array_mut().expect("merges") {
            let pair = m.as_array().expect("pair");
            let text = format!(
                "{} {}",
                pair[0].as_str().expect("a"),
                pair[1].as_str().expect("b")
            );
            *m = serde_json::Value::String(text);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, json) in [("pairs", json), ("legacy", legacy.to_string())] {
            let path = dir.path().join(format!("{name}.json"));
            std::fs::write(&path, json).expect("write");
            let tok = Tokenizer::from_file(&path).expect("load");
            let Inner::Flat(flat) = &tok.inner else {
                panic!("{name}: kept tokenizers' BPE");
            };
            let texts = texts(flat, 25);
            assert_same(name, &texts, round_trip!(flat), round_trip!(hf));
        }
    }

    #[test]
    fn tokenizer_json_with_other_bpe_options_keeps_tokenizers() {
        // A BPE with an unknown token drops nothing: FlatBpe does not do that.
        let mut json: serde_json::Value = serde_json::from_str(
            &tokenizers::Tokenizer::from(llama3_pipelines("llama-bpe").1)
                .to_string(false)
                .expect("json"),
        )
        .expect("json");
        json["model"]["unk_token"] = serde_json::Value::String("!".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).expect("write");
        let tok = Tokenizer::from_file(&path).expect("load");
        assert!(matches!(tok.inner, Inner::Hf(_)));
    }

    #[test]
    fn llama3_vocabulary_takes_a_fifth_of_tokenizers_memory() {
        // `tokenizers`' BPE held about 34 MB (resident, measured); this
        // one's tables are 6.5 MB.
        let gguf = llama3_gguf();
        let tokens = string_array(&gguf, "tokenizer.ggml.tokens").expect("tokens");
        let merges = string_array(&gguf, "tokenizer.ggml.merges").expect("merges");
        let pairs = merges.iter().map(|m| m.split_once(' ').expect("pair"));
        let flat = FlatBpe::new(&tokens, pairs, true).expect("flat");
        assert_eq!((tokens.len(), merges.len()), (128_256, 280_147));
        let bytes = flat.heap_bytes();
        assert!(bytes < 7 << 20, "{bytes} bytes");
    }
}
