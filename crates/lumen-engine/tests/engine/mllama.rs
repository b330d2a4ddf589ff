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
    let vision = VisionModel::load(&source, &cfg, &Device::Cpu, &mut || {}).expect("load");
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

/// A loaded tiny checkpoint and its reference tensors.
struct Checkpoint {
    name: &'static str,
    dir: std::path::PathBuf,
    cfg: MllamaConfig,
    vision: lumen_engine::mllama::vision::VisionModel,
    text: lumen_engine::mllama::text::TextModel,
    r: std::collections::HashMap<String, candle_core::Tensor>,
}

const CHECKPOINTS: [&str; 3] = ["tiny-f32", "tiny-b", "real-vocab-bf16"];

impl Checkpoint {
    fn load(name: &'static str) -> Self {
        Self::load_quantized(name, None)
    }

    fn load_quantized(name: &'static str, quantize: Option<lumen_engine::GgmlDType>) -> Self {
        use lumen_engine::weights::{DenseOptions, WeightSource};
        let dir = fixtures().join("mllama").join(name);
        let cfg = MllamaConfig::from_file(&dir.join("config.json")).expect("config");
        let opts = DenseOptions {
            dtype: candle_core::DType::F32,
            quantize,
        };
        let source =
            WeightSource::safetensors_dir(&dir, "language_model.model.", opts).expect("weights");
        let dev = candle_core::Device::Cpu;
        Self {
            name,
            vision: lumen_engine::mllama::vision::VisionModel::load(
                &source,
                &cfg,
                &dev,
                &mut || {},
            )
            .expect("vision"),
            text: lumen_engine::mllama::text::TextModel::load(&source, &cfg, &dev, &mut || {})
                .expect("text"),
            r: candle_core::safetensors::load(dir.join("reference.safetensors"), &dev)
                .expect("reference"),
            dir,
            cfg,
        }
    }

    fn ids(&self, key: &str) -> Vec<u32> {
        self.r[key]
            .to_vec1::<i64>()
            .expect("ids")
            .iter()
            .map(|&i| i as u32)
            .collect()
    }

    fn images(&self) -> usize {
        self.r["pixel_values"].dim(1).expect("images")
    }

    /// Image context from the reference's own `pixel_values` (or `pixels`),
    /// with f32 keys and values, as the reference computes them.
    fn context(
        &self,
        pixels: Option<&[candle_core::Tensor]>,
    ) -> lumen_engine::mllama::text::ImageContext {
        self.context_as(pixels, lumen_engine::llama::KvDtype::F32)
    }

    /// [`Checkpoint::context`] with keys and values kept as `kv`.
    fn context_as(
        &self,
        pixels: Option<&[candle_core::Tensor]>,
        kv: lumen_engine::llama::KvDtype,
    ) -> lumen_engine::mllama::text::ImageContext {
        use candle_core::IndexOp;
        let images: Vec<(candle_core::Tensor, usize)> = (0..self.images())
            .map(|img| {
                let ar = self.r["aspect_ratio_ids"]
                    .i((0, img))
                    .and_then(|t| t.to_scalar::<i64>())
                    .expect("ar") as usize;
                let mask: Vec<u8> = self.r["aspect_ratio_mask"]
                    .i((0, img))
                    .and_then(|t| t.to_vec1::<i64>())
                    .expect("m")
                    .iter()
                    .map(|m| *m as u8)
                    .collect();
                let px = match pixels {
                    Some(p) => p[img].clone(),
                    None => self.r["pixel_values"].i((0, img)).expect("px"),
                };
                let states = self
                    .vision
                    .cross_attention_states(&px, ar, &mask)
                    .expect("states");
                (states, mask.iter().filter(|m| **m == 1).count())
            })
            .collect();
        self.text.image_context(&images, kv).expect("context")
    }

    /// Which images each prompt row attends to, from the reference mask.
    fn rows(&self) -> Vec<Vec<bool>> {
        use candle_core::IndexOp;
        let xmask = self.r["cross_attention_mask"].i(0).expect("xmask"); // (S, I, T)
        (0..xmask.dim(0).expect("rows"))
            .map(|s| {
                (0..self.images())
                    .map(|j| {
                        xmask
                            .i((s, j))
                            .and_then(|t| t.sum_all()?.to_scalar::<i64>())
                            .expect("row")
                            > 0
                    })
                    .collect()
            })
            .collect()
    }

