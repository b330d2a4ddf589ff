"""Pillow bilinear resize references for Lumen's bit-exact port (mllama preprocessing).

Writes tests/fixtures/pillow-resize/: a random RGB image `input.png` and, for a few target
sizes (down, up and mixed), `out_{W}x{H}.png` = Image.resize((W, H), Image.BILINEAR), the
call transformers' MllamaImageProcessorPil makes. Also an RGBA input composited onto white
with Image.alpha_composite, as transformers' convert_to_rgb does.
"""

from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "pillow-resize"
SIZES = [(11, 7), (80, 50), (60, 9), (37, 23), (5, 90), (150, 97)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 256, size=(23, 37, 3), dtype=np.uint8), "RGB")
    img.save(OUT / "input.png")
    for w, h in SIZES:
        img.resize((w, h), Image.BILINEAR).save(OUT / f"out_{w}x{h}.png")
    rgba = Image.fromarray(rng.integers(0, 256, size=(9, 13, 4), dtype=np.uint8), "RGBA")
    rgba.save(OUT / "rgba.png")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    Image.alpha_composite(white, rgba).convert("RGB").save(OUT / "rgba_on_white.png")


if __name__ == "__main__":
    main()
