"""Full size: a dataset preset's values through every stage with SD 2.1-base and ViT-B/16 built from their
configs with seeded random weights; each stage's wall time, images per second and peak memory.

    python bench/fullsize.py --preset voc --out /tmp/diclip-fullsize [--device cpu] [--train-images 4] ...

What it builds in OUT (reused when already there):
- a dataset folder in the preset's layout (VOC 2012 with train_aug/val, or COCO 2014) of real photos:
  scikit-learn's two sample photographs, cropped, flipped and resized to VOC-like sizes (500 x 375,
  375 x 500, 500 x 333, ...), with masks drawn over them: ellipses of two or three of the preset's
  classes, a VOC-style 255 band on their edges;
- an SD 2.1-base-sized pipeline directory with random weights (pipeline/models/sd21.py); CLIP is
  ViT-B-16-quickgelu with ``pretrained: null``, the open_clip factory's random initialisation;
- params.yaml: the checkout's, switched with `diclip params preset NAME --root ...` as a user would, then
  the reductions below. Only counts are reduced; sizes, layers, grids, scales and dtypes are the
  preset's:
    tsa_cache.images_per_class, tsa_cache.steps  (DiCLIP: 100 or 50 images per class, 45 steps)
    tsa_cache.batch                              (images drawn per group; the group is drawn whole)
    tsa_cache.keys_per_class, background_keys    (KMeans centres; only when --keys-per-class, --background-keys)
    tsa_cache.eval_images, diffusion_attention.eval_images   (the metrics' image counts)
    tsa_adapt.iterations, train.iterations and their warmup, logging and validation intervals
    report.images
  and the runner: one worker with every core (one model copy, as on one GPU).
Then every stage's `diclip` command runs in a fresh process, as `dvc repro` runs it, measured by
pipeline/measure.py. It prints a table and writes OUT/fullsize.json. With --compare-device, the
first few val images also run through prepare, stage A and cams on that device in OUT/compare, and the
largest differences of R, P and the CAMs between the two devices are printed (bench/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("prepare", "diffusion_attention", "tsa_cache", "cams", "eval_cams", "tsa_adapt", "train", "evaluate", "report")
# (H, W) of VOC 2012 images, the common ones
VOC_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (500, 500), (366, 500), (500, 281))
# the classes drawn, as mask values of the preset's class list (VOC: boat, person, pottedplant; COCO: person,
# boat, potted plant)
DRAWN = {"voc": (4, 15, 16), "coco": (1, 9, 59)}


def sample_photo(index: int, size: tuple[int, int]):
    """(H, W, 3) uint8: one of scikit-learn's sample photographs, cropped to the size's aspect, flipped on odd
    indices and resized."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photo = load_sample_image(("china.jpg", "flower.jpg")[index % 2])
    h, w = size
    ph, pw = photo.shape[:2]
    scale = min(ph / h, pw / w) * (0.9 - 0.1 * (index // 2 % 3))  # a different crop per index
    ch, cw = int(h * scale), int(w * scale)
    y0 = (ph - ch) * (index % 3) // 2
    x0 = (pw - cw) * (index // 3 % 3) // 2
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if index % 2:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.BICUBIC))


def drawn_mask(index: int, size: tuple[int, int], classes: tuple[int, ...]):
    """(H, W) uint8: one or two filled ellipses of the given class values on background 0, a 5-pixel 255 band
    on each ellipse's edge (VOC's 'void' boundary)."""
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = size
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(index)
    for k in range(1 + index % 2):
        value = classes[(index + k) % len(classes)]
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        rx, ry = rng.uniform(0.12, 0.3) * w, rng.uniform(0.12, 0.3) * h
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        draw.ellipse(box, fill=int(value))
        draw.ellipse(box, outline=255, width=5)
    return np.asarray(image)


def write_dataset(root: Path, preset: str, counts: dict[str, int], drawn: tuple[int, ...]) -> Path:
    """The preset's dataset layout under ``root`` with ``counts`` images per split (train, val), masks of the
    ``drawn`` class values."""
    from PIL import Image

    from pipeline.data.palette import voc_palette

    stamp = {"counts": counts, "drawn": list(drawn)}
    if (root / "complete.json").is_file() and json.loads((root / "complete.json").read_text()) == stamp:
        return root
    shutil.rmtree(root, ignore_errors=True)
    index = 0
    for split, n in counts.items():
        ids = []
        for _ in range(n):
            size = VOC_SIZES[index % len(VOC_SIZES)]
            if preset == "voc":
                image_id = f"2007_{index:06d}"
                image_path, mask_path = root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClassAug" / f"{image_id}.png"
            else:
                sub = f"{split}2014"
                image_id = f"COCO_{sub}_{index:012d}"
                image_path = root / "JPEGImages" / sub / f"{image_id}.jpg"
                mask_path = root / "SegmentationClass" / sub / f"{image_id}.png"
            for path in (image_path, mask_path):
                path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample_photo(index, size)).save(image_path, format="JPEG", quality=90)
            mask = Image.fromarray(drawn_mask(index, size, drawn))
            mask.putpalette(voc_palette())
            mask.save(mask_path)
            ids.append(image_id)
            index += 1
        split_name = {"voc": {"train": "train_aug", "val": "val"}, "coco": {"train": "train", "val": "val"}}[preset][split]
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split_name}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "complete.json").write_text(json.dumps(stamp))
    return root


