"""The runner on a real LocalCluster: same bytes as in-process, failures collected, resume after kill -9,
changed inputs recomputed, existing clusters used."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import RunnerParams
from pipeline.runner import ImageFailures, Runner, run_per_image
from pipeline.store.image_store import ImageStore
from tests.kill_run import run_killed_after
from tests.runner_tasks import SPECS, PlantedTask, computed_ids, expected


def make_store(path: Path, n: int, shard: int, key: str = "abc") -> ImageStore:
    ids = [f"img_{i:04d}" for i in range(n)]
    return ImageStore.create_or_resume(path, ids=ids, specs=SPECS, key=key, attrs={"stage": "test"}, shard_images=shard)


def assert_planted(store: ImageStore, changed=()) -> None:
    for i, image_id in enumerate(store.ids()):
        want = expected(image_id, "v2" if image_id in changed else "")
        np.testing.assert_array_equal(store.read("x", i), want["x"])
        assert store.read("k", i) == want["k"]


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_local_cluster_writes_the_same_bytes_as_one_process(tmp_path):
    single = make_store(tmp_path / "single.zarr", 23, shard=4)
    report = run_per_image(PlantedTask(), single, RunnerParams(in_process=True))
    assert report.computed == 23 and report.reused == 0
    single.mark_complete()

    with Runner(RunnerParams(n_workers=2)) as runner:
        cluster = make_store(tmp_path / "cluster.zarr", 23, shard=4)
        runner.run(PlantedTask(), cluster)
        assert len(runner.client().scheduler_info()["workers"]) == 2
        cluster.mark_complete()

    assert_planted(single)
    a, b = tree_bytes(tmp_path / "single.zarr"), tree_bytes(tmp_path / "cluster.zarr")
    assert a.keys() == b.keys() and len(a) > 5
    assert a == b
    # sharding: one shard file per block of 4 images, not one file per image
    assert len(list((tmp_path / "single.zarr" / "x" / "c").iterdir())) == 6


def test_failed_images_are_listed_and_only_they_are_retried(tmp_path):
    store = make_store(tmp_path / "s.zarr", 10, shard=3)
    bad = ("img_0004", "img_0007")
    with pytest.raises(ImageFailures) as info:
        run_per_image(PlantedTask(fail_ids=bad, log_dir=str(tmp_path)), store, RunnerParams(in_process=True))
    assert set(info.value.failures) == set(bad)
    assert "img_0004" in str(info.value) and "planted failure" in str(info.value)
    assert store.done().sum() == 8 and not store.done()[4] and not store.done()[7]

    log2 = tmp_path / "second"
    log2.mkdir()
    report = run_per_image(PlantedTask(log_dir=str(log2)), store, RunnerParams(in_process=True))
    assert sorted(computed_ids(log2)) == list(bad)
    assert report.computed == 2 and report.reused == 8
    store.mark_complete()
    assert_planted(store)


def test_resume_after_kill_computes_only_missing_images(tmp_path):
    n, shard = 48, 8
    store_path, log1 = tmp_path / "k.zarr", tmp_path / "log1"
    log1.mkdir()
    run_killed_after(["-m", "tests.runner_script", str(store_path), str(n), str(shard), str(log1)], images=20)

    store = ImageStore.open(store_path, require_complete=False)
    assert not store.attrs["complete"]
    staging = store_path.with_name(store_path.name + ".staging")
    (staging / ".7.4242.tmp").write_bytes(b"half-written")  # a write the kill interrupted
    done = store.done()
    kept = {image_id for i, image_id in enumerate(store.ids())
            if done[i] or store.load_staged(i) is not None}
    assert 20 <= len(kept) < n and done.sum() >= shard

    log2 = tmp_path / "log2"
    log2.mkdir()
    store = ImageStore.create_or_resume(store_path, ids=store.ids(), specs=SPECS, key="p", attrs={"stage": "t"},
                                        shard_images=shard)
    report = run_per_image(PlantedTask(log_dir=str(log2)), store, RunnerParams(n_workers=2))
    recomputed = computed_ids(log2)
    assert report.computed == len(recomputed) == n - len(kept), "the rerun recomputed work that was already durable"
    assert set(recomputed) == set(store.ids()) - kept
    store.mark_complete()
    assert_planted(store)
    assert not staging.exists()


def test_only_images_whose_inputs_changed_are_recomputed(tmp_path):
    store = make_store(tmp_path / "s.zarr", 9, shard=4)
    run_per_image(PlantedTask(), store, RunnerParams(in_process=True))
    store.mark_complete()
    log = tmp_path / "log"
    log.mkdir()
    again = make_store(tmp_path / "s.zarr", 9, shard=4)  # same key: the finished store is reused
    changed = ("img_0002", "img_0008")
    report = run_per_image(PlantedTask(log_dir=str(log), changed=changed), again, RunnerParams(in_process=True))
    assert sorted(computed_ids(log)) == list(changed)
    assert report.computed == 2 and report.reused == 7
    again.mark_complete()
    assert_planted(again, changed)
    unchanged = run_per_image(PlantedTask(log_dir=str(log), changed=changed), make_store(tmp_path / "s.zarr", 9, 4),
                              RunnerParams(in_process=True))
    assert unchanged.computed == 0 and unchanged.reused == 9


@pytest.mark.parametrize("via", ["params", "env"])
def test_an_existing_cluster_is_used_when_its_address_is_given(tmp_path, monkeypatch, via):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
        if via == "env":
            monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
            params = RunnerParams()
        else:
            params = RunnerParams(scheduler_address=cluster.scheduler_address)
        store = make_store(tmp_path / "s.zarr", 6, shard=2)
        run_per_image(PlantedTask(log_dir=str(tmp_path)), store, params)
    logs = {int(p.stem) for p in tmp_path.glob("*.log")}
    assert logs == worker_pids, "images were computed outside the given cluster"
    assert sorted(computed_ids(tmp_path)) == store.ids()
    assert_planted(store)


def test_workers_started_elsewhere_run_in_the_drivers_directory(tmp_path, monkeypatch):
    """Stages pass artifact paths relative to the repo root; a worker started in another directory must
    still read and write the driver's files."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            [started_in] = client.run(os.getcwd).values()
        monkeypatch.chdir(tmp_path)
        (tmp_path / "logs").mkdir()
        assert Path(started_in) != tmp_path
        store = make_store(Path("s.zarr"), 6, shard=2)
        report = run_per_image(PlantedTask(log_dir="logs"), store, RunnerParams(scheduler_address=cluster.scheduler_address))
    assert report.computed == 6
    assert sorted(computed_ids(tmp_path / "logs")) == store.ids()
    assert_planted(ImageStore(tmp_path / "s.zarr"))
    assert not (Path(started_in) / "s.zarr").exists()


