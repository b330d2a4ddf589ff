"""Chat template references: tests/fixtures/templates/{*.jinja,cases.json}.

Rendered with transformers' own chat-template renderer (render_jinja_template: sandboxed
jinja2 with trim_blocks, lstrip_blocks, its tojson, raise_exception, strftime_now), i.e.
exactly what tokenizer.apply_chat_template(..., tokenize=False) does. date_string is always
passed explicitly so nothing depends on today's date.
"""
from __future__ import annotations

import copy
import json
import shutil

from common import FIXTURES, LLAMA31_TOK_DIR, LLAMACPP_SRC, write_json

import jinja2  # noqa: E402
import transformers  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

OUT = FIXTURES / "templates"
LLAMACPP_TEMPLATES = [
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
]
SIMPLE = "llama31-tokenizer-config.jinja"  # the llama31 tokenizer_config.json chat_template

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit"},
            },
            "required": ["city"],
        }}},
    {"type": "function", "function": {
        "name": "search",
        "description": "Search the web and return the top results.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for"}},
            "required": ["query"],
        }}},
]
SYS = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "  And of Germany?  \n"}  # content gets |trim'med
UW = {"role": "user", "content": "What's the weather like in Paris today?"}
CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {
    "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]}
TOOL_STR = {"role": "tool", "content": "{\"temperature\": 18, \"condition\": \"sunny\"}"}
IPY_MAP = {"role": "ipython", "content": {"temperature": 18, "condition": "sunny"}}
A_AFTER = {"role": "assistant", "content": "It is 18 °C and sunny in Paris."}
TWO_CALLS = {"role": "assistant", "tool_calls": [
    CALL["tool_calls"][0],
    {"type": "function", "function": {"name": "search", "arguments": {"query": "Paris events"}}}]}
BUILTIN_CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {
    "name": "brave_search", "arguments": {"query": "weather in Paris"}}}]}

BASE_CTX = {"bos_token": "<|begin_of_text|>", "date_string": "26 Jul 2024"}


def cases_for(template: str) -> list[dict]:
    full = template != SIMPLE  # the simple Llama 3 template knows nothing about tools
    c = []

    def add(name, messages, add_generation_prompt, tools=None, **extra):
        c.append({"name": name, "template": template, "messages": messages, "tools": tools,
                  "add_generation_prompt": add_generation_prompt,
                  "context": {**BASE_CTX, **extra}})

    add("single_user_gen", [U1], True)
    add("single_user_nogen", [U1], False)
    add("system_user_gen", [SYS, U1], True)
    add("multi_turn_gen", [U1, A1, U2], True)
    add("system_multi_turn_nogen", [SYS, U1, A1], False)
    add("custom_date_gen", [SYS, U1], True, date_string="01 Jan 2025")
    add("empty_messages_gen", [], True)
    if full:
        add("tools_in_user_message_gen", [UW], True, tools=TOOLS)
        add("tools_in_user_message_with_system_gen", [SYS, UW], True, tools=TOOLS)
        add("tools_in_system_gen", [SYS, UW], True, tools=TOOLS, tools_in_user_message=False)
        add("tool_call_then_tool_response_gen", [UW, CALL, TOOL_STR], True, tools=TOOLS)
        add("tool_call_then_ipython_mapping_response_nogen",
            [SYS, UW, CALL, IPY_MAP, A_AFTER], False, tools=TOOLS)
        add("tool_call_without_tools_gen", [UW, CALL, TOOL_STR], True)
        add("error_tools_without_user_message", [SYS], True, tools=TOOLS)
        add("error_two_tool_calls", [UW, TWO_CALLS], True, tools=TOOLS)
        add("builtin_tools_call_gen", [UW, BUILTIN_CALL,
                                       {"role": "ipython", "content": "Sunny, 18 degrees."}], True,
            builtin_tools=["brave_search", "wolfram_alpha", "code_interpreter"])
    return c


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in LLAMACPP_TEMPLATES:
        shutil.copy(LLAMACPP_SRC / "models" / "templates" / name, OUT / name)
    simple = json.loads((LLAMA31_TOK_DIR / "tokenizer_config.json").read_text())["chat_template"]
    (OUT / SIMPLE).write_text(simple, encoding="utf-8")

    cases = []
    for tmpl in LLAMACPP_TEMPLATES + [SIMPLE]:
        source = (OUT / tmpl).read_text(encoding="utf-8")
        for case in cases_for(tmpl):
            try:
                rendered, _ = render_jinja_template(
                    conversations=[copy.deepcopy(case["messages"])], tools=copy.deepcopy(case["tools"]),
                    chat_template=source, add_generation_prompt=case["add_generation_prompt"],
                    **copy.deepcopy(case["context"]))
                case["expected"] = rendered[0]
                status = f"{len(rendered[0])} chars"
            except jinja2.exceptions.TemplateError as e:
                case["expected_error"] = str(e)
                case["error_type"] = type(e).__name__  # TemplateError = raise_exception()
                status = f"ERROR {e}"
            print(f"{tmpl:42s} {case['name']:48s} {status}")
            cases.append(case)
    write_json(OUT / "cases.json", {
        "renderer": f"transformers {transformers.__version__} render_jinja_template "
                    f"(jinja2 {jinja2.__version__}, ImmutableSandboxedEnvironment, trim_blocks, "
                    "lstrip_blocks, tojson = json.dumps(ensure_ascii=False), raise_exception)",
        "notes": "Render with messages, tools (null = passed as None), add_generation_prompt and "
                 "every key of context as template variables. A case with expected_error raised in "
                 "jinja2: error_type TemplateError comes from the template's raise_exception(), "
                 "UndefinedError from indexing an empty messages list (message is jinja2's own).",
        "cases": cases,
    })
    for f in sorted(OUT.iterdir()):
        print(f"  {f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
