//! The `lumen` binary, run as a user would run it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{assets, smollm2, text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lumen(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lumen");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

#[test]
fn run_streams_the_answer_to_stdout() {
    let m = smollm2();
    let out = lumen(
        &[
            "run",
            "--model",
            m.to_str().expect("utf8"),
            "--device",
            "cpu",
            "--temperature",
            "0",
            "Name the capital of Germany.",
        ],
        None,
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "The capital of Germany is Berlin.\n");
    assert!(
        text(&out.stderr).to_lowercase().contains("smollm2"),
        "model line on stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn chat_keeps_the_conversation_across_turns() {
    let m = smollm2();
    let out = lumen(
        &[
            "chat",
            "--model",
            m.to_str().expect("utf8"),
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--stats",
        ],
        Some("Name the capital of Germany.\nAnd of France?\n/exit\n"),
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("The capital of Germany is Berlin.\n"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| !l.is_empty()).count(),
        2,
        "{stdout}"
    );
    // The second turn reuses the first turn's cache.
    let stats: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| l.contains("reused"))
        .map(String::from)
        .collect();
    assert_eq!(stats.len(), 2);
    assert!(stats[0].contains("(0 reused)"), "{}", stats[0]);
    assert!(!stats[1].contains("(0 reused)"), "{}", stats[1]);
}

#[test]
fn debug_tokenize_prints_ids_on_one_line() {
    // llama.cpp's tokenization of a rendered SmolLM2 chat prompt.
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/smollm2/llamacpp.json"))
            .expect("fixture"),
    )
    .expect("json");
    let case = &fixture["cases"][0];
    let want: Vec<String> = case["prompt_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.to_string())
        .collect();
    let m = smollm2();
    let out = lumen(
        &[
            "debug",
            "tokenize",
            "--model",
            m.to_str().expect("utf8"),
            case["rendered"].as_str().expect("text"),
        ],
        None,
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}\n", want.join(",")));
}

