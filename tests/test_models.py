"""Model layer: real/tiny CLIP and Stable Diffusion through one loading path, offline errors.

Everything runs on the CPU with tiny models and never touches the network: tests that could reach
a hub set HF_HUB_OFFLINE (read at call time by the loaders) and, where a download would be the
failure mode, replace the download or socket call with one that fails the test.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip import pretrained as oc_pretrained
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU
from PIL import Image
from transformers import CLIPTokenizer

from pipeline.models import (
    TINY_CLIP_DIR,
    TINY_SD_DIR,
    ModelUnavailableError,
    TinySDConfig,
    build_clip_tokenizer,
    build_tiny_stable_diffusion,
    list_clip_models,
    load_clip,
    load_stable_diffusion,
    load_tiny_sd_config,
    resolve_device,
    resolve_dtype,
    save_clip_checkpoint,
    self_attention_layers,
    untrained_unet,
)
from pipeline.models import clip as clip_module
from pipeline.models import diffusion as diffusion_module
from pipeline.models import hub as hub_module
from pipeline.models.diffusion import list_tiny_sd_configs

SD_SECTIONS = ("vae", "unet", "text_encoder", "scheduler", "tokenizer")

TINY_CLIP = "diclip-tiny-vit-p8-64"
SENTENCES = [
    "a photo of a cat.",
    "A clean origami Aeroplane!",
    "two dogs' toys, 3 balls & a   tvmonitor\n(in 2024)",
    "café naïve déjà-vu",
    "a " + "very " * 40 + "long sentence that is truncated",
    "",
]
_HF_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE")
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline hub with an empty HF_HOME under tmp; returns that HF_HOME."""
    for var in _HF_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _fake_hub_snapshot(cache: Path, repo_id: str, files_from: Path | None = None) -> Path:
    """An HF hub cache entry (refs/main -> snapshots/<commit>) as huggingface_hub lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if files_from is not None:
        shutil.copytree(files_from, snapshot)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# --- device / dtype ------------------------------------------------------------------------------


def test_resolve_device_rules(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(RuntimeError, match="only 1 CUDA device"):
        resolve_device("cuda:1")


def test_resolve_dtype_rules(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("fp32", cuda) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", "cuda:0") == torch.float16
    with pytest.raises(ValueError, match="not supported on the CPU"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="Unknown precision"):
        resolve_dtype("fp8", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="does not support bfloat16"):
        resolve_dtype("bf16", cuda)


# --- CLIP ----------------------------------------------------------------------------------------


def test_tiny_clip_is_registered():
    assert TINY_CLIP in list_clip_models()
    assert TINY_CLIP in open_clip.list_models()
    assert "ViT-B-16-quickgelu" in list_clip_models()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_tiny_clip_checkpoint_roundtrip(tmp_path, suffix):
    first = load_clip(TINY_CLIP, None, device="cpu", precision="fp32")
    assert not first.model.training
    assert not any(p.requires_grad for p in first.model.parameters())
    with torch.no_grad():  # other weights than the seeded random init, as a trained model's
        for param in first.model.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.01)
    path = save_clip_checkpoint(first.model, tmp_path / f"tiny{suffix}")
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))

    other = load_clip(TINY_CLIP, None, device="cpu")
    assert not torch.equal(other.model.visual.conv1.weight, first.model.visual.conv1.weight)

    loaded = load_clip(TINY_CLIP, str(path), device="cpu")
    assert loaded.pretrained == str(path)
    _assert_same_state(first.model, loaded.model)


def test_random_clip_weights_are_the_same_whatever_the_rng_and_leave_it_alone():
    """`pretrained: None` is one set of weights (its fingerprint says so): train and evaluate, or two runs, agree."""
    torch.manual_seed(1)
    first = load_clip(TINY_CLIP, None, device="cpu", precision="fp32").model
    after_first = torch.rand(3)
    torch.manual_seed(2)
    torch.rand(100)
    second = load_clip(TINY_CLIP, None, device="cpu", precision="fp32").model
    _assert_same_state(first, second)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_first)  # the caller's stream continues as if nothing was drawn


def test_tiny_clip_shapes_and_features():
    torch.manual_seed(0)
    clip = load_clip(TINY_CLIP, None, device="cpu")
    assert (clip.image_size, clip.patch_size, clip.embed_dim) == (64, 8, 128)
    assert clip.device == torch.device("cpu") and clip.dtype == torch.float32
    n_vision = sum(p.numel() for p in clip.model.visual.parameters())
    assert 0.8e6 < n_vision < 1.5e6

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    pixels = clip.preprocess(image)
    assert pixels.shape == (3, 64, 64)
    tokens = clip.tokenizer(["a photo of a circle", "a photo of a square"])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        image_features = clip.model.encode_image(torch.stack([pixels, pixels]))
        text_features = clip.model.encode_text(tokens)
    assert image_features.shape == (2, 128)
    assert text_features.shape == (2, 128)
    assert not torch.allclose(text_features[0], text_features[1])


def test_quickgelu_and_gelu_configs_differ():
    def activations(model: torch.nn.Module) -> set[type]:
        return {type(m) for m in model.modules() if isinstance(m, (torch.nn.GELU, QuickGELU))}

    # Built on the meta device: the architecture is what matters, not 150M random weights.
    gelu = open_clip.create_model("ViT-B-16", pretrained=None, device="meta")
    quick = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="meta")
    assert activations(gelu) == {torch.nn.GELU}
    assert activations(quick) == {QuickGELU}


@pytest.mark.timeout(60)
def test_openai_tag_without_quickgelu_is_refused(offline, monkeypatch):
    monkeypatch.setattr(oc_pretrained, "download_pretrained", _no_download)
    with pytest.raises(ValueError, match="ViT-B-16-quickgelu") as info:
        load_clip("ViT-B-16", "openai", device="cpu")
    assert "QuickGELU" in str(info.value)


def test_openai_style_local_checkpoints_are_refused(tmp_path):
    # OpenAI's release file name, whatever the content.
    named = tmp_path / "ViT-B-16.pt"
    torch.save({"state_dict": {}}, named)
    with pytest.raises(ValueError, match="ViT-B-16-quickgelu"):
        load_clip("ViT-B-16", str(named), device="cpu")

    # A TorchScript archive carrying OpenAI's `input_resolution` attribute, under any name.
    class OpenAILike(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_resolution = 224
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x) * self.input_resolution

    scripted = tmp_path / "weights.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, OpenAI's files are still JIT
        torch.jit.script(OpenAILike()).save(str(scripted))
    assert any("/code/" in n for n in zipfile.ZipFile(scripted).namelist())
    with pytest.raises(ValueError, match="QuickGELU"):
        load_clip("ViT-B-16", str(scripted), device="cpu")
    # A plain torch.save checkpoint with a neutral name is not mistaken for OpenAI's.
    neutral = tmp_path / "mine.pt"
    torch.save({"state_dict": {}}, neutral)
    assert not clip_module._is_openai_checkpoint(neutral)


def test_clip_bad_names_are_rejected():
    with pytest.raises(ValueError, match="Unknown CLIP architecture"):
        load_clip("no-such-arch", None, device="cpu")
    with pytest.raises(ValueError, match="known tags"):
        load_clip("ViT-B-16-quickgelu", "not_a_tag", device="cpu")
    with pytest.raises(ValueError, match="schema"):
        load_clip("hf-hub:org/repo", None, device="cpu")


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.mark.timeout(60)
def test_clip_missing_weights_offline(offline, monkeypatch, tmp_path):
    monkeypatch.setattr(oc_pretrained, "download_pretrained", _no_download)
    cache = tmp_path / "clip_cache"
    with pytest.raises(ModelUnavailableError) as info:
        load_clip("ViT-B-16-quickgelu", "openai", device="cpu", cache_dir=cache)
    err = info.value
    message = str(err)
    assert err.__cause__ is None and err.__suppress_context__
    assert "ViT-B-16-quickgelu" in message and "openai" in message
    assert str(cache) in message  # where it looked
    assert "timm/vit_base_patch16_clip_224.openai" in message
    assert "models.clip.pretrained" in message and "hf download" in message  # how to provide it
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(err, RuntimeError)


@pytest.mark.timeout(60)
def test_clip_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    for var in (*_HF_ENV, *_PROXY_ENV, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_module.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(oc_pretrained, "download_pretrained", _no_download)

    def refuse(address, timeout=None):
        raise OSError(f"network is down ({address[0]})")

    monkeypatch.setattr(hub_module.socket, "create_connection", refuse)
    with pytest.raises(ModelUnavailableError, match="unreachable.*network is down"):
        load_clip("ViT-B-16-quickgelu", "openai", device="cpu", cache_dir=tmp_path)


def test_clip_missing_local_checkpoint(tmp_path):
    missing = tmp_path / "nope" / "tiny.pt"
    with pytest.raises(ModelUnavailableError, match="does not exist") as info:
        load_clip(TINY_CLIP, str(missing), device="cpu")
    assert str(missing) in str(info.value)


@pytest.mark.timeout(60)
def test_clip_tag_loads_from_hub_cache_offline(offline, monkeypatch, tmp_path):
    """A tag whose file is already cached loads with the hub offline, with the tag's preprocessing."""
    torch.manual_seed(0)
    reference = load_clip(TINY_CLIP, None, device="cpu")
    cache = tmp_path / "hub"
    snapshot = _fake_hub_snapshot(cache, "diclip/tiny-clip")
    save_clip_checkpoint(reference.model, snapshot / "open_clip_pytorch_model.bin")
    tag = {"hf_hub": "diclip/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY_CLIP, {"shapes": tag})
    monkeypatch.setattr(oc_pretrained, "download_pretrained", _no_download)

    loaded = load_clip(TINY_CLIP, "shapes", device="cpu", cache_dir=cache)
    _assert_same_state(reference.model, loaded.model)
    normalize = loaded.preprocess.transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.25, 0.25, 0.25)


