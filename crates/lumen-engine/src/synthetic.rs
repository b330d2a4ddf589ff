//! Random-weight Llama GGUF files with real shapes, written at run time.
//!
//! Used by tests to cover every quantization type and by benchmarks to run
//! Llama 3.2 1B/3B-shaped models that cannot be downloaded here. Weights are
//! drawn from a fixed-seed generator, so a spec always writes the same file;
//! quantizing one spec to several types gives files with the same underlying
//! weights, which lets tests compare each type with the f32 file.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::sampling::SplitMix64;

/// The shape of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Context length written to the metadata.
    pub context_length: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// Type of the 2-D weights (norms stay f32).
    pub weight_type: GgmlDType,
    /// Type of the embedding table (often Q8_0 or Q6_K in real files).
    pub embedding_type: GgmlDType,
    /// Type of a separate output layer (`output.weight`), or `None` for an
    /// output tied to the embedding table (Llama 3.2 1B and 3B; 8B and
    /// larger have their own).
    pub output_type: Option<GgmlDType>,
    /// Random seed.
    pub seed: u64,
    /// Types per tensor beyond `weight_type`, as llama.cpp's mixes choose.
    pub mix: Mix,
}

/// How a file's tensors are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mix {
    /// Every 2-D weight is `weight_type`.
    #[default]
    Uniform,
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the embedding table (the
    /// output layer of a tied model) and for `attn_v` and `ffn_down` in the
    /// first and last eighth of the blocks and every third block between.
    Q4KM,
}

/// llama.cpp's `use_more_bits`: layer `i` of `n` gets the larger type.
fn more_bits(i: usize, n: usize) -> bool {
    // `i >= n / 8` holds past the first test, so the subtraction cannot wrap.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl SyntheticSpec {
    /// The same shapes with llama.cpp's Q4_K_M mix: Q6_K for the output
    /// layer (the embedding table when tied; otherwise the table is Q4_K).
    pub fn q4_k_m(self) -> Self {
        let (embedding_type, output_type) = match self.output_type {
            None => (GgmlDType::Q6K, None),
            Some(_) => (GgmlDType::Q4K, Some(GgmlDType::Q6K)),
        };
        Self {
            weight_type: GgmlDType::Q4K,
            embedding_type,
            output_type,
            mix: Mix::Q4KM,
            ..self
        }
    }

    /// The same shapes with a separate output layer of `ty`.
    pub fn untied(self, ty: GgmlDType) -> Self {
        Self {
            output_type: Some(ty),
            ..self
        }
    }

    /// The type of block `layer`'s tensor `name` (`attn_v`, `ffn_down`, …).
    fn block_type(&self, name: &str, layer: usize) -> GgmlDType {
        match self.mix {
            Mix::Q4KM
                if matches!(name, "attn_v" | "ffn_down") && more_bits(layer, self.num_layers) =>
            {
                GgmlDType::Q6K
            }
            _ => self.weight_type,
        }
    }
}

impl SyntheticSpec {
    /// A small model (hidden 256) whose rows fit every block size, K-quants
    /// included.
    pub fn small(weight_type: GgmlDType) -> Self {
        Self {
            hidden_size: 256,
            intermediate_size: 512,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            context_length: 2048,
            rope_theta: 500_000.0,
            weight_type,
            embedding_type: weight_type,
            output_type: None,
            seed: 1,
            mix: Mix::Uniform,
        }
    }

    /// The shapes of Llama 3.2 1B.
    pub fn llama32_1b(weight_type: GgmlDType) -> Self {
        Self {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            context_length: 131_072,
            rope_theta: 500_000.0,
            weight_type,
            embedding_type: weight_type,
            output_type: None,
            seed: 1,
            mix: Mix::Uniform,
        }
    }

    /// The shapes of Llama 3.2 3B.
    pub fn llama32_3b(weight_type: GgmlDType) -> Self {
        Self {
            hidden_size: 3072,
            intermediate_size: 8192,
            num_layers: 28,
            num_heads: 24,
            num_kv_heads: 8,
            ..Self::llama32_1b(weight_type)
        }
    }

    /// The shapes of Llama 3.1 8B (untied output layer).
    pub fn llama31_8b(weight_type: GgmlDType) -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            output_type: Some(weight_type),
            ..Self::llama32_1b(weight_type)
        }
    }
}

/// Where a synthetic file's vocabulary comes from.
#[derive(Debug)]
pub enum Vocabulary<'a> {
    /// 256 byte-level tokens, no merges.
    Bytes,
    /// The `tokenizer.*` metadata of another GGUF file.
    CopyFrom(&'a GgufFile),
    /// `tokenizer.*` metadata made elsewhere (see [`llama3_tokenizer`]).
    Metadata(Vec<(String, Value)>),
}

