//! Chat templates rendered with minijinja against transformers' jinja2
//! renderings (`tests/fixtures/templates/cases.json`): the Llama 3.1, 3.2 and
//! 3.3 templates with system prompts, dates, tools and tool calls.

use lumen_engine::template::TemplateInput;
use lumen_engine::{ChatTemplate, Message};
use serde_json::{Map, Value};

use crate::common::{fixtures, json};

fn template(name: &str) -> ChatTemplate {
    let src = std::fs::read_to_string(fixtures().join("templates").join(name)).expect("template");
    ChatTemplate::new(&src, "<|begin_of_text|>", "<|eot_id|>").expect("compiles")
}

#[test]
fn renders_like_transformers() {
    let cases = json("templates/cases.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let t = template(case["template"].as_str().expect("template"));
        let mut vars: Map<String, Value> = case["context"].as_object().expect("context").clone();
        vars.insert("messages".into(), case["messages"].clone());
        vars.insert("tools".into(), case["tools"].clone());
        vars.insert(
            "add_generation_prompt".into(),
            case["add_generation_prompt"].clone(),
        );
        let got = t.render_raw(&vars);
        match (case.get("expected"), case.get("expected_error")) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got, want.as_str().expect("string"), "case {name}");
            }
            (None, Some(err)) => {
                let e = got.expect_err(name).to_string();
                // jinja2's own UndefinedError wording differs from minijinja's;
                // messages raised by the template itself must come through.
                if case["error_type"] == "TemplateError" {
                    assert!(e.contains(err.as_str().expect("string")), "{name}: {e}");
                }
            }
            _ => panic!("{name}: case has neither expected nor expected_error"),
        }
    }
}

#[test]
fn typed_messages_render_like_raw_json() {
    // The typed API (what the app uses) produces what the raw one does.
    let t = template("meta-llama-Llama-3.2-3B-Instruct.jinja");
    let messages = vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello."),
        Message::new("user", "Capital of France?"),
    ];
    let typed = t
        .render(&TemplateInput {
            messages: &messages,
            add_generation_prompt: true,
            date_string: Some("26 Jul 2024".into()),
            ..Default::default()
        })
        .expect("typed");
    let mut vars = Map::new();
    vars.insert(
        "messages".into(),
        serde_json::to_value(&messages).expect("json"),
    );
    vars.insert("add_generation_prompt".into(), true.into());
    vars.insert("date_string".into(), "26 Jul 2024".into());
    assert_eq!(typed, t.render_raw(&vars).expect("raw"));
    assert!(typed.contains("Today Date: 26 Jul 2024"));
    assert!(typed.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
}