#[test]
fn debug_logits_writes_seq_by_vocab_and_matches_transformers() {
    let dir = tempfile::tempdir().expect("tmp");
    let out_file = dir.path().join("logits.safetensors");
    let gguf = repo().join("tests/fixtures/tiny-llama3/tiny-llama3-f32.gguf");
    let reference = candle_core::safetensors::load(
        repo().join("tests/fixtures/tiny-llama3/reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("reference");
    let ids: Vec<i64> = reference["input_ids"].to_vec1().expect("ids");
    let ids_arg: Vec<String> = ids.iter().map(i64::to_string).collect();
    let out = lumen(
        &[
            "debug",
            "logits",
            "--model",
            gguf.to_str().expect("utf8"),
            "--ids",
            &ids_arg.join(","),
            "--dtype",
            "f32",
            // The reference was computed with f32 keys and values.
            "--kv-cache",
            "f32",
            "--out",
            out_file.to_str().expect("utf8"),
        ],
        None,
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let written =
        candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).expect("written");
    assert_eq!(written.len(), 1);
    let logits = &written["logits"];
    assert_eq!(logits.dims(), &[ids.len(), 128256]);
    assert_eq!(logits.dtype(), candle_core::DType::F32);
    let positions: Vec<i64> = reference["positions"].to_vec1().expect("positions");
    let picked = logits
        .index_select(
            &candle_core::Tensor::new(
                positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
                &candle_core::Device::Cpu,
            )
            .expect("idx"),
            0,
        )
        .expect("select");
    let diff = (picked - &reference["logits"])
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("diff");
    assert!(diff <= 1e-3, "max abs diff {diff}");
}

#[test]
fn errors_are_one_clear_line_and_a_failing_exit() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").expect("write");
    let out = lumen(&["run", "--model", bad.to_str().expect("utf8"), "hi"], None);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("lumen: error:") && lines[0].contains("broken.gguf"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = lumen(&["run", "--model", "/nonexistent/model.gguf", "hi"], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/model.gguf"));

    let out = lumen(
        &[
            "debug",
            "logits",
            "--model",
            smollm2().to_str().expect("utf8"),
            "--ids",
            "1,99999999",
            "--out",
            "/dev/null",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("outside the vocabulary"),
        "{}",
        text(&out.stderr)
    );
}

/// The tiny random-weight Llama 3.2 Vision checkpoint with the real
/// tokenizer, as a model folder.
fn vision_model_dir() -> tempfile::TempDir {
    let src = repo().join("tests/fixtures/mllama/real-vocab-bf16");
    let dir = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(&src).expect("read") {
        let p = entry.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && name != "reference.safetensors"
            || name.ends_with(".json")
        {
            std::fs::copy(&p, dir.path().join(&name)).expect("copy");
        }
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            assets().join("llama32-vision-tokenizer").join(f),
            dir.path().join(f),
        )
        .expect("tokenizer");
    }
    dir
}

#[test]
fn run_answers_about_an_image() {
    let dir = vision_model_dir();
    let dog = assets().join("llama-models/dog.jpg");
    let args = [
        "run",
        "--model",
        dir.path().to_str().expect("utf8"),
        "--image",
        dog.to_str().expect("utf8"),
        "--temperature",
        "0",
        "--max-tokens",
        "4",
        "Describe this image in one word.",
    ];
    let out = lumen(&args, None);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    // Random weights say nothing sensible, but they say something.
    assert!(!text(&out.stdout).trim().is_empty());
    // Quantized at load unless asked otherwise (in f32 an 11B holds 43 GB).
    let err = text(&out.stderr);
    assert!(err.contains("Q4K (quantized at load)"), "{err}");
    let mut dense = args.to_vec();
    dense.splice(1..1, ["--quantize", "none"]);
    let out = lumen(&dense, None);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("(F32,"), "{err}");

    // A broken image is a clear error naming the file.
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").expect("write");
    let mut bad_args = args;
    bad_args[4] = bad.to_str().expect("utf8");
    let out = lumen(&bad_args, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("broken.png") && err.contains("image"), "{err}");

    // A text-only model says it cannot look at images.
    let smol = smollm2();
    let out = lumen(
        &[
            "run",
            "--model",
            smol.to_str().expect("utf8"),
            "--image",
            dog.to_str().expect("utf8"),
            "hi",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("text-only model"),
        "{}",
        text(&out.stderr)
    );
}

/// `lumen bench --json` prints one object with the figures the issue
/// tracker's benchmarks read, from a real run on the real model.
#[test]
fn bench_prints_one_json_object() {
    let m = smollm2();
    let out = lumen(
        &[
            "--threads",
            "1",
            "bench",
            "--model",
            m.to_str().expect("utf8"),
            "--prompt-tokens",
            "24",
            "--gen-tokens",
            "4",
            "--warmup",
            "0",
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["prompt_tokens"], 24);
    assert_eq!(v["threads"], 1, "--threads sets the compute threads");
    let kernels = v["cpu_kernels"].as_str().expect("cpu_kernels");
    assert!(
        ["avx512-vnni", "avx2", "scalar"].contains(&kernels),
        "{kernels}"
    );
    assert_eq!(v["runs"][0]["gen_tokens"], 4);
    for key in ["prefill_tok_s", "decode_tok_s", "ttft_ms", "load_ms"] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
        assert!(x > 0.0, "{key} = {x}");
    }
    if cfg!(target_os = "linux") {
        let peak = v["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
        // The 97 MB file is mapped and read: at least that much is resident.
        assert!(peak > 90_000_000, "{peak}");
        // The process before loading is part of the peak, and of the ratio.
        let before = v["rss_before_load_bytes"]
            .as_u64()
            .expect("rss_before_load_bytes");
        assert!(before > 0 && before < peak, "{before} of {peak}");
        let ratio = v["peak_less_kv_over_file"].as_f64().expect("ratio");
        let own = v["peak_less_kv_and_start_over_file"]
            .as_f64()
            .expect("own ratio");
        assert!(own > 0.0 && own < ratio, "{own} vs {ratio}");
        assert!(v["rss_file_bytes"].as_u64().is_some_and(|f| f > 0), "{v}");
    }
    // The bandwidth bound: the file's size, and a rate it implies.
    let size = std::fs::metadata(&m).expect("model").len();
    assert_eq!(v["weight_bytes"].as_u64(), Some(size));
    let bandwidth = v["read_bandwidth_bytes_s"].as_f64().expect("bandwidth");
    let bound = v["decode_bound_tok_s"].as_f64().expect("bound");
    assert!(
        (bound - bandwidth / size as f64).abs() < 1e-6 * bound,
        "{v}"
    );
}

/// `lumen bench kernels --json` measures each asked-for weight type and the
/// decoding attention, with the global `--threads` (which once panicked
/// there), and prints one object of positive rates.
#[test]
fn bench_kernels_prints_rates_for_each_type_and_the_attention() {
    let out = lumen(
        &[
            "bench",
            "kernels",
            "--threads",
            "1",
            "--rows",
            "64",
            "--cols",
            "512",
            "--types",
            "q4_0,q4_k",
            "--runs",
            "1",
            "--attention-depth",
            "37",
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["threads"], 1);
    let kernels = v["kernels"].as_array().expect("kernels");
    let types: Vec<&str> = kernels.iter().filter_map(|k| k["type"].as_str()).collect();
    assert_eq!(types, ["q4_0", "q4_k"]);
    for k in kernels {
        for key in ["one_thread_bytes_s", "all_threads_bytes_s"] {
            assert!(k[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {k}");
        }
    }
    let attention = &v["decode_attention"];
    assert_eq!(attention["depth"], 37);
    assert!(
        attention["seconds_per_token"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{attention}"
    );
    assert!(
        v["read_bandwidth_bytes_s"]
            .as_f64()
            .is_some_and(|x| x > 0.0)
    );
    let bad = lumen(
        &["bench", "kernels", "--cols", "100", "--types", "q4_k"],
        None,
    );
    assert!(
        !bad.status.success(),
        "a K-quant row of 100 values is refused"
    );
    assert!(
        text(&bad.stderr).contains("not a multiple of q4_k's block of 256"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn bench_rejects_unknown_synthetic_models_and_images_for_text_models() {
    for (args, says) in [
        (
            ["--shape", "llama-9b", "--type", "q4_0"],
            "unknown shape `llama-9b`",
        ),
        (
            ["--shape", "llama-3.2-1b", "--type", "q3_x"],
            "unknown weight type `q3_x`",
        ),
    ] {
        let mut all = vec!["bench", "write-gguf", "--out", "/nonexistent/x.gguf"];
        all.extend(args);
        let out = lumen(&all, None);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    let out = lumen(&["bench", "--synthetic", "llama-9b"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown synthetic model `llama-9b`"),
        "{}",
        text(&out.stderr)
    );
    let m = smollm2();
    let image = assets().join("llama-models/dog.jpg");
    let out = lumen(
        &[
            "bench",
            "--model",
            m.to_str().expect("utf8"),
            "--image",
            image.to_str().expect("utf8"),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("text-only model"),
        "{}",
        text(&out.stderr)
    );
}

fn lumen_in(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(args)
        .env("LUMEN_DATA_DIR", data)
        .output()
        .expect("run lumen")
}

/// Import, list, search, export, delete, through the binary, in a data
/// folder chosen by `LUMEN_DATA_DIR`.
#[test]
fn history_import_search_export_and_delete() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let file = dir.path().join("history.json");
    std::fs::write(
        &file,
        r#"{"format": "lumen-history", "version": 1, "conversations": [
            {"title": "Café receipts", "created_at": "2026-03-01T10:00:00Z",
             "messages": [
               {"role": "user", "content": "What did the croissant cost?", "created_at": "2026-03-01T10:00:01Z"},
               {"role": "assistant", "content": "It cost 2.10 €.", "created_at": "2026-03-01T10:00:05Z", "parent": 0}]}]}"#,
    )
    .expect("write");
    let out = lumen_in(&data, &["history", "import", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(data.join("history.sqlite3").is_file());

    let out = lumen_in(&data, &["history", "list"]);
    assert!(
        text(&out.stdout).contains("Café receipts"),
        "{}",
        text(&out.stdout)
    );

    let out = lumen_in(&data, &["search", "croiss", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(hits.as_array().map(Vec::len), Some(1), "{hits}");
    let out = lumen_in(&data, &["search", "cafe"]);
    assert!(
        text(&out.stdout).contains("[Café]"),
        "{}",
        text(&out.stdout)
    );
    let out = lumen_in(&data, &["search", "\"unbalanced AND ("]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = lumen_in(&data, &["history", "export"]);
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).expect("export json");
    assert_eq!(exported["conversations"][0]["messages"][1]["parent"], 0);
    let out = lumen_in(&data, &["history", "export", "--format", "md", "1"]);
    assert!(
        text(&out.stdout).starts_with("# Café receipts"),
        "{}",
        text(&out.stdout)
    );

    let out = lumen_in(&data, &["history", "rm", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lumen_in(&data, &["search", "croissant", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = lumen_in(&data, &["history", "rm", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("conversation 1 does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn malformed_import_is_refused_with_the_bad_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"conversations": [{"created_at": "2026-03-01T10:00:00Z",
            "messages": [{"role": "wizard", "content": "x", "created_at": "2026-03-01T10:00:00Z"}]}]}"#,
    )
    .expect("write");
    let out = lumen_in(&data, &["history", "import", file.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("conversations[0].messages[0].role"), "{err}");
    let out = lumen_in(&data, &["history", "list"]);
    assert_eq!(text(&out.stdout), "");
}
