"""Stage `prepare`: validate every image of the train and eval splits and write the dataset index that
every later stage reads (layout: pipeline/store/dataset_index.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline import artifacts
from pipeline.command import artifact_options
from pipeline.skeleton import StageContext, StageSpec, run_stage

log = logging.getLogger(__name__)

SPEC = StageSpec(name="prepare", module=__name__, command="prepare", params=("dataset", "prepare"),
                 outputs=(artifacts.INDEX,), extra_deps=("${dataset.root}",), worker_imports=("pipeline.data.decode",))


def body(ctx: StageContext) -> dict[str, int]:
    """Validate and index the train and eval splits; returns accepted images per split."""
    from pipeline.data.datasets import open_dataset
    from pipeline.runner import ImageFailures
    from pipeline.store import dataset_index
    from pipeline.tasks.prepare import ValidateTask, record_specs

    ds, cfg, out = ctx.params.dataset, ctx.params.prepare, ctx.path(artifacts.INDEX)
    splits = list(dict.fromkeys([ds.train_split, ds.eval_split]))
    # Open every split first: a missing split list or folder fails before any work starts.
    datasets = {s: open_dataset(ds.kind, ds.root, s, class_names_file=ds.class_names_file) for s in splits}
    ctx.start_workers()
    class_names = next(iter(datasets.values())).class_names
    stamp = ctx.stamp()
    dataset_index.begin(out)
    accepted: dict[str, list[str]] = {}
    digests, rejected = {}, {}
    for split, dataset in datasets.items():
        store, report = ctx.images(
            ValidateTask(ds.kind, str(ds.root), split, ds.class_names_file), dataset_index.records_path(out, split),
            ids=dataset.ids, specs=record_specs(dataset.num_classes), key=stamp["fingerprint"],
            attrs={**stamp, "split": split}, shard_images=cfg.shard_images, desc=f"prepare {split}",
            allow_failures=cfg.on_error == "skip",
        )
        if report.failures:
            log.warning("%s: leaving out %d bad images (prepare.on_error=skip)", split, len(report.failures))
            rejected[split] = report.failures
        done = store.done()
        accepted[split] = [i for i, ok in zip(store.ids(), done) if ok]
        digests[split] = (accepted[split], store.read("digest")[done])
        if not accepted[split]:
            raise ImageFailures(store.path, rejected.get(split, {}))
    meta = {
        "provenance": stamp, "dataset_kind": ds.kind, "dataset_root": str(ds.root),
        "class_names_file": ds.class_names_file, "class_names": list(class_names),
        "splits": {s: len(ids) for s, ids in accepted.items()}, "train_split": ds.train_split,
        "eval_split": ds.eval_split, "rejected": {s: len(r) for s, r in rejected.items()},
        "fingerprint": dataset_index.fingerprint(class_names, digests),
    }
    dataset_index.write_index(out, meta=meta, split_ids=accepted, rejected=rejected)
    return {s: len(ids) for s, ids in accepted.items()}


@click.command("prepare")
@artifact_options(SPEC)
def prepare_command(params_path: Path, paths: dict[str, Path]) -> None:
    """Validate every image of the train and eval splits and index them.

    Reads params sections `dataset`, `prepare` and `runner`. Each image is fully decoded and its
    mask checked (values within the class range or 255, same size as the image); image-level
    labels are the classes present in the mask. Bad images fail the stage with one message that
    lists them (or, with prepare.on_error=skip, are left out and listed in rejected.json).
    Resumable: a rerun after a kill validates only the images not yet recorded, and re-checks the
    file digests of recorded ones (a changed image or mask is validated again).
    """
    counts, _ = run_stage(SPEC, body, params_path=params_path, paths=paths)
    for split, count in counts.items():
        click.echo(f"{split}: {count} images indexed")
