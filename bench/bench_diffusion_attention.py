"""Benchmark Stage A's per-image work on an SD-2.1-sized UNet (random weights, built from its config) on the CPU.

    python bench/bench_diffusion_attention.py                          # both recipes, bf16, 1 thread, 3 repeats
    python bench/bench_diffusion_attention.py --recipes diclip --repeats 2 --out bench/results.json
    python bench/bench_diffusion_attention.py --recipes acr --size-acr 512 --repeats 1

What is measured per recipe (the configs are the voc preset's, i.e. DiCLIP on SD 2.1-base; timestep 101):
- `diclip` at --size-diclip px (default 320, latent 40): the tapped forward (q, k of the correlation and
  transition layers' heads, the forward stopped after the last tapped layer) + correlation A at g = 20
  + KL assignment + cluster rows + transition P (sharpened, top-k);
- `acr` at --size-acr px (default 512, latent 64): every self-attention layer aggregated at the
  latent grid + ACR clustering + rows at g + the same transition layer's P (64x64 = 4096 tokens).
This mirrors pipeline.diffusion.recipes.StageAMaps.__call__ after its `latents()` step: latents and
the text embedding are torch.randn (no VAE, no text encoder needed).

Each measurement runs in a fresh process (peak RSS: /proc/self/status VmHWM, reset after the UNet is
built through /proc/self/clear_refs):
- `bare`: peak of one plain UNet forward (diffusers' default processors), total and above the UNet;
- `maps`: peak and seconds of one per-image call, total and above the UNet; then the stored bytes per
  image (an ImageStore with the stage's layout: clusters, k, rows (max_k=16, g^2), transition values
  and index (t^2, k_t=64), kept, truncated; compressed data on disk and raw) and P's kept mass (mean
  over rows of top_k_rows(P, k).kept) and truncated-row fraction for k = 64, 128, 256;
- `time`: one warm-up of each, then --repeats alternating (bare forward, per-image call) pairs;
  the ratio of medians and the per-pair ratios.
Prints one JSON line per measurement, then a summary per recipe; --out writes everything as JSON.
Threads: --threads (default 1; torch, OMP and MKL).
"""

from __future__ import annotations

import argparse
import json
import math
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
# the voc preset's `timestep: null`: SD 2.1-base's PNDM at 50 steps, entry 45 (sd_config.inference_timestep)
TIMESTEP = 101
TOPKS = (64, 128, 256)  # P's kept mass is reported for these k (the stage stores the preset's, 64)
STORE_IMAGES = 8  # images written to the benchmark store (one shard)


def _rss_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers only what follows."""
    Path("/proc/self/clear_refs").write_text("5")


class Setup:
    """The UNet, random inputs and the stage's configs for one recipe at one image size."""

    def __init__(self, recipe: str, precision: str, size: int) -> None:
        import torch
        from diffusers import UNet2DConditionModel

        from dataclasses import replace

        from pipeline.diffusion.sd_input import vae_factor_from_config
        from pipeline.diffusion.recipes import max_clusters
        from pipeline.params import parse_params
        from pipeline.params.presets import load_preset

        cfg = parse_params(load_preset("voc")).diffusion_attention  # DiCLIP on SD 2.1-base
        self.recipe, self.grid = recipe, cfg.grid
        self.diclip, self.transition, self.acr_config = cfg.diclip, cfg.transition, cfg.acr
        self.block_bytes = cfg.acr.block_mb << 20
        self.max_k = max_clusters(replace(cfg, recipe=recipe))
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build directly in the target dtype: no fp32 copy of the weights
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.unet = UNet2DConditionModel(**SD21_BASE_UNET).eval()
        finally:
            torch.set_default_dtype(default)
        g = torch.Generator().manual_seed(0)
        self.latent = size // vae_factor_from_config(SD21_BASE_VAE)
        self.cluster_grid = cfg.acr.cluster_grid or self.latent
        self.latents = torch.randn(1, 4, self.latent, self.latent, generator=g)  # stands for the noised VAE latent
        self.text = torch.randn(1, 77, 1024, generator=g)  # stands for the empty prompt's embedding


def _bare(s: Setup) -> None:
    """One plain UNet forward (what every recipe is compared with)."""
    import torch

    p = next(s.unet.parameters())
    with torch.no_grad():
        s.unet(s.latents.to(p.dtype), torch.tensor([TIMESTEP]), encoder_hidden_states=s.text.to(p.dtype),
               return_dict=False)


