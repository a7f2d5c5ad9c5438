"""Choose the shapes preset's stage A settings for the tiny SD on the train split only.

    python scripts/select_stage_a.py [--images 100] [--out artifacts/selection/stage_a.json]

DiCLIP names SD 2.1-base's layers and heads; the tiny SD needs its own. On the first --images of
the index's train split (never the eval split), for each image size and timestep it runs one
forward tapping every self-attention layer's every head, then scores:
- correlation layer and heads: DiCLIP's chain (threshold 0.2, KL assignment, g = --grid) on every
  single head and on ordered pairs of the best --top heads of each layer; score = mean best-match
  IoU of the clusters with the object masks;
- RAR layer and heads: the sharpened transition P of every head pair of the layers at twice the
  grid; score = the mass P's rows put on pixels of their own label, averaged over the pixels of
  each label and then over labels (what RAR's walk should keep inside objects and background).
Prints the best rows and writes every score as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.diffusion.sd_input import add_noise, encode_images, encode_prompt, image_noise_seed, seeded_noise  # noqa: E402
from pipeline.diffusion.config import StageAConfig  # noqa: E402
from pipeline.diffusion.correlation import head_scores, head_product, normalise_scores  # noqa: E402
from pipeline.diffusion.kl_assign import kl_assign  # noqa: E402
from pipeline.diffusion.selected import LayerTap, capture_layers, self_attention_heads  # noqa: E402
from pipeline.diffusion.transition import head_probabilities, sharpen_transition  # noqa: E402
from pipeline.grids import square_side  # noqa: E402
from pipeline.metrics import cluster_map_iou, upsample_labels  # noqa: E402
from pipeline.models import load_stable_diffusion  # noqa: E402
from pipeline.store.dataset_index import DatasetIndex  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="artifacts/index")
    ap.add_argument("--model", default="pipeline/models/weights/diclip-tiny-sd")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--timesteps", default="0,50,100,200,300")
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--out", default="artifacts/selection/stage_a.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = StageAConfig()  # DiCLIP's threshold, sharpening and assignment rounds: the params' defaults
    index = DatasetIndex.load(args.index)
    split = index.meta["train_split"]
    ids = index.ids(split)[: args.images]
    images = index.images([split])
    pipe = load_stable_diffusion(args.model, device="cpu", precision="fp32")
    heads = self_attention_heads(pipe.unet)
    taps = [LayerTap(p, tuple(range(h))) for p, h in heads.items()]
    text = encode_prompt(pipe, "")
    g = args.grid
    rows = []
    for size, t in itertools.product(map(int, args.sizes.split(",")), map(int, args.timesteps.split(","))):
        corr: dict[tuple, list[float]] = {}
        trans: dict[tuple, list[float]] = {}
        captured = []
        for image_id in ids:
            image, mask = images.load_image(image_id), images.load_mask(image_id)
            lat = encode_images(pipe.vae, [image], size, resize="diclip")
            lat = add_noise(lat, t, seeded_noise(lat.shape[1:], [image_noise_seed(0, image_id)]), pipe.scheduler.alphas_cumprod)
            cap = capture_layers(pipe.unet, lat, text, t, taps, stop_early=False)
            scores = {}
            for path, c in cap.items():
                side = square_side(c.tokens, "attention tokens")
                scores[path] = normalise_scores(head_scores(c.query[0], c.key[0], (side, side), g), cfg.diclip.threshold)  # (heads, g^2, g^2)
                if side == 2 * g:
                    lab = torch.from_numpy(upsample_labels(mask, (side, side)).reshape(-1).astype(np.int64))
                    same = (lab[:, None] == lab[None, :]).float()
                    labels = [lab == v for v in lab.unique()]
                    for hs in itertools.combinations(range(c.query.shape[1]), 2):
                        p = sharpen_transition(head_probabilities(c.query[0, list(hs)], c.key[0, list(hs)], c.scale),
                                               cfg.transition.sharpen)
                        kept = (p * same).sum(-1)  # mass each pixel's row keeps on its own label
                        trans.setdefault((path, hs), []).append(float(np.mean([kept[m].mean() for m in labels])))
            captured.append((mask, scores))

        def score(path: str, hs: tuple[int, ...]) -> float:
            values = []
            for mask, scores in captured:
                ids_, _ = kl_assign(head_product(scores[path][list(hs)]), g, anchor_stride=cfg.diclip.anchor_stride,
                                    rounds=cfg.diclip.rounds,
                                    precision=cfg.diclip.kl_precision)
                values.append(cluster_map_iou(ids_.reshape(g, g).numpy(), mask))
            return float(np.nanmean(values))

        for path, n_heads in heads.items():
            singles = {(h,): score(path, (h,)) for h in range(n_heads)}
            corr.update({(path, hs): v for hs, v in singles.items()})
            best = [hs[0] for hs, _ in sorted(singles.items(), key=lambda kv: -kv[1])[: args.top]]
            corr.update({(path, hs): score(path, hs) for hs in itertools.permutations(best, 2)})
        for (path, hs), v in corr.items():
            rows.append({"kind": "correlation", "image_size": size, "timestep": t, "layer": path, "heads": list(hs),
                         "score": v})
        for (path, hs), v in trans.items():
            rows.append({"kind": "transition", "image_size": size, "timestep": t, "layer": path, "heads": list(hs),
                         "score": float(np.mean(v))})
        best = max((r for r in rows if r["kind"] == "correlation" and r["image_size"] == size and r["timestep"] == t),
                   key=lambda r: r["score"])
        print(f"size {size} t {t}: best correlation {best['layer']} heads {best['heads']} {best['score']:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": split, "images": len(ids), "grid": g, "rows": rows}, indent=1))
    for kind in ("correlation", "transition"):
        print(f"top {kind}:")
        for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: -r["score"])[:10]:
            print(f"  {r['score']:.3f}  {r['image_size']} px t={r['timestep']} {r['layer']} heads {r['heads']}")


if __name__ == "__main__":
    main()
