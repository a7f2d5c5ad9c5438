"""Device and dtype resolution shared by every model loader.

Both loaders take plain strings (``device="auto"``, ``precision="auto"``) so params.yaml can
name them; this module turns them into torch objects once, at the boundary, and refuses
combinations that would fail later or silently run slowly (fp16 on the CPU).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# Accepted precision names -> dtype. Aliases follow torch's spelling.
_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
PRECISIONS: tuple[str, ...] = ("auto", *_DTYPES)


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device name into a ``torch.device``.

    ``"auto"`` picks ``cuda`` when a GPU is visible, else ``cpu``. ``"cpu"``, ``"cuda"`` and
    ``"cuda:N"`` are accepted. Asking for CUDA on a machine without it raises instead of
    falling back, so a GPU run never silently becomes a CPU run.
    """
    key = str(name).strip().lower()
    if key == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.debug("device 'auto' resolved to %s", device)
        return device
    if key == "cpu":
        return torch.device("cpu")
    if key == "cuda" or key.startswith("cuda:"):
        try:
            device = torch.device(key)
        except RuntimeError:
            raise ValueError(f"Invalid device {name!r}: expected 'cuda' or 'cuda:<index>'.") from None
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Device {name!r} requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}). "
                "Use device 'cpu' or 'auto'."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeError(f"Device {name!r} requested but only {count} CUDA device(s) are visible.")
        return device
    raise ValueError(f"Unknown device {name!r}; choose one of 'auto', 'cpu', 'cuda', 'cuda:<index>'.")


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Turn a precision name into a ``torch.dtype`` for ``device``.

    ``"auto"`` is fp16 on CUDA (the precision the reference models are usually run in) and
    fp32 on the CPU. Explicit ``"fp32"``, ``"fp16"``, ``"bf16"`` (or torch spellings) are
    honoured, except fp16 on the CPU, which is rejected: many CPU kernels lack fp16 and the
    rest are slower than fp32. bf16 on CUDA requires hardware support.
    """
    device = torch.device(device)
    key = str(name).strip().lower()
    if key == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        logger.debug("precision 'auto' on %s resolved to %s", device, dtype)
        return dtype
    if key not in _DTYPES:
        raise ValueError(f"Unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}.")
    dtype = _DTYPES[key]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError(
            f"Precision {name!r} (float16) is not supported on the CPU: use 'fp32' (or 'bf16'), "
            "or 'auto', which picks fp32 on the CPU and fp16 on CUDA."
        )
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"Precision {name!r} requested but this GPU does not support bfloat16; use 'fp16'.")
    return dtype
