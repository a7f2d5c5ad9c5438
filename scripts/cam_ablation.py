"""The README's CAM ablation on the shapes world: pseudo-label mIoU on the train split, per configuration.

    python scripts/cam_ablation.py [--out /tmp/cam_ablation]     (about 1 min per row on 2 cores)

Each row runs the `cams` stage with params.yaml, PAR and the TSA cache off unless the row turns them on
(artifacts/tsa_cache.h5 from `dvc repro tsa_cache`), plus the row's overrides (`dvc exp run -S cams.KEY=VALUE`
gives the same rows through DVC) into a scratch folder, chooses the background score on the eval
split (`1 - max` or one of cams.eval_thresholds, the best mIoU there), and reports the train split's
mIoU with that choice; thresholds never see the train split. Baselines need no CLIP: all-background;
a centred box (the middle half of the image, labelled with the image's first present class); and
colour k-means (K = present classes + 1 clusters of the pixel colours, each cluster given its
majority ground-truth label: an oracle upper bound of what colour clustering can label). The
untrained-CLIP row runs the demo's params with seeded random weights of the same architecture. The
oracle rows are upper bounds that read ground truth: stage A's store copied with R and / or P built from
the masks at its grids (every patch's row spread evenly over the patches of its label), to show what
VCE and RAR could give with a perfect diffusion model at the demo's geometry. The preset rows take the
method keys of the `voc` and `excel-voc` presets' `cams` sections (the demo's model, input and texts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cam.labels import LabelRule  # noqa: E402
from pipeline.metrics import confusion, scores  # noqa: E402
from pipeline.params import load_params, parse_params  # noqa: E402
from pipeline.params.schema import to_plain  # noqa: E402
from pipeline.store.dataset_index import DatasetIndex  # noqa: E402
from pipeline.store.diffusion_maps import DiffusionMaps  # noqa: E402
from pipeline.store.errors import StoreError  # noqa: E402
from pipeline.store.image_store import ImageStore  # noqa: E402

ROWS: list[tuple[str, dict]] = [
    ("text CAM (the demo's params without PAR and the cache)", {}),
    ("+ affinity refinement", {"refine": True}),
    ("+ VCE (R in the surgery attention)", {"vce": True}),
    ("+ RAR (P, 10 iterations)", {"rar": True}),
    ("+ VCE + refinement + RAR", {"vce": True, "refine": True, "rar": True}),
    ("DiCLIP's surgery (3 blocks, qq + 2 kk, head sum, class-token weights)",
     {"surgery": "diclip", "surgery_blocks": None, "head_reduce": "sum", "cls_weighting": True}),
    ("DiCLIP's whole training-free path (every default)",
     {"surgery": "diclip", "surgery_blocks": None, "head_reduce": "sum", "cls_weighting": True,
      "vce": True, "refine": True, "rar": True}),
    ("- flip (1 scale)", {"flip": False}),
    ("+ 4 scales (1.0, 0.5, 1.5, 2.0) + flip", {"scales": [1.0, 0.5, 1.5, 2.0], "flip": True}),
    ("+ PAR (20 iterations on the full-size scores)", {"par": True}),
    ("+ attributes (shipped shapes file, 14 centres)",
     {"attributes_file": "pipeline/data/words/shapes_attributes.json", "attribute_clusters": 14}),
    ("untrained CLIP (seeded random weights), the demo's params", {"__untrained__": True}),
    ("+ static TSA cache (weight 0.5)", {"cache_weight": 0.5}),
    ("+ static TSA cache (weight 1.0)", {"cache_weight": 1.0}),
    ("+ PAR + static TSA cache (weight 0.5): the demo's params", {"par": True, "cache_weight": 0.5}),
    ("  the same, with DiCLIP's cache CAM scores (raw keys, class-token weights, min-max without epsilon)",
     {"par": True, "cache_weight": 0.5, "cache_scores": "diclip"}),
    ("  the same, with DiCLIP's 512 x 512 step on the way to the image size",
     {"par": True, "cache_weight": 0.5, "label_upsample": 512}),
    ("+ VCE with an oracle R (an upper bound: R built from the masks)", {"vce": True, "__oracle__": "R"}),
    ("+ RAR with an oracle P (an upper bound: P built from the masks)", {"rar": True, "__oracle__": "P"}),
    ("+ VCE + RAR, oracle R and P (an upper bound)", {"vce": True, "rar": True, "__oracle__": "RP"}),
    ("DiCLIP's training-free path as the voc preset sets it (its cache at 0.5, 512 px labels)", "@voc"),
    ("ExCEL's training-free path as the excel-voc preset sets it (shapes attributes, 14 centres)", "@excel-voc"),
    ("+ PAR + static TSA cache (weight 0.5) + VCE", {"par": True, "cache_weight": 0.5, "vce": True}),
    ("+ PAR + static TSA cache (weight 0.5) + RAR", {"par": True, "cache_weight": 0.5, "rar": True}),
]

# What a preset's `cams` section decides about the method; the keys it leaves out (input size,
# normalisation, texts, attribute file) are the dataset's and the model's and stay the demo's.
DATASET_KEYS = {"clip_size", "normalise", "template", "prompt_names_file", "background_words_file",
                "attributes_file", "attribute_clusters", "eval_thresholds", "store_dtype"}


def oracle_store(out: Path, images, real_path: Path, *, correlation: bool, transition: bool) -> Path:
    """A copy of stage A's store `real_path` whose R (`correlation`) and / or P (`transition`) are built from
    the ground-truth masks at the store's grids (pipeline.diffusion.oracle), P stored whole (every
    column of every row, float32) so that nothing is truncated. Only this script reads masks into a
    stage A store; the `cams` stage reads it like any other."""
    from pipeline.diffusion.oracle import oracle_clusters, oracle_transition
    from pipeline.store.image_store import ArraySpec, ImageStore

    real = DiffusionMaps.open(real_path)
    g, t = real.grid, real.transition_grid
    specs = {s.name: s for s in real.store.specs}
    max_k = specs["rows"].shape[0]
    specs["transition_values"] = ArraySpec("transition_values", (t * t, t * t), "float32")
    specs["transition_index"] = ArraySpec("transition_index", (t * t, t * t), "int16")
    attrs = dict(real.attrs)
    attrs["transition"] = {**attrs["transition"], "k": t * t}
    attrs["oracle"] = {"correlation": correlation, "transition": transition}
    path = out / "diffusion_oracle.zarr"
    store = ImageStore.create_or_resume(path, ids=real.ids, specs=list(specs.values()), shard_images=256,
                                        key=f"oracle-{correlation}-{transition}-{real.store.fingerprint}", attrs=attrs)
    columns = np.broadcast_to(np.arange(t * t, dtype=np.int16), (t * t, t * t))
    for i, image_id in enumerate(real.ids):
        values = {n: real.store.read(n, i) for n in specs if n not in ("transition_values", "transition_index")}
        mask = images.load_mask(image_id)
        if correlation:
            clusters, rows = oracle_clusters(mask, g)
            assert len(rows) <= max_k, f"{image_id}: {len(rows)} labels at the grid, the store holds {max_k} rows"
            values.update(clusters=clusters, k=np.int32(len(rows)),
                          rows=np.pad(rows, ((0, max_k - len(rows)), (0, 0))))
        dense = oracle_transition(mask, t) if transition else real.transition(image_id)
        values.update(transition_values=dense.astype(np.float32), transition_index=columns,
                      transition_kept=np.float32(1.0), transition_truncated=np.float32(0.0))
        store.stage_image(i, values, bytes(32))
    for block in store.blocks():
        store.pack_block(block)
    store.mark_complete()
    return path


def with_overrides(params: dict, overrides: list[str]) -> dict:
    """`params` with each dotted KEY=VALUE set (the value parsed as YAML), validated as a whole."""
    import yaml

    out = json.loads(json.dumps(params))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. cams.clip_size=128")
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    parse_params(out, "params.yaml with --set")
    return out


def preset_row(name: str) -> dict:
    """The `cams` keys preset `name` sets for the method, with the shapes attribute file where it
    enriches with attributes."""
    from pipeline.params.presets import load_preset

    cams = {k: v for k, v in load_preset(name)["cams"].items() if k not in DATASET_KEYS}
    if load_preset(name)["cams"].get("attributes_file"):
        cams.update(attributes_file="pipeline/data/words/shapes_attributes.json", attribute_clusters=14)
    return cams


def untrained_clip(folder: Path, model: str) -> Path:
    """Seeded random weights (torch seed 0) of the demo CLIP's architecture, saved once."""
    import open_clip
    import torch

    from pipeline.models.clip import register_tiny_clip_configs, save_clip_checkpoint

    path = folder / "untrained_clip.safetensors"
    if not path.exists():
        register_tiny_clip_configs()
        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        save_clip_checkpoint(open_clip.create_model(model, pretrained=None), path)
    return path.resolve()


