//! Chat templates: the model's own Jinja template, rendered with minijinja the
//! way transformers' `apply_chat_template` renders it with jinja2.
//!
//! transformers sets `trim_blocks` and `lstrip_blocks`, and adds
//! `raise_exception`, `strftime_now` and a `tojson` that is Python's
//! `json.dumps` (no HTML escaping, `", "` and `": "` separators, `indent`).
//! Python string methods (`.strip()`, `.startswith()`, ...) come from
//! minijinja-contrib's pycompat layer. A template comes from a downloaded
//! file, so rendering is sandboxed by minijinja and bounded by fuel.

use serde::{Deserialize, Serialize};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};

use crate::error::{EngineError, Result};

/// The Llama 3 Instruct format, used only when a model ships no template.
pub const LLAMA3_FALLBACK: &str = "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// Upper bound on template instructions per render: generous for any real
/// template and conversation, but stops a hostile `{% for %}` that never ends.
const FUEL: u64 = 50_000_000;

/// One message of a conversation, as chat templates expect it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool` or `ipython`.
    pub role: String,
    /// The text.
    pub content: String,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }
}

/// A tool call in the OpenAI / Hugging Face shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The call.
    pub function: FunctionCall,
}

/// The function a tool call invokes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON object.
    pub arguments: serde_json::Value,
}

fn function_type() -> String {
    "function".into()
}

/// What a template is rendered with.
#[derive(Debug, Clone, Default)]
pub struct TemplateInput<'a> {
    /// The conversation so far.
    pub messages: &'a [Message],
    /// Tool definitions (JSON schema objects), if any.
    pub tools: Option<&'a [serde_json::Value]>,
    /// Whether to open an assistant turn at the end.
    pub add_generation_prompt: bool,
    /// `date_string` for Llama 3.1+ templates (e.g. `"26 Jul 2024"`);
    /// today's date when `None`.
    pub date_string: Option<String>,
    /// Further template variables (`builtin_tools`, `tools_in_user_message`, ...).
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates
    /// reference as variables.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::Template(describe(&e)))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The built-in Llama 3 template (for models without one).
    pub fn llama3_fallback() -> Result<Self> {
        Self::new(LLAMA3_FALLBACK, "<|begin_of_text|>", "<|eot_id|>")
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation to the prompt text the model sees.
    pub fn render(&self, input: &TemplateInput<'_>) -> Result<String> {
        let date = input
            .date_string
            .clone()
            .unwrap_or_else(|| chrono::Local::now().format("%d %b %Y").to_string());
        let mut ctx = serde_json::Map::new();
        if let Some(extra) = input.extra {
            ctx.extend(extra.clone());
        }
        let mut messages = serde_json::to_value(input.messages)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        if self.takes_content_parts() {
            split_image_parts(&mut messages);
        }
        ctx.insert("messages".into(), messages);
        let tools = input.tools.map(|t| serde_json::Value::Array(t.to_vec()));
        ctx.insert("tools".into(), tools.unwrap_or(serde_json::Value::Null));
        ctx.insert(
            "add_generation_prompt".into(),
            input.add_generation_prompt.into(),
        );
        ctx.insert("date_string".into(), date.into());
        self.render_raw(&ctx)
    }

    /// Whether the template reads message content as a list of typed parts
    /// (`{"type": "image"}`, `{"type": "text", ...}`), as Llama 3.2 Vision's
    /// does: it decides from them whether the conversation has images (and
    /// then leaves out its default system prompt).
    fn takes_content_parts(&self) -> bool {
        let s = &self.source;
        (s.contains("['type']") || s.contains(".type") || s.contains("[\"type\"]"))
            && s.contains("image")
    }

    /// Renders with arbitrary template variables (messages with content that
    /// is not a string, extra flags, ...). `bos_token` and `eos_token` are
    /// added unless `vars` sets them.
    pub fn render_raw(&self, vars: &serde_json::Map<String, serde_json::Value>) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(describe(&e)))?;
        let mut vars = vars.clone();
        vars.entry("bos_token")
            .or_insert_with(|| self.bos_token.clone().into());
        vars.entry("eos_token")
            .or_insert_with(|| self.eos_token.clone().into());
        tmpl.render(Value::from_serialize(&vars))
            .map_err(|e| EngineError::Template(describe(&e)))
    }
}

