"""Shared paths and helpers for the transformers reference generators.

Everything loads from local files only: no Hugging Face Hub access.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

# Never touch the network through huggingface_hub / transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
ASSETS = Path(
    os.environ.get("LUMEN_ASSETS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lumen" / "assets"
)
# Unpacked llama-cpp-python sdist: its vendor/llama.cpp holds convert_hf_to_gguf.py,
# gguf-py and models/templates/. make_all.sh sets this.
LLAMACPP_VERSION = "0.3.36"
LLAMACPP_SRC = Path(
    os.environ.get("LUMEN_LLAMACPP_SRC")
    or Path.home() / ".cache" / "lumen" / "reference-tools" / f"llama_cpp_python-{LLAMACPP_VERSION}"
) / "vendor" / "llama.cpp"

SMOLLM2_DIR = ASSETS / "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA31_TOK_DIR = ASSETS / "llama31-tokenizer"
LLAMA32V_TOK_DIR = ASSETS / "llama32-vision-tokenizer"
TINY_DIR = FIXTURES / "tiny-llama3"


def seed_everything(seed: int = 0) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def write_json(path: Path, obj, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")