def miou(index, images, split, labels_of) -> float:
    names = ("background", *index.class_names)
    conf = np.zeros((len(names), len(names)), dtype=np.int64)
    for image_id in index.ids(split):
        mask = images.load_mask(image_id)
        conf += confusion(labels_of(image_id, mask.shape), mask, len(names))
    return scores(conf, names)["miou"]


def run_cams(params: dict, out: Path, *, index: Path, diffusion: Path, tsa_cache: Path) -> ImageStore:
    """The `cams` stage's own command with `params` (validated first), into `out`."""
    import subprocess

    import yaml

    parse_params(params)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "stages.cli", "-q", "cams", "--params", str(out / "params.yaml"),
                    "--cams", str(out / "cams.zarr"), "--pseudo-labels", str(out / "pseudo_labels"),
                    "--tsa-cache", str(tsa_cache), "--diffusion", str(diffusion), "--index", str(index)],
                   check=True)
    return ImageStore.open(out / "cams.zarr", stage="cams")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/cam_ablation"))
    ap.add_argument("--rows", default=None, help="comma list of row numbers (default: all)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params every row starts from")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                    help="the folder holding index/ and diffusion.zarr (another world's: scripts/unseen_world.sh)")
    ap.add_argument("--tsa-cache", type=Path, default=None,
                    help="the TSA cache (default: ARTIFACTS/tsa_cache.h5; generated images, so any world's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key for every row, dotted, value as YAML (e.g. cams.clip_size=128); "
                         "as `dvc exp run -S` does; repeatable")
    args = ap.parse_args()
    base = with_overrides(to_plain(load_params(str(args.params))), args.set)
    tsa_cache = args.tsa_cache or args.artifacts / "tsa_cache.h5"
    index = DatasetIndex.load(args.artifacts / "index")
    train, tune = index.meta["train_split"], index.meta["eval_split"]
    images = index.images([train, tune])
    present = {i: r.astype(bool) for s in (train, tune) for i, r in zip(index.ids(s), index.labels(s))}
    # the rows with VCE, RAR or an oracle store read stage A on both splits; the demo computes it on val only
    try:
        DiffusionMaps.open(args.artifacts / "diffusion.zarr").require_splits(
            {s: index.ids(s) for s in (train, tune)}, "scripts/cam_ablation.py")
    except StoreError as err:
        sys.exit(f"error: {err}")
    results = []

    def box(image_id, shape):
        h, w = shape
        out = np.zeros(shape, dtype=np.uint8)
        classes = np.flatnonzero(present[image_id])
        if len(classes):
            out[h // 4:3 * h // 4, w // 4:3 * w // 4] = classes[0] + 1
        return out

    def colour(image_id, shape):
        from pipeline.diffusion.baselines import colour_kmeans

        mask = images.load_mask(image_id)
        clusters = colour_kmeans(images.load_image(image_id), int(present[image_id].sum()) + 1)
        out = np.zeros(shape, dtype=np.uint8)
        for c in np.unique(clusters):  # the oracle: each cluster's majority ground-truth label
            truth = mask[(clusters == c) & (mask != 255)]
            out[clusters == c] = np.bincount(truth).argmax() if truth.size else 0
        return out

    for name, fn in (("all background", lambda i, s: np.zeros(s, dtype=np.uint8)), ("centred box", box),
                     ("colour k-means, clusters labelled by ground truth (oracle)", colour)):
        results.append({"row": name, "train_miou": miou(index, images, train, fn)})
        print(f"{name:70s} train {results[-1]['train_miou']:.3f}", flush=True)
    chosen = [int(r) for r in args.rows.split(",")] if args.rows else range(len(ROWS))
    for n in chosen:
        name, overrides = ROWS[n]
        overrides = preset_row(overrides[1:]) if isinstance(overrides, str) else overrides
        data = json.loads(json.dumps(base))
        data["cams"].update({"cache_weight": 0.0, "par": False,
                             **{k: v for k, v in overrides.items() if not k.startswith("__")}})
        if overrides.get("__untrained__"):
            data["models"]["clip"]["pretrained"] = str(untrained_clip(args.out, data["models"]["clip"]["model"]))
        data["runner"]["in_process"] = False
        diffusion = args.artifacts / "diffusion.zarr"
        if "__oracle__" in overrides:
            diffusion = oracle_store(args.out / f"row{n}", images, diffusion, correlation="R" in overrides["__oracle__"],
                                     transition="P" in overrides["__oracle__"])
        store = run_cams(data, args.out / f"row{n}", index=args.artifacts / "index", diffusion=diffusion,
                         tsa_cache=tsa_cache)
        rows = {i: k for k, i in enumerate(store.ids())}

        rule = LabelRule.from_attrs(store.attrs["label_rule"])  # the stage's own rule (PAR, ignore band)

        def labels(threshold):
            label = dataclasses.replace(rule, bg_threshold=threshold)
            return lambda i, shape: label(store.read("cams", rows[i]), present[i], images.load_image(i))

        sweep = {t: miou(index, images, tune, labels(t)) for t in (None, *data["cams"]["eval_thresholds"])}
        best = max(sweep, key=sweep.get)
        results.append({"row": name, "overrides": overrides, "bg": "1 - max" if best is None else best,
                        "tune_miou": sweep[best], "train_miou": miou(index, images, train, labels(best))})
        r = results[-1]
        print(f"{name:70s} train {r['train_miou']:.3f} (bg {r['bg']}, {tune} {r['tune_miou']:.3f})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
