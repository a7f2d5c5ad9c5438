"""Map a per-image function over the images of an ImageStore with dask, resumably.

A stage hands the runner an `ImageTask`: a small picklable object whose `build()` makes the
per-image function on a worker (models load once per worker process, not once per image) and whose
`input_digest(id)` names what an image's result depends on beyond the store's key. Each image is one
dask task: the worker computes it and stages it durably; the driver packs a block into the store's
shards once all its images are staged, so each shard has exactly one writer. Progress is per image,
with rate and ETA. Failures of single images are collected, not fatal: every other image is written,
and the run ends with one error listing the failed ids; a rerun computes only what is missing, and
recomputes a finished image whose input digest changed.

Cluster: `runner.scheduler_address` (or $DASK_SCHEDULER_ADDRESS) joins an existing cluster whose
workers see the same filesystem path; otherwise a LocalCluster of worker processes is started, one
torch thread each. Every task runs in the driver's working directory (the repo root), so the relative
artifact paths that stages store and pass around mean the same files on every worker, wherever the
worker was started. `runner.in_process` runs everything here, without dask. `Runner.start` brings
the cluster up in the background while the stage's driver still prepares, and has each worker import
the stage's heavy modules meanwhile.

Testing hooks, each a deterministic `kill -9` at a known point: with DICLIP_KILL_AFTER_IMAGES=N in the
driver's environment the driver kills its own process group once N images are staged; with
DICLIP_WORKER_KILL_AFTER_IMAGES=N in a worker's environment that worker process kills itself once it
has staged N images (the cluster must finish the stage without it).
"""

from __future__ import annotations

from pipeline.errors import UserError
import hashlib
import itertools
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar

import numpy as np
from tqdm.auto import tqdm

from pipeline.params import RunnerParams
from pipeline.store.image_store import ImageStore, Staging, pad_digest

log = logging.getLogger(__name__)

ImageFn = Callable[[str], Mapping[str, np.ndarray]]
KILL_AFTER_ENV = "DICLIP_KILL_AFTER_IMAGES"
WORKER_KILL_AFTER_ENV = "DICLIP_WORKER_KILL_AFTER_IMAGES"
CHUNK_SECONDS = 0.5  # target compute time of one dask task (a chunk of images)
T = TypeVar("T")
R = TypeVar("R")


class ImageTask(Protocol):
    """What a stage gives the runner: picklable; builds the per-image function on the worker."""

    def build(self) -> ImageFn: ...

    def input_digest(self, image_id: str) -> bytes: ...


class ImageFailures(UserError, RuntimeError):
    """Some images failed; every other image was written, and a rerun retries only these."""

    def __init__(self, store_path: Path, failures: Mapping[str, str], report: "RunReport | None" = None) -> None:
        self.failures = dict(failures)
        self.report = report
        shown = list(self.failures.items())[:20]
        lines = "\n".join(f"  {image_id}: {msg}" for image_id, msg in shown)
        more = f"\n  ... and {len(self.failures) - len(shown)} more" if len(self.failures) > len(shown) else ""
        super().__init__(
            f"{len(self.failures)} image(s) failed while writing {store_path}:\n{lines}{more}\n"
            "Every other image is stored; fix the cause and rerun: only the failed images are computed."
        )