def class_subset(folder: Path, preset: str, names: list[str]) -> tuple[dict, tuple[int, ...]]:
    """Params overrides that cut the preset's class list to ``names`` (a class_names_file, and each of the
    preset's per-class word files cut to those lines), and the mask values to draw (the first three)."""
    from pipeline.data.class_names import COCO_CLASSES, VOC_CLASSES
    from pipeline.params.presets import load_preset

    full = list(VOC_CLASSES if preset == "voc" else COCO_CLASSES)
    unknown = [n for n in names if n not in full]
    if unknown:
        raise SystemExit(f"--classes: {unknown} are not {preset} classes; they are: {', '.join(full)}")
    rows = [full.index(n) for n in names]
    (folder / "class_names.txt").write_text("".join(f"{n}\n" for n in names))
    preset_params = load_preset(preset)
    overrides: dict = {"dataset": {"class_names_file": str(folder / "class_names.txt")}}
    for section, key in (("cams", "prompt_names_file"), ("tsa_cache", "prompt_names_file")):
        source = preset_params.get(section, {}).get(key)
        if source:
            lines = (ROOT / source).read_text().splitlines()
            cut = folder / f"{section}_{Path(source).name}"
            cut.write_text("".join(f"{lines[r]}\n" for r in rows))
            overrides.setdefault(section, {})[key] = str(cut)
    return overrides, tuple(range(1, min(len(names), 3) + 1))


