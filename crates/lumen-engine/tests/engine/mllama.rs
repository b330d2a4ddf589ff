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

/// The vision encoder and projector on given `pixel_values`, against the
/// reference's `vision_output` and `cross_attention_states` (f32).
#[test]
fn vision_encoder_matches_reference() {
    use candle_core::{DType, Device, IndexOp};
    use lumen_engine::mllama::vision::VisionModel;
    use lumen_engine::weights::{DenseOptions, WeightSource};

    let dir = fixtures().join("mllama/tiny-f32");
    let cfg = MllamaConfig::from_file(&dir.join("config.json")).expect("config");
    let opts = DenseOptions {
        dtype: DType::F32,
        quantize: None,
    };
    let source =
        WeightSource::safetensors_dir(&dir, "language_model.model.", opts).expect("weights");
    let vision = VisionModel::load(&source, &cfg, &Device::Cpu).expect("load");
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference");
    let pixels = r["pixel_values"].i((0, 0)).expect("pixels");
    let ar_id = r["aspect_ratio_ids"]
        .i((0, 0))
        .and_then(|t| t.to_scalar::<i64>())
        .expect("id") as usize;
    let mask: Vec<u8> = r["aspect_ratio_mask"]
        .i((0, 0))
        .and_then(|t| t.to_vec1::<i64>())
        .expect("mask")
        .iter()
        .map(|m| *m as u8)
        .collect();
    let features = vision.encode(&pixels, ar_id, &mask).expect("encode");
    let want = r["vision_output"].i((0, 0)).expect("want");
    let diff = crate::common::max_abs_diff(&features, &want);
    assert!(diff <= 1e-3, "vision output max abs diff {diff}");
    // Intermediate features are the inputs of the listed layers (Meta,
    // transformers 4.x), not their outputs (transformers 5): the two differ.
    let hf5 =
        crate::common::max_abs_diff(&features, &r["vision_output_hf524"].i((0, 0)).expect("hf5"));
    assert!(
        hf5 > 0.1,
        "expected to differ from transformers 5's off-by-one features, got {hf5}"
    );
    let states = vision
        .cross_attention_states(&pixels, ar_id, &mask)
        .expect("project");
    let diff = crate::common::max_abs_diff(
        &states,
        &r["cross_attention_states"].i((0, 0)).expect("states"),
    );
    assert!(diff <= 1e-3, "projector output max abs diff {diff}");
}

/// Everything from given `pixel_values` to logits, per checkpoint: with the
/// image(s), and text-only. bf16 weights are compared with f32 math on the
/// same rounded weights, so the bound is the same.
#[test]
fn logits_match_reference_with_and_without_images() {
    use candle_core::{DType, Device, IndexOp};
    use lumen_engine::llama::Logits;
    use lumen_engine::mllama::text::TextModel;
    use lumen_engine::mllama::vision::VisionModel;
    use lumen_engine::weights::{DenseOptions, WeightSource};

    for name in ["tiny-f32", "tiny-b", "real-vocab-bf16"] {
        let dir = fixtures().join("mllama").join(name);
        let cfg = MllamaConfig::from_file(&dir.join("config.json")).expect("config");
        let opts = DenseOptions {
            dtype: DType::F32,
            quantize: None,
        };
        let source =
            WeightSource::safetensors_dir(&dir, "language_model.model.", opts).expect("weights");
        let vision = VisionModel::load(&source, &cfg, &Device::Cpu).expect("vision");
        let text = TextModel::load(&source, &cfg, &Device::Cpu).expect("text");
        let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference");
        let ids: Vec<u32> = r["input_ids"]
            .to_vec1::<i64>()
            .expect("ids")
            .iter()
            .map(|&i| i as u32)
            .collect();
        let n_images = r["pixel_values"].dim(1).expect("images");
        let mut images = Vec::new();
        for img in 0..n_images {
            let ar = r["aspect_ratio_ids"]
                .i((0, img))
                .and_then(|t| t.to_scalar::<i64>())
                .expect("ar") as usize;
            let mask: Vec<u8> = r["aspect_ratio_mask"]
                .i((0, img))
                .and_then(|t| t.to_vec1::<i64>())
                .expect("m")
                .iter()
                .map(|m| *m as u8)
                .collect();
            let states = vision
                .cross_attention_states(&r["pixel_values"].i((0, img)).expect("px"), ar, &mask)
                .expect("states");
            images.push((states, mask.iter().filter(|m| **m == 1).count()));
        }
        let ctx = text.image_context(&images).expect("context");
        let xmask = r["cross_attention_mask"].i(0).expect("xmask"); // (S, I, T)
        let rows: Vec<Vec<bool>> = (0..ids.len())
            .map(|s| {
                (0..n_images)
                    .map(|j| {
                        xmask
                            .i((s, j))
                            .and_then(|t| t.sum_all()?.to_scalar::<i64>())
                            .expect("row")
                            > 0
                    })
                    .collect()
            })
            .collect();
        let mut cache = new_cache(&cfg);
        let logits = text
            .forward(&ids, &mut cache, Some((&ctx, &rows)), Logits::All)
            .expect("forward");
        let logits = match r.get("positions") {
            Some(p) => logits
                .index_select(&p.to_dtype(DType::U32).expect("u32"), 0)
                .expect("select"),
            None => logits,
        };
        let diff = crate::common::max_abs_diff(&logits, &r["logits"]);
        assert!(diff <= 1e-3, "{name}: logits max abs diff {diff}");
        // Meta's semantics, not transformers' (which lets text before the
        // image attend to it): the references differ, and we match Meta's.
        if let Some(hf) = r.get("logits_hf446") {
            assert!(
                crate::common::max_abs_diff(&logits, hf) > 0.1,
                "{name}: indistinguishable from transformers 4.46"
            );
        }

        let no_img: Vec<u32> = r["input_ids_no_image"]
            .to_vec1::<i64>()
            .expect("ids")
            .iter()
            .map(|&i| i as u32)
            .collect();
        let mut cache = new_cache(&cfg);
        let logits = text
            .forward(&no_img, &mut cache, None, Logits::All)
            .expect("text-only");
        let logits = match r.get("positions_no_image") {
            Some(p) => logits
                .index_select(&p.to_dtype(DType::U32).expect("u32"), 0)
                .expect("select"),
            None => logits,
        };
        let diff = crate::common::max_abs_diff(&logits, &r["logits_no_image"]);
        assert!(diff <= 1e-3, "{name}: text-only logits max abs diff {diff}");
    }
}

fn new_cache(cfg: &MllamaConfig) -> lumen_engine::llama::KvCache {
    lumen_engine::llama::KvCache::new(cfg.text.num_layers, 256)
}