/// The `tokenizer.*` GGUF metadata of a Hugging Face Llama 3 tokenizer
/// (`tokenizer.json`, and `tokenizer_config.json` for the chat template and
/// end token), as llama.cpp's converter writes it: byte-level BPE (`gpt2`)
/// with the `llama-bpe` pre-tokenizer, the 128,000 learned tokens and the
/// 256 special ones (control type), the merges, begin/end ids.
pub fn llama3_tokenizer(
    tokenizer_json: &Path,
    tokenizer_config: Option<&Path>,
) -> Result<Vec<(String, Value)>> {
    let bad =
        |why: String| EngineError::InvalidArgument(format!("{}: {why}", tokenizer_json.display()));
    let text =
        std::fs::read_to_string(tokenizer_json).map_err(|e| EngineError::io(tokenizer_json, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad("not a BPE tokenizer".into()));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("no model.vocab".into()))?;
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    let size = vocab
        .values()
        .chain(added.iter().map(|a| &a["id"]))
        .filter_map(serde_json::Value::as_u64)
        .max()
        .map_or(0, |m| m as usize + 1);
    if size == 0 || size > 1 << 20 {
        return Err(bad(format!("{size} tokens")));
    }
    let mut tokens = vec![String::new(); size];
    // 1 normal, 3 control, 5 unused (llama.cpp's token types).
    let mut types = vec![5i32; size];
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("bad id for {token}")))? as usize;
        tokens[id] = token.clone();
        types[id] = 1;
    }
    for a in &added {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad("an added token without id or content".into()));
        };
        tokens[id as usize] = content.to_string();
        types[id as usize] = if a["special"].as_bool().unwrap_or(false) {
            3
        } else {
            1
        };
    }
    for (id, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{id}]");
        }
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("no model.merges".into()))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::String(s.clone())),
            serde_json::Value::Array(pair) if pair.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap_or(""),
                pair[1].as_str().unwrap_or("")
            ))),
            _ => Err(bad("a malformed merge".into())),
        })
        .collect::<Result<_>>()?;
    let id_of = |name: &str| tokens.iter().position(|t| t == name).map(|i| i as u32);
    let config: serde_json::Value = match tokenizer_config {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| EngineError::io(p, e))?;
            serde_json::from_str(&t)
                .map_err(|e| EngineError::InvalidArgument(format!("{}: {e}", p.display())))?
        }
        None => serde_json::Value::Null,
    };
    let bos = id_of("<|begin_of_text|>").ok_or_else(|| bad("no <|begin_of_text|>".into()))?;
    let eos = config["eos_token"]
        .as_str()
        .and_then(id_of)
        .or_else(|| id_of("<|eot_id|>"))
        .ok_or_else(|| bad("no end token".into()))?;
    let mut meta = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String("llama-bpe".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ];
    if let Some(template) = config["chat_template"].as_str() {
        meta.push((
            "tokenizer.chat_template".into(),
            Value::String(template.into()),
        ));
    }
    Ok(meta)
}

/// Writes a random-weight Llama GGUF to `path` with the given vocabulary
/// (a real one gives a file other tools can tokenize with).
pub fn write_random_llama(
    path: &Path,
    spec: &SyntheticSpec,
    vocabulary: Vocabulary<'_>,
) -> Result<()> {
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String("synthetic-llama".into()),
        ),
    ];
    let count = |meta: &[(String, Value)]| {
        meta.iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| match v {
                Value::Array(a) => Some(a.len()),
                _ => None,
            })
    };
    let vocab = match vocabulary {
        Vocabulary::CopyFrom(src) => {
            for (k, v) in src.metadata() {
                if k.starts_with("tokenizer.") {
                    meta.push((k.clone(), to_gguf_value(v)));
                }
            }
            src.get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[_]>::len)
                .ok_or_else(|| src.invalid("no tokenizer.ggml.tokens"))?
        }
        Vocabulary::Metadata(m) => {
            let n = count(&m)
                .ok_or_else(|| EngineError::InvalidArgument("no tokenizer.ggml.tokens".into()))?;
            meta.extend(m);
            n
        }
        Vocabulary::Bytes => {
            meta.extend(byte_level_vocab());
            256
        }
    };
    let hd = spec.hidden_size / spec.num_heads;
    let u32v = |v: usize| Value::U32(v as u32);
    meta.extend([
        ("llama.vocab_size".into(), u32v(vocab)),
        ("llama.context_length".into(), u32v(spec.context_length)),
        ("llama.embedding_length".into(), u32v(spec.hidden_size)),
        (
            "llama.feed_forward_length".into(),
            u32v(spec.intermediate_size),
        ),
        ("llama.block_count".into(), u32v(spec.num_layers)),
        ("llama.attention.head_count".into(), u32v(spec.num_heads)),
        (
            "llama.attention.head_count_kv".into(),
            u32v(spec.num_kv_heads),
        ),
        ("llama.rope.dimension_count".into(), u32v(hd)),
        ("llama.rope.freq_base".into(), Value::F32(spec.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
    ]);

    let mut rng = Normal::new(spec.seed);
    let (h, m) = (spec.hidden_size, spec.intermediate_size);
    let (q_out, kv_out) = (spec.num_heads * hd, spec.num_kv_heads * hd);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String,
                   shape: (usize, usize),
                   std: f32,
                   ty: GgmlDType,
                   rng: &mut Normal|
     -> Result<()> {
        let t = rng.tensor(shape, std)?;
        tensors.push((name, QTensor::quantize(&t, ty)?));
        Ok(())
    };
    add(
        "token_embd.weight".into(),
        (vocab, h),
        1.0,
        spec.embedding_type,
        &mut rng,
    )?;
    let lin = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    // Per block, in file order; each matrix drawn with std 1/sqrt(fan_in).
    let block: [(&str, (usize, usize)); 7] = [
        ("attn_q", (q_out, h)),
        ("attn_k", (kv_out, h)),
        ("attn_v", (kv_out, h)),
        ("attn_output", (h, q_out)),
        ("ffn_gate", (m, h)),
        ("ffn_up", (m, h)),
        ("ffn_down", (h, m)),
    ];
    for i in 0..spec.num_layers {
        for (name, shape) in block {
            add(
                format!("blk.{i}.{name}.weight"),
                shape,
                lin(shape.1),
                spec.block_type(name, i),
                &mut rng,
            )?;
        }
    }
    let ones = |n: usize| -> Result<QTensor> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?,
            GgmlDType::F32,
        )?)
    };
    for i in 0..spec.num_layers {
        tensors.push((format!("blk.{i}.attn_norm.weight"), ones(h)?));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), ones(h)?));
    }
    tensors.push(("output_norm.weight".into(), ones(h)?));
    if let Some(ty) = spec.output_type {
        let t = rng.tensor((vocab, h), lin(h))?;
        tensors.push(("output.weight".into(), QTensor::quantize(&t, ty)?));
    }

    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?);
    candle_core::quantized::gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    std::io::Write::flush(&mut file).map_err(|e| EngineError::io(path, e))?;
    Ok(())
}