def write_params(folder: Path, args: argparse.Namespace, data: Path, sd: Path, overrides: dict) -> dict:
    """params.yaml in ``folder``: the checkout's, switched to the preset, then the counts reduced and
    ``overrides`` ({section: {key: value}}) set."""
    import yaml

    from pipeline.measure import portable_params
    from pipeline.params.presets import apply_preset

    path = folder / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", path)
    apply_preset(path, args.preset, root=str(data))
    params = portable_params(yaml.safe_load(path.read_text()))
    params["models"]["clip"]["pretrained"] = None
    params["models"]["sd"]["model"] = str(sd)
    params["models"]["device"] = args.device
    params["diffusion_attention"]["batch_images"] = params["cams"]["batch_images"] = args.batch_images
    n_val = args.val_images
    params["diffusion_attention"]["eval_images"] = n_val
    tsa = params["tsa_cache"]
    tsa.update(images_per_class=args.tsa_images_per_class, steps=args.tsa_steps, batch=args.tsa_images_per_class,
               eval_images=n_val)
    if args.keys_per_class:
        tsa["keys_per_class"] = args.keys_per_class
    if args.background_keys:
        tsa["background_keys"] = args.background_keys
    params["tsa_adapt"].update(iterations=args.adapt_iterations, warmup=min(params["tsa_adapt"].get("warmup", 50),
                                                                              max(args.adapt_iterations // 2, 1)))
    it = args.train_iterations
    params["train"].update(iterations=it, warmup=max(it // 4, 1), checkpoint_every=max(it // 2, 1),
                           log_every=max(it // 4, 1), val_every=it, val_images=n_val)
    params["report"]["images"] = min(2, n_val)
    params["runner"].update(n_workers=1, threads_per_worker=1, torch_threads=os.cpu_count() or 1, in_process=False)
    for section, values in overrides.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def images_of(stage: str, params: dict, counts: dict[str, int], n_classes: int) -> int:
    """What the stage's images per second counts (0: nothing per image)."""
    total = sum(counts.values())
    return {"prepare": total, "diffusion_attention": total, "cams": total, "eval_cams": total, "tsa_adapt": total,
            "tsa_cache": n_classes * params["tsa_cache"]["images_per_class"],
            "train": params["train"]["iterations"] * params["train"]["batch"], "evaluate": counts["val"]}.get(stage, 0)


def run_stages(folder: Path, stages: tuple[str, ...], params: dict, counts: dict[str, int]) -> list[dict]:
    from pipeline.measure import run_stage_measured
    from pipeline.store.dataset_index import DatasetIndex

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if params["models"]["device"] == "cpu" else None
    rows = []
    for name in stages:
        run = run_stage_measured(name, folder, env=env, gpu=params["models"]["device"] != "cpu")
        if run.rc != 0:
            raise SystemExit(f"fullsize: {name} failed (exit {run.rc}) in {folder}:\n{run.stderr}")
        n_classes = len(DatasetIndex.load(folder / "artifacts" / "index").class_names) if name == "tsa_cache" else 0
        images = images_of(name, params, counts, n_classes)
        rows.append({"stage": name, "seconds": round(run.seconds, 1), "images": images,
                     "images_per_s": round(images / run.seconds, 3) if images else None, "peak_mib": round(run.peak_mib),
                     "peak_gpu_mib": run.peak_gpu_mib})
        gpu = f"  GPU peak {run.peak_gpu_mib:7.0f} MiB" if run.peak_gpu_mib is not None else ""
        print(f"{name:20s} {run.seconds:8.1f} s  " + (f"{images:5d} img {images / run.seconds:8.3f} img/s  " if images else
                                                        " " * 26) + f"peak {run.peak_mib:8.0f} MiB" + gpu, flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=("voc", "coco"), default="voc")
    ap.add_argument("--out", type=Path, default=Path("/tmp/diclip-fullsize"))
    ap.add_argument("--device", default="cpu", help="models.device for every stage: cpu, cuda, cuda:N")
    ap.add_argument("--classes", default=None, help="comma-separated class names of the preset's list: a dataset of "
                    "these classes only (class_names_file, and the preset's word files cut to their lines); default: all")
    ap.add_argument("--train-images", type=int, default=4)
    ap.add_argument("--val-images", type=int, default=2)
    ap.add_argument("--tsa-images-per-class", type=int, default=1)
    ap.add_argument("--tsa-steps", type=int, default=2)
    ap.add_argument("--keys-per-class", type=int, default=0, help="KMeans centres per class (0: the preset's)")
    ap.add_argument("--background-keys", type=int, default=0, help="KMeans centres of the background (0: the preset's)")
    ap.add_argument("--batch-images", type=int, default=1, help="diffusion_attention.batch_images and "
                    "cams.batch_images: images per forward (on a GPU; the CPU default 1 keeps the stores byte-identical)")
    ap.add_argument("--adapt-iterations", type=int, default=4)
    ap.add_argument("--train-iterations", type=int, default=4)
    ap.add_argument("--stages", default=",".join(STAGES), help="the stages to run, in order")
    ap.add_argument("--compare-device", default=None, help="also run the first --compare-images val images on this "
                    "device (prepare, stage A, cams) and print the largest differences")
    ap.add_argument("--compare-images", type=int, default=4)
    args = ap.parse_args(argv)
    unknown = [s for s in args.stages.split(",") if s not in STAGES]
    if unknown:
        ap.error(f"--stages: unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    return args


def compare(folder: Path, args: argparse.Namespace, params: dict) -> dict[str, float]:
    """The largest absolute differences of stage A's R and P and of the CAMs between ``folder``'s run and a run
    of its first val images on --compare-device (the same params otherwise)."""
    import numpy as np
    import yaml

    from pipeline.measure import run_stage_measured
    from pipeline.store.image_store import ImageStore

    other = folder / "compare"
    other.mkdir(exist_ok=True)
    data = Path(params["dataset"]["root"])
    ids = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[: args.compare_images]
    sub = other / "data"
    if sub.exists():
        shutil.rmtree(sub)
    shutil.copytree(data, sub, ignore=shutil.ignore_patterns("ImageSets"))
    (sub / "ImageSets" / "Segmentation").mkdir(parents=True)
    (sub / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    mine = {**params, "dataset": {**params["dataset"], "root": str(sub), "train_split": "val", "eval_split": "val"}, "models": {**params["models"], "device": args.compare_device},
            # the metric's extra passes (untrained UNet, acr) compare nothing
            "diffusion_attention": {**params["diffusion_attention"], "eval_baselines": False, "compare_recipes": False,
                                    "eval_images": len(ids)}}
    (other / "params.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))
    (other / "artifacts").mkdir(exist_ok=True)
    shutil.copyfile(folder / "artifacts" / "tsa_cache.h5", other / "artifacts" / "tsa_cache.h5")
    for name in ("prepare", "diffusion_attention", "cams"):
        run = run_stage_measured(name, other)
        if run.rc != 0:
            raise SystemExit(f"fullsize: {name} on {args.compare_device} failed:\n{run.stderr}")
    diffs = {}
    for artifact, stage, arrays in (("diffusion.zarr", "diffusion_attention", ("rows", "transition_values")),
                                    ("cams.zarr", "cams", ("cams",))):
        a = ImageStore.open(folder / "artifacts" / artifact, stage=stage)
        b = ImageStore.open(other / "artifacts" / artifact, stage=stage)
        rows_a = {i: r for r, i in enumerate(a.ids())}
        for array in arrays:
            diffs[array] = max(float(np.abs(a.read(array, rows_a[i]).astype(np.float32)
                                            - b.read(array, r).astype(np.float32)).max()) for r, i in enumerate(b.ids()))
    return diffs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from pipeline.models.sd21 import write_random_sd21

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": args.train_images, "val": args.val_images}
    folder = out / args.preset
    folder.mkdir(exist_ok=True)
    overrides, drawn = class_subset(folder, args.preset, args.classes.split(",")) if args.classes else ({}, DRAWN[args.preset])
    data = write_dataset(out / "data" / args.preset, args.preset, counts, drawn)
    sd = write_random_sd21(out / "sd21-base-random")
    if not (folder / "docs").exists():
        (folder / "docs").symlink_to(ROOT / "docs")  # the report's ablation table
    params = write_params(folder, args, data, sd, overrides)
    print(f"fullsize: preset {args.preset}, {counts['train']} train + {counts['val']} val photos, device {args.device}, "
          f"in {folder}", flush=True)
    rows = run_stages(folder, tuple(args.stages.split(",")), params, counts)
    from pipeline.measure import artifact_bytes

    work = {"tsa_steps": params["tsa_cache"]["steps"], "adapt_iterations": params["tsa_adapt"]["iterations"],
            "train_iterations": params["train"]["iterations"], "train_batch": params["train"]["batch"]}
    result = {"preset": args.preset, "device": args.device, "counts": counts, "work": work, "stages": rows,
              "disk_bytes": artifact_bytes(folder)}
    if args.compare_device:
        result["max_abs_difference"] = compare(folder, args, params)
        for name, value in result["max_abs_difference"].items():
            print(f"{args.device} vs {args.compare_device}: largest |difference| of {name}: {value:.3g}")
    (folder / "fullsize.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
