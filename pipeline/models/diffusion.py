"""Stable Diffusion through diffusers: one loader for SD 2.1-base and the project's tiny SD.

``load_stable_diffusion(model_id_or_path)`` calls ``StableDiffusionPipeline.from_pretrained`` for a
hub id (``stabilityai/stable-diffusion-2-1-base``) or any local directory written by
``save_pretrained``; the tiny pipeline is built once from component configs by
:func:`build_tiny_stable_diffusion`, trained, saved, and from then on loaded through the same
function. Nothing downstream branches on real vs tiny.

Hub access is decided here, not by the libraries' import-time constants: offline mode
(``HF_HUB_OFFLINE``) and the cache directory are read at call time and passed explicitly, and a
hub id that is not cached while offline raises :class:`ModelUnavailableError` without calling
diffusers at all.

The shipped tiny configuration (``tiny_configs/sd/diclip-tiny-sd-d4.json``) mirrors SD 2.x's topology at toy
size: VAE 3 -> 4 latent channels, x4 downsampling (blocks 32/64/64, ~0.95M params); UNet with
cross-attention down/up blocks over the first two levels, a plain bottom level and a cross-attention
mid block, blocks 32/64/64, one layer per block, 4 channels per head, linear projections as in
SD 2.x (~1.5M params); 7 self-attention (``attn1``) layers at latent 16x16 (3), 8x8 (3) and
4x4 (1) for 64 px images, each paired with a cross-attention (``attn2``) on the text; CLIP text
encoder width 64, 3 layers, 32 positions, CLIP's 49,408-token BPE (~3.3M params, 3.2M of them the
token embedding); DDIM with SD's scaled-linear betas, epsilon prediction.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import try_to_load_from_cache
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as transformers_logging

from .device import resolve_device, resolve_dtype
from .errors import ModelUnavailableError
from .hub import hf_hub_cache_dir, hub_offline, offline_remedy, unreachable_reason
from .tokenizer import build_clip_tokenizer

logger = logging.getLogger(__name__)

TINY_SD_CONFIG_DIR = Path(__file__).resolve().parent / "tiny_configs" / "sd"
#: the shipped tiny SD pipeline directory, wherever the package is and whatever the cwd
TINY_SD_DIR = Path(__file__).resolve().parent / "weights" / "diclip-tiny-sd"
DEFAULT_TINY_SD = "diclip-tiny-sd-d4"  # the shipped architecture; the other files are ablations
#: params key users set to point at a local SD pipeline directory (quoted in error messages).
SD_MODEL_PARAM = "models.sd.model"
_PIPELINE_INDEX = "model_index.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKENIZER_KEYS = frozenset({"model_max_length", "pad_token"})


@dataclass(frozen=True)
class TinySDConfig:
    """Constructor arguments of each tiny SD component, as read from one JSON file.

    ``vae``/``unet`` go to ``AutoencoderKL``/``UNet2DConditionModel``, ``text_encoder`` to
    ``transformers.CLIPTextConfig``, ``scheduler`` to ``DDIMScheduler``, ``tokenizer`` holds
    ``model_max_length`` and ``pad_token``. Unknown keys and inconsistent sizes are rejected at
    construction, naming the offending key.
    """

    name: str
    vae: Mapping[str, Any]
    unet: Mapping[str, Any]
    text_encoder: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    tokenizer: Mapping[str, Any]

    def __post_init__(self) -> None:
        allowed = {
            "vae": _init_keys(AutoencoderKL),
            "unet": _init_keys(UNet2DConditionModel),
            "text_encoder": frozenset(CLIPTextConfig().to_dict()),
            "scheduler": _init_keys(DDIMScheduler),
            "tokenizer": _TOKENIZER_KEYS,
        }
        for section, keys in allowed.items():
            given = getattr(self, section)
            unknown = sorted(set(given) - keys)
            if unknown:
                raise ValueError(
                    f"tiny SD config {self.name!r}: unknown {section} keys {unknown}; valid: {sorted(keys)}"
                )
            object.__setattr__(self, section, MappingProxyType(dict(given)))
        self._check_sizes()

    def _check_sizes(self) -> None:
        text_width = self.text_encoder.get("hidden_size", CLIPTextConfig().hidden_size)
        positions = self.text_encoder.get("max_position_embeddings", CLIPTextConfig().max_position_embeddings)
        latent = self.vae.get("latent_channels", 4)
        problems = []
        cross = self.unet.get("cross_attention_dim")
        if cross != text_width:
            problems.append(f"unet.cross_attention_dim={cross} != text_encoder.hidden_size={text_width}")
        if not (self.unet.get("in_channels") == self.unet.get("out_channels") == latent):
            problems.append(f"unet in/out channels must equal vae.latent_channels={latent}")
        if self.tokenizer.get("model_max_length", 0) > positions:
            problems.append(f"tokenizer.model_max_length exceeds text_encoder.max_position_embeddings={positions}")
        if problems:
            raise ValueError(f"tiny SD config {self.name!r} is inconsistent: " + "; ".join(problems))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> TinySDConfig:
        """Read a config file (sections ``vae``, ``unet``, ``text_encoder``, ``scheduler``, ``tokenizer``).

        A variant names another config in the same directory with ``"extends"`` and gives only the
        keys it changes, per section: an ablation stays one line away from its base, and a change
        to the base reaches every variant.
        """
        path = Path(path)
        return cls(name=path.stem, **_config_sections(path, seen=()))


def _config_sections(path: Path, *, seen: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    """The five sections of a config file, with an ``extends`` chain resolved (keys overridden per section)."""
    if path in seen:
        raise ValueError(f"{path}: 'extends' loops back through {[p.stem for p in seen]}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    base_name = raw.pop("extends", None)
    sections = {"vae", "unet", "text_encoder", "scheduler", "tokenizer"}
    if base_name is None:
        if set(raw) != sections:
            raise ValueError(f"{path}: expected sections {sorted(sections)}, got {sorted(raw)}")
        return raw
    if not set(raw) <= sections:
        raise ValueError(f"{path}: unknown sections {sorted(set(raw) - sections)}; expected some of {sorted(sections)}")
    base_path = path.parent / f"{base_name}.json"
    if not base_path.is_file():
        raise ValueError(f"{path}: extends {base_name!r}, but {base_path} does not exist")
    merged = _config_sections(base_path, seen=(*seen, path))
    for section, overrides in raw.items():
        merged[section] = {**merged[section], **overrides}
    return merged


def list_tiny_sd_configs() -> list[str]:
    """Names of the tiny SD configs shipped in ``tiny_configs/sd``."""
    return sorted(p.stem for p in TINY_SD_CONFIG_DIR.glob("*.json"))


def load_tiny_sd_config(name: str = DEFAULT_TINY_SD) -> TinySDConfig:
    """The shipped tiny SD config ``name`` (see :func:`list_tiny_sd_configs`)."""
    path = TINY_SD_CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown tiny SD config {name!r}; available: {list_tiny_sd_configs()}")
    return TinySDConfig.from_json(path)


def build_tiny_stable_diffusion(
    config: TinySDConfig, tokenizer_dir: str | os.PathLike[str], *, seed: int = 0
) -> StableDiffusionPipeline:
    """Construct an untrained SD pipeline from ``config`` (real diffusers/transformers classes).

    ``tokenizer_dir`` receives CLIP's ``vocab.json``/``merges.txt`` (built offline from open_clip's
    BPE table) unless they are already there. Weights are initialised under ``seed`` without
    disturbing the global RNG. No safety checker or feature extractor.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**config.vae)
        unet = UNet2DConditionModel(**config.unet)
        text_encoder = CLIPTextModel(CLIPTextConfig(**config.text_encoder))
    tokenizer = build_clip_tokenizer(tokenizer_dir, **config.tokenizer)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**config.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    logger.info(
        "built tiny SD %r: vae %d, unet %d, text encoder %d parameters; %d self-attention layers",
        config.name, _n_params(vae), _n_params(unet), _n_params(text_encoder), len(self_attention_layers(unet)),
    )
    return pipe


