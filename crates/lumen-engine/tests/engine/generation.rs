//! Generation behaviour on the real SmolLM2 model: end tokens, stop strings,
//! limits, seeds, cancellation, KV-cache reuse and the context limit.

use std::sync::mpsc;

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

/// A story prompt and greedy settings that keep going past end tokens.
fn endless_story(max_tokens: usize) -> (Vec<u32>, GenerateParams) {
    let prompt = smollm2()
        .tokenizer()
        .encode("Once upon a time", false)
        .expect("encode");
    let params = GenerateParams {
        ignore_eos: true,
        ..greedy(max_tokens)
    };
    (prompt, params)
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
    // The generating thread pauses inside its 5th token's callback until the
    // main thread has cancelled; it must then stop before sampling another.
    let cancel = CancelToken::new();
    let (reached, wait_reached) = mpsc::channel();
    let (resume, wait_resume) = mpsc::channel::<()>();
    let worker = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let mut session = Session::new(smollm2(), None);
            let (prompt, params) = endless_story(100_000);
            let mut pieces = 0;
            let mut streamed = String::new();
            // The callback runs on a thread of rayon's pool: it must be Send.
            let wait_resume = std::sync::Mutex::new(wait_resume);
            let c = session.generate(&prompt, &params, &cancel, &mut |p| {
                streamed.push_str(p);
                pieces += 1;
                if pieces == 5 {
                    let _ = reached.send(());
                    let _ = wait_resume.lock().map(|r| r.recv());
                }
            });
            (c, streamed, pieces)
        })
    };
    wait_reached.recv().expect("five pieces streamed");
    cancel.cancel();
    resume.send(()).expect("resume");
    let (c, streamed, pieces) = worker.join().expect("thread");
    let c = c.expect("generate");
    assert_eq!(c.stop_reason, StopReason::Cancelled);
    assert_eq!(pieces, 5, "nothing streamed after cancelling");
    assert_eq!(
        c.tokens.len(),
        5,
        "no token sampled after cancelling (this text is one piece per token)"
    );
    assert_eq!(streamed, c.text);
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
    let msgs = chat.messages();
    let text = smollm2()
        .template()
        .render(&lumen_engine::template::TemplateInput {
            messages: &msgs[..msgs.len() - 1],
            add_generation_prompt: true,
            ..Default::default()
        })
        .expect("render");
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
    let (prompt, params) = endless_story(1000);
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
