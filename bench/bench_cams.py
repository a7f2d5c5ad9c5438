"""Benchmark stage C's per-image CAM step on ViT-B/16 (random weights, built from its config) on the CPU.

    python bench/bench_cams.py [--threads 2] [--repeats 3] [--out FILE]

Per configuration (DiCLIP's path: surgery with R, text CAMs over 45 texts, affinity refinement,
RAR with a 1600 x 1600 P, labels at the image size; a 500 x 375 image): seconds per image, images
per second, and the ratio to the bare CLIP forwards the configuration needs (the same input sizes
and batch, the plain forward with resized position embeddings). Configurations: 1 scale at 320 px;
the same with PAR on the full-size scores; the same in batches of 4 images (per-image figures);
4 scales (1.0, 0.5, 1.5, 2.0) + flip. ExCEL's CPU figures at 2 threads (method.md, measured on its own code): 0.55 s raw CAM, 4.4 s
with refinement and PAR at full image size, 6.8 s for 4 scales x flip. Times are medians of --repeats
after one warm-up, all in one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXCEL_2_THREADS = {"raw CAM": 0.55, "refinement + PAR at full size": 4.4, "4 scales x flip": 6.8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import numpy as np
    import open_clip
    import torch

    from pipeline.cam.config import CamConfig
    from pipeline.clip_input import normalise_then_resize
    from pipeline.cam.pseudo_labels import ImageCams
    from pipeline.models.clip import input_normalisation
    from pipeline.cam.surgery import surgery_forward
    from pipeline.cam.text import encode_prompts

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="cpu", precision="fp32").eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    names = [f"class {i}" for i in range(20)] + [f"background {i}" for i in range(25)]
    with torch.no_grad():
        text = encode_prompts(model, tokenizer, [f"a clean origami {n}." for n in names])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    present = np.zeros(20, dtype=bool)
    present[[3, 14]] = True
    r = rng.random((400, 400)).astype(np.float32) ** 8
    r /= r.sum(1, keepdims=True)
    p = rng.random((1600, 1600)).astype(np.float32) ** 16
    p[p < np.sort(p, axis=1)[:, -64:-63]] = 0  # 64 entries per row, as stage A stores
    p /= p.sum(1, keepdims=True)
    results = {"threads": args.threads, "repeats": args.repeats, "excel_2_threads_s": EXCEL_2_THREADS}

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    configs = (("1 scale, 320 px", (1.0,), False, {}, 1), ("1 scale + PAR at full size", (1.0,), False, {"par": True}, 1),
               ("1 scale, batches of 4 images", (1.0,), False, {}, 4), ("4 scales + flip", (1.0, 0.5, 1.5, 2.0), True, {}, 1))
    mean, std = input_normalisation("imagenet", "ViT-B-16-quickgelu", None)
    for name, scales, flip, extra, batch in configs:
        cfg = CamConfig(clip_size=320, scales=scales, flip=flip, **extra)
        fn = ImageCams(model.visual, text, 20, cfg, (mean, std))
        cam_s = timed(lambda: fn.batch([image] * batch, [present] * batch, [r] * batch, [p] * batch)) / batch
        inputs = []
        for s in scales:
            x = normalise_then_resize(image, max(16, int(round(320 * s / 16)) * 16), mean=mean, std=std).repeat(batch, 1, 1, 1)
            inputs.append(torch.cat([x, x.flip(-1)]) if flip else x)

        def bare():  # the plain forward at each size (position embeddings resized, no surgery)
            with torch.no_grad():
                for x in inputs:
                    surgery_forward(model.visual, x, surgery_blocks=0)

        bare_s = timed(bare) / batch
        results[name] = {"cam_s": cam_s, "images_per_s": 1 / cam_s, "bare_forwards_s": bare_s, "ratio": cam_s / bare_s}
        print(f"{name}: {cam_s:.3f} s per image ({1 / cam_s:.2f} images/s); bare CLIP forwards {bare_s:.3f} s; "
              f"ratio {cam_s / bare_s:.2f}", flush=True)
    print("ExCEL's own code, 2 threads: " + ", ".join(f"{k} {v} s" for k, v in EXCEL_2_THREADS.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
