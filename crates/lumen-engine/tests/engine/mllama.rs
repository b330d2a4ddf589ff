//! Llama 3.2 Vision checkpoints: configuration.

use lumen_engine::config::RopeScaling;
use lumen_engine::mllama::config::MllamaConfig;

use crate::common::fixtures;

#[test]
fn configs_load_in_both_rope_styles_and_agree() {
    for name in ["tiny-f32", "tiny-b", "real-vocab-bf16"] {
        let dir = fixtures().join("mllama").join(name);
        let meta = MllamaConfig::from_file(&dir.join("config.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tf5 = MllamaConfig::from_file(&dir.join("config.rope_parameters.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta, tf5, "{name}");
        assert!(
            matches!(meta.text.rope.scaling, RopeScaling::Llama3 { .. }),
            "{name}"
        );
        assert_eq!(
            meta.image_token_index as usize, meta.text.vocab_size,
            "{name}"
        );
    }
    let cfg =
        MllamaConfig::from_file(&fixtures().join("mllama/tiny-f32/config.json")).expect("tiny-f32");
    assert_eq!(cfg.cross_attention_layers, vec![1, 3]);
    assert_eq!(cfg.patches_per_tile(), 17);
    assert_eq!(cfg.vision.intermediate_layers_indices, vec![1, 3]);
}

#[test]
fn inconsistent_vision_config_is_rejected() {
    let dir = tempfile::tempdir().expect("tmp");
    let src =
        std::fs::read_to_string(fixtures().join("mllama/tiny-f32/config.json")).expect("read");
    let mut v: serde_json::Value = serde_json::from_str(&src).expect("json");
    v["vision_config"]["vision_output_dim"] = 100.into();
    let p = dir.path().join("config.json");
    std::fs::write(&p, v.to_string()).expect("write");
    let err = MllamaConfig::from_file(&p)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("vision_output_dim"), "{err}");
    v["vision_config"]["vision_output_dim"] = 96.into();
    v["text_config"]["cross_attention_layers"] = serde_json::json!([1, 9]);
    std::fs::write(&p, v.to_string()).expect("write");
    let err = MllamaConfig::from_file(&p)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("cross-attention layer 9"), "{err}");
}
