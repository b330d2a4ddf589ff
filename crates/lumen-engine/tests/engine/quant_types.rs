//! Every GGUF weight type llama.cpp writes for Llama models loads and computes
//! sensibly: one random-weight model (hidden 256, so K-quants fit) written as
//! F32 and as each type, same underlying weights.

use candle_core::Tensor;
use lumen_engine::llama::Logits;
use lumen_engine::synthetic::{SyntheticSpec, Vocabulary, write_random_llama};
use lumen_engine::{DeviceRequest, GgmlDType, LoadOptions, Model};

fn logits(path: &std::path::Path, dequantize: bool) -> Tensor {
    let opts = LoadOptions {
        device: DeviceRequest::Cpu,
        dequantize,
        ..Default::default()
    };
    let model =
        Model::load(path, &opts, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ids: Vec<u32> = (0..48).map(|i| (i * 37 + 11) % 256).collect();
    let mut cache = model.new_cache(64);
    model
        .forward_text(&ids, &mut cache, Logits::All)
        .expect("forward")
}

/// ‖a − b‖ / ‖b‖.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b)
        .and_then(|d| d.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>())
        .expect("num");
    let den = b
        .sqr()
        .and_then(|d| d.sum_all()?.sqrt()?.to_scalar::<f32>())
        .expect("den");
    num / den
}

#[test]
fn every_weight_type_matches_f32_within_its_precision() {
    let dir = tempfile::tempdir().expect("tmp");
    let f32_path = dir.path().join("f32.gguf");
    write_random_llama(
        &f32_path,
        &SyntheticSpec::small(GgmlDType::F32),
        Vocabulary::Bytes,
    )
    .expect("write f32");
    let reference = logits(&f32_path, false);

    // Expected relative error of the weights alone is about 2^-bits; the bound
    // is a few times that (errors compound over two blocks and the output).
    let types = [
        (GgmlDType::F16, 0.005),
        (GgmlDType::BF16, 0.03),
        (GgmlDType::Q8_0, 0.03),
        (GgmlDType::Q6K, 0.06),
        (GgmlDType::Q5_0, 0.12),
        (GgmlDType::Q5_1, 0.12),
        (GgmlDType::Q5K, 0.12),
        (GgmlDType::Q4_0, 0.25),
        (GgmlDType::Q4_1, 0.25),
        (GgmlDType::Q4K, 0.25),
        (GgmlDType::Q3K, 0.5),
        (GgmlDType::Q2K, 0.9),
    ];
    let mut report = Vec::new();
    for (ty, bound) in types {
        let path = dir.path().join(format!("{ty:?}.gguf"));
        write_random_llama(&path, &SyntheticSpec::small(ty), Vocabulary::Bytes).expect("write");
        let quantized = logits(&path, false);
        let dequantized = logits(&path, true);
        let vs_f32 = rel_err(&quantized, &reference);
        // The quantized kernels against f32 math on the same (dequantized)
        // weights: only 8-bit activation rounding separates them.
        let kernel = rel_err(&quantized, &dequantized);
        report.push(format!(
            "{ty:?}: vs f32 {vs_f32:.4}, kernel vs dequantized {kernel:.4}"
        ));
        assert!(vs_f32 <= bound, "{ty:?}: relative error {vs_f32} > {bound}");
        assert!(
            kernel <= 0.03,
            "{ty:?}: quantized kernel differs from dequantized math by {kernel}"
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// A synthetic file with the real Llama 3 tokenizer written into its
/// metadata tokenizes exactly as the Hugging Face tokenizer does (so that
/// llama.cpp and Lumen read the same tokens from the same file).
#[test]
fn a_synthetic_file_carries_the_real_llama3_tokenizer() {
    use lumen_engine::Tokenizer;
    use lumen_engine::gguf::GgufFile;
    let src = crate::common::assets().join("llama31-tokenizer");
    let json = src.join("tokenizer.json");
    assert!(
        json.is_file(),
        "{} missing: run scripts/fetch-assets.sh",
        json.display()
    );
    let meta =
        lumen_engine::synthetic::llama3_tokenizer(&json, Some(&src.join("tokenizer_config.json")))
            .expect("metadata");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("llama3-vocab.gguf");
    write_random_llama(
        &path,
        &SyntheticSpec::small(GgmlDType::Q8_0),
        Vocabulary::Metadata(meta),
    )
    .expect("write");
    let gguf = GgufFile::open(&path).expect("open");
    let from_gguf = Tokenizer::from_gguf(&gguf).expect("tokenizer from the file");
    let reference = Tokenizer::from_file(&json).expect("tokenizer.json");
    assert_eq!(from_gguf.vocab_size(), 128_256);
    for text in [
        "Hello, world! ¿Qué tal?  Tabs\there, numbers 1234567 and émojis 🦙.",
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
        "fn main() { println!(\"{}\", 42); }",
    ] {
        // Lumen adds <|begin_of_text|> through the chat template, not here.
        assert_eq!(
            from_gguf.encode(text, false).expect("encode"),
            reference.encode(text, false).expect("encode"),
            "{text:?}"
        );
    }
    assert_eq!(
        from_gguf.eos_token(),
        Some("<|eot_id|>"),
        "the chat end token"
    );
    assert!(from_gguf.eos_ids().contains(&128_009));
    // The model computes with that vocabulary.
    let model = Model::load(&path, &LoadOptions::default(), &mut |_| {}).expect("load");
    assert_eq!(model.tokenizer().vocab_size(), 128_256);
}

/// A model with an output layer of its own (Llama 3.1 8B and 3.3 70B are
/// untied) reads that layer, not the embedding table, and its table is
/// repacked for the interleaved kernels, so it decodes through the
/// single-token pass like the tied 1B and 3B.
#[test]
fn an_untied_model_reads_its_own_output_layer_and_takes_the_decode_pass() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = SyntheticSpec::small(GgmlDType::Q8_0);
    let tied = dir.path().join("tied.gguf");
    let untied = dir.path().join("untied.gguf");
    write_random_llama(&tied, &spec, Vocabulary::Bytes).expect("write tied");
    // The same draws for the table and the blocks; the output layer is
    // drawn after them, in another type.
    write_random_llama(
        &untied,
        &spec.clone().untied(GgmlDType::Q4K),
        Vocabulary::Bytes,
    )
    .expect("write untied");
    let quantized = logits(&untied, false);
    // The f32 path (dequantized output layer, the table's rows dequantized
    // by candle) agrees within the kernels' activation rounding…
    let dequantized = logits(&untied, true);
    let kernel = rel_err(&quantized, &dequantized);
    assert!(kernel <= 0.03, "kernels vs dequantized: {kernel}");
    // …and the output layer is not the table: the tied file's logits, from
    // the same table and blocks, are far away.
    let vs_tied = rel_err(&quantized, &logits(&tied, false));
    assert!(
        vs_tied > 0.5,
        "untied logits too close to tied ones: {vs_tied}"
    );

    let model = Model::load(&untied, &LoadOptions::default(), &mut |_| {}).expect("load");
    if lumen_engine::qmm::cpu_kernels() == "scalar" {
        assert!(!model.has_decode_pass());
        return;
    }
    assert!(
        model.has_decode_pass(),
        "an untied Q8_0/Q4_K model should take the decode pass"
    );
    let prompt: Vec<u32> = (0..20u32).map(|i| (i * 29 + 3) % 256).collect();
    crate::common::assert_decode_pass_matches(&model, &prompt, 12);
}
