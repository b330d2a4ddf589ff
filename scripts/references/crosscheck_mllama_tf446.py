"""Cross-check the mllama fixtures' semantics against transformers 4.46.3 (not part of make_all).

transformers 4.46 records the vision intermediate layers as layer INPUTS (like Meta's llama-models),
but, like 5.24, does not row-mask the cross-attention attention output. Expected: its vision output
== `vision_output`, its logits == `logits_hf446`, and with the row mask added == `logits`.

Setup (a separate target dir; 4.46 needs tokenizers < 0.21 and huggingface_hub < 1.0):
  /work/venv-ref/bin/pip install --no-deps --target /work/tf4 transformers==4.46.3 \\
      tokenizers==0.20.3 huggingface_hub==0.26.5
  PYTHONPATH=/work/tf4 /work/venv-ref/bin/python scripts/references/crosscheck_mllama_tf446.py
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import MllamaForConditionalGeneration  # noqa: E402
from transformers.models.mllama import modeling_mllama as mm  # noqa: E402

from common import FIXTURES  # noqa: E402

assert transformers.__version__.startswith("4.46"), transformers.__version__
torch.use_deterministic_algorithms(True)


class RowMaskedCrossAttnOutput:
    """Meta: multiply the cross-attention attention output by full_text_row_masked_out_mask."""

    def __enter__(self):
        self.orig = orig = mm.MllamaCrossAttentionDecoderLayer.forward

        def fwd(layer, *a, full_text_row_masked_out_mask=None, **k):
            ca = layer.cross_attn.forward

            def ca2(*x, **y):
                o = ca(*x, **y)
                return (full_text_row_masked_out_mask[:, 0] * o[0],) + tuple(o[1:])

            layer.cross_attn.forward = ca2
            try:
                return orig(layer, *a, full_text_row_masked_out_mask=full_text_row_masked_out_mask, **k)
            finally:
                del layer.cross_attn.forward

        mm.MllamaCrossAttentionDecoderLayer.forward = fwd

    def __exit__(self, *a):
        mm.MllamaCrossAttentionDecoderLayer.forward = self.orig


def main() -> None:
    worst = 0.0
    for name in ["tiny-f32", "tiny-b", "real-vocab-bf16"]:
        d = FIXTURES / "mllama" / name
        ref = load_file(d / "reference.safetensors")
        m = MllamaForConditionalGeneration.from_pretrained(d, torch_dtype=torch.float32,
                                                           attn_implementation="eager").eval()
        kw = dict(pixel_values=ref["pixel_values"], aspect_ratio_ids=ref["aspect_ratio_ids"],
                  aspect_ratio_mask=ref["aspect_ratio_mask"])
        run = lambda: m(input_ids=ref["input_ids"][None], cross_attention_mask=ref["cross_attention_mask"],  # noqa: E731
                        use_cache=False, **kw).logits[0]
        with torch.no_grad():
            lg = run()
            with RowMaskedCrossAttnOutput():
                lg_meta = run()
            vis = m.vision_model(**kw)[0]
            proj = m.multi_modal_projector(vis)
        if "positions" in ref:
            lg, lg_meta = lg[ref["positions"]], lg_meta[ref["positions"]]
        diff = lambda a, b: (a - b).abs().max().item()  # noqa: E731
        res = {"4.46+rowmask vs logits": diff(lg_meta, ref["logits"])}
        if "logits_hf446" in ref:
            res["4.46 vs logits_hf446"] = diff(lg, ref["logits_hf446"])
        if "vision_output" in ref:
            res["vision 4.46 vs vision_output"] = diff(vis, ref["vision_output"])
            res["projector 4.46 vs cross_attention_states"] = diff(proj, ref["cross_attention_states"])
        res["(4.46 vs logits_hf524)"] = diff(lg, ref["logits_hf524"])
        print(name, {k: f"{v:.3g}" for k, v in res.items()})
        worst = max([worst] + [v for k, v in res.items() if not k.startswith("(")])
    assert worst < 1e-4, worst
    print(f"OK: max |diff| {worst:.3g}")


if __name__ == "__main__":
    main()
