//! Paths to fixtures and assets, and shared helpers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::Tensor;
use lumen_engine::llama::KvDtype;
use lumen_engine::{LoadOptions, Model};

/// `tests/fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The folder `scripts/fetch-assets.sh` fills.
pub fn assets() -> PathBuf {
    let dir = match std::env::var_os("LUMEN_ASSETS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .expect("HOME or XDG_CACHE_HOME is set");
            cache.join("lumen/assets")
        }
    };
    assert!(
        dir.join("smollm2").is_dir(),
        "test assets missing in {}: run scripts/fetch-assets.sh",
        dir.display()
    );
    dir
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm2_path() -> PathBuf {
    assets().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// SmolLM2, loaded once per test binary.
pub fn smollm2() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(load(&smollm2_path())))
        .clone()
}

/// Loads a model on the CPU (with the default f16 KV cache).
pub fn load(path: &Path) -> Model {
    load_with(path, KvDtype::F16)
}

/// Loads a model on the CPU with an f32 KV cache, for comparisons with
/// references computed with f32 keys and values (transformers, and the
/// llama.cpp runs made with an f32 cache): an f16 cache rounds every cached
/// value to 11 significant bits, which moves these tiny models' logits by
/// ~0.01, ten times the float-rounding bound these comparisons hold.
pub fn load_exact(path: &Path) -> Model {
    load_with(path, KvDtype::F32)
}

fn load_with(path: &Path, kv_cache: KvDtype) -> Model {
    let opts = LoadOptions {
        device: lumen_engine::DeviceRequest::Cpu,
        kv_cache,
        ..Default::default()
    };
    Model::load(path, &opts, &mut |_| {})
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// A Hugging Face folder for the tiny Llama 3: the committed config and
/// weights plus the real Llama 3.1 tokenizer from the assets.
pub fn tiny_llama3_hf_dir(config: &str) -> tempfile::TempDir {
    let src = fixtures().join("tiny-llama3");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, dir.path().join(to))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&src.join(config), "config.json");
    copy(
        &src.join("generation_config.json"),
        "generation_config.json",
    );
    copy(&src.join("model.safetensors"), "model.safetensors");
    let tok = assets().join("llama31-tokenizer");
    copy(&tok.join("tokenizer.json"), "tokenizer.json");
    copy(&tok.join("tokenizer_config.json"), "tokenizer_config.json");
    dir
}

/// Largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

/// Reads a JSON fixture.
pub fn json(rel: &str) -> serde_json::Value {
    let p = fixtures().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("valid json")
}

/// The largest `|a - b|` over two equally long runs of values.
pub fn max_abs_diff_of(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Feeds `prompt` and then `steps` greedy tokens to `model` twice, through
/// the general pass (candle tensors) and through the single-token decoding
/// pass, and checks that every step's logits are the same bit for bit (the
/// same kernels with the same arithmetic in the same order: a wrong RoPE
/// position, a stale cache row or a missing residual changes them); then
/// that an out-of-range id is refused and leaves the cache as it was.
pub fn assert_decode_pass_matches(model: &Model, prompt: &[u32], steps: usize) {
    use lumen_engine::llama::Logits;
    use lumen_engine::sampling::argmax;
    let mut general = model.new_cache(prompt.len() + steps + 8);
    let mut fast = model.new_cache(prompt.len() + steps + 8);
    let first = model
        .forward_text(prompt, &mut general, Logits::Last)
        .and_then(|l| Ok(l.to_vec1::<f32>()?))
        .expect("prefill");
    model
        .forward_text(prompt, &mut fast, Logits::Last)
        .expect("prefill");
    let mut logits = Vec::new();
    let mut token = argmax(&first);
    for step in 0..steps {
        let want = model
            .forward_text(&[token], &mut general, Logits::Last)
            .and_then(|l| Ok(l.to_vec1::<f32>()?))
            .expect("general step");
        model
            .forward_one_into(token, &mut fast, None, &mut logits)
            .expect("decode step");
        assert_eq!(logits.len(), want.len());
        let diff = max_abs_diff_of(&want, &logits);
        assert!(diff == 0.0, "step {step}: logits differ by {diff}");
        assert_eq!(general.len(), fast.len());
        token = argmax(&want);
    }
    let len = fast.len();
    let err = model
        .forward_one_into(u32::MAX, &mut fast, None, &mut logits)
        .expect_err("bad id");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    assert_eq!(fast.len(), len);
}
