"""Stage `train` (stage D): DiCLIP's decoder on a frozen CLIP, trained from the stored pseudo-labels.

Reads the train split's images and `artifacts/pseudo_labels/` only (ground truth is never opened; the
validation curve compares with the eval split's pseudo-labels). Writes

```
artifacts/segmenter/model.safetensors   the decoder's weights
artifacts/segmenter/config.json         architecture, sizes, the CLIP it reads, its normalisation, crop
artifacts/checkpoints/train/step_*.pt   checkpoints every `checkpoint_every` steps and on SIGTERM/SIGINT
artifacts/train_live/                   DVCLive: metrics.json (last values) and plots/metrics/*.tsv
```
A rerun resumes from the newest checkpoint of the same key (params, code, inputs); with a fixed seed on
the CPU it ends with the same weights as an uninterrupted run (the batches are a function of the step).
Under `torchrun --nproc_per_node N diclip train` the global batch is split over N DDP processes (gloo on
the CPU, NCCL on GPUs); rank 0 writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.skeleton import StageContext, StageSpec, run_stage
from stages.common import artifact_options

log = logging.getLogger(__name__)

SPEC = StageSpec(
    name="train", module=__name__,
    params=("train", "cams.normalise", "models.clip", "models.device", "models.precision"),
    inputs=(artifacts.INDEX, artifacts.PSEUDO_LABELS),
    outputs=(artifacts.SEGMENTER, artifacts.TRAIN_CHECKPOINTS, artifacts.TRAIN_LIVE),
)
#: how often and where results are written (not what they are): left out of the checkpoint key
NOT_IN_KEY = ("train.checkpoint_every", "train.log_every", "train.val_every")
KILL_AFTER_STEPS_ENV = "DICLIP_KILL_AFTER_STEPS"  # tests: SIGKILL this process after that many steps


def labels_digest(folder: Path, ids: list[str]) -> str:
    """The pseudo-labels' content (the key of a run: other labels, another run)."""
    h = hashlib.sha256()
    for image_id in ids:
        h.update(image_id.encode() + b"\0" + (folder / f"{image_id}.png").read_bytes())
    return h.hexdigest()[:16]