def _maps(s: Setup):
    """StageAMaps.__call__ after latents(): (the stored values of one image, P before top-k)."""
    import numpy as np
    import torch

    from pipeline.diffusion.acr import acr
    from pipeline.diffusion.capture import capture_self_attention, resample_attention, resize_grids
    from pipeline.diffusion.correlation import cluster_rows, layer_correlation
    from pipeline.diffusion.kl_assign import kl_assign
    from pipeline.diffusion.selected import LayerTap, capture_layers
    from pipeline.diffusion.transition import head_probabilities, sharpen_transition, top_k_rows
    from pipeline.grids import square_side

    g, tr = s.grid, s.transition
    tap = LayerTap(tr.layer, tr.heads)
    with torch.no_grad():
        if s.recipe == "diclip":
            corr = LayerTap(s.diclip.layer, s.diclip.heads)
            captured = capture_layers(s.unet, s.latents, s.text, TIMESTEP, [corr, tap])
            c = captured[corr.path]
            side = square_side(c.tokens, "attention tokens")
            a = layer_correlation(c.query[0], c.key[0], (side, side), g, s.diclip.threshold)
            ids, k = kl_assign(a, g, anchor_stride=s.diclip.anchor_stride, rounds=s.diclip.rounds,
                               precision=s.diclip.kl_precision)
        else:
            captured, G = {}, s.cluster_grid
            attention = capture_self_attention(s.unet, s.latents, s.text, TIMESTEP, grid=G, noise_seed=None,
                                               block_bytes=s.block_bytes, taps=[tap], sink=captured)
            result = acr(attention[0].cpu().numpy(), G, s.acr_config, threads=torch.get_num_threads())
            soft = resize_grids(torch.from_numpy(result.soft).float(), (g, g))
            ids = torch.unique(soft.argmax(0).reshape(-1), return_inverse=True)[1]
            k = int(ids.max()) + 1
            a = resample_attention(attention, (G, G), g)[0]
        rows = np.zeros((s.max_k, g * g), dtype=np.float16)
        rows[:k] = cluster_rows(a.float(), ids, k).cpu().numpy().astype(np.float16)
        t = captured[tap.path]
        p = sharpen_transition(head_probabilities(t.query[0], t.key[0], t.scale), tr.sharpen)
        sparse = top_k_rows(p.cpu(), tr.topk)
    values = {
        "clusters": ids.reshape(g, g).cpu().numpy().astype(np.uint8), "k": np.int32(k), "rows": rows,
        "transition_values": sparse.values.numpy().astype(np.float16),
        "transition_index": sparse.index.numpy().astype(np.int16),
        "transition_kept": np.float32(sparse.kept.mean()),
        "transition_truncated": np.float32(sparse.truncated.float().mean()),
    }
    return values, p


def _stored_bytes(s: Setup, values: dict, t: int) -> dict:
    """Bytes per image of the stage's arrays: compressed shard data on disk (zarr metadata left out) and raw."""
    import numpy as np

    from pipeline.store.image_store import ArraySpec, ImageStore

    g, k_t = s.grid, min(s.transition.topk, t * t)
    specs = (ArraySpec("clusters", (g, g), "uint8"), ArraySpec("k", (), "int32"),
             ArraySpec("rows", (s.max_k, g * g), "float16"),
             ArraySpec("transition_values", (t * t, k_t), "float16"), ArraySpec("transition_index", (t * t, k_t), "int16"),
             ArraySpec("transition_kept", (), "float32"), ArraySpec("transition_truncated", (), "float32"))
    n = STORE_IMAGES
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.zarr"
        store = ImageStore.create_or_resume(path, ids=[f"i{i}" for i in range(n)], specs=specs, key="bench",
                                            attrs={"stage": "bench"}, shard_images=n)
        for i in range(n):
            store.stage_image(i, values, bytes(32))
        for block in store.blocks():
            store.pack_block(block)
        per_array = {spec.name: sum(p.stat().st_size for p in (path / spec.name).rglob("*")
                                    if p.is_file() and p.name != "zarr.json") / n for spec in specs}
    raw = {spec.name: int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize for spec in specs}
    return {"stored_bytes_per_image": sum(per_array.values()), "raw_bytes_per_image": sum(raw.values()),
            "stored_bytes_by_array": per_array, "raw_bytes_by_array": raw}


def _transition_stats(p) -> dict:
    """P's kept mass and truncated-row fraction for each k of TOPKS."""
    from pipeline.diffusion.transition import top_k_rows

    out = {}
    for k in TOPKS:
        sparse = top_k_rows(p, k)
        out[str(k)] = {"kept": float(sparse.kept.mean()), "truncated": float(sparse.truncated.float().mean())}
    return out


