#!/usr/bin/env bash
# Regenerate the llama.cpp reference fixtures. NOT part of CI.
#
#   tests/fixtures/smollm2/llamacpp.json
#       greedy generation (40 tokens max, stop at EOG, 2 threads) with the
#       SmolLM2 Q4_1 GGUF for every prompt in tests/fixtures/smollm2/prompts.json.
#       Each prompt is one user message rendered with the GGUF's own chat
#       template (tokenizer.chat_template, add_generation_prompt=True) and fed as
#       raw text with special tokens parsed; BOS only if the GGUF asks for it.
#   tests/fixtures/tokenizer/expected_llamacpp.json
#       llama.cpp token ids for every text in tests/fixtures/tokenizer/corpus.json
#       (no BOS, special tokens parsed) with the SmolLM2 GGUF and with the
#       ggml-vocab-llama-bpe.gguf vocabulary shipped in llama.cpp's models/.
#   tests/fixtures/smollm2/llamacpp_logits.json
#   tests/fixtures/tiny-llama3/llamacpp_logits.safetensors
#       logits references, made at the end by scripts/references/llamacpp_logits.sh
#       (see there).
#
# Uses bench/build-llama-cpp.sh (pinned llama.cpp, cached build) and
# scripts/fetch-assets.sh (the GGUF). Generated ids come from
# scripts/references/llamacpp_greedy.cpp, a copy of llama.cpp's llama-simple
# that prints ids; its text is cross-checked against llama-completion.
#
#   LUMEN_REFS_PYTHON   python with numpy + jinja2 (default: a venv in the
#                       llama.cpp cache folder, created on first use)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$("$REPO/bench/build-llama-cpp.sh" | tail -n1)"
BUILD="$(dirname "$BIN")"
ROOT="$(dirname "$BUILD")"
SRC="$ROOT/src"
ASSETS="$("$REPO/scripts/fetch-assets.sh" | tail -n1)"

# --- the greedy helper ----------------------------------------------------------
GREEDY="$BUILD/lumen/llamacpp_greedy"
GREEDY_SRC="$REPO/scripts/references/llamacpp_greedy.cpp"
if [ ! -x "$GREEDY" ] || [ "$GREEDY_SRC" -nt "$GREEDY" ] || [ "$BUILD/../build.stamp" -nt "$GREEDY" ]; then
    mkdir -p "$BUILD/lumen"
    libs=(
        "$(find "$BUILD" -name libllama.a | head -n1)"
        "$(find "$BUILD" -name libggml.a | head -n1)"
        "$(find "$BUILD" -name libggml-cpu.a | head -n1)"
        "$(find "$BUILD" -name libggml-base.a | head -n1)"
    )
    c++ -std=c++17 -O2 -I"$SRC/include" -I"$SRC/ggml/include" "$GREEDY_SRC" \
        -Wl,--start-group "${libs[@]}" -Wl,--end-group -fopenmp -lpthread -ldl -lm -o "$GREEDY"
fi

# --- python -----------------------------------------------------------------------
PY="${LUMEN_REFS_PYTHON:-}"
if [ -z "$PY" ]; then
    PY="$ROOT/venv/bin/python"
    if ! "$PY" -c 'import numpy, jinja2' 2>/dev/null; then
        python3 -m venv "$ROOT/venv"
        "$ROOT/venv/bin/pip" install -q --disable-pip-version-check numpy jinja2 >&2
    fi
fi

export LCPP_BIN="$BIN" LCPP_SRC="$SRC" LCPP_GREEDY="$GREEDY" LCPP_ASSETS="$ASSETS" LCPP_REPO="$REPO"
export PYTHONPATH="$SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import hashlib, json, os, re, subprocess, sys, tempfile

import jinja2
from gguf import GGUFReader

BIN, SRC, GREEDY = os.environ["LCPP_BIN"], os.environ["LCPP_SRC"], os.environ["LCPP_GREEDY"]
ASSETS, REPO = os.environ["LCPP_ASSETS"], os.environ["LCPP_REPO"]
N_PREDICT, THREADS = 40, 2
MODEL_REL = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = os.path.join(ASSETS, MODEL_REL)
VOCAB_BPE = os.path.join(SRC, "models", "ggml-vocab-llama-bpe.gguf")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

def changelog_commit():
    # llama-cpp-python's CHANGELOG is not in the vendored tree; the commit is pinned in the build script
    text = open(os.path.join(REPO, "bench", "build-llama-cpp.sh")).read()
    py = re.search(r"^LCP_PY_VERSION=(\S+)", text, re.M).group(1)
    commit = re.search(r"^LLAMA_CPP_COMMIT=(\S+)", text, re.M).group(1)
    return f"ggml-org/llama.cpp@{commit} (vendored in llama-cpp-python=={py})"

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()

def tmpfile(text):
    f = tempfile.NamedTemporaryFile("wb", delete=False, suffix=".txt")
    f.write(text.encode("utf-8"))
    f.close()
    return f.name

def tokenize(model, text, no_bos=True):
    """llama-tokenize on the exact bytes of text: special tokens parsed (its default), no escapes."""
    path = tmpfile(text)
    try:
        cmd = [os.path.join(BIN, "llama-tokenize"), "-m", model, "-f", path, "--no-escape", "--ids", "--log-disable"]
        if no_bos:
            cmd.append("--no-bos")
        out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    finally:
        os.unlink(path)
    lines = [l for l in out.splitlines() if l.startswith("[")]
    assert len(lines) == 1, out
    return json.loads(lines[0])

