"""Hostile and unusual image files for Lumen's image-decoding tests.

Writes tests/fixtures/images/:
- cmyk.jpg: a 24x16 CMYK JPEG (printers and some scanners write these);
- bomb.png: a valid PNG header claiming 40000 x 40000 pixels (1.6 gigapixels) over a few
  bytes of data, the classic decompression bomb;
- animated.gif: two frames, red then blue (only the first should be used);
- pillow_cmyk_rgb.png: what Pillow's convert("RGB") makes of cmyk.jpg, for comparison.
"""

import struct
import zlib
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "images"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cmyk = Image.new("CMYK", (24, 16))
    for x in range(24):
        for y in range(16):
            cmyk.putpixel((x, y), (x * 10, y * 15, 40, 20))
    cmyk.save(OUT / "cmyk.jpg", quality=95)
    Image.open(OUT / "cmyk.jpg").convert("RGB").save(OUT / "pillow_cmyk_rgb.png")

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    (OUT / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))

    red = Image.new("RGB", (8, 8), (255, 0, 0))
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    red.save(OUT / "animated.gif", save_all=True, append_images=[blue], duration=100, loop=0)


if __name__ == "__main__":
    main()