    /// Logits at the reference's positions (all, or `positions`).
    fn logits(
        &self,
        ctx: Option<&lumen_engine::mllama::text::ImageContext>,
        ids: &[u32],
        positions: &str,
    ) -> candle_core::Tensor {
        let rows = self.rows();
        let mut cache = new_cache(&self.cfg);
        let images = ctx.map(|c| (c, rows.as_slice()));
        let logits = self
            .text
            .forward(ids, &mut cache, images, lumen_engine::llama::Logits::All)
            .expect("forward");
        match self.r.get(positions) {
            Some(p) => logits
                .index_select(&p.to_dtype(candle_core::DType::U32).expect("u32"), 0)
                .expect("select"),
            None => logits,
        }
    }
}

/// Everything from given `pixel_values` to logits, per checkpoint, with the
/// image(s) and text-only. bf16 weights are compared with f32 math on the
/// same rounded weights, so the bound is the same.
#[test]
fn logits_match_reference_with_and_without_images() {
    for name in CHECKPOINTS {
        let c = Checkpoint::load(name);
        let ctx = c.context(None);
        let logits = c.logits(Some(&ctx), &c.ids("input_ids"), "positions");
        let diff = crate::common::max_abs_diff(&logits, &c.r["logits"]);
        assert!(diff <= 1e-3, "{name}: logits max abs diff {diff}");
        // Meta's semantics, not transformers' (which lets text before the
        // image attend to it): the references differ, and we match Meta's.
        if let Some(hf) = c.r.get("logits_hf446") {
            assert!(
                crate::common::max_abs_diff(&logits, hf) > 0.1,
                "{name}: indistinguishable from transformers 4.46"
            );
        }
        let logits = c.logits(None, &c.ids("input_ids_no_image"), "positions_no_image");
        let diff = crate::common::max_abs_diff(&logits, &c.r["logits_no_image"]);
        assert!(diff <= 1e-3, "{name}: text-only logits max abs diff {diff}");
    }
}

/// Greedy decoding with the KV cache and the image K/V computed once: new
/// tokens attend to the images the last prompt token did.
#[test]
fn greedy_generation_matches_reference() {
    use lumen_engine::llama::Logits;
    for name in CHECKPOINTS {
        let c = Checkpoint::load(name);
        let ctx = c.context(None);
        let mut rows = c.rows();
        let prompt = c.ids("input_ids");
        let mut cache = new_cache(&c.cfg);
        let mut logits = c
            .text
            .forward(&prompt, &mut cache, Some((&ctx, &rows)), Logits::Last)
            .expect("prefill");
        let want = c.ids("greedy_ids");
        let mut got = Vec::new();
        let last_row = rows.last().cloned().unwrap_or_default();
        for _ in 0..want.len() {
            let next = lumen_engine::sampling::argmax(&logits.to_vec1::<f32>().expect("logits"));
            got.push(next);
            rows = vec![last_row.clone()];
            logits = c
                .text
                .forward(&[next], &mut cache, Some((&ctx, &rows)), Logits::Last)
                .expect("step");
        }
        assert_eq!(got, want, "{}", c.name);
    }
}

