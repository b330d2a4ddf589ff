"""Tokenizer parity references: tests/fixtures/tokenizer/expected.json.

Each corpus text is encoded without adding special tokens (no BOS), but special-token
text inside the string is recognised (the tokenizers default).
"""
from __future__ import annotations

import json

from common import (FIXTURES, LLAMA31_TOK_DIR, LLAMA32V_TOK_DIR, SMOLLM2_DIR, SMOLLM2_GGUF,
                    TINY_DIR, write_json)

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def from_json(path):
    t = Tokenizer.from_file(str(path))
    return (lambda s: t.encode(s, add_special_tokens=False).ids,
            lambda ids: t.decode(ids, skip_special_tokens=False))


def from_gguf(d, name):
    t = AutoTokenizer.from_pretrained(d, gguf_file=name)
    print(f"{name}: {type(t).__name__}, len {len(t)}, special tokens {t.all_special_tokens}, "
          f"bos={t.bos_token!r} eos={t.eos_token!r} unk={t.unk_token!r} pad={t.pad_token!r}")
    return (lambda s: t(s, add_special_tokens=False).input_ids,
            lambda ids: t.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def main() -> None:
    texts = json.loads((FIXTURES / "tokenizer" / "corpus.json").read_text())["texts"]
    toks = {
        "llama32-vision": from_json(LLAMA32V_TOK_DIR / "tokenizer.json"),
        "llama31": from_json(LLAMA31_TOK_DIR / "tokenizer.json"),
        "smollm2-gguf": from_gguf(SMOLLM2_DIR, SMOLLM2_GGUF),
        "tiny-llama3-gguf": from_gguf(TINY_DIR, "tiny-llama3-f32.gguf"),
    }
    out, roundtrip = {}, {}
    for name, (enc, dec) in toks.items():
        out[name] = [enc(s) for s in texts]
        bad = [i for i, (s, ids) in enumerate(zip(texts, out[name])) if dec(ids) != s]
        roundtrip[name] = bad
        print(f"{name}: decode(encode(text)) != text for text indices {bad}")
        for i in bad:
            print(f"    [{i}] {texts[i]!r} -> {dec(out[name][i])!r}")
    for a, b in (("llama31", "llama32-vision"), ("llama31", "tiny-llama3-gguf")):
        diff = [i for i in range(len(texts)) if out[a][i] != out[b][i]]
        print(f"{a} vs {b}: differing texts {diff}")
        for i in diff:
            print(f"    [{i}] {texts[i]!r}: {out[a][i]} vs {out[b][i]}")
    for i, s in enumerate(texts):
        if "<|" in s:
            print(f"  [{i}] {s!r}: " + "; ".join(f"{n}={out[n][i]}" for n in out))
    write_json(FIXTURES / "tokenizer" / "expected.json", out, indent=None)


if __name__ == "__main__":
    main()