def load_stable_diffusion(
    model_id_or_path: str | os.PathLike[str],
    *,
    device: str = "auto",
    precision: str = "auto",
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress_bar: bool = False,
) -> StableDiffusionPipeline:
    """Load a ``StableDiffusionPipeline`` from a hub id or a local ``save_pretrained`` directory.

    Args:
        model_id_or_path: an existing local directory containing ``model_index.json``, or a hub id.
        device, precision: see :mod:`pipeline.models.device`; weights are cast while loading, then moved.
        revision: hub revision (branch, tag or commit) for a hub id.
        local_files_only: ``None`` follows ``HF_HUB_OFFLINE``; ``True`` never contacts the hub.
        cache_dir: hub cache; defaults to huggingface_hub's (``HF_HUB_CACHE`` / ``$HF_HOME/hub``).
        progress_bar: show diffusers' per-step progress bar during generation.

    Raises:
        ModelUnavailableError: the directory does not exist or is not a pipeline, or the hub id is
            neither cached nor downloadable.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    source = str(model_id_or_path)
    local = Path(source).expanduser()
    hf_cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache_dir()
    offline = hub_offline() if local_files_only is None else bool(local_files_only)
    looked_in = [f"local directory {local.resolve()}"]
    if local.exists():
        if not (local / _PIPELINE_INDEX).is_file():
            raise _unavailable(source, f"{local} is not a diffusers pipeline directory (no {_PIPELINE_INDEX}).",
                               looked_in, hf_cache, offline) from None
        source = str(local)
    elif _REPO_ID.match(source):
        looked_in.append(f"HF hub cache {hf_cache} (repo {source}, revision {revision or 'main'})")
        cached = isinstance(
            try_to_load_from_cache(source, _PIPELINE_INDEX, cache_dir=str(hf_cache), revision=revision), str
        )
        unreachable = None if offline else unreachable_reason()
        if unreachable:
            logger.warning("Hugging Face hub unreachable (%s); using the local cache only", unreachable)
        if not cached and (offline or unreachable):
            why = ("the hub is offline (HF_HUB_OFFLINE is set or local_files_only=True)" if offline
                   else f"the hub is unreachable: {unreachable}")
            raise _unavailable(source, f"not in the local hub cache, and {why}, so no download was attempted.",
                               looked_in, hf_cache, offline) from None
        offline = offline or unreachable is not None
    else:
        raise _unavailable(source, "the local directory does not exist (and the name is not a hub id).",
                           looked_in, hf_cache, offline) from None
    try:
        with _loading_bars(progress_bar):
            pipe = StableDiffusionPipeline.from_pretrained(
                source,
                revision=revision,
                cache_dir=str(hf_cache),
                local_files_only=offline,
                safety_checker=None,
                requires_safety_checker=False,
                # cast while loading (not with .to() afterwards) so diffusers keeps the modules
                # it marks fp32-only in fp32.
                **{_DTYPE_KWARG: dtype},
                # without accelerate, diffusers falls back to ordinary loading anyway but warns once per
                # component; ask for that loading outright so the logs stay readable
                **({} if _HAS_ACCELERATE else {"low_cpu_mem_usage": False}),
            )
    except OSError as err:  # hub/cache failures: LocalEntryNotFoundError, HTTP and connection errors
        raise _unavailable(source, f"loading failed ({type(err).__name__}: {err})", looked_in, hf_cache,
                           offline) from None
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=not progress_bar)
    logger.info("loaded Stable Diffusion %s on %s/%s", source, dev, dtype)
    return pipe


def untrained_unet(unet: UNet2DConditionModel, seed: int = 0) -> UNet2DConditionModel:
    """A UNet of ``unet``'s config with fresh random weights (seeded by ``seed``, global RNG untouched),
    in ``unet``'s dtype and on its device, in eval mode: the untrained-UNet baseline."""
    param = next(unet.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = UNet2DConditionModel.from_config(unet.config)
    if param.dtype != torch.float32:
        fresh = fresh.to(dtype=param.dtype)
    return fresh.to(param.device).eval()


def self_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Module paths of the UNet's self-attention layers (``...attn1``), in registration order.

    These are the layers whose probability maps Stage A captures; ``attn2`` are the text
    cross-attentions. Keys match diffusers' ``attn_processors`` without the ``.processor`` suffix.
    """
    return [name for name, _ in unet.named_modules() if name.endswith(".attn1")]


def _unavailable(
    source: str, reason: str, looked_in: list[str], hf_cache: Path, offline: bool
) -> ModelUnavailableError:
    remedies = [
        f"Set `{SD_MODEL_PARAM}: /path/to/sd-2-1-base` to a local diffusers pipeline directory (one "
        "written by StableDiffusionPipeline.save_pretrained, or a copied hub snapshot with "
        f"{_PIPELINE_INDEX}).",
    ]
    if _REPO_ID.match(source):
        remedies.append(
            f"On a machine with internet run `hf download {source} --exclude '*.ckpt' --cache-dir {hf_cache}` "
            "(older huggingface_hub: `huggingface-cli download ...`) and copy that cache directory here "
            "(or point HF_HOME / HF_HUB_CACHE at it)."
        )
        if offline:
            remedies.append(offline_remedy())
    return ModelUnavailableError(f"Stable Diffusion {source!r}", reason=reason, looked_in=looked_in, remedies=remedies)


@contextlib.contextmanager
def _loading_bars(enabled: bool) -> Iterator[None]:
    """Show or hide diffusers'/transformers' loading progress bars, restoring their state after."""
    libs = (diffusers_logging, transformers_logging)
    before = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        lib.enable_progress_bar() if enabled else lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libs, before):
            lib.enable_progress_bar() if was else lib.disable_progress_bar()


def _dtype_kwarg() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` in recent diffusers, ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (exists once renamed)
    except ImportError:
        return "torch_dtype"
    return "dtype"


_DTYPE_KWARG = _dtype_kwarg()
_HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


def _init_keys(cls: type) -> frozenset[str]:
    params = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(name for name, p in params.items() if name != "self" and p.kind in kinds)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
