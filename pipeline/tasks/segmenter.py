"""Stage D's segmenter around its stores: training from the stored pseudo-labels with checkpoints and
curves (`train_segmenter`), and the per-image evaluation task (`EvalTask`) on a saved segmenter."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def files_digest(folder: Path, ids: list[str]) -> str:
    """The content of `<folder>/<id>.png` for every id (the pseudo-labels a run trains on: other labels,
    another run)."""
    h = hashlib.sha256()
    for image_id in ids:
        h.update(image_id.encode() + b"\0" + (folder / f"{image_id}.png").read_bytes())
    return h.hexdigest()[:16]


def train_segmenter(index: Any, labels_folder: Path, config: Any, models: Any, normalise: str, *, key: str,
                    checkpoints: Path, live: Path, segmenter: Path) -> dict:
    """Train DiCLIP's decoder (`config`: the train section) on the frozen CLIP of `models` from the train
    split's pseudo-labels, resuming from the newest checkpoint of `key`; the writing rank saves the
    segmenter and the curves. Returns the last logged row. Under torchrun the global batch is split
    over the DDP processes (gloo on the CPU, NCCL on GPUs)."""
    import numpy as np
    import torch

    from pipeline.metrics import confusion, scores
    from pipeline.models import load_clip
    from pipeline.models.clip import input_normalisation
    from pipeline.segment.decoder import build_decoder
    from pipeline.segment.fit import fit
    from pipeline.segment.inference import normalise as to_input
    from pipeline.segment.inference import predict
    from pipeline.segment.training import SegmenterTrainer, patch_size
    from pipeline.store.checkpoints import CheckpointStore
    from pipeline.store.image_store import FileSpec
    from pipeline.store.live import write_live
    from pipeline.store.segmenter import save_segmenter

    train_ids = index.ids(index.meta["train_split"])
    val_split = index.meta["eval_split"]
    val_ids = index.ids(val_split)[:config.val_images] if val_split != index.meta["train_split"] else []
    labels, names = FileSpec("label", str(labels_folder)), ("background", *index.class_names)
    mean, std = input_normalisation(normalise, models.clip.model, models.clip.pretrained)
    images = index.images([index.meta["train_split"], val_split])
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() and models.device != "cpu" else "gloo")
    try:
        clip = load_clip(models.clip.model, models.clip.pretrained, device=models.device, precision=models.precision)
        visual = clip.model.visual
        device = next(visual.parameters()).device
        width, blocks = int(visual.conv1.out_channels), len(visual.transformer.resblocks)
        options = {"dim": config.dim, "layers": config.layers, "heads": config.heads, "dropout": config.dropout}
        torch.manual_seed(config.seed)  # the decoder's initial weights
        decoder = build_decoder(config.architecture, width, blocks, len(names) - 1, **options).to(device)
        trainer = SegmenterTrainer(decoder, visual, config, len(train_ids))

        def sample(i: int):
            image_id = train_ids[i]
            return to_input(images.load_image(image_id), mean, std).to(device), torch.from_numpy(labels.read(image_id)).to(device)

        def validate() -> float:  # scored as evaluate scores, against the eval split's pseudo-labels
            conf = np.zeros((len(names), len(names)), dtype=np.int64)
            for image_id in val_ids:
                pred = predict(decoder, visual, to_input(images.load_image(image_id), mean, std).to(device), config.crop,
                               patch=patch_size(visual)).cpu().numpy().astype(np.uint8)
                conf += confusion(pred, labels.read(image_id), len(names))
            return scores(conf, names)["miou"]

        store = CheckpointStore(checkpoints, key=key)
        history: list[dict] = []
        resumed = store.latest()
        if resumed is not None:
            trainer.load_state_dict(resumed[1]["trainer"])
            history = resumed[1]["history"]
            log.info("resuming from the checkpoint of step %d", resumed[0])

        def checkpoint(rows: list[dict]) -> None:
            store.save(trainer.step, {"trainer": trainer.state_dict(), "history": rows})
            write_live(live, rows)  # curves to watch (`dvc plots show`) while it runs

        fit(trainer, sample, config, history, validate=validate if val_ids else None, checkpoint=checkpoint,
            writer=rank == 0)
        if rank == 0:
            write_live(live, history)
            save_segmenter(segmenter, decoder.state_dict(), {
                "architecture": config.architecture, "options": options, "in_dim": width, "blocks": blocks,
                "num_classes": len(names) - 1, "class_names": list(index.class_names), "clip_model": models.clip.model,
                "clip_pretrained": models.clip.pretrained, "mean_255": list(mean), "std_255": list(std),
                "crop": config.crop, "patch": patch_size(visual), "iterations": config.iterations, "key": key,
            })
        return dict(history[-1]) if history and rank == 0 else {}
    finally:
        torch.set_num_threads(threads)
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass(frozen=True)
class SavedSegmenter:
    """Picklable handle of a saved segmenter; `load()` gives (decoder in eval mode, frozen CLIP tower, config)."""

    folder: str
    device: str
    precision: str

    @property
    def config(self) -> dict[str, Any]:
        from pipeline.store.segmenter import segmenter_config

        return segmenter_config(self.folder)

    def load(self):
        from pipeline.segment.saved import load_segmenter
        from pipeline.store.segmenter import segmenter_weights

        config = self.config
        decoder, visual = load_segmenter(config, segmenter_weights(self.folder), device=self.device, precision=self.precision)
        return decoder, visual, config


@dataclass(frozen=True)
class EvalTask:
    """Runner task: load the segmenter once per worker; per image its prediction and the confusions of
    the prediction and of the stored pseudo-label against the mask."""

    segmenter: SavedSegmenter
    index: str
    split: str
    labels: str  # the pseudo-label folder
    config: Any  # the evaluate section (pipeline.segment.config.InferenceConfig)

    def build(self):
        from pipeline.metrics import confusion
        from pipeline.segment.inference import segment_image
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.image_store import FileSpec

        decoder, visual, saved = self.segmenter.load()
        images = DatasetIndex.load(self.index).images([self.split])
        pseudo = FileSpec("label", self.labels)
        K = saved["num_classes"] + 1

        def compute(image_id: str) -> dict:
            image, mask = images.load_image(image_id), images.load_mask(image_id)
            pred = segment_image(decoder, visual, saved, self.config, image)
            return {"confusion": confusion(pred, mask, K), "pseudo_confusion": confusion(pseudo.read(image_id), mask, K),
                    "prediction": pred}

        return compute

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, (self.split,))[image_id]
