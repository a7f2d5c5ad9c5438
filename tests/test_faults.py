"""A full disk, planted for real: a stage writing onto a small tmpfs (mounted in a user and mount namespace of
the test's own, so no root is needed) ends with one message naming the stage, the path and that a
rerun resumes; no worker prints a traceback; after space is freed, the rerun resumes and gives the
fresh run's fingerprint. Skipped where the kernel refuses unprivileged namespaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _namespaces_work(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size=64k tmpfs {probe} && touch {probe}/x"], capture_output=True)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    if not _namespaces_work(tmp):
        pytest.skip("unprivileged user and mount namespaces are not available here (unshare)")
    from pipeline.data.config import ShapesConfig
    from pipeline.data.shapes import generate_dataset

    generate_dataset(tmp / "shapes", splits={"train": 40, "val": 12}, seed=3, config=ShapesConfig())
    params = {"dataset": {"root": str(tmp / "shapes")}, "prepare": {"shard_images": 16},
              "runner": {"n_workers": 2}, "shapes": {"splits": {"train": 40, "val": 12}}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def in_small_disk(tmp: Path, disk: Path, commands: list[str], free_kb: int) -> subprocess.CompletedProcess:
    """Run `commands` (shell lines) with a 2 MiB tmpfs mounted at `disk`, filled by a ballast file until about
    `free_kb` KiB are left; `$FREE` frees the space (removes the ballast). The tmpfs ends with the namespace."""
    disk.mkdir(exist_ok=True)
    script = "\n".join([
        "set -u", f"mount -t tmpfs -o size=2m tmpfs {disk}",
        f"dd if=/dev/zero of={disk}/ballast bs=1k count={2048 - free_kb} status=none",
        f"FREE='rm -f {disk}/ballast'", *commands])
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def diclip(*args: str) -> str:
    return " ".join([sys.executable, "-m", "stages.cli", *args])


def test_a_full_disk_in_a_per_image_stage_is_one_message_and_the_rerun_resumes(world):
    disk = world / "disk"
    out = world / "out"
    out.mkdir()
    prepare = diclip("prepare", "--params", str(world / "params.yaml"), "--index", str(disk / "index"))
    proc = in_small_disk(world, disk, [
        f"{prepare} > {out}/first.out 2> {out}/first.err; echo $? > {out}/first.rc",
        "eval $FREE",
        f"{prepare} > {out}/second.out 2> {out}/second.err; echo $? > {out}/second.rc",
        f"cp {disk}/index/index.json {out}/index.json",
    ], free_kb=120)
    assert proc.returncode == 0, proc.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "1"
    message = [line for line in first_err.splitlines() if line.startswith("Error:")]
    assert len(message) == 1, first_err
    assert message[0].startswith("Error: prepare: no space left on the device while writing " + str(disk / "index"))
    assert "free some space and rerun (`dvc repro` or `diclip prepare`): everything already computed is kept" in message[0]
    assert "Traceback" not in first_err and "Compute Failed" not in first_err, first_err
    print("\nthe message:", message[0])
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    assert "reused" in (out / "second.out").read_text()

    fresh = world / "fresh"  # the same stage on a roomy disk
    subprocess.run(diclip("prepare", "--params", str(world / "params.yaml"), "--index", str(fresh)).split(),
                   check=True, capture_output=True, cwd=ROOT)
    resumed, reference = json.loads((out / "index.json").read_text()), json.loads((fresh / "index.json").read_text())
    assert resumed["fingerprint"] == reference["fingerprint"]
    assert resumed["provenance"]["fingerprint"] == reference["provenance"]["fingerprint"]
    summary = [line for line in (out / "second.out").read_text().splitlines() if line.startswith("prepare: done")]
    print("the rerun:", summary[0])


def test_a_full_disk_in_a_whole_run_stage_is_one_message_naming_the_artifact(world):
    disk = world / "disk2"
    out = world / "out2"
    out.mkdir()
    generate = diclip("shapes", "generate", "--params", str(world / "params.yaml"), "--shapes", str(disk / "shapes"))
    proc = in_small_disk(world, disk, [f"{generate} > {out}/gen.out 2> {out}/gen.err; echo $? > {out}/gen.rc",
                                       f"ls -A {disk} > {out}/left.txt"], free_kb=200)
    assert proc.returncode == 0, proc.stderr
    err = (out / "gen.err").read_text()
    assert (out / "gen.rc").read_text().strip() == "1"
    message = [line for line in err.splitlines() if line.startswith("Error:")]
    assert message == [f"Error: shapes_world: no space left on the device while writing {disk / 'shapes'}; free some "
                       "space and rerun (`dvc repro` or `diclip shapes generate`): everything already computed is kept "
                       "and the rerun resumes"], err
    assert "Traceback" not in err and "Compute Failed" not in err
    assert (out / "left.txt").read_text().split() == ["ballast"]  # no dataset folder, no half-written temporary
