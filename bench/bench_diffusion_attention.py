"""Benchmark Stage A's capture on an SD-2.1-sized UNet (random weights, built from its config) on the CPU.

    python bench/bench_diffusion_attention.py                 # bf16, 512 px, 3 timed repeats (~10 min on 1 core)
    python bench/bench_diffusion_attention.py --precision fp32 --repeats 2 --naive

Measures, each memory figure in a fresh process (peak RSS reset after the UNet is built):
- peak memory of one capture + aggregation forward (cluster grid 64, then the 20x20 attention
  grid), total and above the loaded UNet; the same for a bare forward (diffusers' default SDPA
  processors, no hooks) and, with --naive, for a naive capture that keeps every self-attention
  layer's full per-head probabilities in fp32 and aggregates after the forward;
- time of a capture forward as a ratio to a bare forward (alternating, after one warm-up each,
  median of --repeats);
- ACR time at the 64x64 cluster grid, and stored bytes per image (an ImageStore written with the
  stage's array layout: zarr v3 defaults, compressed; and raw).
Threads: --threads (default 1). Results go to stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# stabilityai/stable-diffusion-2-1-base unet/config.json (the keys that shape the network)
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True, upcast_attention=False,
)
# stabilityai/stable-diffusion-2-1-base vae/config.json: the key that sets the downsampling (x8)
SD21_BASE_VAE = dict(block_out_channels=[128, 256, 512, 512])
CLUSTER_GRID, ATTENTION_GRID, TIMESTEP = 64, 20, 300


def _rss_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers only what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def _setup(precision: str, size: int):
    import torch
    from diffusers import UNet2DConditionModel

    from pipeline.diffusion.capture import vae_factor_from_config

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype: no fp32 copy of the weights
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            unet = UNet2DConditionModel(**SD21_BASE_UNET).eval()
    finally:
        torch.set_default_dtype(default)
    g = torch.Generator().manual_seed(0)
    latent = size // vae_factor_from_config(SD21_BASE_VAE)
    latents = torch.randn(1, 4, latent, latent, generator=g)
    text = torch.randn(1, 77, 1024, generator=g)
    return unet, latents, text


def _bare(unet, latents, text):
    import torch

    p = next(unet.parameters())
    with torch.no_grad():
        unet(latents.to(p.dtype), torch.tensor([TIMESTEP]), encoder_hidden_states=text.to(p.dtype), return_dict=False)


def _capture(unet, latents, text):
    from pipeline.diffusion.capture import capture_self_attention, resample_attention

    agg = capture_self_attention(unet, latents, text, TIMESTEP, grid=CLUSTER_GRID, noise_seed=0)
    small = resample_attention(agg, (CLUSTER_GRID, CLUSTER_GRID), ATTENTION_GRID)
    return agg, small


def _naive(unet, latents, text):
    """Keep every attn1 layer's per-head probabilities in fp32 during the forward, aggregate after."""
    import math

    import torch
    from diffusers.models.attention_processor import AttnProcessor

    from pipeline.diffusion.capture import self_attention_processor_names, resample_attention

    kept: list[torch.Tensor] = []

    class Keep(AttnProcessor):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            orig = attn.get_attention_scores

            def scores(q, k, mask=None):
                probs = orig(q, k, mask)
                kept.append(probs.float())  # (heads, n, n) fp32
                return probs

            attn.get_attention_scores = scores
            try:
                return super().__call__(attn, hidden_states, *args, **kwargs)
            finally:
                del attn.get_attention_scores

    original = dict(unet.attn_processors)
    names = set(self_attention_processor_names(unet))
    unet.set_attn_processor({k: Keep() if k in names else v for k, v in original.items()})
    try:
        _bare(unet, latents, text)
    finally:
        unet.set_attn_processor(original)
    total, weight = None, 0.0
    for probs in kept:
        side = int(math.isqrt(probs.shape[-1]))
        up = resample_attention(probs.mean(0, keepdim=True), (side, side), CLUSTER_GRID)
        total = up * side if total is None else total + up * side
        weight += side
    return total / weight