class _Interrupt:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, signum, _frame) -> None:
        self.raised = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def body(ctx: StageContext) -> dict:
    from pipeline.errors import UserError

    cfg, models = ctx.params.train, ctx.params.models
    index = ctx.index()
    train_ids = index.ids(index.meta["train_split"])
    val_split = index.meta["eval_split"]
    val_ids = index.ids(val_split)[:cfg.val_images] if val_split != index.meta["train_split"] else []
    folder = ctx.path(artifacts.PSEUDO_LABELS)
    missing = [i for i in (*train_ids, *val_ids) if not (folder / f"{i}.png").is_file()]
    if missing:  # refused before torch is imported
        raise UserError(f"{folder}: no pseudo-label for image id {missing[0]!r} ({len(missing)} missing); "
                        "run `diclip cams` first")

    import numpy as np
    import torch

    from pipeline.models import load_clip
    from pipeline.segment.decoder import build_decoder
    from pipeline.segment.scores import confusion, scores
    from pipeline.segment.training import SegmenterTrainer, TrainConfig, patch_size, predict
    from pipeline.store.checkpoints import CheckpointStore
    from pipeline.store.image_store import FileSpec
    from stages.clip_input import input_normalisation
    from stages.segmenter_io import normalise, save_segmenter

    labels = FileSpec("label", str(folder))
    C = len(index.class_names)
    mean, std = input_normalisation(ctx.params.cams.normalise, models.clip)
    images = index.images([index.meta["train_split"], val_split])

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() and models.device != "cpu" else "gloo")
    clip = load_clip(models.clip.model, models.clip.pretrained, device=models.device, precision=models.precision)
    visual = clip.model.visual
    device = next(visual.parameters()).device
    width, blocks = int(visual.conv1.out_channels), len(visual.transformer.resblocks)
    options = {"dim": cfg.dim, "layers": cfg.layers, "heads": cfg.heads, "dropout": cfg.dropout}
    torch.manual_seed(cfg.seed)  # the decoder's initial weights
    decoder = build_decoder(cfg.architecture, width, blocks, C, **options).to(device)
    config = TrainConfig(cfg.iterations, cfg.batch, cfg.crop, tuple(cfg.rescale), cfg.flip, cfg.lr, cfg.weight_decay,
                         cfg.warmup, cfg.affinity_weight, cfg.affinity_radius, cfg.seed)
    trainer = SegmenterTrainer(decoder, visual, config, len(train_ids))

    def sample(i: int):
        image_id = train_ids[i]
        return (normalise(images.load_image(image_id), mean, std).to(device),
                torch.from_numpy(labels.read(image_id)).to(device))

    key = ctx.stamp(exclude=NOT_IN_KEY, inputs={"index": index.fingerprint,
                                               "labels": labels_digest(Path(labels.folder), train_ids)},
                    world=world)["fingerprint"]
    store = CheckpointStore(ctx.path(artifacts.TRAIN_CHECKPOINTS), key=key)
    history: list[dict] = []
    resumed = store.latest()
    if resumed is not None:
        trainer.load_state_dict(resumed[1]["trainer"])
        history = resumed[1]["history"]
        log.info("resuming from the checkpoint of step %d", resumed[0])

    def val_miou() -> float:  # scored as evaluate scores (pipeline.segment.scores)
        conf = np.zeros((C + 1, C + 1), dtype=np.int64)
        for image_id in val_ids:
            pred = predict(decoder, visual, normalise(images.load_image(image_id), mean, std).to(device), cfg.crop,
                           patch=patch_size(visual)).cpu().numpy().astype(np.uint8)
            conf += confusion(pred, labels.read(image_id), C + 1)
        return scores(conf, ("background", *index.class_names))["miou"]

    writer = rank == 0
    interrupt = _Interrupt()
    kill_after = int(os.environ.get(KILL_AFTER_STEPS_ENV, 0))
    from tqdm import tqdm

    bar = tqdm(total=cfg.iterations, initial=trainer.step, desc="train", unit="step", disable=not writer,
               mininterval=2.0)
    try:
        while trainer.step < cfg.iterations:
            out = trainer.train_step(sample)
            step = trainer.step
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.iterations:
                row = {"step": step, "train/loss": out["loss"], "train/lr": out["lr"]}
                if val_ids and (step % cfg.val_every == 0 or step == cfg.iterations):
                    row["val/miou_vs_pseudo_labels"] = val_miou()
                history.append(row)
                bar.set_postfix(loss=f"{out['loss']:.3f}")
            if writer and (step % cfg.checkpoint_every == 0 or interrupt.raised):
                store.save(step, {"trainer": trainer.state_dict(), "history": history})
                write_live(ctx.path(artifacts.TRAIN_LIVE), history)  # curves to watch (`dvc plots show`) while it runs
            if interrupt.raised:
                raise UserError(f"train: interrupted by signal {interrupt.raised} at step {step}; checkpoint kept, "
                                "rerun to resume")
            if kill_after and step >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        bar.close()
        interrupt.restore()
        torch.set_num_threads(threads)

    metric = {}
    if writer:
        write_live(ctx.path(artifacts.TRAIN_LIVE), history)
        save_segmenter(ctx.path(artifacts.SEGMENTER), decoder, {
            "architecture": cfg.architecture, "options": options, "in_dim": width, "blocks": blocks, "num_classes": C,
            "class_names": list(index.class_names), "clip_model": models.clip.model,
            "clip_pretrained": models.clip.pretrained, "mean_255": list(mean), "std_255": list(std),
            "crop": cfg.crop, "patch": patch_size(visual), "iterations": cfg.iterations, "key": key,
        })
        metric = {k: v for k, v in history[-1].items()} if history else {}
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return metric


def write_live(folder: Path, history: list[dict]) -> None:
    """The run's logged rows through DVCLive (written whole from the history, so a resumed run's curves
    hold each step once): `dvc plots show` and `dvc exp show` read them."""
    from dvclive import Live

    from pipeline import atomic

    def write(tmp: Path) -> None:
        with Live(dir=str(tmp), save_dvc_exp=False, dvcyaml=False, report=None) as live:
            for row in history:
                live.step = row["step"]
                for name, value in row.items():
                    if name != "step":
                        live.log_metric(name, value)
                live.make_summary()

    atomic.write_with(folder, write)


@click.command("train")
@artifact_options(SPEC)
def train_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Train the segmenter (stage D): DiCLIP's decoder (`architecture`) on the frozen CLIP, from the stored
    pseudo-labels of the train split (never ground truth). Balanced CE + `affinity_weight` affinity loss;
    AdamW (`lr`, `weight_decay`) with `warmup` and poly decay over `iterations`; random rescale (`rescale`),
    `crop` and `flip`. Checkpoints every `checkpoint_every` steps and on Ctrl-C / SIGTERM; a rerun resumes.
    Several GPUs: `torchrun --nproc_per_node N -m stages.cli train` (DDP)."""
    metric, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    if metric:
        click.echo(f"train: step {metric.get('step')}, loss {metric.get('train/loss', float('nan')):.3f}")