def worker(recipe: str, mode: str, precision: str, size: int, repeats: int, threads: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(threads)
    s = Setup(recipe, precision, size)
    gc.collect()
    out: dict = {"recipe": recipe, "mode": mode, "size": size, "latent": s.latent,
                 "rss_after_build_gb": round(_rss_gb("VmRSS"), 3)}
    if mode == "time":
        _bare(s)
        _maps(s)
        bare, maps = [], []
        for _ in range(repeats):
            t = time.perf_counter(); _bare(s); bare.append(time.perf_counter() - t)  # noqa: E702
            t = time.perf_counter(); _maps(s); maps.append(time.perf_counter() - t)  # noqa: E702
        out.update(bare_s=bare, maps_s=maps, ratio=statistics.median(maps) / statistics.median(bare),
                   ratio_per_pair=[m / b for b, m in zip(bare, maps)])
        return out
    _reset_peak()
    base = _rss_gb("VmRSS")
    t = time.perf_counter()
    result = _bare(s) if mode == "bare" else _maps(s)
    out["seconds"] = time.perf_counter() - t
    out["peak_gb"] = round(_rss_gb("VmHWM"), 3)
    out["peak_above_model_gb"] = round(out["peak_gb"] - base, 3)
    if mode == "maps":
        values, p = result
        side = math.isqrt(p.shape[-1])
        out.update(k=int(values["k"]), transition_grid=side, transition_k=int(values["transition_values"].shape[-1]),
                   **_stored_bytes(s, values, side), transition_topk=_transition_stats(p))
    return out


def _summary(recipe: str, r: dict, precision: str, threads: int, repeats: int) -> list[str]:
    m, lines = r.get("maps"), []
    size = next(v["size"] for v in r.values())
    lines.append(f"{recipe}: SD-2.1-base UNet (random weights), {size} px, {precision}, {threads} thread(s)")
    if m:
        bare = r.get("bare")
        lines.append(f"  per-image peak: {m['peak_gb']:.2f} GiB total, {m['peak_above_model_gb']:.2f} GiB above the "
                     f"loaded UNet ({m['rss_after_build_gb']:.2f} GiB)"
                     + (f"; bare forward {bare['peak_gb']:.2f} / {bare['peak_above_model_gb']:.2f}" if bare else ""))
        lines.append(f"  stored bytes per image: {m['stored_bytes_per_image'] / 1024:.1f} KiB compressed "
                     f"(raw {m['raw_bytes_per_image'] / 1024:.1f} KiB); K = {m['k']}, P on "
                     f"{m['transition_grid']}x{m['transition_grid']} tokens, k_t = {m['transition_k']}")
        lines.append("  P kept mass / truncated rows: " + ", ".join(
            f"top{k} {v['kept']:.4f} / {v['truncated']:.3f}" for k, v in m["transition_topk"].items()))
    if "time" in r:
        t = r["time"]
        lines.append(f"  time per-image / bare forward: {t['ratio']:.3f} (median of {repeats}; per pair "
                     + ", ".join(f"{x:.3f}" for x in t["ratio_per_pair"])
                     + f"; bare median {statistics.median(t['bare_s']):.2f} s, per-image {statistics.median(t['maps_s']):.2f} s)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="diclip,acr", help="comma list among diclip,acr")
    ap.add_argument("--size-diclip", type=int, default=320, help="image size of the diclip recipe in px (latent = size / 8)")
    ap.add_argument("--size-acr", type=int, default=512, help="image size of the acr recipe in px")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="bare,maps,time", help="comma list among bare,maps,time")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # recipe:mode
    ap.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        recipe, mode = args.worker.split(":")
        print(json.dumps(worker(recipe, mode, args.precision, args.size, args.repeats, args.threads)))
        return
    recipes, modes = args.recipes.split(","), args.modes.split(",")
    for name, allowed in ((recipes, ("diclip", "acr")), (modes, ("bare", "maps", "time"))):
        if bad := [x for x in name if x not in allowed]:
            sys.exit(f"unknown {bad}; choose among {','.join(allowed)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: dict = {"precision": args.precision, "threads": args.threads, "repeats": args.repeats, "timestep": TIMESTEP}
    start = time.perf_counter()
    for recipe in recipes:
        size = args.size_diclip if recipe == "diclip" else args.size_acr
        results[recipe] = {}
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", f"{recipe}:{mode}", "--precision", args.precision,
                   "--size", str(size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode:
                sys.exit(f"{recipe} {mode} failed:\n{proc.stderr[-3000:]}")
            results[recipe][mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(recipe, mode, json.dumps(results[recipe][mode]), flush=True)
    results["wall_s"] = time.perf_counter() - start
    print()
    for recipe in recipes:
        print("\n".join(_summary(recipe, results[recipe], args.precision, args.threads, args.repeats)))
    print(f"wall time {results['wall_s']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