# --- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_matches_open_clip(tmp_path):
    context = 32
    tokenizer = build_clip_tokenizer(tmp_path / "tok", model_max_length=context)
    assert (tmp_path / "tok" / "vocab.json").is_file() and (tmp_path / "tok" / "merges.txt").is_file()
    assert len(tokenizer) == 49408
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407

    ours = tokenizer(SENTENCES, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    theirs = SimpleTokenizer(context_length=context)(SENTENCES)
    ids = ours.input_ids
    assert ids.shape == theirs.shape == (len(SENTENCES), context)
    for row, (a, b) in enumerate(zip(ids, theirs)):
        end = int((b == 49407).nonzero()[0]) + 1  # up to and including the end-of-text token
        assert torch.equal(a[:end], b[:end]), SENTENCES[row]
        # padding: <|endoftext|> here, 0 in open_clip (documented choice)
        assert (a[end:] == 49407).all() and (b[end:] == 0).all()
    assert (ids[1] == 256).any()  # "!" is an ordinary token, not swallowed as the pad token

    # transformers' constructor over the two files gives the same ids.
    direct = CLIPTokenizer(str(tmp_path / "tok" / "vocab.json"), str(tmp_path / "tok" / "merges.txt"))
    assert direct(SENTENCES[1]).input_ids == ours.input_ids[1][: len(direct(SENTENCES[1]).input_ids)].tolist()


# --- Stable Diffusion ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """The tiny pipeline built from its config, saved, and loaded back through the one loader."""
    root = tmp_path_factory.mktemp("tiny_sd")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        built = build_tiny_stable_diffusion(load_tiny_sd_config(), root / "tokenizer_files", seed=0)
        built.save_pretrained(root / "pipeline")
        loaded = load_stable_diffusion(root / "pipeline", device="cpu", precision="fp32")
    return built, loaded, root


def test_tiny_sd_roundtrip_is_exact(tiny_sd):
    built, loaded, _ = tiny_sd
    for name in ("vae", "unet", "text_encoder"):
        _assert_same_state(getattr(built, name), getattr(loaded, name))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(built.scheduler.config)
    assert loaded.safety_checker is None and loaded.feature_extractor is None
    a = built.tokenizer(SENTENCES, padding="max_length", max_length=32, truncation=True).input_ids
    b = loaded.tokenizer(SENTENCES, padding="max_length", max_length=32, truncation=True).input_ids
    assert a == b
    assert loaded.tokenizer.model_max_length == 32


def test_tiny_sd_is_seeded(tmp_path):
    config = load_tiny_sd_config()
    state = torch.random.get_rng_state()
    first = build_tiny_stable_diffusion(config, tmp_path / "tok", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    again = build_tiny_stable_diffusion(config, tmp_path / "tok", seed=0)
    other = build_tiny_stable_diffusion(config, tmp_path / "tok", seed=1)
    _assert_same_state(first.unet, again.unet)
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)


def test_untrained_unet_is_a_fresh_seeded_copy_of_the_config(tiny_sd):
    built, _, _ = tiny_sd
    unet = built.unet
    state = torch.random.get_rng_state()
    fresh = untrained_unet(unet)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert fresh is not unet and not fresh.training and public(fresh.config) == public(unet.config)
    assert fresh.dtype == unet.dtype and fresh.device == unet.device
    _assert_same_state(fresh, untrained_unet(unet, seed=0))
    assert not torch.equal(fresh.conv_in.weight, untrained_unet(unet, seed=1).conv_in.weight)
    other = copy.deepcopy(unet)  # other weights, same config: only the config is used
    with torch.no_grad():
        other.conv_in.weight.add_(1.0)
    _assert_same_state(fresh, untrained_unet(other))
    assert untrained_unet(other.to(torch.bfloat16)).dtype == torch.bfloat16


def test_shipped_weight_folders_are_absolute_and_resolved_from_the_package():
    package = Path(diffusion_module.__file__).resolve().parent
    assert TINY_CLIP_DIR == package / "weights" / "diclip-tiny-clip" and TINY_CLIP_DIR.is_absolute()
    assert TINY_SD_DIR == package / "weights" / "diclip-tiny-sd" and TINY_SD_DIR.is_absolute()


def test_tiny_sd_attention_layout(tiny_sd):
    _, pipe, _ = tiny_sd
    unet = pipe.unet
    self_attn = self_attention_layers(unet)
    assert len(self_attn) == 7  # down 2 + mid 1 + up 4, as SD 2.x's layout at toy size (SD 2.x: 16)
    modules = dict(unet.named_modules())
    text_width = pipe.text_encoder.config.hidden_size
    for name in self_attn:
        attn1, attn2 = modules[name], modules[name[: -len("attn1")] + "attn2"]
        assert not attn1.is_cross_attention
        assert attn2.is_cross_attention and attn2.to_k.in_features == text_width
        assert attn1.heads * 4 == attn1.to_q.out_features  # 4 channels per head (the shipped config)
    assert len(unet.attn_processors) == 2 * len(self_attn)


@pytest.mark.timeout(60)
def test_tiny_sd_text_to_image_runs(tiny_sd):
    _, pipe, _ = tiny_sd
    kwargs = dict(prompt="a photo of a circle", height=32, width=32, num_inference_steps=2, guidance_scale=7.5)
    images = pipe(**kwargs, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    latents = pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (1, 4, 8, 8)  # x4 VAE
    again = pipe(**kwargs, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(images, again)


def test_tiny_sd_config_is_validated():
    config = load_tiny_sd_config()
    parts = {s: dict(getattr(config, s)) for s in SD_SECTIONS}
    with pytest.raises(ValueError, match="unknown unet keys.*'attn_heads'"):
        TinySDConfig(name="bad", **{**parts, "unet": {**parts["unet"], "attn_heads": 2}})
    with pytest.raises(ValueError, match="unknown text_encoder keys"):
        TinySDConfig(name="bad", **{**parts, "text_encoder": {**parts["text_encoder"], "hiden_size": 64}})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        TinySDConfig(name="bad", **{**parts, "unet": {**parts["unet"], "cross_attention_dim": 32}})
    with pytest.raises(ValueError, match="Unknown tiny SD config"):
        load_tiny_sd_config("nope")
    with pytest.raises(TypeError):
        config.unet["layers_per_block"] = 2  # read-only


@pytest.mark.timeout(60)
def test_sd_hub_id_missing_offline(offline, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called while offline with nothing cached")

    monkeypatch.setattr(diffusion_module.StableDiffusionPipeline, "from_pretrained", no_load)
    with pytest.raises(ModelUnavailableError) as info:
        load_stable_diffusion("stabilityai/stable-diffusion-2-1-base", device="cpu")
    err, message = info.value, str(info.value)
    assert err.__cause__ is None and err.__suppress_context__
    assert "stabilityai/stable-diffusion-2-1-base" in message
    assert str(offline / "hub") in message  # the HF cache resolved from HF_HOME
    assert "models.sd.model" in message and "hf download" in message and "HF_HUB_OFFLINE" in message


@pytest.mark.timeout(60)
def test_sd_hub_unreachable_fails_fast(monkeypatch, tmp_path):
    for var in (*_HF_ENV, *_PROXY_ENV, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_module.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module.socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        load_stable_diffusion("stabilityai/stable-diffusion-2-1-base", device="cpu", cache_dir=tmp_path)


def test_sd_missing_local_dir(tmp_path):
    missing = tmp_path / "sd-2-1-base"
    with pytest.raises(ModelUnavailableError, match="does not exist") as info:
        load_stable_diffusion(missing, device="cpu")
    assert str(missing) in str(info.value) and "models.sd.model" in str(info.value)
    missing.mkdir()
    with pytest.raises(ModelUnavailableError, match="no model_index.json"):
        load_stable_diffusion(missing, device="cpu")


@pytest.mark.timeout(60)
def test_sd_hub_id_loads_from_cache_offline(tiny_sd, offline, tmp_path):
    built, _, root = tiny_sd
    cache = tmp_path / "hub"
    _fake_hub_snapshot(cache, "diclip/tiny-sd", files_from=root / "pipeline")
    pipe = load_stable_diffusion("diclip/tiny-sd", device="cpu", cache_dir=cache)
    _assert_same_state(built.unet, pipe.unet)


def test_tiny_sd_config_extends_a_base(tmp_path):
    base = load_tiny_sd_config()
    variant = tmp_path / "variant.json"
    (tmp_path / "base.json").write_text(json.dumps({s: dict(getattr(base, s)) for s in SD_SECTIONS}))
    variant.write_text(json.dumps({"extends": "base", "unet": {"attention_head_dim": [1, 2, 2]}}))
    config = TinySDConfig.from_json(variant)
    assert config.name == "variant" and config.unet["attention_head_dim"] == [1, 2, 2]
    assert {**config.unet, "attention_head_dim": base.unet["attention_head_dim"]} == dict(base.unet)
    assert all(getattr(config, s) == getattr(base, s) for s in SD_SECTIONS if s != "unet")
    # every shipped ablation is the shipped config with only its heads changed
    for name in list_tiny_sd_configs():
        other = load_tiny_sd_config(name)
        assert all(getattr(other, s) == getattr(base, s) for s in SD_SECTIONS if s != "unet"), name
        assert {**other.unet, "attention_head_dim": base.unet["attention_head_dim"]} == dict(base.unet), name
    variant.write_text(json.dumps({"extends": "missing"}))
    with pytest.raises(ValueError, match=r"variant\.json: extends 'missing'.*missing\.json does not exist"):
        TinySDConfig.from_json(variant)
    variant.write_text(json.dumps({"extends": "variant"}))
    with pytest.raises(ValueError, match="loops back"):
        TinySDConfig.from_json(variant)
    variant.write_text(json.dumps({"extends": "base", "unte": {}}))
    with pytest.raises(ValueError, match=r"unknown sections \['unte'\]"):
        TinySDConfig.from_json(variant)


def test_clip_normalisation_is_what_load_clip_gives_without_loading():
    from pipeline.models.clip import clip_normalisation, load_shipped_clip

    clip = load_shipped_clip()
    mean, std = clip_normalisation(clip.model_name, str(clip.pretrained))
    assert mean == tuple(clip.model.visual.preprocess_cfg["mean"]) and std == tuple(clip.model.visual.preprocess_cfg["std"])
