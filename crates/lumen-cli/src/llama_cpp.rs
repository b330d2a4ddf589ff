//! llama.cpp's `llama-bench` on the same file, with the same threads and
//! the same lengths, for `lumen bench --llama-bench PATH` (built by
//! `bench/build-llama-cpp.sh`). Two invocations mirror Lumen's run:
//! prefill of the prompt from an empty context, and decoding that starts
//! after the prompt (`-d`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// llama.cpp's speeds, tokens per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaCpp {
    /// Prompt processing from an empty context.
    pub prefill_tok_s: f64,
    /// Generation after the prompt.
    pub decode_tok_s: f64,
}

/// Runs `llama_bench` on `model`.
pub fn run(
    llama_bench: &Path,
    model: &Path,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    repetitions: usize,
) -> Result<LlamaCpp> {
    let invoke = |args: &[String]| -> Result<String> {
        let out = Command::new(llama_bench)
            .arg("-m")
            .arg(model)
            .args([
                "-t",
                &threads.to_string(),
                "-r",
                &repetitions.max(1).to_string(),
            ])
            .args(["-o", "json"])
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", llama_bench.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                llama_bench.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let prefill = invoke(&[
        "-p".into(),
        prompt_tokens.to_string(),
        "-n".into(),
        "0".into(),
    ])?;
    let decode = invoke(&[
        "-p".into(),
        "0".into(),
        "-n".into(),
        gen_tokens.to_string(),
        "-d".into(),
        prompt_tokens.to_string(),
    ])?;
    Ok(LlamaCpp {
        prefill_tok_s: speed(&prefill, Test::Prompt)?,
        decode_tok_s: speed(&decode, Test::Generate)?,
    })
}

/// Which of llama-bench's tests to read.
#[derive(Debug, Clone, Copy)]
enum Test {
    Prompt,
    Generate,
}

/// The mean tokens per second (`avg_ts`) of the first test of that kind in
/// llama-bench's JSON output (an array of objects with `n_prompt`, `n_gen`,
/// `avg_ts`).
fn speed(json: &str, test: Test) -> Result<f64> {
    let tests: Vec<serde_json::Value> =
        serde_json::from_str(json).context("llama-bench did not print a JSON array")?;
    let count = |t: &serde_json::Value, key: &str| t[key].as_u64().unwrap_or(0);
    tests
        .iter()
        .find(|t| match test {
            Test::Prompt => count(t, "n_prompt") > 0 && count(t, "n_gen") == 0,
            Test::Generate => count(t, "n_gen") > 0 && count(t, "n_prompt") == 0,
        })
        .and_then(|t| t["avg_ts"].as_f64())
        .filter(|v| v.is_finite() && *v > 0.0)
        .with_context(|| format!("no {test:?} result in llama-bench's output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape llama-bench prints (fields trimmed).
    const PROMPT: &str = r#"[
  {
    "build_commit": "0c1e5709",
    "model_filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "n_threads": 2,
    "n_prompt": 128,
    "n_gen": 0,
    "n_depth": 0,
    "avg_ns": 471000000,
    "avg_ts": 271.5,
    "stddev_ts": 1.2,
    "samples_ns": [ 470000000, 472000000 ],
    "samples_ts": [ 272.3, 271.1 ]
  }
]"#;
    const GENERATE: &str = r#"[
  {"n_prompt": 0, "n_gen": 64, "n_depth": 128, "avg_ts": 76.9, "samples_ts": [76.9]}
]"#;

    #[test]
    fn reads_the_speeds_of_each_test() {
        assert_eq!(speed(PROMPT, Test::Prompt).expect("pp"), 271.5);
        assert_eq!(speed(GENERATE, Test::Generate).expect("tg"), 76.9);
    }

    #[test]
    fn missing_or_malformed_results_are_errors() {
        assert!(speed(PROMPT, Test::Generate).is_err());
        assert!(speed("not json", Test::Prompt).is_err());
        assert!(speed("[]", Test::Prompt).is_err());
        assert!(
            speed(
                r#"[{"n_prompt": 128, "n_gen": 0, "avg_ts": "fast"}]"#,
                Test::Prompt
            )
            .is_err()
        );
        assert!(
            speed(
                r#"[{"n_prompt": 128, "n_gen": 0, "avg_ts": 0}]"#,
                Test::Prompt
            )
            .is_err()
        );
    }
}
