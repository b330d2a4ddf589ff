#!/usr/bin/env bash
# Regenerate the llama.cpp LOGITS reference fixtures. NOT part of CI.
# (Also run at the end of scripts/references/llamacpp_refs.sh.)
#
# Both engines quantize the activations to 8 bits in quantized matmuls, so these
# are the references for Lumen's quantized-matmul logits on the same GGUF files
# (the transformers references use dequantized f32 weights instead).
#
#   tests/fixtures/smollm2/llamacpp_logits.json
#       For each case of tests/fixtures/smollm2/reference.json (transformers
#       greedy run), prompt_ids + generated_ids are fed in one batch (teacher
#       forcing along the transformers trajectory) through the SmolLM2 Q4_1 GGUF.
#       steps[i] is the position predicting generated_ids[i]
#       (len(prompt_ids) - 1 + i): `ids` = the reference's top5 ids at that step,
#       `logits` = llama.cpp's logits of those ids, `top5` = llama.cpp's own
#       top 5 [id, logit]. Logits rounded to 5 decimals.
#   tests/fixtures/tiny-llama3/llamacpp_logits.safetensors
#       input_ids i64[40] and positions i64[6] copied from reference.safetensors;
#       logits_f32 / logits_q8_0 f32[6,128256]: llama.cpp logits at those
#       positions with tiny-llama3-f32.gguf / tiny-llama3-q8_0.gguf.
#
# llama.cpp settings (scripts/references/llamacpp_logits.cpp): CPU only,
# 2 threads, one batch with logits for every position, KV cache f32 (default
# f16), flash attention disabled (default auto), no BOS added to the given ids.
#
#   LUMEN_REFS_PYTHON   python with numpy (default: the venv in the llama.cpp
#                       cache folder that llamacpp_refs.sh creates)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$("$REPO/bench/build-llama-cpp.sh" | tail -n1)"
BUILD="$(dirname "$BIN")"
ROOT="$(dirname "$BUILD")"
SRC="$ROOT/src"
ASSETS="$("$REPO/scripts/fetch-assets.sh" | tail -n1)"

# --- the logits helper ----------------------------------------------------------
LOGITS="$BUILD/lumen/llamacpp_logits"
LOGITS_SRC="$REPO/scripts/references/llamacpp_logits.cpp"
if [ ! -x "$LOGITS" ] || [ "$LOGITS_SRC" -nt "$LOGITS" ] || [ "$BUILD/../build.stamp" -nt "$LOGITS" ]; then
    mkdir -p "$BUILD/lumen"
    libs=(
        "$(find "$BUILD" -name libllama.a | head -n1)"
        "$(find "$BUILD" -name libggml.a | head -n1)"
        "$(find "$BUILD" -name libggml-cpu.a | head -n1)"
        "$(find "$BUILD" -name libggml-base.a | head -n1)"
    )
    c++ -std=c++17 -O2 -I"$SRC/include" -I"$SRC/ggml/include" "$LOGITS_SRC" \
        -Wl,--start-group "${libs[@]}" -Wl,--end-group -fopenmp -lpthread -ldl -lm -o "$LOGITS"
fi

# --- python -----------------------------------------------------------------------
PY="${LUMEN_REFS_PYTHON:-}"
if [ -z "$PY" ]; then
    PY="$ROOT/venv/bin/python"
    if ! "$PY" -c 'import numpy' 2>/dev/null; then
        python3 -m venv "$ROOT/venv"
        "$ROOT/venv/bin/pip" install -q --disable-pip-version-check numpy jinja2 >&2
    fi
fi

export LCPP_LOGITS="$LOGITS" LCPP_ASSETS="$ASSETS" LCPP_REPO="$REPO"
"$PY" - <<'EOF'
import hashlib, json, os, re, subprocess, sys

import numpy as np

LOGITS, ASSETS, REPO = os.environ["LCPP_LOGITS"], os.environ["LCPP_ASSETS"], os.environ["LCPP_REPO"]
THREADS = 2
SMOL_REL = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = os.path.join(REPO, "tests/fixtures/tiny-llama3")
SETTINGS = "CPU, 2 threads, one batch with logits for every position, f32 KV cache, flash attention off"

def llama_cpp_version():
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

