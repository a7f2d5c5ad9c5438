"""Build the dataset index: validate each image on the runner, then record ids, labels, sizes and a
fingerprint (see pipeline.store.dataset_index for the layout)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.data.datasets import open_dataset
from pipeline.data.indexing import ValidateTask, record_specs
from pipeline.params import Params, to_plain
from pipeline.provenance import stamp
from pipeline.runner import ImageFailures, Runner
from pipeline.store import dataset_index
from pipeline.store.image_store import ImageStore

log = logging.getLogger(__name__)


def prepare_index(params: Params, out: str | Path) -> dict[str, int]:
    """Validate and index the train and eval splits into `out`; returns accepted images per split."""
    ds = params.dataset
    splits = list(dict.fromkeys([ds.train_split, ds.eval_split]))
    section = {"dataset": to_plain(ds), "prepare": to_plain(params.prepare)}
    provenance = stamp(dataset_index.STAGE, section)
    # Open every split first: a missing split list or folder fails before any work starts.
    datasets = {split: open_dataset(ds.kind, ds.root, split, class_names_file=ds.class_names_file) for split in splits}
    class_names = next(iter(datasets.values())).class_names
    dataset_index.begin(out)
    split_ids: dict[str, list[str]] = {}
    split_digests = {}
    rejected: dict[str, dict[str, str]] = {}
    with Runner(params.runner) as runner:
        for split, dataset in datasets.items():
            store = ImageStore.create_or_resume(
                dataset_index.records_path(out, split),
                ids=dataset.ids,
                specs=record_specs(dataset.num_classes),
                attrs={**provenance, "split": split},
                shard_images=params.prepare.shard_images,
            )
            task = ValidateTask(ds.kind, str(ds.root), split, ds.class_names_file)
            try:
                runner.run(task, store, desc=f"prepare {split}")
            except ImageFailures as err:
                if params.prepare.on_error == "fail":
                    raise
                log.warning("%s: leaving out %d bad images (prepare.on_error=skip)", split, len(err.failures))
                rejected[split] = err.failures
            store.mark_complete(allow_missing=params.prepare.on_error == "skip")
            done = store.done()
            split_ids[split] = [i for i, ok in zip(store.ids(), done) if ok]
            split_digests[split] = (split_ids[split], store.read("digest")[done])
            if not split_ids[split]:
                raise ImageFailures(store.path, rejected.get(split, {}))
    meta = {
        **provenance,
        "dataset_kind": ds.kind,
        "dataset_root": str(ds.root),
        "class_names": list(class_names),
        "splits": {split: len(ids) for split, ids in split_ids.items()},
        "train_split": ds.train_split,
        "eval_split": ds.eval_split,
        "rejected": {split: len(r) for split, r in rejected.items()},
        "fingerprint": dataset_index.fingerprint(class_names, split_digests),
    }
    dataset_index.write_index(out, meta=meta, split_ids=split_ids, rejected=rejected)
    return {split: len(ids) for split, ids in split_ids.items()}
