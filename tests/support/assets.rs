//! The test assets and fixtures, shared by the test suites of several
//! crates (included with `#[path = ".../tests/support/assets.rs"] mod
//! assets;`): where `scripts/fetch-assets.sh` put the real model files,
//! and the tiny Llama 3.2 Vision checkpoint assembled with the real
//! tokenizer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The cached test assets (`LUMEN_ASSETS_DIR`, else
/// `~/.cache/lumen/assets`).
pub fn assets() -> PathBuf {
    std::env::var_os("LUMEN_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/lumen/assets")
        })
}

/// An asset, which must be there.
pub fn asset(rel: &str) -> PathBuf {
    let p = assets().join(rel);
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm2_path() -> PathBuf {
    asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Meta's photo of a dog (512 × 512 JPEG).
pub fn dog() -> PathBuf {
    asset("llama-models/dog.jpg")
}

/// The tiny random-weight Llama 3.2 Vision checkpoint from
/// `tests/fixtures/mllama/real-vocab-bf16`, with the real Llama 3.2 Vision
/// tokenizer, assembled in `dir`.
pub fn tiny_vision_model(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|a| a.join("tests/fixtures/mllama").is_dir())
        .expect("the repository root")
        .join("tests/fixtures/mllama/real-vocab-bf16");
    let out = dir.join("tiny-vision");
    std::fs::create_dir_all(&out).expect("mkdir");
    for entry in std::fs::read_dir(&src).expect("fixture") {
        let p = entry.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if name.ends_with(".json")
            || (name.ends_with(".safetensors") && name != "reference.safetensors")
        {
            std::fs::copy(&p, out.join(&name)).expect("copy");
        }
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(asset("llama32-vision-tokenizer").join(f), out.join(f)).expect("tokenizer");
    }
    out
}