def test_an_unreachable_scheduler_is_refused_naming_its_address(tmp_path):
    from pipeline.errors import UserError

    store = make_store(tmp_path / "s.zarr", 2, shard=2)
    with pytest.raises(UserError, match=r"no dask scheduler answers at tcp://127\.0\.0\.1:9 "):
        run_per_image(PlantedTask(log_dir=str(tmp_path)), store, RunnerParams(scheduler_address="tcp://127.0.0.1:9"))
    assert not ImageStore(tmp_path / "s.zarr").done().any()


def _environment() -> dict[str, str]:
    return dict(os.environ)


def test_local_cluster_workers_get_thread_limits_and_keep_glibc_adaptive_malloc():
    """distributed's default MALLOC_TRIM_THRESHOLD_ makes torch stages spend half their time in the kernel."""
    with Runner(RunnerParams(n_workers=1, torch_threads=1)) as runner:
        [env] = runner.client().run(_environment).values()
    assert "MALLOC_TRIM_THRESHOLD_" not in env
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"


def _imported(names: tuple[str, ...]) -> list[str]:
    import sys

    return [n for n in names if n in sys.modules]


def test_a_started_cluster_has_each_worker_import_the_stages_modules_before_any_task(tmp_path):
    """`start` overlaps the workers' imports with the driver's own work: when it is done every worker has
    the named modules (and only those, of the probes), and the tasks then run on that same cluster."""
    named, other = ("tests.warm_probe", "json"), ("tests.warm_probe_unnamed",)
    with Runner(RunnerParams(n_workers=2)) as runner:
        runner.start(named)
        runner.warmed()
        client = runner.client()
        seen = client.run(_imported, (*named, *other))
        store = make_store(tmp_path / "s.zarr", 4, shard=2)
        report = runner.run(PlantedTask(log_dir=str(tmp_path)), store)
        assert runner.client() is client
    assert list(seen.values()) == [list(named)] * 2
    assert not _imported(("tests.warm_probe",)), "the driver imported what only the workers need"
    assert report.computed == 4
    assert_planted(store)


def test_a_cluster_that_fails_to_start_in_the_background_is_reported_on_first_use(tmp_path):
    from pipeline.errors import UserError

    with Runner(RunnerParams(scheduler_address="tcp://127.0.0.1:9")) as runner:
        runner.start(("tests.warm_probe",))  # returns at once; the refusal comes when the cluster is needed
        with pytest.raises(UserError, match=r"no dask scheduler answers at tcp://127\.0\.0\.1:9 "):
            runner.client()