/// 256 byte-level tokens (GPT-2's byte-to-unicode mapping), no merges.
fn byte_level_vocab() -> Vec<(String, Value)> {
    let tokens: Vec<Value> = (0..=255u8)
        .map(|b| Value::String(byte_to_unicode(b).to_string()))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
    ]
}

/// GPT-2's reversible byte → printable character map.
fn byte_to_unicode(b: u8) -> char {
    let printable =
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable {
        return char::from(b);
    }
    // The other 68 bytes map to U+0100.. in order.
    let rank = (0..b)
        .filter(|&x| {
            !((b'!'..=b'~').contains(&x)
                || (0xA1..=0xAC).contains(&x)
                || (0xAE..=0xFF).contains(&x))
        })
        .count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

fn to_gguf_value(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => Value::U8(*x),
        MetaValue::I8(x) => Value::I8(*x),
        MetaValue::U16(x) => Value::U16(*x),
        MetaValue::I16(x) => Value::I16(*x),
        MetaValue::U32(x) => Value::U32(*x),
        MetaValue::I32(x) => Value::I32(*x),
        MetaValue::U64(x) => Value::U64(*x),
        MetaValue::I64(x) => Value::I64(*x),
        MetaValue::F32(x) => Value::F32(*x),
        MetaValue::F64(x) => Value::F64(*x),
        MetaValue::Bool(x) => Value::Bool(*x),
        MetaValue::String(x) => Value::String(x.clone()),
        MetaValue::Array(xs) => Value::Array(xs.iter().map(to_gguf_value).collect()),
    }
}

/// Gaussian samples from SplitMix64 via Box–Muller (fixed forever).
struct Normal(SplitMix64);

impl Normal {
    fn new(seed: u64) -> Self {
        Self(SplitMix64(seed))
    }

    fn uniform(&mut self) -> f64 {
        self.0.next_f64()
    }

    fn tensor(&mut self, shape: (usize, usize), std: f32) -> Result<Tensor> {
        let n = shape.0 * shape.1;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push((r * t.cos()) as f32 * std);
            v.push((r * t.sin()) as f32 * std);
        }
        v.truncate(n);
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_gives_six_bits_where_llama_cpp_does() {
        // Llama 3.2 1B: 16 blocks; llama.cpp's Q4_K_M file has Q6_K
        // attn_v/ffn_down in blocks 0, 1, 4, 7, 10, 13, 14, 15.
        let spec = SyntheticSpec::llama32_1b(GgmlDType::Q4_0).q4_k_m();
        let six: Vec<usize> = (0..16)
            .filter(|&i| spec.block_type("ffn_down", i) == GgmlDType::Q6K)
            .collect();
        assert_eq!(six, [0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(spec.block_type("attn_q", 0), GgmlDType::Q4K);
        assert_eq!(spec.embedding_type, GgmlDType::Q6K);
        let plain = SyntheticSpec::llama32_1b(GgmlDType::Q8_0);
        assert!((0..16).all(|i| plain.block_type("attn_v", i) == GgmlDType::Q8_0));
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen: Vec<char> = (0..=255u8).map(byte_to_unicode).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(byte_to_unicode(b' '), 'Ġ');
        assert_eq!(byte_to_unicode(b'\n'), 'Ċ');
    }
}
