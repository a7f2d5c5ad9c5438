"""Per-image decoding and checks: full decodes (truncation is an error), RGB conversion,
class-index masks, multi-hot labels and the per-image digest."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.data.layout import DatasetError
from pipeline.metrics import IGNORE

# What PIL raises on a broken or non-image file, depending on the format plugin.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_MASK_MODES = ("P", "L")
# An object repr such as "<_io.BytesIO object at 0x7f...>" inside an exception message.
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
_HINT_BYTES = 20  # leading bytes shown when a file is no image at all


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err


def _decode(data: bytes, path: Path, what: str) -> Image.Image:
    """Fully decoded PIL image; a truncated or non-image file raises ``DatasetError``."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide switch some training code flips; with it, a cut-off JPEG decodes
        # silently as grey. Not the data's fault, so not a DatasetError.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled, so truncated images would be "
            f"accepted silently (while reading {path}); set it back to False"
        )
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as err:
        raise DatasetError(f"{what} {path} is not a readable image: {_unidentified(data, err)}") from err
    except _DECODE_ERRORS as err:
        raise DatasetError(
            f"{what} {path} is not a readable image (corrupt or truncated): "
            f"PIL reported {_pil_report(err)}"
        ) from err
    return image


def _unidentified(data: bytes, err: Exception) -> str:
    """Why PIL recognised no image format, with the first bytes as a hint (a text file, an
    HTML error page or a Git LFS pointer shows at a glance)."""
    if not data:
        return "the file is empty (0 bytes)"
    return f"PIL reported {_pil_report(err)} (the file starts with {data[:_HINT_BYTES]!r})"


def _pil_report(err: BaseException) -> str:
    """``Type: message`` of a PIL error on one line, minus object reprs.

    PIL decodes from an in-memory buffer here, so its messages name
    ``<_io.BytesIO object at 0x...>`` instead of the file; the caller names the path.
    """
    text = " ".join(_OBJECT_REPR.sub("", str(err)).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale, palette, CMYK and alpha images are converted
    (alpha is dropped, not composited). EXIF orientation is not applied: annotations
    refer to the stored pixel grid."""
    image = _decode(data, path, "image")
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as err:
            raise DatasetError(f"image {path} has mode {image.mode!r}, not convertible to RGB") from err
    return np.array(image, dtype=np.uint8)


def decode_mask(data: bytes, path: Path) -> np.ndarray:
    """(H, W) uint8 class indices from a palette ('P', indices read, never the colours)
    or 8-bit grayscale ('L') PNG."""
    image = _decode(data, path, "mask")
    if image.mode not in _MASK_MODES:
        raise DatasetError(
            f"mask {path} has mode {image.mode!r}; expected a palette ('P') or 8-bit grayscale "
            "('L') image of class indices (an RGB colour mask must be mapped back to indices)"
        )
    return np.array(image, dtype=np.uint8)


def labels_from_mask(mask: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """(C,) uint8 multi-hot: class k (0-based) set <=> value k + 1 occurs in ``mask``.

    Values 0 (background) and 255 (ignore) carry no label; any other value above C raises.
    """
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # sorted values in mask
    bad = present[(present > num_classes) & (present != IGNORE)]
    if bad.size:
        raise DatasetError(
            f"mask {path} has values {bad.tolist()} outside the allowed range 0..{num_classes} "
            f"(0 = background, 1..{num_classes} = classes, {IGNORE} = ignore)"
        )
    labels = np.zeros(num_classes, dtype=np.uint8)
    foreground = present[(present >= 1) & (present <= num_classes)]
    labels[foreground - 1] = 1
    return labels


def pair_digest(image_bytes: bytes, mask_bytes: bytes) -> bytes:
    """sha256 over the length-prefixed image bytes then mask bytes (32 bytes)."""
    digest = hashlib.sha256()
    for data in (image_bytes, mask_bytes):
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()
