"""Map a per-image function over a dataset split with dask, into a resumable ImageStore.

A stage hands the runner an `ImageTask`: a small picklable object whose `build()` makes the
per-image function (loading models once per worker process, not once per image). The runner sends
one store block per dask task, so each zarr shard has exactly one writer, skips the blocks and
images already done, and shows a progress bar. Failures of single images are collected, not fatal:
every other image is still written, and the run ends with one error that lists the failed ids; a
rerun computes only what is missing.

Cluster: `runner.scheduler_address` (or $DASK_SCHEDULER_ADDRESS) joins an existing cluster whose
workers see the same filesystem path; otherwise a LocalCluster of worker processes is started, one
torch thread each. `runner.in_process` runs everything here, without dask.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np
from tqdm.auto import tqdm

from pipeline.params import RunnerParams
from pipeline.store.image_store import ImageStore

log = logging.getLogger(__name__)

ImageFn = Callable[[str], Mapping[str, np.ndarray]]


class ImageTask(Protocol):
    """What a stage gives the runner: picklable, and builds the per-image function on the worker."""

    def build(self) -> ImageFn: ...


class ImageFailures(RuntimeError):
    """Some images failed; every other image was written, and a rerun retries only these."""

    def __init__(self, store_path: Path, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        shown = list(self.failures.items())[:20]
        lines = "\n".join(f"  {image_id}: {msg}" for image_id, msg in shown)
        more = f"\n  ... and {len(self.failures) - len(shown)} more" if len(self.failures) > len(shown) else ""
        super().__init__(
            f"{len(self.failures)} image(s) failed while writing {store_path}:\n{lines}{more}\n"
            "Every other image is stored; fix the cause and rerun: only the failed images are computed."
        )


@dataclass(frozen=True)
class RunReport:
    """What one run did: images computed now, images found already done, and failures by id."""

    computed: int
    already_done: int
    failures: dict[str, str] = field(default_factory=dict)


class Runner:
    """Runs ImageTasks into ImageStores; one dask client for all runs, started on first need.

    Use as a context manager so the LocalCluster it may start is shut down.
    """

    def __init__(self, params: RunnerParams) -> None:
        self.params = params
        self._stack = ExitStack()
        self._client = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._client = None

    def run(self, task: ImageTask, store: ImageStore, *, desc: str = "images") -> RunReport:
        """Compute every image of `store` not yet done, block by block; see the module docstring."""
        done = store.done()
        pending = [b for b in store.blocks() if not done[b.start:b.stop].all()]
        already = int(done.sum())
        n_pending = sum(len(b) - int(done[b.start:b.stop].sum()) for b in pending)
        log.info("%s: %d images to compute, %d already done", store.path, n_pending, already)
        failures: dict[str, str] = {}
        computed = 0
        with tqdm(total=n_pending, desc=desc, unit="img", disable=n_pending == 0) as bar:
            for block, (block_failures, block_computed) in self._execute(task, store, pending):
                failures.update(block_failures)
                computed += block_computed
                bar.update(len(block) - int(done[block.start:block.stop].sum()))
        report = RunReport(computed=computed, already_done=already, failures=failures)
        if failures:
            raise ImageFailures(store.path, failures)
        return report

    def _execute(self, task: ImageTask, store: ImageStore, blocks: list[range]) -> Iterator[tuple[range, tuple[dict[str, str], int]]]:
        """Yield (block, block result) as blocks finish, in this process or on the dask cluster."""
        if not blocks:
            return
        threads = self.params.torch_threads
        if self.params.in_process:
            _set_torch_threads(threads)
            for block in blocks:
                yield block, process_block(str(store.path), block.start, block.stop, task, threads)
            return
        from dask.distributed import as_completed

        client = self.client()
        token = _token(task)
        futures = {
            client.submit(
                process_block, str(store.path), b.start, b.stop, task, threads,
                key=f"block-{store.path.name}-{b.start}-{token}", pure=False,
            ): b
            for b in blocks
        }
        for future in as_completed(futures):
            yield futures[future], future.result()

    def client(self):
        """The dask Client: the configured scheduler, or a LocalCluster of processes started here."""
        if self._client is None:
            self._client = self._stack.enter_context(dask_client(self.params))
        return self._client


def run_per_image(task: ImageTask, store: ImageStore, params: RunnerParams, *, desc: str = "images") -> RunReport:
    """One-off run of `task` into `store` (starts and stops its own cluster when needed)."""
    with Runner(params) as runner:
        return runner.run(task, store, desc=desc)


@contextmanager
def dask_client(params: RunnerParams):
    """A dask Client on the configured scheduler, or on a LocalCluster of processes started here."""
    from dask.distributed import Client, LocalCluster

    address = params.scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        log.info("connecting to dask scheduler at %s", address)
        with Client(address) as client:
            yield client
        return
    threads = str(params.torch_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    with LocalCluster(
        n_workers=params.n_workers,
        threads_per_worker=params.threads_per_worker,
        processes=True,
        memory_limit=params.memory_limit,
        dashboard_address=None,
        env=env,
        silence_logs=logging.WARNING,
    ) as cluster, Client(cluster) as client:
        log.info("started a LocalCluster with %d worker processes", params.n_workers)
        yield client


# Per-worker-process cache of built image functions, keyed by the task's pickle digest: models
# are loaded once per worker, not once per block.
_BUILT: dict[str, ImageFn] = {}


def _token(task: ImageTask) -> str:
    return hashlib.sha256(pickle.dumps(task)).hexdigest()[:16]


def _built(task: ImageTask) -> ImageFn:
    key = _token(task)
    if key not in _BUILT:
        _BUILT[key] = task.build()
    return _BUILT[key]


def _set_torch_threads(n: int) -> None:
    try:
        import torch
    except ImportError:  # stages that need no torch do not pay for importing it
        return
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def process_block(store_path: str, start: int, stop: int, task: ImageTask, torch_threads: int) -> tuple[dict[str, str], int]:
    """Compute the missing images of one block and write the block; runs on a worker.

    Returns (failures by image id, number of images computed now).
    """
    _set_torch_threads(torch_threads)
    store = ImageStore(Path(store_path), _open_rw(store_path))
    block = range(start, stop)
    done = store.done()[start:stop]
    values = store.read_block(block) if done.any() else store.empty_block(block)
    ids = store.group["image_id"][start:stop]
    fn = _built(task)
    failures: dict[str, str] = {}
    computed = 0
    stage_each = len(block) > 1  # a one-image block is written directly, nothing to stage
    for offset, index in enumerate(block):
        if done[offset]:
            continue
        image_id = str(ids[offset])
        result = store.load_staged(index) if stage_each else None
        if result is None:
            try:
                out = fn(image_id)
                result = {s.name: s.check(image_id, out[s.name]) for s in store.specs}
            except Exception as err:  # one bad image must not lose the rest of the block
                failures[image_id] = _describe(err)
                log.debug("image %s failed:\n%s", image_id, traceback.format_exc())
                continue
            computed += 1
            if stage_each:
                store.stage_image(index, result)
        for name, value in result.items():
            values[name][offset] = value
        done[offset] = True
    store.write_block(block, values, done)
    store.clear_staged(block)
    return failures, computed


def _describe(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text if isinstance(err, (ValueError, KeyError, FileNotFoundError)) else f"{type(err).__name__}: {text}"


def _open_rw(path: str):
    import zarr

    return zarr.open_group(path, mode="r+")