@dataclass(frozen=True)
class RunReport:
    """What one run did: images computed now, images reused from before, and failures by id."""

    computed: int
    reused: int
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class Runner:
    """Runs ImageTasks into ImageStores; one dask client for all runs, started on first need.

    Use as a context manager so the LocalCluster it may start is shut down.
    """

    def __init__(self, params: RunnerParams) -> None:
        self.params = params
        self._stack = ExitStack()
        self._client = None
        self._starting: Future | None = None
        self._warm: list = []

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        if self._starting is not None:
            wait([self._starting])  # a cluster still starting is shut down with the rest
            self._starting = None
        self._warm = []
        self._stack.close()
        self._client = None

    def start(self, imports: Sequence[str] = ()) -> None:
        """Start the cluster now, in the background, and have every worker import `imports` (the heavy
        modules the stage's tasks load: torch, a model library) while the driver still prepares.

        A stage's fixed cost (the driver's imports, the cluster's start, each worker's imports) is
        then paid side by side instead of one after the other. Nothing happens in process or once the
        client exists; a failure to start is raised by the first `client()`.
        """
        if self.params.in_process or self._client is not None or self._starting is not None:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="diclip-cluster-start")
        self._starting = pool.submit(self._connect, tuple(imports))
        pool.shutdown(wait=False)  # its thread ends with the start

    def _connect(self, imports: tuple[str, ...]):
        client = self._stack.enter_context(dask_client(self.params))
        if imports:
            # one task per worker, pinned to it; held until the stage ends so dask does not drop them
            self._warm = [client.submit(import_modules, imports, workers=[address], allow_other_workers=False,
                                        pure=False, key=f"import-{i}-{_token(imports)}")
                          for i, address in enumerate(client.scheduler_info()["workers"])]
        return client

    def warmed(self) -> None:
        """Wait until every worker has imported what `start` named (for tests and benchmarks)."""
        from dask.distributed import wait as wait_all

        self.client()
        wait_all(self._warm)

    # ------------------------------------------------------------------ per-image stores
    def run(self, task: ImageTask, store: ImageStore, *, desc: str = "images") -> RunReport:
        """Compute every image of `store` that is not durably done with unchanged inputs; see the module docstring."""
        start = time.perf_counter()
        ids = store.ids()
        _forget_changed(task, store, ids)
        done, staged = store.done(), store.staged_indices()
        missing = {i for i in range(len(ids)) if not done[i] and i not in staged}
        remaining = {b.start: sum(i in missing for i in b) for b in store.blocks()}
        packer = _Packer(self, store)
        for block in store.blocks():  # images staged before a kill, in blocks now whole
            if remaining[block.start] == 0:
                packer.pack(block)
        pending = sorted(missing)
        reused = len(ids) - len(pending)
        log.info("%s: %d images to compute, %d reused", store.path, len(pending), reused)
        block_of = {i: b for b in store.blocks() for i in b}
        failures: dict[str, str] = {}
        with tqdm(total=len(pending), desc=desc, unit="img", disable=not pending, dynamic_ncols=True) as bar:
            for results in self._execute(task, store.staging(), ids, pending):
                for index, error in results:
                    if error is not None:
                        failures[ids[index]] = error
                    block = block_of[index]
                    remaining[block.start] -= 1
                    if remaining[block.start] == 0:
                        packer.pack(block)
                bar.update(len(results))
                _DRIVER_KILL.count(len(results))
        packer.wait()
        report = RunReport(computed=len(pending) - len(failures), reused=reused, failures=failures,
                           seconds=time.perf_counter() - start)
        if failures:
            raise ImageFailures(store.path, failures, report)
        return report

    def _execute(self, task: ImageTask, staging: "Staging", ids: list[str], pending: list[int]) -> Iterator[list[tuple[int, str | None]]]:
        """Yield [(row, error or None), ...] as chunks of images finish, here or on the dask cluster.

        On the cluster, images go out in chunks sized to take about CHUNK_SECONDS each (one image per
        task until the first ones are timed; never more than a sixteenth of a worker's share), and
        at most two chunks per worker thread are in flight: memory stays flat, progress stays
        per image for slow stages, and a kill loses only what is in flight.
        """
        if not pending:
            return
        threads = self.params.torch_threads
        if self.params.in_process:
            _set_torch_threads(threads)
            for i in pending:
                yield compute_images(staging, [(i, ids[i])], task, threads, os.getcwd())[0]
            return
        from dask.distributed import as_completed

        client = self.client()
        token = _token(task)
        root = os.getcwd()
        [task_ref] = client.scatter([task], broadcast=True, hash=False)
        window = max(2, 2 * sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        largest = max(1, len(pending) // (8 * window))
        todo = iter(pending)
        per_image: list[float] = []

        def submit():
            size = 1 if not per_image else int(min(largest, max(1, CHUNK_SECONDS / max(np.median(per_image), 1e-6))))
            chunk = [(i, ids[i]) for i in itertools.islice(todo, size)]
            if not chunk:
                return None
            return client.submit(compute_images, staging, chunk, task_ref, threads, root,
                                 key=f"images-{token}-{chunk[0][0]}", pure=False)

        running = as_completed([f for f in (submit() for _ in range(window)) if f is not None])
        for future in running:
            results, seconds = future.result()
            per_image.append(seconds / len(results))
            yield results
            nxt = submit()
            if nxt is not None:
                running.add(nxt)

    # ------------------------------------------------------------------ whole-run work
    def map(self, fn: Callable[[T], R], items: Sequence[T], *, desc: str = "items", unit: str = "it",
            weights: Sequence[int] | None = None) -> list[R]:
        """`[fn(x) for x in items]` on the workers (or here), results in item order, with a progress bar.

        `weights` (e.g. images per item) drive the bar, so it counts images, not items.
        """
        results: list[Any] = [None] * len(items)
        for i, result in self.imap(fn, items, desc=desc, unit=unit, weights=weights):
            results[i] = result
        return results

    def imap(self, fn: Callable[[T], R], items: Sequence[T], *, desc: str = "items", unit: str = "it",
             weights: Sequence[int] | None = None, uses_torch: bool = False) -> Iterator[tuple[int, R]]:
        """(item index, fn(item)) as each finishes, so the caller can keep every result durably the
        moment it exists (a kill then loses only what was in flight). With `uses_torch`, torch runs
        with `runner.torch_threads` wherever an item is computed (float results depend on it)."""
        weights = list(weights) if weights is not None else [1] * len(items)
        with tqdm(total=sum(weights), desc=desc, unit=unit, disable=not items, dynamic_ncols=True) as bar:
            threads = self.params.torch_threads if uses_torch else 0
            if self.params.in_process:
                for i, item in enumerate(items):
                    result = _with_threads(fn, item, threads, os.getcwd())
                    bar.update(weights[i])
                    yield i, result
                    _DRIVER_KILL.count(weights[i])  # the caller has kept the result by now
                return
            from dask.distributed import as_completed

            client = self.client()
            root = os.getcwd()
            futures = {client.submit(_with_threads, fn, item, threads, root, pure=False): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                i = futures[future]
                result = future.result()
                bar.update(weights[i])
                yield i, result
                _DRIVER_KILL.count(weights[i])

    def client(self):
        """The dask Client: the configured scheduler, or a LocalCluster of processes started here."""
        if self._client is None:
            if self._starting is not None:
                starting, self._starting = self._starting, None
                self._client = starting.result()  # raises what starting raised
            else:
                self._client = self._connect(())
        return self._client


def import_modules(names: Sequence[str]) -> list[str]:
    """Import `names` here (a worker warming up); returns those that failed, which the stage's own
    task will then report with its real error."""
    import importlib

    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (the task that needs the module raises the real error)
            failed.append(name)
    return failed


def _with_threads(fn: Callable[[T], R], item: T, threads: int, root: str) -> R:
    """`fn(item)` in the driver's directory `root`, with torch limited to `threads` (0: leave torch
    alone, and do not import it)."""
    _enter(root)
    if threads:
        import torch  # noqa: F401  (loaded first, so the limit holds from the item's first operation)

        _set_torch_threads(threads)
    return fn(item)


class _KillHook:
    """A testing hook (see the module docstring): `kill()` once the images counted in this process, all
    runs together, reach the number in the environment variable `env`."""

    def __init__(self, env: str, kill: Callable[[], None]) -> None:
        self.env, self.kill, self.images = env, kill, 0

    def count(self, images: int) -> None:
        self.images += images
        limit = int(os.environ.get(self.env, "0") or 0)
        if limit and self.images >= limit:
            self.kill()


# the driver's kills its process group (itself and a LocalCluster's workers); a worker's only itself
_DRIVER_KILL = _KillHook(KILL_AFTER_ENV, lambda: os.killpg(os.getpgrp(), signal.SIGKILL))
_WORKER_KILL = _KillHook(WORKER_KILL_AFTER_ENV, lambda: os.kill(os.getpid(), signal.SIGKILL))


@contextmanager
def dask_client(params: RunnerParams):
    """A dask Client on the configured scheduler, or on a LocalCluster of processes started here."""
    import dask
    from dask.distributed import Client, LocalCluster

    # distributed configures its loggers when first imported: keep them at WARNING unless we debug
    verbose = logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    address = params.scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        log.info("connecting to dask scheduler at %s", address)
        try:
            client = Client(address, timeout=CONNECT_SECONDS)
        except OSError as err:
            raise UserError(f"runner.scheduler_address / DASK_SCHEDULER_ADDRESS: no dask scheduler answers at "
                            f"{address} within {CONNECT_SECONDS} s ({err})") from None
        try:  # not `with client`: that ties the client to the thread's context, and Runner.start may enter here in another thread
            _check_workers_see(client, os.getcwd(), address)
            yield client
        finally:
            client.close()
        return
    threads = str(params.torch_threads)
    # Set before each worker process starts. Replaces distributed's default, which also sets
    # MALLOC_TRIM_THRESHOLD_=65536: that turns off glibc's adaptive mmap threshold, so every large
    # tensor is mmapped and zero-filled anew, and a torch stage spends as long in the kernel as in
    # its own code (measured on diffusion_attention: 2.6 s of system time per image, 0.2 s without).
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536":  # left in this process by an earlier default nanny
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}), LocalCluster(
        n_workers=params.n_workers, threads_per_worker=params.threads_per_worker, processes=True,
        memory_limit=params.memory_limit, host="127.0.0.1", dashboard_address=None,
        # no dashboard; the scheduler's health endpoint takes any free loopback port, so a second
        # cluster on the machine is not greeted with "Port 8787 is already in use"
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.INFO if verbose else logging.WARNING,
    ) as cluster:
        client = Client(cluster)
        log.info("started a LocalCluster with %d worker processes", params.n_workers)
        try:
            yield client
        finally:
            client.close()


CONNECT_SECONDS = 10  # distributed keeps retrying a refused connection until then


def _check_workers_see(client, root: str, address: str) -> None:
    """Refuse a cluster with no workers, or whose workers do not see this repo at the same path."""
    if not client.scheduler_info()["workers"]:
        raise UserError(f"the dask scheduler at {address} has no workers: start some with "
                        f"`dask worker {address}` in this repo's environment")
    blind = sorted(worker for worker, sees in client.run(os.path.isdir, root).items() if not sees)
    if blind:
        raise UserError(f"dask worker(s) {', '.join(blind)} cannot see {root}: every worker must see the repo "
                        "at the same path (a shared filesystem such as NFS), because stages pass artifact paths")


def run_per_image(task: ImageTask, store: ImageStore, params: RunnerParams, *, desc: str = "images") -> RunReport:
    """One-off run of `task` into `store` (starts and stops its own cluster when needed)."""
    with Runner(params) as runner:
        return runner.run(task, store, desc=desc)


def _forget_changed(task: ImageTask, store: ImageStore, ids: list[str]) -> None:
    """Rows (done or staged) whose input digest differs from the task's now are recomputed, not reused."""
    done, stored = store.done(), store.input_digests()
    changed = [i for i in np.flatnonzero(done) if bytes(stored[i]) != pad_digest(task.input_digest(ids[i]))]
    for i in store.staged_indices():
        staged = store.load_staged(i)
        if staged is None or staged[1] != pad_digest(task.input_digest(ids[i])):
            store.drop_staged(i)
    if changed:
        log.info("%s: %d images changed since they were computed; recomputing them", store.path, len(changed))
    store.forget(changed)


# Per-worker-process cache of built image functions, keyed by the task's pickle digest: models
# are loaded once per worker, not once per image.
_BUILT: dict[str, ImageFn] = {}


def _token(task: ImageTask) -> str:
    return hashlib.sha256(pickle.dumps(task)).hexdigest()[:16]


def _enter(root: str) -> None:
    """Run in the driver's directory: stages pass artifact paths relative to the repo root."""
    if os.getcwd() != root:
        os.chdir(root)


def _built(task: ImageTask, torch_threads: int) -> ImageFn:
    # keyed by directory too: a long-lived worker may serve two checkouts whose tasks pickle alike
    key = f"{os.getcwd()}:{_token(task)}"
    if key not in _BUILT:
        _BUILT[key] = task.build()
        _set_torch_threads(torch_threads)  # build() may have loaded torch
    return _BUILT[key]


def _set_torch_threads(n: int) -> None:
    """Limit torch's threads if torch is loaded (stages that need no torch never pay for importing it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def compute_images(staging: "Staging", chunk: list[tuple[int, str]], task: ImageTask,
                   torch_threads: int, root: str) -> tuple[list[tuple[int, str | None]], float]:
    """Compute and stage a chunk of (row, image id) in the driver's directory `root`; runs on a worker.

    Returns ([(row, error message or None), ...], seconds spent).
    """
    start = time.perf_counter()
    _enter(root)
    _set_torch_threads(torch_threads)
    results = []
    for index, image_id in chunk:
        try:
            digest = task.input_digest(image_id)
            values = staging.check(image_id, _built(task, torch_threads)(image_id))
        except Exception as err:  # one bad image must not stop the others
            log.debug("image %s failed:\n%s", image_id, traceback.format_exc())
            results.append((index, _describe(err)))
            continue
        staging.stage(index, image_id, values, digest)
        results.append((index, None))
        _WORKER_KILL.count(1)
    return results, time.perf_counter() - start


class _Packer:
    """Packs finished blocks into the store's shards: on the workers (one task per block, so each
    shard still has one writer) or here when running in process."""

    def __init__(self, runner: "Runner", store: ImageStore) -> None:
        self.runner, self.store, self.futures = runner, store, []

    def pack(self, block: range) -> None:
        if self.runner.params.in_process:
            self.store.pack_block(block)
        else:
            self.futures.append(self.runner.client().submit(
                pack_block, str(self.store.path), block.start, block.stop, os.getcwd(), pure=False))

    def wait(self) -> None:
        for future in self.futures:
            future.result()


def pack_block(path: str, start: int, stop: int, root: str) -> int:
    """Pack one block of a store in the driver's directory `root` (a worker's half of `_Packer`)."""
    _enter(root)
    return ImageStore(path, writable=True).pack_block(range(start, stop))


def _describe(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text if isinstance(err, (ValueError, KeyError, FileNotFoundError)) else f"{type(err).__name__}: {text}"
