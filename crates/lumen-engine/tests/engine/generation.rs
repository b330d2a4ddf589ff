//! Generation behaviour on the real SmolLM2 model: end tokens, stop strings,
//! limits, seeds, cancellation, KV-cache reuse and the context limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use lumen_engine::{
    CancelToken, Chat, EngineError, GenerateParams, SamplingParams, Session, StopReason,
};

use crate::common::smollm2;

const QUESTION: &str = "Name the capital of Germany.";

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        ..Default::default()
    }
}

fn ask(params: &GenerateParams) -> (lumen_engine::Completion, String) {
    let mut chat = Chat::new(Session::new(smollm2(), None), None);
    let mut streamed = String::new();
    let c = chat
        .send(QUESTION, params, &CancelToken::new(), &mut |p| {
            streamed.push_str(p)
        })
        .expect("send");
    (c, streamed)
}

#[test]
fn stops_at_end_of_turn_and_streams_the_same_text() {
    let (c, streamed) = ask(&greedy(64));
    assert_eq!(c.stop_reason, StopReason::Eos);
    assert_eq!(c.text, "The capital of Germany is Berlin.");
    assert_eq!(streamed, c.text);
}

#[test]
fn stop_strings_end_the_reply_and_are_not_shown() {
    let mut params = greedy(64);
    params.stop = vec!["Germany".into(), "never appears".into()];
    let (c, streamed) = ask(&params);
    assert_eq!(c.stop_reason, StopReason::StopString);
    assert_eq!(c.text, "The capital of ");
    assert_eq!(streamed, c.text, "no part of a stop string may be streamed");
}

#[test]
fn max_tokens_is_honoured() {
    let (c, _) = ask(&greedy(3));
    assert_eq!(c.stop_reason, StopReason::MaxTokens);
    assert_eq!(c.tokens.len(), 3);
}

#[test]
fn same_seed_same_output() {
    let params = |seed| GenerateParams {
        sampling: SamplingParams {
            temperature: 1.2,
            top_p: 0.95,
            seed,
            ..Default::default()
        },
        max_tokens: 24,
        ..Default::default()
    };
    let a = ask(&params(11)).0.tokens;
    let b = ask(&params(11)).0.tokens;
    assert_eq!(a, b);
    let others: Vec<Vec<u32>> = (12..16).map(|s| ask(&params(s)).0.tokens).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds never changed the output"
    );
}

#[test]
fn cancel_from_another_thread_takes_effect_within_one_token() {
    let cancel = CancelToken::new();
    let produced = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (cancel, produced) = (cancel.clone(), produced.clone());
        std::thread::spawn(move || {
            let mut session = Session::new(smollm2(), None);
            let prompt = smollm2()
                .tokenizer()
                .encode("Once upon a time", false)
                .expect("encode");
            let params = GenerateParams {
                ignore_eos: true,
                ..greedy(100_000)
            };
            session.generate(&prompt, &params, &cancel, &mut |_| {
                if produced.fetch_add(1, Ordering::SeqCst) == 4 {
                    let _ = tx.send(());
                }
            })
        })
    };
    rx.recv().expect("five pieces streamed");
    let at_cancel = produced.load(Ordering::SeqCst);
    cancel.cancel();
    let c = worker.join().expect("thread").expect("generate");
    assert_eq!(c.stop_reason, StopReason::Cancelled);
    // Pieces can lag tokens by a byte-token or two; allow one more token.
    assert!(
        c.tokens.len() <= at_cancel + 3,
        "{} tokens after cancel at {at_cancel}",
        c.tokens.len()
    );
}

#[test]
fn follow_up_turn_prefills_only_the_new_tokens() {
    let model = smollm2();
    let mut chat = Chat::new(Session::new(model.clone(), None), None);
    let params = greedy(32);
    let cancel = CancelToken::new();
    let first = chat
        .send(QUESTION, &params, &cancel, &mut |_| {})
        .expect("turn 1");
    let before = first.prompt_tokens + first.tokens.len();
    let second = chat
        .send("And of France?", &params, &cancel, &mut |_| {})
        .expect("turn 2");
    assert_eq!(
        second.cached_tokens, before,
        "everything from turn 1 is reused"
    );
    let new = second.prompt_tokens - second.cached_tokens;
    // "<|im_end|>\n<|im_start|>user\nAnd of France?<|im_end|>\n<|im_start|>assistant\n"
    let expected_new = model
        .tokenizer()
        .encode(
            "<|im_end|>\n<|im_start|>user\nAnd of France?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .expect("encode")
        .len();
    assert_eq!(new, expected_new);

    // The reused cache gives the same answer as computing everything afresh.
    let (_, prompt) = chat_prompt_without_last_reply(&chat);
    let mut fresh = Session::new(model, None);
    let again = fresh
        .generate(&prompt, &params, &cancel, &mut |_| {})
        .expect("fresh");
    assert_eq!(again.tokens, second.tokens);
}

/// The prompt of the last turn: all messages but the final assistant reply.
fn chat_prompt_without_last_reply(chat: &Chat) -> (String, Vec<u32>) {
    let mut c = Chat::new(Session::new(smollm2(), None), None);
    let msgs = chat.messages();
    let text = smollm2()
        .template()
        .render(&lumen_engine::template::TemplateInput {
            messages: &msgs[..msgs.len() - 1],
            add_generation_prompt: true,
            ..Default::default()
        })
        .expect("render");
    c.set_tools(Vec::new());
    let tokens = smollm2().tokenizer().encode(&text, false).expect("encode");
    (text, tokens)
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let mut session = Session::new(smollm2(), Some(32));
    let prompt = vec![504u32; 40];
    let err = session
        .generate(&prompt, &greedy(4), &CancelToken::new(), &mut |_| {})
        .expect_err("must not fit");
    assert!(
        matches!(
            err,
            EngineError::ContextOverflow {
                needed: 41,
                limit: 32
            }
        ),
        "{err}"
    );
}

#[test]
fn generation_stops_cleanly_when_the_context_fills() {
    let mut session = Session::new(smollm2(), Some(32));
    let prompt = smollm2()
        .tokenizer()
        .encode("Once upon a time", false)
        .expect("encode");
    let params = GenerateParams {
        ignore_eos: true,
        ..greedy(1000)
    };
    let c = session
        .generate(&prompt, &params, &CancelToken::new(), &mut |_| {})
        .expect("generate");
    assert_eq!(c.stop_reason, StopReason::ContextFull);
    assert_eq!(
        prompt.len() + c.tokens.len(),
        33,
        "fills the context, plus the last sampled token"
    );
}
