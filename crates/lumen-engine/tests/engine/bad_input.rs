//! Broken, truncated and hostile model files give a typed error naming the
//! file, never a panic or a huge allocation.

use std::path::Path;

use lumen_engine::{EngineError, LoadOptions, Model};

use crate::common::{fixtures, smollm2_path, tiny_llama3_hf_dir};

fn try_load(path: &Path) -> Result<Model, EngineError> {
    Model::load(path, &LoadOptions::default(), &mut |_| {})
}

fn load_err(path: &Path) -> String {
    let err = try_load(path).expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) || msg.contains("tensor"),
        "error does not name the file: {msg}"
    );
    msg
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

/// Replaces the first occurrence of `from` after `after` in `bytes`.
fn patch(bytes: &mut [u8], after: &[u8], from: &[u8], to: &[u8]) {
    let start = find(bytes, after, 0).expect("anchor") + after.len();
    let at = find(bytes, from, start).expect("target");
    bytes[at..at + to.len()].copy_from_slice(to);
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[test]
fn missing_and_empty_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope.gguf");
    assert!(matches!(try_load(&missing), Err(EngineError::Io { .. })));
    let empty = write(dir.path(), "empty.gguf", b"");
    assert!(load_err(&empty).contains("not a GGUF file"));
    let html = write(dir.path(), "page.gguf", b"<html>404 Not Found</html>");
    assert!(load_err(&html).contains("not a GGUF file"));
    let folder = tempfile::tempdir().expect("tmp");
    assert!(load_err(folder.path()).contains("neither config.json nor a .gguf"));
}

#[test]
fn truncated_gguf_at_many_points() {
    let bytes = std::fs::read(smollm2_path()).expect("read");
    let dir = tempfile::tempdir().expect("tmp");
    for cut in [10, 100, 5_000, 1_000_000, bytes.len() / 2, bytes.len() - 1] {
        let p = write(dir.path(), "cut.gguf", &bytes[..cut]);
        let msg = load_err(&p);
        assert!(
            msg.contains("truncated") || msg.contains("past the end"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn header_claiming_a_giant_array_is_rejected_quickly() {
    let mut bytes = std::fs::read(smollm2_path()).expect("read");
    // The token list's element count: make it 2^60.
    let at = find(&bytes, b"tokenizer.ggml.tokens", 0).expect("key")
        + b"tokenizer.ggml.tokens".len()
        + 4
        + 4;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "giant.gguf", &bytes[..2_000_000]);
    assert!(load_err(&p).contains("declares"));
}

#[test]
fn unknown_architecture_is_named() {
    let mut bytes =
        std::fs::read(fixtures().join("tiny-llama3/tiny-llama3-q8_0.gguf")).expect("read");
    patch(&mut bytes, b"general.architecture", b"llama", b"mamba");
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "mamba.gguf", &bytes);
    let err = try_load(&p).expect_err("must fail");
    assert!(
        matches!(&err, EngineError::UnsupportedArchitecture { architecture, .. } if architecture == "mamba"),
        "{err}"
    );
}

#[test]
fn unsupported_quant_type_names_the_tensor() {
    let mut bytes =
        std::fs::read(fixtures().join("tiny-llama3/tiny-llama3-q8_0.gguf")).expect("read");
    // blk.0.attn_q.weight: name, n_dims=2, dims 32 32, type 8 (Q8_0) -> 16 (IQ2_XXS).
    let name = b"blk.0.attn_q.weight";
    let at = find(&bytes, name, 0).expect("tensor") + name.len() + 4 + 16;
    assert_eq!(bytes[at..at + 4], 8u32.to_le_bytes());
    bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "iq.gguf", &bytes);
    let err = try_load(&p).expect_err("must fail");
    assert!(
        matches!(&err, EngineError::UnsupportedTensorType { tensor, dtype, .. } if tensor == "blk.0.attn_q.weight" && dtype == "IQ2_XXS"),
        "{err}"
    );
}

#[test]
fn hf_folder_problems() {
    // Corrupt config.json.
    let dir = tiny_llama3_hf_dir("config.json");
    std::fs::write(dir.path().join("config.json"), b"{ not json").expect("write");
    assert!(load_err(dir.path()).contains("config.json"));

    // Not a Llama.
    let dir = tiny_llama3_hf_dir("config.json");
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).expect("read");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("LlamaForCausalLM", "GPT2LMHeadModel")
            .replace("\"llama\"", "\"gpt2\""),
    )
    .expect("write");
    assert!(matches!(
        try_load(dir.path()),
        Err(EngineError::UnsupportedArchitecture { .. })
    ));

    // Truncated safetensors.
    let dir = tiny_llama3_hf_dir("config.json");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).expect("read");
    std::fs::write(&st, &bytes[..bytes.len() / 2]).expect("write");
    assert!(load_err(dir.path()).contains("safetensors"));

    // Config that disagrees with the weights.
    let dir = tiny_llama3_hf_dir("config.json");
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).expect("read");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 96"),
    )
    .expect("write");
    let msg = load_err(dir.path());
    assert!(
        msg.contains("mlp.gate_proj") && msg.contains("shape"),
        "{msg}"
    );

    // Missing weights.
    let dir = tiny_llama3_hf_dir("config.json");
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("rm");
    assert!(matches!(try_load(dir.path()), Err(EngineError::Io { .. })));
}

#[test]
fn token_ids_outside_the_vocabulary_are_rejected() {
    let model = crate::common::smollm2();
    let mut cache = model.new_cache(16);
    let err = model
        .forward_text(&[1, 999_999], &mut cache, lumen_engine::llama::Logits::Last)
        .expect_err("must fail");
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err}");
    assert!(cache.is_empty(), "a rejected call must not touch the cache");
}

#[test]
fn shard_names_cannot_escape_the_model_folder() {
    let dir = tiny_llama3_hf_dir("config.json");
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("rm");
    let index = r#"{"weight_map": {"model.embed_tokens.weight": "../../etc/passwd.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).expect("write");
    let msg = load_err(dir.path());
    assert!(msg.contains("bad shard name"), "{msg}");
}

#[test]
fn broken_tokenizer_merges_are_named() {
    let bytes = std::fs::read(fixtures().join("tiny-llama3/tiny-llama3-q8_0.gguf")).expect("read");
    let dir = tempfile::tempdir().expect("tmp");
    // Llama 3's first merge is `Ġ Ġ` (U+0120 twice, a space between).
    let first = "\u{120} \u{120}".as_bytes();
    for (name, to, says) in [
        // `Ġ ġ`: both are tokens, `Ġġ` is not.
        (
            "unknown.gguf",
            "\u{120} \u{121}",
            "merge `\u{120} \u{121}`: `\u{120}\u{121}` is not in the vocabulary",
        ),
        // No space between the two parts.
        (
            "spaceless.gguf",
            "\u{120}x\u{120}",
            "tokenizer merge `\u{120}x\u{120}` has no space",
        ),
    ] {
        let mut bytes = bytes.clone();
        patch(&mut bytes, b"tokenizer.ggml.merges", first, to.as_bytes());
        let msg = load_err(&write(dir.path(), name, &bytes));
        assert!(msg.contains(says), "{name}: {msg}");
    }
}
