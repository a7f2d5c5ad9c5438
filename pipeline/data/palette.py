"""The PASCAL VOC colour map: mask and pseudo-label PNGs store class indices as palette entries, so
they open as coloured pictures and read back as the indices themselves."""

from __future__ import annotations

import io

import numpy as np


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map, 256 RGB entries flattened (class k's colour from bits of k)."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def palette_png(labels: np.ndarray) -> bytes:
    """(H, W) uint8 class indices -> bytes of a VOC-palette PNG (no metadata: bytes depend on pixels only)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L")
    image.putpalette(voc_palette())
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
