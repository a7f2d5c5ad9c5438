"""How the demo's `evaluate` settings were chosen, never on val: a segmenter trained on train[:1500]'s
pseudo-labels, scored against the ground truth of train[1500:1800] (README, Stage D).

    python scripts/segmenter_selection.py [--crop 64 --rescale 0.5 2.0 --iterations 1200 --dim 128]
                                          [--sizes 64 96 128]   (about 2 min of training + 1 min per size)

Reads artifacts/index and artifacts/pseudo_labels (`dvc repro cams`) and the shipped tiny CLIP; trains
with the library's `SegmenterTrainer` (the `train` stage's loop) and prints, per evaluation size, the
mIoU with 4 scales + flip without a CRF and with each CRF kernel, beside the pseudo-labels' own mIoU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.metrics import confusion, scores  # noqa: E402
from pipeline.models.clip import input_normalisation, load_shipped_clip  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.segment.config import InferenceConfig, TrainConfig  # noqa: E402
from pipeline.segment.crf import dense_crf  # noqa: E402
from pipeline.segment.decoder import build_decoder  # noqa: E402
from pipeline.segment.inference import multiscale_logits, normalise, segment_logits  # noqa: E402
from pipeline.segment.training import SegmenterTrainer  # noqa: E402
from pipeline.store.dataset_index import DatasetIndex  # noqa: E402
from pipeline.store.image_store import FileSpec  # noqa: E402

CRFS = {"none": None, "diclip (xy 67, rgb 3)": InferenceConfig(crf=True),
        "xy 10, rgb 10": InferenceConfig(crf=True, crf_bi_xy=10, crf_bi_rgb=10),
        "xy 8, rgb 5": InferenceConfig(crf=True, crf_bi_xy=8, crf_bi_rgb=5),
        "xy 10, rgb 20": InferenceConfig(crf=True, crf_bi_xy=10, crf_bi_rgb=20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--rescale", type=float, nargs=2, default=(0.5, 2.0))
    ap.add_argument("--iterations", type=int, default=1200)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--fit", type=int, default=1500, help="train on train[:fit]")
    ap.add_argument("--held-out", type=int, default=300, help="score on train[fit:fit + held_out]")
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    clip = load_shipped_clip()
    visual = clip.model.visual
    models = load_params("params.yaml", sections=("models",)).models
    mean, std = input_normalisation("model", models.clip.model, models.clip.pretrained)  # names, not the loaded model
    index = DatasetIndex.load("artifacts/index")
    train = index.ids(index.meta["train_split"])
    images = index.images([index.meta["train_split"]])
    labels = FileSpec("label", "artifacts/pseudo_labels")
    fit, held = train[:args.fit], train[args.fit:args.fit + args.held_out]

    def sample(i: int):
        return normalise(images.load_image(fit[i]), mean, std), torch.from_numpy(labels.read(fit[i]))

    config = TrainConfig(iterations=args.iterations, batch=args.batch, crop=args.crop, rescale=tuple(args.rescale),
                         dim=args.dim)  # the rest at the train section's defaults
    decoder = build_decoder(config.architecture, int(visual.conv1.out_channels), len(visual.transformer.resblocks),
                            len(index.class_names), dim=config.dim, layers=config.layers, heads=config.heads,
                            dropout=config.dropout)
    trainer = SegmenterTrainer(decoder, visual, config, len(fit))
    start = time.time()
    while trainer.step < args.iterations:
        trainer.train_step(sample)
    print(f"trained {args.iterations} steps in {time.time() - start:.0f} s")
    names = ("background", *index.class_names)
    K = len(names)
    pseudo = np.zeros((K, K), dtype=np.int64)
    for image_id in held:
        pseudo += confusion(labels.read(image_id), images.load_mask(image_id), K)
    print(f"pseudo-labels on the held-out images: {scores(pseudo, names)['miou']:.3f}")
    inference = InferenceConfig()  # DiCLIP's 4 scales + flip, averaged at 0.4 of the image size
    for size in args.sizes:
        confs = {name: np.zeros((K, K), dtype=np.int64) for name in CRFS}
        for image_id in held:
            image, mask = images.load_image(image_id), images.load_mask(image_id)
            logits = multiscale_logits(lambda xs: segment_logits(decoder, visual, xs), normalise(image, mean, std)[None],
                                       mask.shape, base=size, patch=8, scales=inference.scales, flip=inference.flip,
                                       fraction=inference.fraction)[0]
            prob = logits.softmax(0).numpy()
            for name, crf in CRFS.items():
                p = prob if crf is None else dense_crf(prob, image, crf)
                confs[name] += confusion(p.argmax(0).astype(np.uint8), mask, K)
        row = ", ".join(f"{n} {scores(c, names)['miou']:.3f}" for n, c in confs.items())
        print(f"size {size}, 4 scales + flip: {row}")


if __name__ == "__main__":
    main()
