"""Llama 3.2 Vision ("mllama") references: tiny random checkpoints + image preprocessing.

Writes tests/fixtures/mllama/:
  <model>/config.json                  Meta / hub style (text_config: rope_theta + rope_scaling)
  <model>/config.rope_parameters.json  exactly what transformers 5.x save_pretrained writes
  <model>/preprocessor_config.json     MllamaImageProcessor settings (small tile size)
  <model>/model.safetensors | model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json
                                       (hub tensor names: language_model.*, vision_model.*,
                                       multi_modal_projector.*)
  <model>/reference.safetensors        inputs + logits (see README.md)
  preprocess/*.png|jpg                 synthetic input images (made here)
  preprocess/reference.safetensors     image-processor outputs for every image, 2 settings
  preprocess/cases.json                per-image metadata + cross-attention-mask cases

Image processor: transformers' PIL/NumPy backend `MllamaImageProcessorPil` (not the
torchvision one). Models are run in float32 on CPU with eager attention. The primary references
follow Meta's llama-models semantics (transformers 5.24 monkeypatched, see MetaSemantics); the
`*_hf524` tensors are unpatched transformers 5.24.
"""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

from common import ASSETS, FIXTURES, LLAMA32V_TOK_DIR, REPO, seed_everything, write_json

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (AutoTokenizer, GenerationConfig, MllamaConfig,  # noqa: E402
                          MllamaForConditionalGeneration, MllamaProcessor)
from transformers.models.mllama import modeling_mllama  # noqa: E402
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil  # noqa: E402
from transformers.models.mllama.processing_mllama import (  # noqa: E402
    convert_sparse_cross_attention_mask_to_dense, get_cross_attention_token_mask)

OUT = FIXTURES / "mllama"
PRE = OUT / "preprocess"
PHOTOS = ASSETS / "llama-models"  # dog.jpg, pasta.jpeg (real photos, referenced by name)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def preprocessor_config(tile: int) -> dict:
    # Key order / values of meta-llama/Llama-3.2-11B-Vision(-Instruct)/preprocessor_config.json,
    # with only "size" changed for the tiny models.
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "MllamaImageProcessor",
        "image_std": CLIP_STD,
        "max_image_tiles": 4,
        "resample": 2,  # PIL.Image.BILINEAR
        "rescale_factor": 0.00392156862745098,
        "size": {"height": tile, "width": tile},
    }


def image_processor(tile: int) -> MllamaImageProcessorPil:
    cfg = {k: v for k, v in preprocessor_config(tile).items() if k != "image_processor_type"}
    return MllamaImageProcessorPil(**cfg)


ROPE_SCALING = {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 32,
    "rope_type": "llama3",
}

# Model specs. Tiny vocab models: ids 0..vocab-1 are "text", image_token_index = vocab_size
# (as in the real model: vocab 128256, <|image|> = 128256; embed_tokens has vocab + 8 rows,
# lm_head has vocab rows).
SPECS = {
    "tiny-f32": dict(
        seed=102, dtype="float32", tile=56, images=["dog.jpg"],
        # 3 text tokens, <|image|>, 12 text tokens
        layout=[3, "img", 12],
        vision=dict(hidden_size=32, attention_heads=2, intermediate_size=64, num_hidden_layers=4,
                    num_global_layers=2, intermediate_layers_indices=[1, 3]),
        text=dict(vocab_size=512, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, num_hidden_layers=5, cross_attention_layers=[1, 3],
                  bos_token_id=500, eos_token_id=501, pad_token_id=502),
        n_generate=8, all_positions=True, vision_intermediates=True,
    ),
    "tiny-b": dict(
        seed=211, dtype="float32", tile=28, images=["pasta.jpeg", "wide_300x60.png"],
        # 2 text, <|image|>, 6 text, <|image|>, 8 text: each image attends until the next one
        layout=[2, "img", 6, "img", 8],
        vision=dict(hidden_size=40, attention_heads=4, intermediate_size=96, num_hidden_layers=5,
                    num_global_layers=3, intermediate_layers_indices=[0, 2, 4]),
        text=dict(vocab_size=384, hidden_size=48, num_attention_heads=4, num_key_value_heads=1,
                  intermediate_size=80, num_hidden_layers=4, cross_attention_layers=[1, 3],
                  bos_token_id=380, eos_token_id=381, pad_token_id=382),
        n_generate=8, all_positions=True, vision_intermediates=False,
    ),
    "real-vocab-bf16": dict(
        seed=303, dtype="bfloat16", tile=56, images=["dog.jpg"],
        prompt=("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>"
                "Describe this image in one word.<|eot_id|><|start_header_id|>assistant"
                "<|end_header_id|>\n\n"),
        vision=dict(hidden_size=24, attention_heads=2, intermediate_size=48, num_hidden_layers=3,
                    num_global_layers=1, intermediate_layers_indices=[0, 2]),
        text=dict(vocab_size=128256, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=48, num_hidden_layers=4, cross_attention_layers=[2],
                  bos_token_id=128000, eos_token_id=[128001, 128008, 128009], pad_token_id=128004),
        n_generate=8, all_positions=False, vision_intermediates=False,
        max_shard_size="5MB",
    ),
}