/// From the image *file* to logits: our decoding and preprocessing feed the
/// model. JPEG decoding differs from Pillow's by up to 3 levels of 255 at
/// some pixels (see image_preprocess), so the bound is 3 × the logit change
/// that a one-level change of *every* pixel caused in the reference
/// (`logits_pixel_perturbed`). The image must still matter far more than that.
#[test]
fn logits_from_image_files_stay_within_a_pixel_level_budget() {
    use lumen_engine::mllama::image_processor::{ImageProcessorConfig, decode_image, preprocess};
    let files: [(&str, &[&str]); 2] = [
        ("tiny-f32", &["dog.jpg"]),
        ("tiny-b", &["pasta.jpeg", "wide_300x60.png"]),
    ];
    for (name, images) in files {
        let c = Checkpoint::load(name);
        let pcfg = ImageProcessorConfig::from_file(&c.dir.join("preprocessor_config.json"))
            .expect("preprocessor");
        let pixels: Vec<candle_core::Tensor> = images
            .iter()
            .map(|f| {
                let path = if f.ends_with(".png") {
                    fixtures().join("mllama/preprocess").join(f)
                } else {
                    crate::common::assets().join("llama-models").join(f)
                };
                let p = preprocess(
                    &decode_image(&std::fs::read(path).expect("read")).expect("decode"),
                    &pcfg,
                );
                let t = pcfg.tile_size;
                candle_core::Tensor::from_vec(
                    p.pixel_values,
                    (pcfg.max_image_tiles, 3, t, t),
                    &candle_core::Device::Cpu,
                )
                .expect("px")
            })
            .collect();
        let ctx = c.context(Some(&pixels));
        let logits = c.logits(Some(&ctx), &c.ids("input_ids"), "positions");
        let one_level = crate::common::max_abs_diff(&c.r["logits"], &c.r["logits_pixel_perturbed"]);
        let diff = crate::common::max_abs_diff(&logits, &c.r["logits"]);
        let image_effect =
            crate::common::max_abs_diff(&c.r["logits"], &c.r["logits_image_token_no_pixels"]);
        eprintln!(
            "{name}: from files {diff}, one-level effect {one_level}, image effect {image_effect}"
        );
        assert!(diff <= 3.0 * one_level, "{name}: {diff} > 3 × {one_level}");
        assert!(
            image_effect > 20.0 * one_level,
            "{name}: the image barely matters"
        );
    }
}

fn new_cache(cfg: &MllamaConfig) -> lumen_engine::llama::KvCache {
    // The references were computed with f32 keys and values.
    lumen_engine::llama::KvCache::new(cfg.text.num_layers, 256, lumen_engine::llama::KvDtype::F32)
}

/// A copy of the `real-vocab-bf16` checkpoint with the real Llama 3.2 Vision
/// tokenizer, as a model folder `Model::load` accepts.
fn real_vocab_model_dir() -> tempfile::TempDir {
    let src = fixtures().join("mllama/real-vocab-bf16");
    let dir = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(&src).expect("read") {
        let p = entry.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if name != "reference.safetensors" && name != "config.rope_parameters.json" {
            std::fs::copy(&p, dir.path().join(&name)).expect("copy");
        }
    }
    let tok = crate::common::assets().join("llama32-vision-tokenizer");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.path().join(f)).expect("copy tokenizer");
    }
    dir
}

/// Through the public API: load the folder, encode the image, and let a
/// session generate greedily with its KV cache: the reference's tokens.
#[test]
fn session_generates_the_reference_tokens_with_an_image() {
    use candle_core::IndexOp;
    use lumen_engine::mllama::image_processor::ProcessedImage;
    use lumen_engine::{CancelToken, GenerateParams, SamplingParams, Session};

    let dir = real_vocab_model_dir();
    let model = std::sync::Arc::new(crate::common::load(dir.path()));
    assert_eq!(model.image_token(), Some(128_256));
    let c = Checkpoint::load("real-vocab-bf16");
    let mask: Vec<u8> = c.r["aspect_ratio_mask"]
        .i((0, 0))
        .and_then(|t| t.to_vec1::<i64>())
        .expect("m")
        .iter()
        .map(|m| *m as u8)
        .collect();
    let processed = ProcessedImage {
        pixel_values: c.r["pixel_values"]
            .i((0, 0))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("px"),
        num_tiles: mask.iter().filter(|m| **m == 1).count(),
        grid: (2, 2),
        aspect_ratio_id: c.r["aspect_ratio_ids"]
            .i((0, 0))
            .and_then(|t| t.to_scalar::<i64>())
            .expect("ar") as usize,
        aspect_ratio_mask: mask,
        resized: (0, 0),
    };
    let image = model.encode_processed(&processed).expect("encode");
    let mut session = Session::new(model.clone(), None);
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    let prompt = c.ids("input_ids");
    // The prompt names one image; none given is a clear error.
    let err = session
        .generate(&prompt, &params, &CancelToken::new(), &mut |_| {})
        .expect_err("no image");
    assert!(
        err.to_string().contains("1 <|image|> tokens but 0 images"),
        "{err}"
    );
    session.set_images(vec![image]).expect("images");
    let out = session
        .generate(&prompt, &params, &CancelToken::new(), &mut |_| {})
        .expect("generate");
    assert_eq!(out.tokens, c.ids("greedy_ids"));
}

