"""Sharing and scale with real servers on 127.0.0.1 (README: "Sharing artifacts", "Using a cluster").

One tiny world goes through the whole `dvc repro` on the runner's LocalCluster. Then:
- the same pipeline on an external cluster (`dask scheduler` + two `dask worker` processes started
  elsewhere), one worker killing itself mid-stage, writes byte-identical outputs (dvc.lock's hashes);
- its outputs and run-cache go to a local-folder remote and to an S3 remote (SeaweedFS), and fresh
  clones pull them and find every stage up to date (`dvc pull`; `dvc repro --pull`), recomputing
  nothing; credentials live only in the untracked `.dvc/config.local`;
- the S3 server killed mid-push: the push fails promptly and clearly with the README's setting, a push
  after the restart completes, and every object on the remote hashes to its name; an object corrupted
  on the remote is caught by `dvc pull` (the remote's committed `verify = true`) and nothing corrupt
  reaches the workspace or the cache.
Slow (two whole tiny pipelines, about 8 minutes): `.ci/run` runs them as its second step."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline.runner import WORKER_KILL_AFTER_ENV
from tests.servers import KEY, SECRET, DaskCluster, SeaweedS3, objects_not_matching_their_hash
from tests.test_dvc_pipeline import ROOT, commit, copy_repo, edit_params, ran, run

pytestmark = pytest.mark.slow

# the README's setting for a prompt failure when the S3 server goes away (see "Sharing artifacts")
PUSH_ENV = {"AWS_MAX_ATTEMPTS": "1"}


def tiny(params: dict) -> None:
    """Every stage on a 52-image world with minimal work: the pipeline's shape, not its quality."""
    params["shapes"]["splits"] = {"train": 40, "val": 12}
    params["diffusion_attention"]["eval_images"] = 12
    params["tsa_cache"].update(images_per_class=2, steps=5)
    params["tsa_adapt"].update(iterations=20, warmup=5)
    params["train"].update(iterations=20, warmup=5, batch=4, checkpoint_every=10, log_every=5, val_every=10,
                           val_images=6)
    params["report"]["images"] = 4


def tiny_repo(path: Path) -> Path:
    repo = copy_repo(path)
    edit_params(repo, tiny)
    commit(repo)
    return repo


def shell(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def lock_outs(repo: Path) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock: the bytes of every output (a folder's md5 covers its files)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {stage: {o["path"]: o["md5"] for o in entry.get("outs", [])} for stage, entry in lock["stages"].items()}


def git_commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


def cached_hashes(repo: Path) -> set[str]:
    """Every object in the repo's DVC cache, as the md5 its path names."""
    root = repo / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name.removesuffix(".dir") for p in root.glob("*/*")}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The tiny pipeline reproduced on the runner's own LocalCluster, its lock committed."""
    repo = tiny_repo(tmp_path_factory.mktemp("local"))
    out = run(["dvc", "repro"], repo)
    assert "report" in ran(out)
    git_commit_all(repo, "repro")
    return repo


@pytest.mark.timeout(1800)  # two tiny pipelines: the module's local run (its fixture) and this one on one surviving worker
def test_an_external_cluster_with_a_worker_killed_mid_stage_writes_the_same_bytes(local_run, tmp_path):
    repo = tiny_repo(tmp_path / "repo")
    # worker 1 SIGKILLs itself after staging its 40th image: inside prepare or a later per-image stage,
    # whichever its share reaches first; with no nanny it stays dead and worker 0 finishes alone
    with DaskCluster(tmp_path / "cluster", [{}, {WORKER_KILL_AFTER_ENV: "40"}], pythonpath=ROOT, doomed={1}) as cluster:
        proc = shell(["dvc", "repro"], repo, {"DASK_SCHEDULER_ADDRESS": cluster.address})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert cluster.workers[1].wait(timeout=30) == -9, "the doomed worker was not killed mid-run"
        assert cluster.workers[0].poll() is None
    assert "report" in ran(proc.stdout + proc.stderr)
    assert lock_outs(repo) == lock_outs(local_run)


def _clone(repo: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(repo), str(dest)], dest.parent)
    return dest


