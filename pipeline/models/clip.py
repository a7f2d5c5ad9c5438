"""CLIP through open_clip: one loader for the real ViT-B/16 and the project's tiny CLIP.

``load_clip(model_name, pretrained)`` is the only way the pipeline gets a CLIP. ``model_name`` is
an open_clip architecture name, either built in (``ViT-B-16-quickgelu``) or one of the tiny
configs this module registers from ``tiny_configs/clip/*.json`` (``diclip-tiny-vit-p8-64``).
``pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``), a local checkpoint
file, or ``None`` for random initialisation. Nothing downstream branches on real vs tiny.

Three decisions are made here rather than left to open_clip:

* **QuickGELU is enforced, not warned about.** OpenAI's CLIP was trained with QuickGELU; open_clip's
  plain ``ViT-B-16`` runs ``nn.GELU`` and, given ``pretrained="openai"``, only emits a warning and
  returns a subtly wrong model. ``load_clip`` raises ``ValueError`` naming the ``-quickgelu``
  architecture instead, for tags whose open_clip metadata says ``quick_gelu=True`` and for local
  files recognisably from OpenAI (OpenAI release file names such as ``ViT-B-16.pt``, timm
  ``*.openai`` hub snapshots, TorchScript archives carrying OpenAI's ``input_resolution``).
* **Weights are resolved before the model is built.** A tag is looked up in the local caches
  first (hub cache and open_clip's URL cache); when offline and nothing is cached, no network call
  is attempted and :class:`ModelUnavailableError` says where we looked and how to provide the file.
  Before a real download, one TCP probe (5 s) checks the source is reachable, and the download
  itself runs under a socket timeout, so a machine without network fails in seconds, not minutes.
* **Schemas are refused.** ``hf-hub:``/``local-dir:`` model names bypass ``pretrained`` and the
  offline handling above; give an architecture name plus a tag or a file path instead.

The tiny config ``diclip-tiny-vit-p8-64`` (64 px, patch 8 -> 8x8 grid, width 128, 6 layers, 4 heads,
text context 32 with open_clip's 49,408-token BPE, joint dim 128) has ~1.2M vision and ~7.1M text
parameters (6.3M of them the token embedding). It uses GELU: it is trained from scratch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from open_clip import pretrained as oc_pretrained
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.transform import PreprocessCfg, image_transform_v2

from .device import resolve_device, resolve_dtype
from .errors import ModelUnavailableError
from .hub import hf_hub_cache_dir, hub_offline, offline_remedy, unreachable_reason

logger = logging.getLogger(__name__)

from pipeline import atomic
from pipeline.clip_input import IMAGENET_MEAN_255, IMAGENET_STD_255

TINY_CONFIG_DIR = Path(__file__).resolve().parent / "tiny_configs" / "clip"
#: the shipped tiny CLIP (checkpoint + manifest.json), wherever the package is and whatever the cwd
TINY_CLIP_DIR = Path(__file__).resolve().parent / "weights" / "diclip-tiny-clip"
TINY_CLIP_MODELS: tuple[str, ...] = tuple(sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json")))
#: params key users set to point at a local CLIP checkpoint (quoted in error messages).
CLIP_PRETRAINED_PARAM = "models.clip.pretrained"
#: open_clip's default directory for URL (non-hub) downloads.
OPENCLIP_URL_CACHE = Path("~/.cache/clip").expanduser()
#: socket timeout (s) around a real download, so an unreachable network fails instead of hanging.
DOWNLOAD_TIMEOUT_S = 60.0

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
_PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
RANDOM_INIT_SEED = 0  # `pretrained: None`: open_clip's initialisation under this seed, the same in every process


def register_tiny_clip_configs() -> None:
    """Add ``tiny_configs/clip/*.json`` to open_clip's architecture registry (idempotent).

    The folder holds only open_clip architecture configs (the tiny diffusion configs live in
    ``tiny_configs/sd``), each registered under its file stem.
    """
    if not set(TINY_CLIP_MODELS).issubset(open_clip.list_models()):
        open_clip.add_model_config(TINY_CONFIG_DIR)


register_tiny_clip_configs()


def list_clip_models() -> list[str]:
    """All architecture names ``load_clip`` accepts: open_clip's built-ins plus the tiny configs."""
    return open_clip.list_models()


@dataclass(frozen=True)
class LoadedClip:
    """A frozen CLIP ready for inference, with everything needed to feed it.

    ``image_size`` and ``patch_size`` are the square input side and patch side in pixels, so the
    patch grid is ``image_size // patch_size``; ``embed_dim`` is the joint image-text dimension.
    """

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    model_name: str
    pretrained: str | None
    image_size: int
    patch_size: int
    embed_dim: int
    device: torch.device
    dtype: torch.dtype


def load_clip(
    model_name: str,
    pretrained: str | None,
    *,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = RANDOM_INIT_SEED,
) -> LoadedClip:
    """Build an open_clip CLIP, load its weights, and freeze it (eval mode, no gradients).

    Args:
        model_name: architecture name from :func:`list_clip_models`.
        pretrained: open_clip tag, local checkpoint path, or ``None`` (random init under ``seed``:
            the same weights in every process).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"auto"``, ``"fp32"``, ``"fp16"``, ``"bf16"`` (open_clip's mixed precision:
            weights in low precision, as OpenAI ran CLIP).
        cache_dir: where tag weights are cached; defaults to the HF hub cache for hub-hosted tags
            and ``~/.cache/clip`` for URL-hosted ones (open_clip's own defaults).

    Raises:
        ValueError: unknown architecture or tag, a schema name, or a QuickGELU mismatch.
        ModelUnavailableError: weights not found locally and not downloadable.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    model_cfg = _model_config(model_name)
    checkpoint, preprocess_cfg = _resolve_weights(model_name, model_cfg, pretrained, cache_dir)
    # Random weights (``pretrained: None``) are drawn under a fixed seed without touching the caller's
    # RNG: every process and stage then builds the same model (the segmenter that evaluate reloads is
    # the one train fitted; a second run's CAMs are the first's), as the fingerprint "<name>:None" says.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = open_clip.create_model(
            model_name,
            pretrained=checkpoint,
            precision=_PRECISION_NAMES[dtype],
            device=dev,
            force_preprocess_cfg=preprocess_cfg,
            # OpenAI's JIT archives can only be read by torch.jit.load, which weights_only forbids.
            weights_only=not (checkpoint is not None and _is_torchscript(Path(checkpoint))),
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    model.eval().requires_grad_(False)
    visual = model.visual
    image_size, patch_size = _square(visual.image_size, "image_size"), _square(visual.patch_size, "patch_size")
    preprocess = image_transform_v2(PreprocessCfg(**visual.preprocess_cfg), is_train=False)
    logger.info(
        "loaded CLIP %s (pretrained=%s) on %s/%s: %d px, patch %d, embed %d",
        model_name, pretrained, dev, dtype, image_size, patch_size, visual.output_dim,
    )
    return LoadedClip(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model_name),
        model_name=model_name,
        pretrained=pretrained,
        image_size=image_size,
        patch_size=patch_size,
        embed_dim=int(visual.output_dim),
        device=dev,
        dtype=dtype,
    )


def load_shipped_clip(weights_dir: str | os.PathLike[str] = TINY_CLIP_DIR, *, device: str = "cpu",
                      precision: str = "fp32") -> LoadedClip:
    """A shipped (tiny) CLIP folder through :func:`load_clip`: the architecture and checkpoint file its
    ``manifest.json`` names (``model_name``, ``checkpoint``), else the folder's only checkpoint file."""
    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / "manifest.json").read_text(encoding="utf-8"))
    name = manifest.get("model_name") or manifest.get("model") or "diclip-tiny-vit-p8-64"
    checkpoint = manifest.get("checkpoint") or manifest.get("weights") or manifest.get("file")
    if checkpoint is None:
        found = sorted(p.name for p in weights_dir.iterdir() if p.suffix in (".safetensors", ".pt", ".bin"))
        if len(found) != 1:
            raise FileNotFoundError(f"{weights_dir}: cannot tell the checkpoint file among {found}")
        checkpoint = found[0]
    return load_clip(name, str(weights_dir / Path(checkpoint).name), device=device, precision=precision)


def save_clip_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights where ``load_clip(model_name, path)`` reads them back.

    ``*.safetensors`` is written with safetensors; any other suffix as ``{"state_dict": ...}``
    with ``torch.save`` (open_clip's checkpoint layout). Tensors are copied to the CPU, and the
    file is written to a temporary name and renamed, so a crash never leaves a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    def write(tmp: Path) -> None:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save({"state_dict": state}, tmp)

    atomic.write_with(path, write)
    logger.info("saved CLIP checkpoint (%d tensors) to %s", len(state), path)
    return path


# --- resolving ---------------------------------------------------------------------------------


def clip_patch_size(model_name: str) -> int:
    """The vision tower's patch side in pixels, from the registered config (no weights loaded)."""
    patch = _model_config(model_name)["vision_cfg"]["patch_size"]
    return int(patch if isinstance(patch, int) else patch[0])


def weights_fingerprint(model_name: str, pretrained: str | None) -> str:
    """What a CLIP's weights are: a local checkpoint by the sha256 of its bytes (retrained weights at the
    same path are other weights), a tag or none by name."""
    import hashlib

    path = Path(pretrained).expanduser() if pretrained else None
    if path is None or not path.is_file():
        return f"{model_name}:{pretrained}"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def input_normalisation(normalise: str, model_name: str, pretrained: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-255 scale of every CLIP input, the CAM path's and the segmenter's, as
    `cams.normalise` says: ImageNet's (DiCLIP, ExCEL) or `model`, the CLIP's own (resolved from its
    config and weights tag without loading weights)."""
    if normalise != "model":
        return IMAGENET_MEAN_255, IMAGENET_STD_255
    mean, std = clip_normalisation(model_name, pretrained)
    return tuple(255 * m for m in mean), tuple(255 * s for s in std)


def clip_normalisation(model_name: str, pretrained: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-1 scale that :func:`load_clip` gives ``model.visual.preprocess_cfg``,
    from the registered config and the tag's entry (no weights loaded, no network)."""
    cfg = {"mean": PreprocessCfg().mean, "std": PreprocessCfg().std}
    cfg.update({k: v for k, v in (_model_config(model_name).get("preprocess_cfg") or {}).items() if k in cfg})
    if pretrained is not None:
        tag_cfg = oc_pretrained.get_pretrained_cfg(model_name, pretrained) or {}
        cfg.update({k: tag_cfg[k] for k in cfg if k in tag_cfg})
    return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))


def _model_config(model_name: str) -> dict[str, Any]:
    """The registered architecture config, or ValueError naming the valid choices."""
    schema, _ = open_clip.factory.parse_model_name(model_name)
    if schema is not None:
        raise ValueError(
            f"CLIP model name {model_name!r} uses open_clip's {schema!r} schema, which bypasses "
            "`pretrained` and offline handling; give an architecture name plus `pretrained` "
            "(a tag or a local checkpoint file) instead."
        )
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"Unknown CLIP architecture {model_name!r}. Tiny configs: {list(TINY_CLIP_MODELS)}; "
            f"ViT-B/16 names: {[m for m in list_clip_models() if m.startswith('ViT-B-16')]}; "
            "see list_clip_models() for all."
        )
    return cfg


def _resolve_weights(
    model_name: str, model_cfg: dict[str, Any], pretrained: str | None, cache_dir: str | os.PathLike[str] | None
) -> tuple[str | None, dict[str, Any]]:
    """Return (local checkpoint path or None, preprocessing overrides) for ``pretrained``.

    Checks the activation first so a mismatch is reported without touching any file or network.
    """
    if pretrained is None:
        logger.info("CLIP %s: no pretrained weights requested, random initialisation", model_name)
        return None, {}
    tag_cfg = oc_pretrained.get_pretrained_cfg(model_name, pretrained)
    if tag_cfg:
        weights_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        _check_activation(model_name, model_cfg, pretrained, weights_quick_gelu)
        preprocess = {f.name: tag_cfg[f.name] for f in fields(PreprocessCfg) if f.name in tag_cfg}
        return _tag_checkpoint(model_name, pretrained, tag_cfg, cache_dir), preprocess
    path = Path(pretrained).expanduser()
    if path.is_file():
        if _is_openai_checkpoint(path):
            _check_activation(model_name, model_cfg, pretrained, True)
        return str(path), {}
    if os.sep in pretrained or "/" in pretrained or path.suffix in _CHECKPOINT_SUFFIXES or path.exists():
        raise ModelUnavailableError(
            f"CLIP {model_name} (pretrained={pretrained!r})",
            reason="the local checkpoint file does not exist." if not path.exists() else "the path is not a file.",
            looked_in=[str(path.resolve())],
            remedies=[f"Point `{CLIP_PRETRAINED_PARAM}` at an existing checkpoint file, or at an open_clip tag "
                      f"for {model_name}: {oc_pretrained.list_pretrained_tags_by_model(model_name)}."],
        ) from None
    raise ValueError(
        f"Unknown pretrained tag {pretrained!r} for CLIP {model_name!r}; known tags: "
        f"{oc_pretrained.list_pretrained_tags_by_model(model_name)}. A local checkpoint path also works."
    )


def _check_activation(model_name: str, model_cfg: dict[str, Any], pretrained: str, weights_quick_gelu: bool) -> None:
    """Refuse weights whose training activation differs from the architecture's."""
    model_quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if weights_quick_gelu and not model_quick_gelu:
        suggestion = f"{model_name}-quickgelu"
        hint = (f"Use model name {suggestion!r}" if suggestion in list_clip_models()
                else "Use an architecture config with `quick_gelu: true`")
        raise ValueError(
            f"CLIP weights {pretrained!r} were trained with QuickGELU, but architecture {model_name!r} "
            f"uses nn.GELU: the model would run but produce subtly wrong features. {hint} "
            f"(e.g. `models.clip.model: {suggestion}` with `{CLIP_PRETRAINED_PARAM}: {pretrained}`)."
        )
    if model_quick_gelu and not weights_quick_gelu:
        raise ValueError(
            f"CLIP weights {pretrained!r} were trained with GELU, but architecture {model_name!r} uses "
            "QuickGELU; use the architecture name without '-quickgelu'."
        )


def _tag_checkpoint(
    model_name: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | os.PathLike[str] | None
) -> str:
    """Local file for an open_clip tag: the cache if it holds it, else a bounded download."""
    if "file" in tag_cfg:
        return str(tag_cfg["file"])
    hf_cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache_dir()
    url_cache = Path(cache_dir) if cache_dir is not None else OPENCLIP_URL_CACHE
    repo_id, filenames, url = _tag_sources(tag_cfg)
    looked_in: list[str] = []
    for filename in filenames:
        looked_in.append(f"HF hub cache {hf_cache} (repo {repo_id}, file {filename})")
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache))
        if isinstance(cached, str):
            logger.info("CLIP %s/%s: using cached %s", model_name, tag, cached)
            return cached
    if url:
        target = url_cache / os.path.basename(url)
        looked_in.append(f"open_clip URL cache {target} (from {url})")
        if target.is_file():
            logger.info("CLIP %s/%s: using cached %s", model_name, tag, target)
            return str(target)

    model = f"CLIP {model_name} (pretrained={tag!r})"
    remedies = [
        f"Set `{CLIP_PRETRAINED_PARAM}: /path/to/{os.path.basename(url) if url else filenames[-1]}` "
        f"(keep `models.clip.model: {model_name}`) to a checkpoint file copied to this machine.",
    ]
    if repo_id:
        remedies.append(
            f"On a machine with internet run `hf download {repo_id} {filenames[-1]} --cache-dir {hf_cache}` "
            f"(older huggingface_hub: `huggingface-cli download ...`) and copy that cache directory here "
            "(or point HF_HUB_CACHE / the `cache_dir` argument at it)."
        )
    elif url:
        remedies.append(f"On a machine with internet download {url} into {url_cache}.")
    if hub_offline():
        raise ModelUnavailableError(
            model, reason="not in the local cache, and the hub is offline (HF_HUB_OFFLINE is set), so no "
            "download was attempted.", looked_in=looked_in, remedies=[*remedies, offline_remedy()],
        ) from None
    unreachable = unreachable_reason(None if repo_id else url)
    if unreachable:
        raise ModelUnavailableError(
            model, reason=f"not in the local cache, and the download source is unreachable: {unreachable}.",
            looked_in=looked_in, remedies=remedies,
        ) from None
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            path = oc_pretrained.download_pretrained(
                tag_cfg, cache_dir=None if cache_dir is None else str(cache_dir)
            )
    except (OSError, RuntimeError, ValueError) as err:  # urllib, hub and checksum failures
        raise ModelUnavailableError(
            model, reason=f"not in the local cache, and the download failed ({type(err).__name__}: {err}).",
            looked_in=looked_in, remedies=remedies,
        ) from None
    if not path:
        raise ModelUnavailableError(model, reason="open_clip has no download source for this tag.",
                                    looked_in=looked_in, remedies=remedies)
    return str(path)


def _tag_sources(tag_cfg: dict[str, Any]) -> tuple[str, list[str], str]:
    """(hub repo id, candidate file names in open_clip's preference order, URL) for a tag."""
    hf_hub = tag_cfg.get("hf_hub", "")
    url = tag_cfg.get("url", "")
    if not hf_hub:
        return "", [], url
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    safe = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else (
        [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else [])
    return repo_id, [*safe, filename], url


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound urllib downloads (open_clip calls ``urlopen`` without a timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# --- recognising OpenAI checkpoints -------------------------------------------------------------

def _openai_file_names() -> frozenset[str]:
    """File names of OpenAI's CLIP releases (``ViT-B-16.pt``, ``RN50.pt``, ...) from open_clip's table."""
    urls = (oc_pretrained.get_pretrained_url(m, t) for m, t in oc_pretrained.list_pretrained())
    return frozenset(os.path.basename(url) for url in urls if "openaipublic" in url)


_OPENAI_FILE_NAMES = _openai_file_names()


def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (the format of OpenAI's released ``*.pt`` files)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in zf.namelist())


def _is_openai_checkpoint(path: Path) -> bool:
    """Recognise OpenAI CLIP weights on disk, which all need QuickGELU.

    True for OpenAI's release file names (``ViT-B-16.pt``), timm's ``*.openai`` hub snapshots,
    and TorchScript archives whose code carries OpenAI's ``input_resolution`` attribute.
    """
    if path.name in _OPENAI_FILE_NAMES or any(part.endswith(".openai") for part in path.parts):
        return True
    if not _is_torchscript(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(b"input_resolution" in zf.read(name) for name in zf.namelist() if "/code/" in name)


def _square(size: int | tuple[int, int], what: str) -> int:
    if isinstance(size, int):
        return size
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"only square CLIP inputs are supported, got {what}={size}")
    return int(size[0])