#[test]
fn text_only_models_refuse_images_clearly() {
    let smol = crate::common::smollm2();
    let bytes = std::fs::read(crate::common::assets().join("llama-models/dog.jpg")).expect("dog");
    let err = smol
        .encode_image(&bytes)
        .expect_err("text-only")
        .to_string();
    assert!(
        err.contains("text-only model") && err.contains("Vision"),
        "{err}"
    );
}

/// A conversation mixing turns with and without images: the cache carries
/// over (a text-only follow-up prefills only its own tokens), and a later
/// image adds to the conversation without recomputing earlier turns.
#[test]
fn chat_mixes_image_and_text_turns_reusing_the_cache() {
    use lumen_engine::{CancelToken, Chat, GenerateParams, SamplingParams, Session};
    let dir = real_vocab_model_dir();
    let model = std::sync::Arc::new(crate::common::load(dir.path()));
    let image = |f: &str| {
        let bytes =
            std::fs::read(crate::common::assets().join("llama-models").join(f)).expect("image");
        model.encode_image(&bytes).expect("encode")
    };
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 4,
        ignore_eos: true,
        ..Default::default()
    };
    let cancel = CancelToken::new();
    let mut chat = Chat::new(Session::new(model.clone(), None), None);
    let first = chat
        .send_with_images(
            "What is this?",
            vec![image("dog.jpg")],
            &params,
            &cancel,
            &mut |_| {},
        )
        .expect("turn 1");
    assert_eq!(first.cached_tokens, 0);
    let second = chat
        .send("Tell me more.", &params, &cancel, &mut |_| {})
        .expect("turn 2");
    // Stopped by max_tokens, the last sampled token was never run through
    // the model, so it is the one reply token the next turn computes.
    assert_eq!(
        second.cached_tokens,
        first.prompt_tokens + first.tokens.len() - 1,
        "turn 1 is reused"
    );
    let third = chat
        .send_with_images(
            "And this one?",
            vec![image("pasta.jpeg")],
            &params,
            &cancel,
            &mut |_| {},
        )
        .expect("turn 3");
    assert_eq!(
        third.cached_tokens,
        second.prompt_tokens + second.tokens.len() - 1,
        "adding an image keeps the cache"
    );
    assert_eq!(
        chat.messages()
            .iter()
            .filter(|m| m.content.contains("<|image|>"))
            .count(),
        2
    );

    // The cached answer equals a fresh computation of the same tokens.
    let prompt: Vec<u32> = chat.session().cached_tokens()[..third.prompt_tokens].to_vec();
    let mut fresh = Session::new(model.clone(), None);
    fresh
        .set_images(vec![image("dog.jpg"), image("pasta.jpeg")])
        .expect("images");
    let again = fresh
        .generate(&prompt, &params, &cancel, &mut |_| {})
        .expect("fresh");
    assert_eq!(again.tokens, third.tokens);
}

/// In-situ quantization of every linear layer (vision, cross-attention,
/// self-attention, output) and of the embedding rows at load. Q8_0 rounds
/// weights and activations to 8 bits; on the synthetic model of
/// `quant_types` that costs ~1.6% relative error and 3% is the bound there.
/// This model, with its deliberately sharp attention, measured 2.90% with
/// the linear layers alone, within that bound; quantizing the embedding
/// table too (as llama.cpp's files do; it saves 0.75 GB on the 11B) adds an
/// independent error, measured 3.13% in all. Independent errors add in
/// quadrature, so the bound is the linear layers' 3% combined with the
/// 1.6% one more Q8_0 tensor costs: √(3² + 1.6²) ≈ 3.4%. And the image must
/// still matter.
#[test]
fn in_situ_q8_0_quantization_of_a_vision_checkpoint() {
    let c = Checkpoint::load_quantized("tiny-f32", Some(lumen_engine::GgmlDType::Q8_0));
    let ctx = c.context(None);
    let logits = c.logits(Some(&ctx), &c.ids("input_ids"), "positions");
    let want = &c.r["logits"];
    let num = (&logits - want)
        .and_then(|d| d.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>())
        .expect("num");
    let den = want
        .sqr()
        .and_then(|d| d.sum_all()?.sqrt()?.to_scalar::<f32>())
        .expect("den");
    eprintln!("tiny-f32 Q8_0: relative error {}", num / den);
    assert!(num / den <= 0.034, "relative error {}", num / den);
    let image_effect = crate::common::max_abs_diff(&logits, &c.r["logits_image_token_no_pixels"]);
    assert!(image_effect > 10.0, "{image_effect}");
}