def run_logits(model, ids, positions):
    """{position: f32[n_vocab]} from llamacpp_logits."""
    out = subprocess.run([LOGITS, model, str(THREADS), ",".join(map(str, ids)), ",".join(map(str, positions))],
                         check=True, capture_output=True).stdout.decode()
    rows = {}
    for line in out.splitlines():
        pos, _, rest = line.partition(" ")
        rows[int(pos)] = np.array(rest.split(), dtype=np.float32)
    assert sorted(rows) == sorted(positions), (sorted(rows), positions)
    return rows

# minimal safetensors I/O (numpy only): 8-byte header size, JSON header, raw little-endian data
DTYPES = {"F32": np.float32, "I64": np.int64}

def st_read(path):
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    return {k: np.frombuffer(data[base + v["data_offsets"][0]: base + v["data_offsets"][1]],
                             dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}

def st_write(path, tensors, info):
    header, blobs, offset = {"__metadata__": {"info": info}}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype(v): k for k, v in DTYPES.items()}[arr.dtype]
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    print(f"wrote {os.path.relpath(path, REPO)}", file=sys.stderr)

def dump(obj, path):
    # 1-space indent like the other fixtures, lists of numbers (and lists of such lists) on one line
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    num = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    text = re.sub(r"\[(?:\s*%s,)*\s*%s\s*\]" % (num, num),
                  lambda m: "[" + ", ".join(re.findall(num, m.group(0))) + "]", text)
    text = re.sub(r"\[(?:\s*\[[^\[\]\n]*\],)*\s*\[[^\[\]\n]*\]\s*\]",
                  lambda m: "[" + ", ".join(re.findall(r"\[[^\[\]\n]*\]", m.group(0)[1:])) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.relpath(path, REPO)}", file=sys.stderr)

def r5(x):
    return round(float(x), 5)

# --- SmolLM2: teacher forcing along the transformers trajectory ------------------
model = os.path.join(ASSETS, SMOL_REL)
ref = json.load(open(os.path.join(REPO, "tests/fixtures/smollm2/reference.json")))
cases = []
for case in ref["cases"]:
    prompt_ids, generated = case["prompt_ids"], case["generated_ids"]
    assert len(case["steps"]) == len(generated)
    positions = [len(prompt_ids) - 1 + i for i in range(len(generated))]
    rows = run_logits(model, prompt_ids + generated, positions)
    steps = []
    for pos, step in zip(positions, case["steps"]):
        row = rows[pos]
        ids = [int(i) for i, _ in step["top5"]]
        top = np.argsort(-row, kind="stable")[:5]
        steps.append({
            "ids": ids,
            "logits": [r5(row[i]) for i in ids],
            "top5": [[int(i), r5(row[i])] for i in top],
        })
    cases.append({"prompt": case["prompt"], "steps": steps})
    print(f"{case['prompt']!r}: {len(steps)} steps", file=sys.stderr)

dump({
    "description": "llama.cpp logits along the transformers greedy trajectories of reference.json (teacher "
                   "forcing): prompt_ids + generated_ids fed in one batch, no BOS added. steps[i] is the "
                   "position predicting generated_ids[i]: ids = reference top5 ids at that step, logits = "
                   "llama.cpp's logits of those ids, top5 = llama.cpp's own top 5 [id, logit]. Rounded to "
                   "5 decimals. " + SETTINGS + ". Regenerate with scripts/references/llamacpp_logits.sh.",
    "llama_cpp": llama_cpp_version(),
    "model": SMOL_REL,
    "model_sha256": sha256(model),
    "cases": cases,
}, os.path.join(REPO, "tests/fixtures/smollm2/llamacpp_logits.json"))

# --- tiny-llama3 -----------------------------------------------------------------
tref = st_read(os.path.join(TINY, "reference.safetensors"))
ids = [int(i) for i in tref["input_ids"]]
positions = [int(p) for p in tref["positions"]]
out = {"input_ids": tref["input_ids"].astype(np.int64), "positions": tref["positions"].astype(np.int64)}
shas = {}
for kind in ("f32", "q8_0"):
    gguf = os.path.join(TINY, f"tiny-llama3-{kind}.gguf")
    rows = run_logits(gguf, ids, positions)
    out[f"logits_{kind}"] = np.stack([rows[p] for p in positions]).astype(np.float32)
    shas[os.path.basename(gguf)] = sha256(gguf)
st_write(os.path.join(TINY, "llamacpp_logits.safetensors"), out, json.dumps({
    "llama_cpp": llama_cpp_version(),
    "settings": SETTINGS + ", no BOS added (input_ids already start with 128000)",
    "gguf_sha256": shas,
}, sort_keys=True))
EOF
