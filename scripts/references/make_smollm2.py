"""Greedy generation references for the real SmolLM2-135M-Instruct Q4_1 GGUF.

transformers dequantizes the GGUF to float32; the chat template is the GGUF's own.
Writes tests/fixtures/smollm2/reference.json.
"""
from __future__ import annotations

import json

from common import FIXTURES, SMOLLM2_DIR, SMOLLM2_GGUF, seed_everything, write_json

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

MAX_NEW = 40
EOS = 2
TOPK = 5


def main() -> None:
    seed_everything(0)
    prompts = json.loads((FIXTURES / "smollm2" / "prompts.json").read_text())["prompts"]
    tok = AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        SMOLLM2_DIR, gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    assert tok.convert_tokens_to_ids("<|im_end|>") == EOS
    cases = []
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=EOS,
                output_logits=True, return_dict_in_generate=True)
        gen = out.sequences[0, len(ids):].tolist()
        steps = []
        for i, lg in enumerate(out.logits):
            lg = lg[0].float()
            v, ix = lg.topk(TOPK)
            assert ix[0].item() == gen[i], "greedy token is not the argmax"
            steps.append({
                "top5": [[int(a), round(float(b), 4)] for a, b in zip(ix, v)],
                "margin": round(float(v[0] - v[1]), 4),
            })
        text = tok.decode(gen, skip_special_tokens=False)
        cases.append({
            "prompt": p, "rendered": rendered, "prompt_ids": ids,
            "generated_ids": gen, "generated_text": text,
            "stopped_at_eos": bool(gen and gen[-1] == EOS), "steps": steps,
        })
        margins = [s["margin"] for s in steps]
        low = [(i, m) for i, m in enumerate(margins) if m < 0.5]
        print(f"{p!r}: {len(gen)} tokens, eos={cases[-1]['stopped_at_eos']}, min margin "
              f"{min(margins):.3f}, steps with margin<0.5: {low}\n    -> {text!r}")
    write_json(FIXTURES / "smollm2" / "reference.json", {
        "model": SMOLLM2_GGUF,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "notes": "GGUF dequantized to float32 by transformers; greedy; max_new_tokens "
                 f"{MAX_NEW}; stop at eos id {EOS} (<|im_end|>), which is included in generated_ids "
                 "when hit. prompt_ids = tokenizer(rendered, add_special_tokens=False). "
                 "steps[i].top5 = [id, logit] of the logits that produced generated_ids[i]; "
                 "margin = top1 - top2 logit.",
        "cases": cases,
    })


if __name__ == "__main__":
    main()
