"""Inputs that expand far beyond their size on disk: a YAML alias bomb, an image over Pillow's limit."""

from __future__ import annotations


def _alias_bomb(levels: int) -> str:
    """`data.labels` as a "billion laughs": each level lists the one below nine times, by alias, so `levels`
    lines of YAML (about 100 bytes each) expand to 9**levels strings."""
    value = "&x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for i in range(1, levels):
        value = f"&x{i} [{value}, " + ", ".join([f"*x{i - 1}"] * 8) + "]"
    return f"data:\n  labels: {value}\n"


def _decompression_bomb(path, monkeypatch):
    """A 64x64 PNG at `path`, over Pillow's decompression-bomb limit once that is lowered to 1000 pixels (Pillow refuses
    an image of more than twice the limit: 4096 > 2000; the fixtures' 20x20 images, 400 pixels, stay under it)."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