/// Rewrites message content holding `<|image|>` markers into typed parts
/// (`[{"type": "image"}, {"type": "text", "text": ...}]`), the form vision
/// chat templates expect. Other messages keep their string content.
fn split_image_parts(messages: &mut serde_json::Value) {
    const IMAGE: &str = "<|image|>";
    let Some(list) = messages.as_array_mut() else {
        return;
    };
    for m in list {
        let Some(text) = m
            .get("content")
            .and_then(|c| c.as_str())
            .filter(|t| t.contains(IMAGE))
        else {
            continue;
        };
        let mut parts = Vec::new();
        for (i, piece) in text.split(IMAGE).enumerate() {
            if i > 0 {
                parts.push(serde_json::json!({ "type": "image" }));
            }
            if !piece.is_empty() {
                parts.push(serde_json::json!({ "type": "text", "text": piece }));
            }
        }
        m["content"] = serde_json::Value::Array(parts);
    }
}

/// The error with its cause chain (minijinja nests the interesting part).
fn describe(e: &JinjaError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> std::result::Result<String, JinjaError> {
    use chrono::format::{Item, StrftimeItems};
    // chrono panics when formatting with an invalid specifier: check first.
    if StrftimeItems::new(&format).any(|i| matches!(i, Item::Error)) {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format `{format}`"),
        ));
    }
    Ok(chrono::Local::now().format(&format).to_string())
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), JinjaError> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => out.push_str(&json_string(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(item, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&json_string(&key.to_string()));
                out.push_str(": ");
                write_json(&v.get_item(key)?, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => out.push_str(&json_string(&v.to_string())),
    }
    Ok(())
}

/// A JSON string literal with Python's escaping under `ensure_ascii=False`
/// (which is also serde_json's).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Python's `repr(float)` for the common cases.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, messages: &[Message]) -> Result<String> {
        ChatTemplate::new(src, "<s>", "</s>")?.render(&TemplateInput {
            messages,
            add_generation_prompt: true,
            date_string: Some("26 Jul 2024".into()),
            ..Default::default()
        })
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let m = [Message::new("user", "x")];
        let src = r#"{{ {"a": 1, "b": [1.5, "é<>&", none, true], "c": {}} | tojson }}|{{ {"k": [1, 2]} | tojson(indent=2) }}"#;
        let out = render(src, &m).expect("renders");
        assert_eq!(
            out,
            "{\"a\": 1, \"b\": [1.5, \"é<>&\", null, true], \"c\": {}}|{\n  \"k\": [\n    1,\n    2\n  ]\n}"
        );
    }

    #[test]
    fn fallback_renders_llama3_format() {
        let t = ChatTemplate::llama3_fallback().expect("compiles");
        let out = t
            .render(&TemplateInput {
                messages: &[
                    Message::new("system", "Be brief."),
                    Message::new("user", " Hi "),
                ],
                add_generation_prompt: true,
                ..Default::default()
            })
            .expect("renders");
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let err = render(
            "{{ raise_exception('only user and assistant roles') }}",
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("only user and assistant roles"),
            "{err}"
        );
    }

    #[test]
    fn hostile_templates_fail_cleanly() {
        assert!(render("{% for", &[]).is_err());
        assert!(render("{{ strftime_now('%Q%') }}", &[]).is_err());
        // An effectively endless loop runs out of fuel instead of hanging.
        let err = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &[],
        );
        assert!(err.is_err());
    }

    /// Llama 3.2 Vision's template (abridged): it looks for image parts to
    /// decide whether to add its system prompt, so images must reach it as
    /// parts, not as `<|image|>` text.
    #[test]
    fn images_reach_vision_templates_as_content_parts() {
        let src = concat!(
            "{%- set ns = namespace(has_images=false) %}",
            "{%- for m in messages %}{%- for c in m['content'] %}{%- if c['type'] == 'image' %}{%- set ns.has_images = true %}{%- endif %}{%- endfor %}{%- endfor %}",
            "{%- if not ns.has_images %}[system]{%- endif %}",
            "{%- for m in messages %}{%- if m['content'] is string %}{{ m['content'] }}{%- else %}",
            "{%- for c in m['content'] %}{%- if c['type'] == 'image' %}<|image|>{%- else %}{{ c['text'] }}{%- endif %}{%- endfor %}",
            "{%- endif %}{%- endfor %}"
        );
        let with_image =
            render(src, &[Message::new("user", "<|image|>What is this?")]).expect("ok");
        assert_eq!(with_image, "<|image|>What is this?");
        let text_only = render(src, &[Message::new("user", "Hi")]).expect("ok");
        assert_eq!(text_only, "[system]Hi");
        // Templates without content parts keep the marker as text.
        let plain = render(
            "{{ messages[0].content }}",
            &[Message::new("user", "<|image|>x")],
        )
        .expect("ok");
        assert_eq!(plain, "<|image|>x");
    }

    #[test]
    fn python_string_methods_work() {
        let out = render(
            "{{ messages[0].content.strip().upper() }}",
            &[Message::new("user", "  hi ")],
        )
        .expect("ok");
        assert_eq!(out, "HI");
    }
}