def _up_to_date(clone: Path) -> None:
    status = run(["dvc", "status"], clone)
    assert "Data and pipelines are up to date" in status, status
    assert ran(run(["dvc", "repro"], clone)) == set()


def test_a_local_folder_remote_carries_outputs_and_run_cache(local_run, tmp_path):
    repo = _clone(local_run, tmp_path / "work")  # a teammate's clone with the outputs in its cache
    shutil.copytree(local_run / ".dvc" / "cache", repo / ".dvc" / "cache")
    run(["dvc", "checkout"], repo)
    run(["dvc", "remote", "add", "-d", "team", str(tmp_path / "remote")], repo)
    git_commit_all(repo, "remote")
    run(["dvc", "push", "--run-cache"], repo)

    pulled = _clone(repo, tmp_path / "pulled")
    run(["dvc", "pull", "--run-cache"], pulled)
    _up_to_date(pulled)

    repro_pull = _clone(repo, tmp_path / "repro_pull")
    out = run(["dvc", "repro", "--pull"], repro_pull)
    assert ran(out) == set(), out
    assert lock_outs(repro_pull) == lock_outs(local_run)
    _up_to_date(repro_pull)


def _add_s3_remote(repo: Path, server: SeaweedS3, prefix: str) -> None:
    """The README's commands: URL, endpoint and verify in the committed config; the keys in config.local."""
    run(["dvc", "remote", "add", "-d", "team", f"s3://{server.bucket}/{prefix}"], repo)
    run(["dvc", "remote", "modify", "team", "endpointurl", server.endpoint], repo)
    run(["dvc", "remote", "modify", "team", "verify", "true"], repo)
    _credentials(repo)


def _credentials(repo: Path) -> None:
    run(["dvc", "remote", "modify", "--local", "team", "access_key_id", KEY], repo)
    run(["dvc", "remote", "modify", "--local", "team", "secret_access_key", SECRET], repo)


def _no_secret_in_git(repo: Path) -> None:
    tracked = run(["git", "ls-files"], repo).split()
    assert ".dvc/config.local" not in tracked
    assert run(["git", "check-ignore", ".dvc/config.local"], repo).strip() == ".dvc/config.local"
    for name in tracked:
        path = repo / name
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"{name} holds the secret key"
    history = run(["git", "log", "-p", "--all"], repo)
    assert SECRET not in history and KEY not in history
    assert SECRET in (repo / ".dvc" / "config.local").read_text()


def test_an_s3_remote_carries_everything_and_keeps_keys_out_of_git(local_run, tmp_path):
    server = SeaweedS3(tmp_path / "s3").start()
    try:
        repo = _clone(local_run, tmp_path / "work")
        shutil.copytree(local_run / ".dvc" / "cache", repo / ".dvc" / "cache")
        run(["dvc", "checkout"], repo)
        _add_s3_remote(repo, server, "pipeline")
        git_commit_all(repo, "remote")
        _no_secret_in_git(repo)
        proc = shell(["dvc", "push", "--run-cache"], repo, PUSH_ENV)
        assert proc.returncode == 0, proc.stderr
        keys = server.objects("pipeline")
        assert objects_not_matching_their_hash(server.fs(), keys) == []
        remote_files = {k.split("/files/md5/")[1].replace("/", "").removesuffix(".dir") for k in keys if "/files/md5/" in k}
        assert cached_hashes(repo) <= remote_files
        assert any("/runs/" in k for k in keys), "the run-cache was not pushed"

        pulled = _clone(repo, tmp_path / "pulled")
        _credentials(pulled)
        run(["dvc", "pull", "--run-cache"], pulled)
        _up_to_date(pulled)
        assert lock_outs(pulled) == lock_outs(local_run)
    finally:
        server.kill()


def _bulk(repo: Path, n: int) -> None:
    """A tracked folder of `n` small distinct files: a push long enough to be interrupted."""
    folder = repo / "bulk"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.bin").write_bytes(i.to_bytes(4, "little") * 256)
    run(["dvc", "add", "bulk"], repo)