/// A vision model's single-token pass (slices, buffers kept in the cache)
/// gives the general pass's logits bit for bit: generated tokens that see
/// the image (its gated cross-attention layers read the image's keys and
/// values through the same fused kernel) and a conversation without one
/// (they add nothing); the image changes the logits, so the cross layers
/// are not skipped. An out-of-range id is refused.
#[test]
fn the_vision_decode_pass_gives_the_general_pass_logits() {
    use lumen_engine::llama::Logits;
    use lumen_engine::sampling::argmax;
    let c = Checkpoint::load_quantized("tiny-f32", Some(lumen_engine::GgmlDType::Q8_0));
    if lumen_engine::qmm::cpu_kernels() == "scalar" {
        // Without SIMD kernels candle holds Q8_0 weights: the general pass.
        assert!(!c.text.has_decode_pass());
        return;
    }
    assert!(c.text.has_decode_pass(), "Q8_0 weights of whole blocks");
    use lumen_engine::llama::KvDtype;
    let (ids, rows) = (c.ids("input_ids"), c.rows());
    let last = [rows.last().cloned().expect("a row")];
    assert_eq!(last[0], [true], "generated tokens see the image");
    // Image keys and values in f32 and in f16 (the app's default): each
    // pass agrees with the other on the same values.
    let mut first_steps = Vec::new();
    for (kv, with_image) in [
        (KvDtype::F32, true),
        (KvDtype::F32, false),
        (KvDtype::F16, true),
    ] {
        let ctx = c.context_as(None, kv);
        let prompt_images = with_image.then_some((&ctx, rows.as_slice()));
        let step_images = with_image.then_some((&ctx, last.as_slice()));
        let (mut general, mut fast) = (new_cache(&c.cfg), new_cache(&c.cfg));
        let prefill = |cache: &mut lumen_engine::llama::KvCache| {
            c.text
                .forward(&ids, cache, prompt_images, Logits::Last)
                .and_then(|l| Ok(l.to_vec1::<f32>()?))
                .expect("prefill")
        };
        let mut token = argmax(&prefill(&mut general));
        prefill(&mut fast);
        let mut logits = Vec::new();
        for step in 0..12 {
            let want = c
                .text
                .forward(&[token], &mut general, step_images, Logits::Last)
                .and_then(|l| Ok(l.to_vec1::<f32>()?))
                .expect("general step");
            c.text
                .forward_one_into(token, &mut fast, step_images, &mut logits)
                .expect("decode step");
            assert_eq!(logits.len(), want.len());
            let diff = crate::common::max_abs_diff_of(&want, &logits);
            assert!(
                diff == 0.0,
                "{kv:?} image: {with_image}, step {step}: {diff}"
            );
            if step == 0 {
                first_steps.push(want.clone());
            }
            token = argmax(&want);
        }
        let len = fast.len();
        let err = c
            .text
            .forward_one_into(u32::MAX, &mut fast, step_images, &mut logits)
            .expect_err("bad id");
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        assert_eq!(fast.len(), len);
    }
    let effect = crate::common::max_abs_diff_of(&first_steps[0], &first_steps[1]);
    assert!(
        effect > 1e-3,
        "the image should change the logits: {effect}"
    );
    // f16 image keys and values move the logits by their rounding (11
    // significant bits), far less than the image itself does.
    let rounding = crate::common::max_abs_diff_of(&first_steps[0], &first_steps[2]);
    assert!(
        rounding > 0.0 && rounding < effect / 10.0,
        "f16 against f32: {rounding}, the image's effect: {effect}"
    );
}