# Weight init (see build_model): gates +-U(0.5, 1.5); norms 1 + N(0, 0.1); biases N(0, 0.1);
# embeddings / class / positional / tile embeddings N(0, 1); linears N(0, c / sqrt(fan_in)) with
# c = 2 for text q/k (fairly sharp attention), 1 for vision q/k and everything else; lm_head N(0, 1).
# Seeds were picked (tiny-f32 from 101..106, tiny-b 201..204, real-vocab 301..303) as ones with
# greedy top1-top2 margins > 0.2 at every step (real vocab: margins are naturally small), first
# with transformers 5.24's semantics; after the switch to Meta's semantics (MetaSemantics) tiny-b's
# 203 fell to 0.19, so tiny-b moved to 211 (201..211: the first > 0.2 in both semantics).
QK_GAIN, LIN_GAIN, NORM_NOISE, BIAS_STD = 2.0, 1.0, 0.1, 0.1
VISION_QK_GAIN = 1.0  # with 2.0 a one-step pixel perturbation moved the logits by ~0.6
GATE_RE = re.compile(r"(^|\.)(gate|gate_attn|gate_ffn|cross_attn_attn_gate|cross_attn_mlp_gate)$")


def hf_config(spec: dict, rope_meta_style: bool = False) -> MllamaConfig:
    v = dict(spec["vision"])
    v.update(image_size=spec["tile"], patch_size=14, max_num_tiles=4,
             vision_output_dim=v["hidden_size"] * (1 + len(v["intermediate_layers_indices"])))
    t = dict(spec["text"])
    t.update(max_position_embeddings=1024, rms_norm_eps=1e-5,
             rope_parameters=dict(ROPE_SCALING, rope_theta=500000.0))
    cfg = MllamaConfig(vision_config=v, text_config=t, image_token_index=t["vocab_size"])
    cfg.architectures = ["MllamaForConditionalGeneration"]
    return cfg


def meta_config(spec: dict) -> dict:
    """config.json the way the hub's Llama-3.2-11B-Vision checkpoints spell it (trimmed)."""
    cfg = hf_config(spec)
    t, v = cfg.text_config, cfg.vision_config
    dt = spec["dtype"]
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "image_token_index": cfg.image_token_index,
        "model_type": "mllama",
        "text_config": {
            "bos_token_id": t.bos_token_id,
            "cross_attention_layers": list(t.cross_attention_layers),
            "dropout": 0,
            "eos_token_id": t.eos_token_id,
            "hidden_act": "silu",
            "hidden_size": t.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "model_type": "mllama_text_model",
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads,
            "pad_token_id": t.pad_token_id,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_scaling": dict(ROPE_SCALING),
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
            "torch_dtype": dt,
            "use_cache": True,
            "vocab_size": t.vocab_size,
        },
        "torch_dtype": dt,
        "transformers_version": transformers.__version__,
        "vision_config": {
            "attention_heads": v.attention_heads,
            "hidden_act": "gelu",
            "hidden_size": v.hidden_size,
            "image_size": v.image_size,
            "intermediate_layers_indices": list(v.intermediate_layers_indices),
            "intermediate_size": v.intermediate_size,
            "max_num_tiles": v.max_num_tiles,
            "model_type": "mllama_vision_model",
            "norm_eps": v.norm_eps,
            "num_channels": 3,
            "num_global_layers": v.num_global_layers,
            "num_hidden_layers": v.num_hidden_layers,
            "patch_size": v.patch_size,
            "supported_aspect_ratios": [list(a) for a in v.supported_aspect_ratios],
            "torch_dtype": dt,
            "vision_output_dim": v.vision_output_dim,
        },
    }


def build_model(spec: dict) -> MllamaForConditionalGeneration:
    model = MllamaForConditionalGeneration(hf_config(spec)).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(spec["seed"])
    n_gates = 0
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if GATE_RE.search(name):
                assert p.numel() == 1, name
                mag = 0.5 + torch.rand(p.shape, generator=gen)
                sign = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -1.0, 1.0)
                p.copy_(mag * sign)
                n_gates += 1
            elif "norm" in name and name.endswith(".weight") and p.ndim == 1:
                p.copy_(1.0 + NORM_NOISE * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1 or "embed" in name or name.endswith(("tile_embedding.weight", "embedding.weight")):
                # embed_tokens, class_embedding, gated_positional_embedding.embedding,
                # tile_embedding, pre/post_tile_positional_embedding.embedding
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                gain = LIN_GAIN
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    gain = VISION_QK_GAIN if "vision_model" in name else QK_GAIN
                p.copy_(gain / math.sqrt(fan_in) * torch.randn(p.shape, generator=gen))
    # lm_head: N(0, 1) rows like a tied embedding would be (logit std ~ sqrt(hidden))
    with torch.no_grad():
        g2 = torch.Generator().manual_seed(spec["seed"] + 1)
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=g2))
    n_expected = 2 * len(spec["text"]["cross_attention_layers"]) + 3 + 2 * spec["vision"]["num_global_layers"]
    assert n_gates == n_expected, (n_gates, n_expected)
    return model