def test_s3_killed_mid_push_fails_promptly_resumes_after_restart_and_corruption_is_caught(tmp_path):
    server = SeaweedS3(tmp_path / "s3").start()
    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        run(["git", "init", "-q"], repo)
        run(["dvc", "init", "-q"], repo)
        _bulk(repo, 2000)
        _add_s3_remote(repo, server, "bulk")
        git_commit_all(repo, "bulk")

        push = subprocess.Popen(["dvc", "push"], cwd=repo, env={**os.environ, **PUSH_ENV, "DVC_NO_ANALYTICS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while len(server.objects("bulk")) < 100:  # the push is under way: objects are arriving
            assert push.poll() is None and time.monotonic() < deadline, "the push ended before it could be interrupted"
        server.kill()
        killed = time.monotonic()
        output, _ = push.communicate(timeout=120)
        seconds = time.monotonic() - killed
        assert push.returncode != 0
        assert "failed to push data to the cloud" in output and "Could not connect to the endpoint URL" in output, output[-2000:]
        assert seconds < 60, f"dvc push took {seconds:.0f} s to fail after the server died"
        print(f"\ndvc push failed {seconds:.1f} s after the server was killed")  # the README quotes this (pytest -s)

        server.start()  # same data, same ports
        left = len(server.objects("bulk"))
        assert left < 2001, "everything had been pushed before the kill"
        print(f"{left} of 2001 objects were on the server when it restarted")
        proc = shell(["dvc", "push"], repo, PUSH_ENV)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        keys = server.objects("bulk")
        assert len([k for k in keys if "/files/md5/" in k]) == 2001  # 2,000 files and the folder's listing
        assert objects_not_matching_their_hash(server.fs(), keys) == []

        victim = sorted(k for k in keys if not k.endswith(".dir"))[0]
        fs = server.fs()
        good = fs.cat(victim)
        fs.pipe(victim, b"XXXX" + good[4:])
        clone = _clone(repo, tmp_path / "clone")
        _credentials(clone)
        proc = shell(["dvc", "pull"], clone)
        assert proc.returncode != 0, proc.stdout
        assert "bulk" in proc.stderr
        assert not (clone / "bulk").exists() or all(p.read_bytes()[:4] != b"XXXX" for p in (clone / "bulk").iterdir())
        victim_hash = victim.split("/")[-2] + victim.split("/")[-1]
        assert victim_hash not in cached_hashes(clone), "the corrupt object was kept in the cache"
    finally:
        server.kill()


def test_the_whole_pipeline_reruns_what_an_edit_decides_and_nothing_else(local_run, tmp_path):
    """With every stage reproduced: the plumbing edits of test_dvc_pipeline (runner, skeleton, a params
    docstring, a train default) rerun train and what reads its segmenter, nothing upstream; an edit to stage
    A's algorithm reruns stage A on every image and every stage that reads it or runs that code, while the
    stages whose inputs come out byte-identical (the pseudo-labels, when R is not used) are not rerun."""
    from tests.test_dvc_pipeline import PLUMBING_EDITS, changed_stages, edit

    repo = tmp_path / "repo"
    shutil.copytree(local_run, repo, symlinks=True)
    for path, (old, new) in PLUMBING_EDITS.items():
        edit(repo, path, old, new)
    run(["diclip", "dvcfile", "--write"], repo)
    assert set(changed_stages(repo)) == {"train"}
    assert ran(run(["dvc", "repro"], repo)) == {"train", "evaluate", "report"}

    edit(repo, "pipeline/diffusion/correlation.py", "EPS = 1e-5", "EPS = 1e-5  # an edit to stage A's algorithm")
    out = run(["dvc", "repro"], repo)
    assert {"diffusion_attention", "tsa_cache", "cams", "eval_cams", "tsa_adapt", "report"} <= ran(out), out
    stage_a = 12 if yaml.safe_load((repo / "params.yaml").read_text())["diffusion_attention"]["splits"] == ["val"] else 52
    assert "diffusion_attention: done in" in out and f"{stage_a} images ({stage_a} computed, 0 reused, 0 failed)" in out
    assert not {"shapes_world", "prepare"} & ran(out)
    if yaml.safe_load((repo / "params.yaml").read_text())["cams"]["vce"] is False:  # the demo's CAMs do not read R
        assert "train" not in ran(out)  # the same pseudo-labels: the segmenter is not trained again
