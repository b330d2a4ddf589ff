//! Synthetic (random-weight, in-memory) vision models: the source the
//! 11B benchmark uses, checked on a small config where it runs in seconds.

use std::path::Path;
use std::sync::Arc;

use lumen_engine::mllama::config::MllamaConfig;
use lumen_engine::mllama::image_processor::ProcessedImage;
use lumen_engine::{GgmlDType, LoadOptions, Model, Session};

use crate::common::{assets, fixtures};

/// A small Llama 3.2 Vision config with the real vocabulary (so the real
/// tokenizer fits) whose widths are multiples of 32 (Q8_0 blocks).
fn small_config() -> MllamaConfig {
    let text = std::fs::read_to_string(fixtures().join("mllama/tiny-f32/config.json"))
        .expect("tiny config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let t = &mut v["text_config"];
    t["hidden_size"] = 64.into();
    t["intermediate_size"] = 128.into();
    t["num_attention_heads"] = 4.into();
    t["num_key_value_heads"] = 2.into();
    t["vocab_size"] = 128256.into();
    v["image_token_index"] = 128256.into();
    let vis = &mut v["vision_config"];
    vis["hidden_size"] = 64.into();
    vis["intermediate_size"] = 128.into();
    vis["vision_output_dim"] = (64 * 3).into();
    MllamaConfig::from_json(&v.to_string(), Path::new("small.json")).expect("small config")
}

fn synthetic(seed: u64, quantize: Option<GgmlDType>) -> Arc<Model> {
    let options = LoadOptions {
        device: lumen_engine::DeviceRequest::Cpu,
        quantize,
        ..LoadOptions::default()
    };
    let tokenizer = assets().join("llama32-vision-tokenizer");
    Arc::new(
        Model::synthetic_mllama(small_config(), &tokenizer, &options, seed, &mut |_| {})
            .expect("synthetic model"),
    )
}

/// A deterministic full-canvas image: every tile in use.
fn image(model: &Model) -> ProcessedImage {
    let v = model.vision().expect("vision model");
    let tiles = v.processor.max_image_tiles;
    let side = v.processor.tile_size;
    let n = tiles * 3 * side * side;
    ProcessedImage {
        pixel_values: (0..n)
            .map(|i| ((i * 37) % 255) as f32 / 64.0 - 2.0)
            .collect(),
        num_tiles: tiles,
        grid: (2, 2),
        aspect_ratio_id: 6, // 2×2 is the 6th of the 8 supported grids
        aspect_ratio_mask: vec![1; tiles],
        resized: (2 * side, 2 * side),
    }
}

/// Greedy logits after a prompt with the image.
fn logits(model: &Arc<Model>, with_image: bool) -> Vec<f32> {
    let tok = model.tokenizer();
    let ids = tok
        .encode("<|begin_of_text|><|image|>What is in the picture?", false)
        .expect("tokens");
    let mut cache = model.new_cache(64);
    let ctx = with_image.then(|| {
        let enc = model.encode_processed(&image(model)).expect("encode");
        model.image_context(&[enc]).expect("context")
    });
    let image_at = ids
        .iter()
        .position(|t| Some(*t) == model.image_token())
        .expect("image token");
    let rows: Vec<Vec<bool>> = (0..ids.len()).map(|i| vec![i >= image_at]).collect();
    let out = model
        .forward(
            &ids,
            &mut cache,
            ctx.as_ref().map(|c| (c, rows.as_slice())),
            lumen_engine::llama::Logits::Last,
        )
        .expect("forward");
    out.to_vec1::<f32>().expect("logits")
}

fn relative_error(a: &[f32], want: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(want).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = want.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Same seed, same model; another seed, another model; the image changes
/// the answer (the synthetic gates are non-zero); and in-situ Q8_0 of the
/// same weights (every linear layer and the embedding rows) stays within
/// the 3% that Q8_0 costs elsewhere (`quant_types`, `mllama`).
#[test]
fn synthetic_vision_model_is_deterministic_and_quantizes() {
    let a = synthetic(7, None);
    let reference = logits(&a, true);
    assert!(reference.iter().all(|x| x.is_finite()));
    assert_eq!(reference, logits(&synthetic(7, None), true));
    assert_ne!(reference, logits(&synthetic(8, None), true));
    let without = logits(&a, false);
    let effect = relative_error(&without, &reference);
    assert!(
        effect > 0.01,
        "the image changed the logits by only {effect}"
    );

    let q = synthetic(7, Some(GgmlDType::Q8_0));
    let err = relative_error(&logits(&q, true), &reference);
    eprintln!("synthetic small mllama: Q8_0 relative error {err}, image effect {effect}");
    assert!(err <= 0.03, "Q8_0 relative error {err}");
}

/// A whole session on the synthetic model: image, prompt, greedy tokens.
#[test]
fn synthetic_vision_model_generates() {
    let model = synthetic(3, Some(GgmlDType::Q8_0));
    let mut session = Session::new(model.clone(), Some(256));
    let enc = model.encode_processed(&image(&model)).expect("encode");
    session.set_images(vec![enc]).expect("images");
    let prompt = model
        .tokenizer()
        .encode("<|begin_of_text|><|image|>Describe it.", false)
        .expect("tokens");
    let params = lumen_engine::GenerateParams {
        sampling: lumen_engine::SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        max_tokens: 5,
        ignore_eos: true,
        ..Default::default()
    };
    let done = session
        .generate(
            &prompt,
            &params,
            &lumen_engine::CancelToken::new(),
            &mut |_| {},
        )
        .expect("generate");
    assert_eq!(done.tokens.len(), 5);
    assert_eq!(done.prompt_tokens, prompt.len());
}

/// The parameter count from the config equals the tensors of real
/// (tiny) checkpoints, and the 11B's is 10.67 billion (Meta: "11B").
#[test]
fn parameter_count_matches_checkpoints() {
    for name in ["tiny-f32", "tiny-b", "real-vocab-bf16"] {
        let dir = fixtures().join("mllama").join(name);
        let cfg = MllamaConfig::from_file(&dir.join("config.json")).expect("config");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .filter(|p| !p.ends_with("reference.safetensors"))
            .collect();
        files.sort();
        let mut total = 0usize;
        for f in files {
            let bytes = std::fs::read(&f).expect("read");
            let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            total += st
                .tensors()
                .iter()
                .map(|(_, t)| t.shape().iter().product::<usize>())
                .sum::<usize>();
        }
        assert_eq!(cfg.parameter_count(), total, "{name}");
    }
    let big = MllamaConfig::llama32_11b_vision().expect("11B config");
    assert_eq!(big.text.num_layers, 40);
    assert_eq!(
        big.cross_attention_layers,
        vec![3, 8, 13, 18, 23, 28, 33, 38]
    );
    let n = big.parameter_count();
    assert!((10_600_000_000..10_700_000_000).contains(&n), "{n}");
}