# ---------------------------------------------------------------------------------------------
# Synthetic images for the preprocessing references
# ---------------------------------------------------------------------------------------------

def _gradient(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * (x / max(w - 1, 1))
    g = 255 * (y / max(h - 1, 1))
    b = 127.5 + 127.5 * np.sin(x / 7.0 + y / 5.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _save_png(img: Image.Image, path: Path) -> None:
    # no timestamps / text chunks: byte-identical reruns
    img.save(path, format="PNG", optimize=False, compress_level=9, pnginfo=PngImagePlugin.PngInfo())


def make_synthetic_images() -> dict[str, str]:
    """Writes the synthetic inputs; returns {file name: description}."""
    PRE.mkdir(parents=True, exist_ok=True)
    desc = {}
    _save_png(Image.fromarray(_gradient(300, 60, 1), "RGB"), PRE / "wide_300x60.png")
    desc["wide_300x60.png"] = "RGB 300x60 gradient + noise"
    _save_png(Image.fromarray(_gradient(50, 280, 2), "RGB"), PRE / "tall_50x280.png")
    desc["tall_50x280.png"] = "RGB 50x280 gradient + noise"
    _save_png(Image.fromarray(_gradient(10, 7, 3), "RGB"), PRE / "tiny_10x7.png")
    desc["tiny_10x7.png"] = "RGB 10x7 (upscaled by the processor)"
    rgba = np.concatenate([_gradient(120, 90, 4), np.zeros((90, 120, 1), np.uint8)], -1)
    yy, xx = np.mgrid[0:90, 0:120]
    rgba[..., 3] = np.where(xx < 40, 0, np.where(xx < 80, 128, 255))  # transparent | half | opaque
    rgba[(yy // 10) % 2 == 0, 3] = np.maximum(rgba[(yy // 10) % 2 == 0, 3], 64)
    _save_png(Image.fromarray(rgba, "RGBA"), PRE / "rgba_120x90.png")
    desc["rgba_120x90.png"] = "RGBA 120x90; alpha 0 / 128 / 255 in vertical thirds, >= 64 on even 10-row bands"
    gray = np.clip(np.round(_gradient(70, 130, 5).astype(np.float64).mean(-1)), 0, 255).astype(np.uint8)
    _save_png(Image.fromarray(gray, "L"), PRE / "gray_70x130.png")
    desc["gray_70x130.png"] = "mode L 70x130"
    g16 = (np.linspace(0, 65535, 64 * 40).reshape(40, 64)).astype(np.uint16)
    im16 = Image.fromarray(g16)  # mode I;16
    _save_png(im16, PRE / "gray16_64x40.png")
    desc["gray16_64x40.png"] = "16-bit grayscale PNG 64x40, horizontal+vertical ramp 0..65535"
    pal = Image.fromarray(_gradient(90, 90, 6), "RGB").quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal.info["transparency"] = 0  # palette index 0 is transparent
    _save_png(pal, PRE / "palette_90x90.png")
    desc["palette_90x90.png"] = "mode P 90x90, 16 colours, palette index 0 transparent (tRNS)"
    # JPEG with EXIF Orientation = 6 ("rotate 90 CW to display"); stored pixels are 160x100.
    base = Image.fromarray(_gradient(160, 100, 7), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(PRE / "exif_rot90_160x100.jpg", format="JPEG", quality=95, exif=exif.tobytes())
    desc["exif_rot90_160x100.jpg"] = "JPEG, stored 160x100, EXIF Orientation=6 (displayed 100x160)"
    return desc


def load_image(name: str) -> Image.Image:
    p = PHOTOS / name if (PHOTOS / name).exists() and not (PRE / name).exists() else PRE / name
    im = Image.open(p)
    im.load()
    return im


# ---------------------------------------------------------------------------------------------
# Model references
# ---------------------------------------------------------------------------------------------

def save_checkpoint(model, spec: dict, d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for p in d.iterdir():
        if p.name.startswith("model") or p.name.startswith("config"):
            p.unlink()
    dt = getattr(torch, spec["dtype"])
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        m = model.to(dt) if dt != torch.float32 else model
        kw = {"max_shard_size": spec["max_shard_size"]} if "max_shard_size" in spec else {}
        m.save_pretrained(td, safe_serialization=True, **kw)
        print(f"  save_pretrained wrote: {sorted(p.name for p in td.iterdir())}")
        shutil.copy(td / "config.json", d / "config.rope_parameters.json")
        for p in sorted(td.iterdir()):
            if p.name.startswith("model") and (p.suffix == ".safetensors" or p.name.endswith(".index.json")):
                shutil.copy(p, d / p.name)
    with open(d / "config.json", "w") as f:
        json.dump(meta_config(spec), f, indent=2)
        f.write("\n")
    write_json(d / "preprocessor_config.json", preprocessor_config(spec["tile"]), indent=2)


def load_checkpoint(d: Path, cfg_name: str) -> MllamaForConditionalGeneration:
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        shutil.copy(d / cfg_name, td / "config.json")
        for p in d.iterdir():
            if p.name.startswith("model"):
                shutil.copy(p, td / p.name)
        m = MllamaForConditionalGeneration.from_pretrained(td, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    return m


def build_inputs(spec: dict, tok) -> dict:
    ip = image_processor(spec["tile"])
    images = [load_image(n).copy() for n in spec["images"]]
    if "prompt" in spec:
        proc = MllamaProcessor(image_processor=ip, tokenizer=tok)
        enc = proc(images=[images], text=spec["prompt"], add_special_tokens=False, return_tensors="pt")
        ids = enc["input_ids"][0]
        pix, ar_ids, ar_mask, xmask = (enc["pixel_values"], enc["aspect_ratio_ids"],
                                       enc["aspect_ratio_mask"], enc["cross_attention_mask"])
    else:
        vocab = spec["text"]["vocab_size"]
        gen = torch.Generator().manual_seed(spec["seed"] + 7)
        ids = [spec["text"]["bos_token_id"]]
        for i, item in enumerate(spec["layout"]):  # counts of text tokens (the first includes BOS)
            if item == "img":
                ids.append(vocab)
            else:
                ids += torch.randint(0, vocab - 16, (item - (1 if i == 0 else 0),), generator=gen).tolist()
        ids = torch.tensor(ids, dtype=torch.int64)
        enc = ip(images=[images], return_tensors="pt")
        pix, ar_ids, ar_mask = enc["pixel_values"], enc["aspect_ratio_ids"], enc["aspect_ratio_mask"]
        sparse = [get_cross_attention_token_mask(ids.tolist(), vocab)]
        xmask = torch.from_numpy(convert_sparse_cross_attention_mask_to_dense(
            sparse, enc["num_tiles"], ip.max_image_tiles, len(ids)))
    return dict(input_ids=ids, pixel_values=pix.to(torch.float32), aspect_ratio_ids=ar_ids,
                aspect_ratio_mask=ar_mask, cross_attention_mask=xmask)


@torch.no_grad()
def forward(model, inp: dict, ids=None, pixels=True, pixel_values=None) -> torch.Tensor:
    ids = inp["input_ids"] if ids is None else ids
    kw = {}
    if pixels:
        kw = dict(pixel_values=inp["pixel_values"] if pixel_values is None else pixel_values,
                  aspect_ratio_ids=inp["aspect_ratio_ids"], aspect_ratio_mask=inp["aspect_ratio_mask"],
                  cross_attention_mask=inp["cross_attention_mask"])
    out = model(input_ids=ids[None], use_cache=False, **kw)
    return out.logits[0].to(torch.float32)


class MetaSemantics:
    """Context manager: make transformers 5.24's Mllama compute what Meta's reference code
    (llama-models 0.3.0, llama_models/llama3/multimodal/model.py, which the real checkpoints were
    trained with) computes. Two differences, each switchable:

    vision=True: vision intermediate layers = the INPUT of layer idx. Meta's
      `ImageTransformer.forward` (model.py:312-320) does `if idx in return_intermediate:
      out.append(x)` BEFORE `x = r(x, mask=mask)`; transformers 4.46 did the same
      (`MllamaVisionEncoder.forward` adds `hidden_states` to `encoder_states` before each layer,
      then the final output, so hidden_states[i] = input of layer i, and `MllamaVisionModel`
      picks `stack(hidden_states)[..., intermediate_layers_indices]`). transformers 5.24's
      `MllamaVisionEncoder.forward` records each layer's OUTPUT, so `output.hidden_states[i]` is
      the output of layer i: one layer later than Meta / 4.46. Patched: record inputs (+ the
      final output, as 4.46).

    xattn=True: rows with full_text_row_masked_out_mask = 0 (text before the first <|image|>)
      get no cross-attention output. Meta's `CrossAttention.forward` (model.py:928-929) does
      `output = output * full_text_row_masked_out_mask` after SDPA (before `wo`, which has no
      bias) and `CrossAttentionTransformerBlock.forward` (model.py:998) masks the FFN output too.
      transformers (4.46 `MllamaCrossAttentionDecoderLayer.forward` and 5.24) masks only the MLP
      output, so the attention output (uniform attention over all vision tokens: the row's
      additive mask is zeroed) leaks into the text before the image. Patched: multiply the
      `cross_attn` output by the row mask (o_proj has no bias, so before/after o_proj is the same).
    """

    def __init__(self, vision: bool = True, xattn: bool = True):
        self.vision, self.xattn = vision, xattn

    def __enter__(self):
        enc_cls = modeling_mllama.MllamaVisionEncoder
        dec_cls = modeling_mllama.MllamaCrossAttentionDecoderLayer
        self.orig_enc, self.orig_dec = enc_cls.forward, dec_cls.forward
        orig_dec = self.orig_dec

        def enc_fwd(enc, hidden_states, attention_mask=None):
            states = ()
            for layer in enc.layers:
                states = states + (hidden_states,)  # input of this layer (Meta / transformers 4.46)
                hidden_states = layer(hidden_states=hidden_states, attention_mask=attention_mask)
            states = states + (hidden_states,)
            return modeling_mllama.BaseModelOutput(last_hidden_state=hidden_states, hidden_states=states)

        def dec_fwd(layer, *args, full_text_row_masked_out_mask=None, **kw):
            # transformers' own forward, with layer.cross_attn's output multiplied by the row mask
            cross_attn = layer.cross_attn
            orig_ca = cross_attn.forward

            def ca_fwd(*a, **k):
                out, weights = orig_ca(*a, **k)
                if full_text_row_masked_out_mask is not None:
                    out = full_text_row_masked_out_mask[:, 0] * out  # [B, 1, S, 1] -> [B, S, 1]
                return out, weights

            cross_attn.forward = ca_fwd
            try:
                return orig_dec(layer, *args, full_text_row_masked_out_mask=full_text_row_masked_out_mask, **kw)
            finally:
                del cross_attn.forward

        if self.vision:
            enc_cls.forward = enc_fwd
        if self.xattn:
            dec_cls.forward = dec_fwd
        return self

    def __exit__(self, *a):
        modeling_mllama.MllamaVisionEncoder.forward = self.orig_enc
        modeling_mllama.MllamaCrossAttentionDecoderLayer.forward = self.orig_dec


@torch.no_grad()
def greedy(model, inp: dict, n: int) -> tuple[list[int], list[float]]:
    gc = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0, eos_token_id=None,
                          pad_token_id=0, bos_token_id=None, num_beams=1)
    model.generation_config = gc  # else the config's eos ids stop generation early
    out = model.generate(input_ids=inp["input_ids"][None], attention_mask=torch.ones_like(inp["input_ids"])[None],
                         pixel_values=inp["pixel_values"], aspect_ratio_ids=inp["aspect_ratio_ids"],
                         aspect_ratio_mask=inp["aspect_ratio_mask"],
                         cross_attention_mask=inp["cross_attention_mask"], generation_config=gc)
    new = out[0, inp["input_ids"].numel():].tolist()
    # Cross-check with a cache-less loop (full forward each step), and record top1-top2 margins.
    ids = inp["input_ids"].clone()
    xm = inp["cross_attention_mask"]
    manual, margins = [], []
    for _ in range(n):
        d = dict(inp, input_ids=ids, cross_attention_mask=xm)
        last = forward(model, d)[-1]
        t2 = last.topk(2)
        margins.append(float(t2.values[0] - t2.values[1]))
        nxt = int(t2.indices[0])
        manual.append(nxt)
        ids = torch.cat([ids, torch.tensor([nxt])])
        xm = torch.cat([xm, xm[:, -1:]], dim=1)  # new tokens see what the last prompt token saw
    assert new == manual, f"generate {new} != cache-less greedy {manual}"
    return new, margins


def make_model(name: str, spec: dict, tok) -> dict:
    print(f"== {name}")
    d = OUT / name
    seed_everything(spec["seed"])
    model = build_model(spec)
    inp = build_inputs(spec, tok)
    with MetaSemantics():
        logits_unrounded = forward(model, inp) if spec["dtype"] != "float32" else None
    save_checkpoint(model, spec, d)
    shards = sorted(p.name for p in d.iterdir() if p.name.startswith("model"))
    print(f"  weights: {shards}")

    # Reference = the checkpoint as saved, reloaded in f32 (bf16 weights upcast; rope inv_freq
    # recomputed in f32). Both config variants must give the same model.
    m_meta = load_checkpoint(d, "config.json")
    m_rp = load_checkpoint(d, "config.rope_parameters.json")
    assert m_meta.config.text_config.rope_parameters == m_rp.config.text_config.rope_parameters, \
        (m_meta.config.text_config.rope_parameters, m_rp.config.text_config.rope_parameters)
    sd_a, sd_b = m_meta.state_dict(), m_rp.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    model = m_meta
    print(f"  rope_parameters (from Meta-style config.json): {model.config.text_config.rope_parameters}")

    ids = inp["input_ids"]
    img_tok = model.config.image_token_index
    img_pos = (ids == img_tok).nonzero().flatten().tolist()
    print(f"  input_ids ({ids.numel()}): {ids.tolist()}")
    print(f"  image token positions {img_pos}; pixel_values {list(inp['pixel_values'].shape)}; "
          f"aspect_ratio_ids {inp['aspect_ratio_ids'].tolist()}; aspect_ratio_mask {inp['aspect_ratio_mask'].tolist()}")

    gen = torch.Generator().manual_seed(spec["seed"] + 13)
    sign = torch.where(torch.rand(inp["pixel_values"].shape, generator=gen) < 0.5, -1.0, 1.0)
    std = torch.tensor(CLIP_STD).view(1, 1, 1, 3, 1, 1)
    valid_tile = inp["aspect_ratio_mask"].view(*inp["aspect_ratio_mask"].shape, 1, 1, 1).to(torch.float32)
    perturb = sign * (1.0 / 255.0) / std * valid_tile

    # Primary references: Meta's semantics (see MetaSemantics). `_hf524`: transformers 5.24 as is.
    ids_no_img = ids[ids != img_tok]
    logits_no_image = forward(model, inp, ids=ids_no_img, pixels=False)  # no vision, no cross-attn:
    logits_img_tok_no_pix = forward(model, inp, pixels=False)            # same in both semantics
    with MetaSemantics():
        logits = forward(model, inp)
        logits_pert = forward(model, inp, pixel_values=inp["pixel_values"] + perturb)
        greedy_ids, margins = greedy(model, inp, spec["n_generate"])
    with MetaSemantics(xattn=False):  # = transformers 4.46 (checked against it, see README)
        logits_hf446 = forward(model, inp)
    logits_hf524 = forward(model, inp)
    logits_pert_hf524 = forward(model, inp, pixel_values=inp["pixel_values"] + perturb)
    greedy_ids_hf524, margins_hf524 = greedy(model, inp, spec["n_generate"])
    print(f"  greedy_ids {greedy_ids}; top1-top2 margins {[round(x, 3) for x in margins]}")
    print(f"  greedy_ids_hf524 {greedy_ids_hf524}; margins {[round(x, 3) for x in margins_hf524]}")

    # ---- stats
    first = img_pos[0]
    after = torch.arange(first + 1, ids.numel())
    # rows of logits_no_image aligned with positions after the first image token
    shift = torch.tensor([(torch.tensor(img_pos) <= p).sum().item() for p in after.tolist()])

    def effects(lg, lg_pert):
        d_img_tok = (lg[after] - logits_img_tok_no_pix[after]).abs().amax(-1)
        d_pert = (lg - lg_pert).abs().amax(-1)
        return {
            "image_effect_after_image_vs_no_image": (lg[after] - logits_no_image[after - shift]).abs().max().item(),
            "image_effect_after_image_vs_image_token_no_pixels_min_max": [d_img_tok.min().item(), d_img_tok.max().item()],
            "before_image_vs_no_image": (lg[:first] - logits_no_image[:first]).abs().max().item() if first > 0 else 0.0,
            "pixel_perturbation_effect_max": d_pert.max().item(),
            "pixel_perturbation_effect_per_pos": [round(x, 6) for x in d_pert.tolist()],
        }

    stats = {"seq_len": ids.numel(), "logit_std_mean": logits.std(-1).mean().item(),
             "max_abs_logit": logits.abs().max().item(), **effects(logits, logits_pert),
             "greedy_margin_min": min(margins)}
    stats["hf524"] = dict(effects(logits_hf524, logits_pert_hf524), greedy_margin_min=min(margins_hf524),
                          greedy_ids_equal=greedy_ids_hf524 == greedy_ids,
                          max_abs_vs_meta_per_pos=[round(x, 5) for x in (logits - logits_hf524).abs().amax(-1).tolist()])
    # hf446 = Meta's vision, but the rows before the image get cross-attention output; later rows see
    # those rows through self-attention, so all rows differ from Meta.
    stats["hf446_max_abs_vs_meta_per_pos"] = [round(x, 5) for x in (logits - logits_hf446).abs().amax(-1).tolist()]
    assert stats["before_image_vs_no_image"] < 1e-4, stats  # Meta: rows before the image see no image
    if logits_unrounded is not None:
        stats["f32_weights_before_bf16_rounding_vs_ref"] = (logits_unrounded - logits).abs().max().item()
        # everything in bf16 (weights, activations, and .to() also rounds the rope inv_freq buffer)
        m16 = load_checkpoint(d, "config.json").to(torch.bfloat16)
        inp16 = dict(inp, pixel_values=inp["pixel_values"].to(torch.bfloat16))
        with MetaSemantics():
            stats["bf16_compute_vs_ref"] = (forward(m16, inp16) - logits).abs().max().item()
    assert min(margins) > 0.2, "near-tie in greedy generation"
    print("  stats:", json.dumps(stats))
    assert logits.std(-1).min().item() > 1.0, "logits too flat"
    assert stats["image_effect_after_image_vs_no_image"] > 1.0, "image barely changes the logits"

    tensors = {
        "input_ids": ids.contiguous(),
        "pixel_values": inp["pixel_values"].contiguous(),
        "aspect_ratio_ids": inp["aspect_ratio_ids"].contiguous(),
        "aspect_ratio_mask": inp["aspect_ratio_mask"].contiguous(),
        "cross_attention_mask": inp["cross_attention_mask"].contiguous(),
        "input_ids_no_image": ids_no_img.contiguous(),
        "greedy_ids": torch.tensor(greedy_ids, dtype=torch.int64),
        "greedy_margins": torch.tensor(margins, dtype=torch.float32),
        "greedy_ids_hf524": torch.tensor(greedy_ids_hf524, dtype=torch.int64),
        "greedy_margins_hf524": torch.tensor(margins_hf524, dtype=torch.float32),
    }
    if spec["all_positions"]:
        tensors.update(logits=logits, logits_no_image=logits_no_image,
                       logits_image_token_no_pixels=logits_img_tok_no_pix,
                       logits_pixel_perturbed=logits_pert, logits_hf446=logits_hf446,
                       logits_hf524=logits_hf524, logits_pixel_perturbed_hf524=logits_pert_hf524)
    else:
        n = ids.numel()
        pos = sorted({first - 1, first + 1, (first + n) // 2, n - 1})
        pos_t = torch.tensor(pos, dtype=torch.int64)
        shift_t = torch.tensor([(torch.tensor(img_pos) <= p).sum().item() for p in pos])
        tensors.update(positions=pos_t, logits=logits[pos_t].contiguous(),
                       logits_no_image=logits_no_image[pos_t - shift_t].contiguous(),
                       positions_no_image=(pos_t - shift_t).contiguous(),
                       logits_image_token_no_pixels=logits_img_tok_no_pix[pos_t].contiguous(),
                       logits_pixel_perturbed=logits_pert[pos_t].contiguous(),
                       logits_hf524=logits_hf524[pos_t].contiguous(),
                       logits_pixel_perturbed_hf524=logits_pert_hf524[pos_t].contiguous())
        print(f"  positions {pos}")
    if spec["vision_intermediates"]:
        def vision(meta: bool):
            with torch.no_grad(), MetaSemantics(vision=meta, xattn=False):
                vm = model.model.vision_model(pixel_values=inp["pixel_values"], aspect_ratio_ids=inp["aspect_ratio_ids"],
                                              aspect_ratio_mask=inp["aspect_ratio_mask"])
                vis = vm.last_hidden_state  # [1, n_img, tiles, patches+1, vision_output_dim]
                return vis.to(torch.float32).contiguous(), model.model.multi_modal_projector(vis).to(torch.float32).contiguous()
        for sfx, meta in (("", True), ("_hf524", False)):
            vis, proj = vision(meta)
            tensors["vision_output" + sfx] = vis
            tensors["cross_attention_states" + sfx] = proj
            print(f"  vision_output{sfx} {list(vis.shape)} std {vis.std().item():.3f}; "
                  f"cross_attention_states{sfx} {list(proj.shape)} std {proj.std().item():.3f}")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, d / "reference.safetensors", metadata={
        "info": json.dumps({
            "transformers_version": transformers.__version__, "torch_version": torch.__version__,
            "seed": spec["seed"], "images": spec["images"], "prompt": spec.get("prompt"),
            "perturbation": "sign*U{-1,+1} (seed+13) * (1/255)/image_std[c], valid tiles only",
            "semantics": "Meta llama-models 0.3.0 (vision intermediates = layer inputs; cross-attn output and "
                         "MLP row-masked); *_hf524 = transformers 5.24 unpatched; logits_hf446 = transformers 4.46",
        }, sort_keys=True),
    })
    for p in sorted(d.iterdir()):
        print(f"  wrote {p.relative_to(REPO)} ({p.stat().st_size} bytes)")
    return stats


# ---------------------------------------------------------------------------------------------
# Preprocessing references
# ---------------------------------------------------------------------------------------------

PRE_IMAGES = ["dog.jpg", "pasta.jpeg", "wide_300x60.png", "tall_50x280.png", "tiny_10x7.png",
              "rgba_120x90.png", "gray_70x130.png", "gray16_64x40.png", "palette_90x90.png",
              "exif_rot90_160x100.jpg"]
GRID = 8  # 560-tile pixel_values sampled at [::8, ::8] (offset 0) of every tile


def canvas_and_resize(h: int, w: int, tile: int):
    from transformers.models.mllama.image_processing_pil_mllama import (
        get_image_size_fit_to_canvas, get_optimal_tiled_canvas)
    ch, cw = get_optimal_tiled_canvas(h, w, 4, tile)
    nh, nw = get_image_size_fit_to_canvas(h, w, ch, cw, tile)
    return [int(ch), int(cw)], [int(nh), int(nw)]


def make_preprocess() -> dict:
    print("== preprocess")
    desc = make_synthetic_images()
    tensors, meta = {}, {}
    for name in PRE_IMAGES:
        im = load_image(name)
        key = name.rsplit(".", 1)[0]
        info = {
            "file": name if (PRE / name).exists() else f"$LUMEN_ASSETS_DIR/llama-models/{name}",
            "description": desc.get(name, "real photo from llama-models==0.3.0"),
            "pil_mode": im.mode, "pil_size_wh": list(im.size),
            "exif_orientation": im.getexif().get(0x0112),
            "has_transparency_info": "transparency" in im.info,
        }
        for tile in (560, 56):
            ip = image_processor(tile)
            enc = ip(images=[[im]], return_tensors="pt")
            pv = enc["pixel_values"][0, 0]  # [4, 3, tile, tile]
            n_tiles = enc["num_tiles"][0][0]
            canvas, resized = canvas_and_resize(im.size[1], im.size[0], tile)
            info[f"tile{tile}"] = {
                "canvas_hw": canvas, "resized_hw": resized, "num_tiles": n_tiles,
                "tiles_hw": [canvas[0] // tile, canvas[1] // tile],
                "aspect_ratio_id": int(enc["aspect_ratio_ids"][0, 0]),
                "aspect_ratio_mask": enc["aspect_ratio_mask"][0, 0].tolist(),
            }
            if tile == 560:
                tensors[f"{key}.tile560.pixel_values_grid{GRID}"] = pv[:, :, ::GRID, ::GRID].contiguous()
                tensors[f"{key}.tile560.tile_channel_mean"] = pv.to(torch.float64).mean((-1, -2)).to(torch.float32)
            else:
                tensors[f"{key}.tile56.pixel_values"] = pv.contiguous()
        meta[name] = info
        print(f"  {name}: {info['pil_mode']} {info['pil_size_wh']} -> 560: {info['tile560']} | 56: {info['tile56']}")

    # What HF does with EXIF orientation: compare with an exif_transpose'd copy.
    im = load_image("exif_rot90_160x100.jpg")
    from PIL import ImageOps
    a = image_processor(56)(images=[[im]], return_tensors="pt")
    b = image_processor(56)(images=[[ImageOps.exif_transpose(im)]], return_tensors="pt")
    exif_applied = (a["aspect_ratio_ids"].tolist() == b["aspect_ratio_ids"].tolist()
                    and torch.equal(a["pixel_values"], b["pixel_values"]))
    notes = {
        "image_processor_class": "MllamaImageProcessorPil (transformers PIL/NumPy backend)",
        "exif_orientation_applied_by_hf": exif_applied,
        "resample": "PIL.Image.BILINEAR via PIL.Image.resize (uint8 in, uint8 out; PIL's bilinear is antialiased when downscaling)",
        "grid": f"tile560 pixel_values_grid{GRID} = pixel_values[:, :, ::{GRID}, ::{GRID}] per tile -> [4, 3, 70, 70]",
    }
    print("  notes:", notes)

    # Cross-attention masks for token layouts (processor helpers), image token id 9, n_tiles per image.
    cases = []
    layouts = [
        ("text_before_image", [1, 2, 3, 9, 4, 5, 6], [2]),
        ("image_first", [9, 1, 2, 3], [4]),
        ("two_images", [1, 9, 2, 3, 9, 4, 5], [3, 1]),
        ("image_at_end", [1, 2, 3, 9], [2]),
        ("two_consecutive_images", [1, 9, 9, 2, 3], [2, 4]),
        ("three_images_middle_pair_consecutive", [9, 1, 9, 9, 2, 9, 3], [1, 2, 3, 4]),
        ("no_image_text_only", [1, 2, 3], []),
    ]
    for cname, ids, n_tiles in layouts:
        sparse = get_cross_attention_token_mask(ids, 9)
        case = {"name": cname, "input_ids": ids, "image_token_id": 9, "num_tiles": n_tiles,
                "max_num_tiles": 4, "sparse": sparse}
        if n_tiles:
            dense = convert_sparse_cross_attention_mask_to_dense([sparse], [n_tiles], 4, len(ids))
            case["dense"] = dense[0].tolist()  # [seq, n_images, 4]
            m = torch.from_numpy(dense)
            _, row = modeling_mllama._prepare_cross_attention_mask(m, num_vision_tokens=1, dtype=torch.float32)
            case["full_text_row_masked_out_mask"] = row[0, 0, :, 0].to(torch.int64).tolist()
        cases.append(case)
    # Full MllamaProcessor (real Llama 3.2 Vision tokenizer, 560 tiles) on a few prompts, with the
    # tokenizer's default add_special_tokens=True (its post-processor prepends <|begin_of_text|>)
    # and with add_special_tokens=False.
    tok = AutoTokenizer.from_pretrained(LLAMA32V_TOK_DIR)
    proc = MllamaProcessor(image_processor=image_processor(560), tokenizer=tok)
    proc_cases = []
    for text, imgs in [("<|image|>Describe this image.", ["dog.jpg"]),
                       ("Compare <|image|> and <|image|>.", ["dog.jpg", "wide_300x60.png"]),
                       ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is this?"
                        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", ["pasta.jpeg"])]:
        c = {"text": text, "images": imgs}
        for add in (True, False):
            enc = proc(images=[[load_image(n) for n in imgs]], text=text, add_special_tokens=add)
            c[f"add_special_tokens_{str(add).lower()}"] = {
                "input_ids": list(map(int, enc["input_ids"][0])),
                "cross_attention_mask": np.asarray(enc["cross_attention_mask"])[0].tolist(),
                "aspect_ratio_ids": np.asarray(enc["aspect_ratio_ids"])[0].tolist(),
            }
        proc_cases.append(c)
    write_json(PRE / "cases.json", {"notes": notes, "images": meta, "cross_attention_mask_cases": cases,
                                    "processor_cases": proc_cases})
    save_file(tensors, PRE / "reference.safetensors", metadata={
        "info": json.dumps({"transformers_version": transformers.__version__,
                            "pillow_version": Image.__version__}, sort_keys=True)})
    for p in sorted(PRE.iterdir()):
        print(f"  wrote {p.relative_to(REPO)} ({p.stat().st_size} bytes)")
    return notes


def main() -> None:
    import sys
    only = sys.argv[1:]
    seed_everything(0)
    OUT.mkdir(parents=True, exist_ok=True)
    if not only or "preprocess" in only:
        make_preprocess()
    else:
        make_synthetic_images()
    tok = AutoTokenizer.from_pretrained(LLAMA32V_TOK_DIR)
    assert tok.convert_tokens_to_ids("<|image|>") == 128256
    all_stats = {}
    for name, spec in SPECS.items():
        if not only or name in only:
            all_stats[name] = make_model(name, spec, tok)
    print(json.dumps(all_stats, indent=1))


if __name__ == "__main__":
    main()
