//! Tokenizer parity with Hugging Face tokenizers and llama.cpp on a corpus of
//! unicode, emoji, code, whitespace runs and special tokens.

use lumen_engine::Tokenizer;
use serde_json::Value;

use crate::common::{assets, fixtures, json, load, smollm2};

fn corpus() -> Vec<String> {
    json("tokenizer/corpus.json")["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("string").to_string())
        .collect()
}

fn expected(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|ids| {
            ids.as_array()
                .expect("ids")
                .iter()
                .map(|i| i.as_u64().expect("id") as u32)
                .collect()
        })
        .collect()
}

/// Encodes every corpus text and compares; also checks decoding round-trips.
fn check(tok: &Tokenizer, want: &Value, name: &str) {
    let texts = corpus();
    let want = expected(want);
    assert_eq!(texts.len(), want.len(), "{name}: fixture size");
    let mut failures = Vec::new();
    for (text, want) in texts.iter().zip(&want) {
        let got = tok.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
        }
        assert_eq!(
            &tok.decode(&got, false).expect("decode"),
            text,
            "{name}: round trip"
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama32_vision_tokenizer_json_matches_hf() {
    let tok = Tokenizer::from_file(&assets().join("llama32-vision-tokenizer/tokenizer.json"))
        .expect("load");
    assert_eq!(tok.vocab_size(), 128257);
    assert_eq!(tok.token_to_id("<|image|>"), Some(128256));
    check(
        &tok,
        &json("tokenizer/expected.json")["llama32-vision"],
        "llama32-vision",
    );
}

#[test]
fn llama31_tokenizer_json_matches_hf() {
    let tok =
        Tokenizer::from_file(&assets().join("llama31-tokenizer/tokenizer.json")).expect("load");
    check(&tok, &json("tokenizer/expected.json")["llama31"], "llama31");
}

#[test]
fn gguf_llama_bpe_tokenizer_matches_hf() {
    let model = load(&fixtures().join("tiny-llama3/tiny-llama3-f32.gguf"));
    check(
        model.tokenizer(),
        &json("tokenizer/expected.json")["tiny-llama3-gguf"],
        "tiny-llama3-gguf",
    );
}

#[test]
fn gguf_smollm_tokenizer_matches_hf() {
    check(
        smollm2().tokenizer(),
        &json("tokenizer/expected.json")["smollm2-gguf"],
        "smollm2 vs transformers",
    );
}

#[test]
fn gguf_smollm_tokenizer_matches_llama_cpp() {
    check(
        smollm2().tokenizer(),
        &json("tokenizer/expected_llamacpp.json")["smollm2-gguf"],
        "smollm2 vs llama.cpp",
    );
}

#[test]
fn streaming_decode_holds_back_split_characters() {
    // Byte-level BPE splits rare characters into byte tokens: the stream must
    // not emit half an emoji, and must emit the whole text in the end.
    let tok = smollm2().tokenizer().clone();
    for text in ["emoji 😀👍🏽 family 👨‍👩‍👧‍👦 ok", "日本語のテキスト", "naïve café"]
    {
        let ids = tok.encode(text, false).expect("encode");
        let mut dec = tok.stream_decoder();
        let mut out = String::new();
        for id in ids {
            if let Some(piece) = dec.push(id).expect("push") {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "emitted a broken character in {piece:?}"
                );
                out.push_str(&piece);
            }
        }
        if let Some(rest) = dec.flush().expect("flush") {
            out.push_str(&rest);
        }
        assert_eq!(out, text);
    }
}
