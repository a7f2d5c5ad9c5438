"""Schedule a stage's work on dask workers: per-image tasks into an ImageStore, or items of a whole-run task.

A stage hands the runner a *task*: a small picklable object whose `build()` makes the function on a
worker. That is the one way per-worker state is made: models load once per worker process (the
built function is kept per task), not once per image or item. An `ImageTask` also names, with
`input_digest(id)`, what an image's result depends on beyond the store's key. The store decides
what is pending (`ImageStore.resume`) and accepts results; the runner only schedules. Images go out
in chunks: the worker computes and stages each image durably; the driver has a block packed into
the store's shards once all its images are staged, so each shard has exactly one writer. Progress
is per image, with rate and ETA. Failures of single images are collected, not fatal: every other
image is written, and the run ends with one error listing the failed ids.

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

import errno
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

from pipeline.errors import UserError, disk_full
from pipeline.params import RunnerParams
from pipeline.store.image_store import ImageStore, Staging

log = logging.getLogger(__name__)

KILL_AFTER_ENV = "DICLIP_KILL_AFTER_IMAGES"
WORKER_KILL_AFTER_ENV = "DICLIP_WORKER_KILL_AFTER_IMAGES"
CHUNK_SECONDS = 0.5  # target compute time of one dask task (a chunk of images)
T = TypeVar("T")
R = TypeVar("R")


class Task(Protocol[T, R]):
    """Picklable; `build()` makes the function the task runs, once per worker process."""

    def build(self) -> Callable[[T], R]: ...


class ImageTask(Task[str, Mapping[str, np.ndarray]], Protocol):
    """A per-image task: its function maps an image id to the image's arrays (and files)."""

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
            if self._starting.exception() is None:
                self._client = self._starting.result()
            self._starting = None
        if self._warm and self._client is not None:
            # workers still importing (a stage with nothing to compute) would be killed mid-import, and
            # say so at length in the log: let them finish first (a few seconds at most)
            from dask.distributed import wait as wait_all

            try:
                wait_all(self._warm, timeout=120)
            except Exception:  # noqa: BLE001  (a worker that died or hangs is shut down with the rest)
                pass
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
        """Compute every image `store.resume` says is pending, packing each block once it is whole."""
        start = time.perf_counter()
        ids = store.ids()
        pending = store.resume(task.input_digest)
        packer = _Packer(self, store)
        failures: dict[str, str] = {}
        with tqdm(total=len(pending.rows), desc=desc, unit="img", disable=not pending.rows, dynamic_ncols=True) as bar:
            for results in self._images(task, store.staging(), ids, pending.rows):
                for index, error in results:
                    if error is not None:
                        failures[ids[index]] = error
                    block = pending.finished(index)
                    if block is not None:
                        packer.pack(block)
                bar.update(len(results))
                _DRIVER_KILL.count(len(results))
        packer.wait()
        report = RunReport(computed=len(pending.rows) - len(failures), reused=pending.reused, failures=failures,
                           seconds=time.perf_counter() - start)
        if failures:
            raise ImageFailures(store.path, failures, report)
        return report

    def _images(self, task: ImageTask, staging: "Staging", ids: list[str], pending: list[int]) -> Iterator[list[tuple[int, str | None]]]:
        """Yield [(row, error or None), ...] as chunks of images finish, here or on the dask cluster.

        On the cluster, images go out in chunks sized to take about CHUNK_SECONDS each (one image per
        task until the first ones are timed; never more than an eighth of a window's share), and at
        most two chunks per worker thread are in flight: memory stays flat, progress stays per image
        for slow stages, and a kill loses only what is in flight.
        """
        if not pending:
            return
        threads = self.params.torch_threads
        if self.params.in_process:
            _set_torch_threads(threads)
            for i in pending:
                results, _, full = compute_images(staging, [(i, ids[i])], task, threads, os.getcwd())
                yield _raise_if_full(full, results)
            return
        client, root = self.client(), os.getcwd()
        token = _token(task)
        [task_ref] = client.scatter([task], broadcast=True, hash=False)
        largest = max(1, len(pending) // (8 * self._window()))
        todo = iter(pending)
        per_image: list[float] = []

        def submit():
            size = 1 if not per_image else int(min(largest, max(1, CHUNK_SECONDS / max(np.median(per_image), 1e-6))))
            chunk = [(i, ids[i]) for i in itertools.islice(todo, size)]
            if not chunk:
                return None
            return client.submit(compute_images, staging, chunk, task_ref, threads, root,
                                 key=f"images-{token}-{chunk[0][0]}", pure=False)

        for future in self._stream(submit):
            results, seconds, full = future.result()
            per_image.append(seconds / max(1, len(results)))
            yield _raise_if_full(full, results)

    # ------------------------------------------------------------------ whole-run work
    def map(self, task: "Task[T, R] | Callable[[T], R]", items: Sequence[T], *, desc: str = "items", unit: str = "it",
            weights: Sequence[int] | None = None, uses_torch: bool = False) -> list[R]:
        """`[fn(x) for x in items]` on the workers (or here), `fn` built from `task` once per worker (a
        plain function is its own fn), results in item order, with a progress bar.

        `weights` (e.g. images per item) drive the bar, so it counts images, not items.
        """
        results: list[Any] = [None] * len(items)
        for i, result in self.imap(task, items, desc=desc, unit=unit, weights=weights, uses_torch=uses_torch):
            results[i] = result
        return results

    def imap(self, task: "Task[T, R] | Callable[[T], R]", items: Sequence[T], *, desc: str = "items", unit: str = "it",
             weights: Sequence[int] | None = None, uses_torch: bool = False) -> Iterator[tuple[int, R]]:
        """(item index, fn(item)) as each finishes, so the caller can keep every result durably the
        moment it exists (a kill then loses only what was in flight). With `uses_torch`, torch runs
        with `runner.torch_threads` wherever an item is computed (float results depend on it)."""
        weights = list(weights) if weights is not None else [1] * len(items)
        threads = self.params.torch_threads if uses_torch else 0
        with tqdm(total=sum(weights), desc=desc, unit=unit, disable=not items, dynamic_ncols=True) as bar:
            for i, result in self._items(task, items, threads):
                bar.update(weights[i])
                yield i, result
                _DRIVER_KILL.count(weights[i])  # the caller has kept the result by now

    def _items(self, task, items: Sequence[T], threads: int) -> Iterator[tuple[int, Any]]:
        if self.params.in_process:
            for i, item in enumerate(items):
                result = compute_item(task, item, threads, os.getcwd())
                yield i, _raise_if_full(result.path if isinstance(result, DiskFullAt) else None, result)
            return
        client, root = self.client(), os.getcwd()
        [task_ref] = client.scatter([task], broadcast=True, hash=False)
        todo = iter(enumerate(items))
        index_of: dict[Any, int] = {}

        def submit():
            nxt = next(todo, None)
            if nxt is None:
                return None
            future = client.submit(compute_item, task_ref, nxt[1], threads, root, pure=False)
            index_of[future.key] = nxt[0]
            return future

        for future in self._stream(submit):
            result = future.result()
            yield index_of.pop(future.key), _raise_if_full(result.path if isinstance(result, DiskFullAt) else None, result)

    def _window(self) -> int:
        """Chunks kept in flight: two per worker thread."""
        return max(2, 2 * sum(w.get("nthreads", 1) for w in self.client().scheduler_info()["workers"].values()))

    def _stream(self, submit: Callable[[], Any]) -> Iterator[Any]:
        """Futures as they complete, keeping a window of them in flight: `submit()` sends the next one
        (None when there is nothing left). The one way work reaches the cluster."""
        from dask.distributed import as_completed

        running = as_completed([f for f in (submit() for _ in range(self._window())) if f is not None])
        for future in running:
            yield future
            nxt = submit()
            if nxt is not None:
                running.add(nxt)

    def client(self):
        """The dask Client: the configured scheduler, or a LocalCluster of processes started here."""
        if self._client is None:
            if self._starting is not None:
                starting, self._starting = self._starting, None
                self._client = starting.result()  # raises what starting raised
            else:
                self._client = self._connect(())
        return self._client


def import_modules(names: Sequence[str]) -> None:
    """Import `names` here (a worker warming up). A module that fails is skipped: the stage's own task
    imports it again and reports the real error."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (the task that needs the module raises the real error)
            continue


def compute_item(task, item: T, threads: int, root: str):
    """`fn(item)` of the task's built function (or of a plain function) in the driver's directory `root`,
    with torch limited to `threads` (0: leave torch alone, and do not import it); runs on a worker. A full
    disk is handed back as `DiskFullAt(path)`, not raised (see compute_images)."""
    _enter(root)
    if threads:
        import torch  # noqa: F401  (loaded first, so the limit holds from the item's first operation)

        _set_torch_threads(threads)
    try:
        return _built(task, threads)(item)
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        return DiskFullAt(full)


@dataclass(frozen=True)
class DiskFullAt:
    """What a worker hands back instead of raising when the disk filled under `path`."""

    path: str


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
        memory_limit=worker_memory_limit(params), host="127.0.0.1", dashboard_address=None,
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


def worker_memory_limit(params: RunnerParams) -> str | int:
    """Each LocalCluster worker's memory limit: "auto" is the machine's memory shared equally by the workers.

    Dask's own "auto" shares it by dask threads (memory x threads_per_worker / cores), but our workers
    compute with torch threads, not dask threads: one worker with one dask thread on a 16-core GPU host
    would get a sixteenth of the memory, and pause, then die, holding SD 2.1-base."""
    if params.memory_limit != "auto":
        return params.memory_limit
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT // params.n_workers)


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


# Per-worker-process cache of built functions, keyed by the task's pickle digest: models are loaded
# once per worker, not once per image or item.
_BUILT: dict[str, Callable] = {}


def _token(task: Any) -> str:
    return hashlib.sha256(pickle.dumps(task)).hexdigest()[:16]


def _enter(root: str) -> None:
    """Run in the driver's directory: stages pass artifact paths relative to the repo root."""
    if os.getcwd() != root:
        os.chdir(root)


def _built(task, torch_threads: int) -> Callable:
    """The task's function, built once per process (a plain function is its own)."""
    if not hasattr(task, "build"):
        return task
    # keyed by directory too: a long-lived worker may serve two checkouts whose tasks pickle alike
    key = f"{os.getcwd()}:{_token(task)}"
    if key not in _BUILT:
        _BUILT[key] = task.build()
        if torch_threads:
            _set_torch_threads(torch_threads)  # build() may have loaded torch
    return _BUILT[key]


def _set_torch_threads(n: int) -> None:
    """Limit torch's threads if torch is loaded (stages that need no torch never pay for importing it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def compute_images(staging: "Staging", chunk: list[tuple[int, str]], task: ImageTask,
                   torch_threads: int, root: str) -> tuple[list[tuple[int, str | None]], float, str | None]:
    """Compute and stage a chunk of (row, image id) in the driver's directory `root`; runs on a worker.

    Returns ([(row, error message or None), ...], seconds spent, the path a full disk refused or
    None). A full disk ends the chunk there and is handed back, not raised: the driver reports it once,
    instead of every worker logging a traceback for every chunk.
    """
    start = time.perf_counter()
    _enter(root)
    _set_torch_threads(torch_threads)
    results = []
    for index, image_id in chunk:
        try:
            digest = task.input_digest(image_id)
            values = staging.check(image_id, _built(task, torch_threads)(image_id))
            staging.stage(index, image_id, values, digest)
        except Exception as err:  # one bad image must not stop the others
            full = disk_full(err)
            if full is not None:
                return results, time.perf_counter() - start, full
            log.debug("image %s failed:\n%s", image_id, traceback.format_exc())
            results.append((index, _describe(err)))
            continue
        results.append((index, None))
        _WORKER_KILL.count(1)
    return results, time.perf_counter() - start, None


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
            _raise_if_full(future.result(), None)


def pack_block(path: str, start: int, stop: int, root: str) -> str | None:
    """Pack one block of a store in the driver's directory `root` (a worker's half of `_Packer`); a full
    disk is handed back as the path it refused (see compute_images)."""
    _enter(root)
    try:
        ImageStore(path, writable=True).pack_block(range(start, stop))
    except OSError as err:
        full = disk_full(err)
        if full is None:
            raise
        return full
    return None


def _raise_if_full(full: str | None, results: T) -> T:
    """`results`, or the OSError of the disk that filled (the skeleton reports it once, as DiskFull)."""
    if full is not None:
        raise OSError(errno.ENOSPC, "No space left on device", full or None)
    return results


def _describe(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text if isinstance(err, (ValueError, KeyError, FileNotFoundError)) else f"{type(err).__name__}: {text}"