def worker(mode: str, precision: str, size: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    unet, latents, text = _setup(precision, size)
    import gc

    gc.collect()
    out: dict = {"mode": mode, "rss_after_build_gb": round(_rss_gb("VmRSS"), 3)}
    if mode == "time":
        _bare(unet, latents, text)
        _capture(unet, latents, text)
        bare, cap = [], []
        for _ in range(repeats):
            t = time.perf_counter(); _bare(unet, latents, text); bare.append(time.perf_counter() - t)  # noqa: E702
            t = time.perf_counter(); _capture(unet, latents, text); cap.append(time.perf_counter() - t)  # noqa: E702
        out.update(bare_s=bare, capture_s=cap, ratio=statistics.median(cap) / statistics.median(bare),
                   ratio_per_pair=[c / b for b, c in zip(bare, cap)])
        return out
    _reset_peak()
    base = _rss_gb("VmRSS")
    t = time.perf_counter()
    result = {"bare": _bare, "capture": _capture, "naive": _naive}[mode](unet, latents, text)
    out["seconds"] = time.perf_counter() - t
    out["peak_gb"] = round(_rss_gb("VmHWM"), 3)
    out["peak_above_model_gb"] = round(out["peak_gb"] - base, 3)
    if mode == "capture":
        out.update(_acr_and_bytes(result[0][0], result[1][0]))
    return out


def _acr_and_bytes(agg, small) -> dict:
    import numpy as np

    from pipeline.diffusion.acr import ACRConfig, acr, pad_soft
    from pipeline.store.image_store import ArraySpec, ImageStore

    config = ACRConfig()  # the diffusion_attention defaults
    t = time.perf_counter()
    _reset_peak()
    base = _rss_gb("VmRSS")
    r = acr(agg.numpy(), CLUSTER_GRID, config)
    acr_s = time.perf_counter() - t
    acr_peak = _rss_gb("VmHWM") - base
    values = {"soft": pad_soft(r.soft, config.max_clusters).astype(np.float16), "hard": r.hard.astype(np.uint8),
              "k": np.int32(r.k), "attention": small.numpy().astype(np.float16)}
    # the stage's layout (stages/diffusion_attention.py): soft, hard, k, attention per image
    G, g = CLUSTER_GRID, ATTENTION_GRID
    specs = (ArraySpec("soft", (config.max_clusters, G, G), "float16"), ArraySpec("hard", (G, G), "uint8"),
             ArraySpec("k", (), "int32"), ArraySpec("attention", (g * g, g * g), "float16"))
    n = 4
    with tempfile.TemporaryDirectory() as tmp:
        store = ImageStore.create_or_resume(Path(tmp) / "d.zarr", ids=[f"i{i}" for i in range(n)], specs=specs,
                                            key="bench", attrs={"stage": "bench"}, shard_images=n)
        for i in range(n):
            store.stage_image(i, values, bytes(32))
        for block in store.blocks():
            store.pack_block(block)
        arrays = sum(p.stat().st_size for s in specs for p in (Path(tmp) / "d.zarr" / s.name).rglob("*") if p.is_file())
    raw = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs)
    return {"acr_s": acr_s, "acr_peak_above_gb": round(acr_peak, 3), "acr_k": r.k,
            "stored_bytes_per_image": arrays / n, "raw_bytes_per_image": raw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive", action="store_true", help="also measure the naive fp32 capture of all layers")
    ap.add_argument("--modes", default=None, help="comma list among bare,capture,naive,time (default: all asked)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.precision, args.size, args.repeats, args.threads)))
        return
    modes = args.modes.split(",") if args.modes else ["bare", "capture", *(["naive"] if args.naive else []), "time"]
    results = {"precision": args.precision, "size": args.size, "threads": args.threads, "cluster_grid": CLUSTER_GRID,
               "attention_grid": ATTENTION_GRID}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for mode in modes:
        cmd = [sys.executable, __file__, "--worker", mode, "--precision", args.precision, "--size", str(args.size),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(results[mode]), flush=True)
    if "capture" in results and "time" in results:
        c, t = results["capture"], results["time"]
        print(f"\nSD-2.1-base UNet, {args.size} px, {args.precision}, {args.threads} thread(s):")
        print(f"  capture+aggregation peak: {c['peak_gb']:.2f} GiB total, {c['peak_above_model_gb']:.2f} GiB above the loaded UNet"
              + (f" (bare forward {results['bare']['peak_gb']:.2f} / {results['bare']['peak_above_model_gb']:.2f})" if "bare" in results else "")
              + (f" (naive {results['naive']['peak_gb']:.2f} / {results['naive']['peak_above_model_gb']:.2f})" if "naive" in results else ""))
        print(f"  time ratio capture / bare forward: {t['ratio']:.3f} (median of {args.repeats})")
        print(f"  ACR at {CLUSTER_GRID}x{CLUSTER_GRID}: {c['acr_s']:.2f} s; stored bytes per image: "
              f"{c['stored_bytes_per_image'] / 1024:.0f} KiB (raw {c['raw_bytes_per_image'] / 1024:.0f} KiB)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