def greedy(model, text):
    path = tmpfile(text)
    try:
        out = subprocess.run([GREEDY, model, str(N_PREDICT), str(THREADS), path],
                             check=True, capture_output=True).stdout.decode()
    finally:
        os.unlink(path)
    res = {}
    for line in out.splitlines():
        key, _, val = line.partition(" ")
        res[key] = val
    ids = lambda s: [int(x) for x in s.split()]
    return {
        "add_bos": res["add_bos"] == "1",
        "prompt_ids": ids(res["prompt_ids"]),
        "generated_ids": ids(res["generated_ids"]),
        "generated_bytes": bytes.fromhex(res["generated_hex"]),
        "stop": res["stop"],
    }

def completion_text(model, text):
    """Cross-check with the stock llama-completion (raw prompt, greedy)."""
    out = subprocess.run(
        [os.path.join(BIN, "llama-completion"), "-m", model, "-p", text, "--no-escape", "-no-cnv",
         "--no-display-prompt", "--temp", "0", "-n", str(N_PREDICT), "-t", str(THREADS), "-tb", str(THREADS),
         "-c", "512", "--seed", "0", "--no-warmup"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL).stdout
    text = out.decode("utf-8", errors="replace").rstrip("\n")
    return text[: -len(" [end of text]")] if text.endswith(" [end of text]") else text

def dump(obj, path):
    # 1-space indent like the other fixtures, but integer lists on one line
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s*\]", "[]", text)
    text = re.sub(r"\[(?:\s*-?\d+,)*\s*-?\d+\s*\]",
                  lambda m: "[" + ", ".join(re.findall(r"-?\d+", m.group(0))) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.relpath(path, REPO)}", file=sys.stderr)

# --- SmolLM2 greedy generation -------------------------------------------------
reader = GGUFReader(MODEL)
template = field(reader, "tokenizer.chat_template")
add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token"))
env = jinja2.Environment(keep_trailing_newline=True)
tmpl = env.from_string(template)

prompts = json.load(open(os.path.join(REPO, "tests/fixtures/smollm2/prompts.json")))["prompts"]
cases, mismatches = [], []
for prompt in prompts:
    rendered = tmpl.render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)
    expected = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert rendered == expected, (rendered, expected)
    prompt_ids = tokenize(MODEL, rendered, no_bos=False)  # BOS as the GGUF says
    g = greedy(MODEL, rendered)
    assert g["add_bos"] == add_bos
    assert g["prompt_ids"] == prompt_ids, (g["prompt_ids"], prompt_ids)
    text = g["generated_bytes"].decode("utf-8", errors="replace")
    ref = completion_text(MODEL, rendered)
    if ref.rstrip("\n") != text.rstrip("\n"):
        mismatches.append((prompt, text, ref))
    cases.append({
        "prompt": prompt,
        "rendered": rendered,
        "prompt_ids": prompt_ids,
        "generated_text": text,
        "generated_ids": g["generated_ids"],
        "stop": g["stop"],
    })
    print(f"{prompt!r} -> {text!r} ({g['stop']})", file=sys.stderr)

for prompt, text, ref in mismatches:
    print(f"WARNING: llama-completion differs for {prompt!r}: {ref!r} vs {text!r}", file=sys.stderr)

dump({
    "description": "Greedy generation with llama.cpp (CPU, 2 threads, temperature 0, at most 40 new tokens, "
                   "stop at an end-of-generation token, which is not recorded). Each prompt is one user message "
                   "rendered with the GGUF's tokenizer.chat_template and add_generation_prompt=True, tokenized "
                   "with special tokens parsed; the GGUF has add_bos_token=%s, so no BOS is added. "
                   "generated_ids are the sampled ids (not a re-tokenization of generated_text); stop is 'eog' or "
                   "'length'. Regenerate with scripts/references/llamacpp_refs.sh." % str(add_bos).lower(),
    "llama_cpp": changelog_commit(),
    "model": MODEL_REL,
    "model_sha256": sha256(MODEL),
    "add_bos": add_bos,
    "max_new_tokens": N_PREDICT,
    "threads": THREADS,
    "cases": cases,
}, os.path.join(REPO, "tests/fixtures/smollm2/llamacpp.json"))

# --- tokenizer corpus ------------------------------------------------------------
texts = json.load(open(os.path.join(REPO, "tests/fixtures/tokenizer/corpus.json")))["texts"]
out = {
    "description": "Token ids from llama.cpp's llama-tokenize (--no-bos, special tokens parsed, --no-escape, "
                   "input read verbatim from a file) for each text of corpus.json, in order. "
                   "smollm2-gguf: " + MODEL_REL + "; ggml-vocab-llama-bpe: models/ggml-vocab-llama-bpe.gguf "
                   "from the same llama.cpp (Llama 3 BPE vocabulary). Regenerate with "
                   "scripts/references/llamacpp_refs.sh.",
    "llama_cpp": changelog_commit(),
    "vocab_sha256": {"smollm2-gguf": sha256(MODEL)},
}
out["smollm2-gguf"] = [tokenize(MODEL, t) for t in texts]
if os.path.exists(VOCAB_BPE):
    out["vocab_sha256"]["ggml-vocab-llama-bpe"] = sha256(VOCAB_BPE)
    out["ggml-vocab-llama-bpe"] = [tokenize(VOCAB_BPE, t) for t in texts]
dump(out, os.path.join(REPO, "tests/fixtures/tokenizer/expected_llamacpp.json"))
EOF

# --- logits references (tests/fixtures/*/llamacpp_logits.*) ----------------------
LUMEN_REFS_PYTHON="$PY" "$REPO/scripts/references/llamacpp_logits.sh"
