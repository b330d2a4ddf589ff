//! Helpers shared by the CLI test files.

use std::path::PathBuf;

/// The cached test assets (`scripts/fetch-assets.sh`).
pub fn assets() -> PathBuf {
    std::env::var_os("LUMEN_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/lumen/assets")
        })
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm2() -> PathBuf {
    let p = assets().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
