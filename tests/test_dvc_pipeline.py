"""The real DVC pipeline in a fresh copy of the repo: repro runs, reruns nothing, reruns by param, and
the committed dvc.lock is what a fresh `dvc repro` of the committed code gives (the cheap stages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CODE = ["dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore", "pipeline", "stages", "setup.cfg",
        "docs/cam_ablation.md"]


def run(cmd: list[str], cwd: Path) -> str:
    """`cmd` in the copy `cwd` with the venv's commands, importing the copy's own code (not the checkout's
    editable install), so an edit to the copy is what its stages run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def edit_params(repo: Path, edit) -> None:
    data = yaml.safe_load((repo / "params.yaml").read_text())
    edit(data)
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def copy_repo(repo: Path, *, leave_out: tuple[str, ...] = ()) -> Path:
    """A copy of the repo's pipeline files in `repo` (folders named in `leave_out` are not copied)."""
    for name in CODE:
        src = ROOT / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", *leave_out))
        else:
            shutil.copy2(src, repo / name)
    (repo / "artifacts").mkdir()
    return repo


def commit(repo: Path) -> None:
    run(["git", "init", "-q"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    edit_params(repo, lambda p: p["shapes"].update(splits={"train": 40, "val": 12}))
    commit(repo)
    return repo


def test_repro_then_nothing_then_only_what_a_param_touches(repo):
    # the foundation stages (shapes_world -> prepare); tests/test_diffusion_stage.py covers the stage after
    first = run(["dvc", "repro", "prepare"], repo)
    assert ran(first) == {"shapes_world", "prepare"}
    assert (repo / "artifacts/index/index.json").exists()
    assert (repo / "artifacts/index/train.txt").read_text().split()[:2] == ["train_000000", "train_000001"]

    second = run(["dvc", "repro", "prepare"], repo)
    assert ran(second) == set(), second
    assert "changed" not in run(["dvc", "status", "prepare"], repo)

    edit_params(repo, lambda p: p["prepare"].update(on_error="skip"))
    third = run(["dvc", "repro", "prepare"], repo)
    assert ran(third) == {"prepare"}, third

    edit_params(repo, lambda p: p["runner"].update(n_workers=1))  # results never depend on the runner
    assert "changed" not in run(["dvc", "status", "prepare"], repo)

    edit_params(repo, lambda p: p["shapes"].update(seed=1))
    fourth = run(["dvc", "repro", "prepare"], repo)
    assert ran(fourth) == {"shapes_world", "prepare"}, fourth


def test_the_committed_lock_is_what_a_fresh_repro_gives(tmp_path):
    """`dvc repro prepare` of the committed code and params reproduces the committed lock's entries
    for shapes_world and prepare byte for byte (provenance holds no commit, no clock)."""
    committed = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    repo = copy_repo(tmp_path / "repo")
    commit(repo)
    assert ran(run(["dvc", "repro", "prepare"], repo)) == {"shapes_world", "prepare"}
    fresh = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("shapes_world", "prepare"):
        assert fresh[stage] == committed[stage], f"dvc.lock's {stage} is stale: run `dvc repro {stage}` and commit dvc.lock"


def test_a_tsa_param_reruns_the_cache_and_what_reads_it_never_stage_a(tmp_path):
    """With the committed lock, editing a tsa_cache param leaves stage A's params unchanged and changes
    tsa_cache's; cams reads the cache file, so DVC reruns it (and eval_cams after it) once the cache changes."""
    import json

    repo = copy_repo(tmp_path / "repo")
    shutil.copy2(ROOT / "dvc.lock", repo / "dvc.lock")
    commit(repo)
    edit_params(repo, lambda p: p["tsa_cache"].update(steps=p["tsa_cache"]["steps"] + 1))
    status = json.loads(run(["dvc", "status", "--json"], repo).strip().splitlines()[-1])
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]  # the demo leaves round 2 unrun (no entry)
    params_changed = {stage: c["changed deps"]["params.yaml"] for stage, changes in status.items() for c in changes
                      if stage in locked and isinstance(c, dict) and "params.yaml" in c.get("changed deps", {})}
    assert params_changed == {"tsa_cache": {"tsa_cache": "modified"}}, params_changed
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "artifacts/tsa_cache.h5" in stages["cams"]["deps"]
    keys = [k for p in stages["diffusion_attention"]["params"] for k in ([p] if isinstance(p, str) else next(iter(p.values())))]
    assert keys and not any(k.startswith("tsa_cache") for k in keys)
    assert "artifacts/tsa_cache.h5" not in stages["diffusion_attention"]["deps"]


# ------------------------------------------------------------------------------ provenance = what decides the bytes
PLUMBING_EDITS = {  # file: (text to find, replacement): edits that change no result
    "pipeline/runner.py": ("CHUNK_SECONDS = 0.5", "CHUNK_SECONDS = 0.5  # an edited comment"),
    "pipeline/skeleton.py": ('"""One stage\'s declaration;', '"""One stage\'s declaration (edited);'),
    "pipeline/params/sections.py": ('"""Stage report: which images the figure grids show."""',
                                    '"""Stage report: which images the figure grids show (an edited docstring)."""'),
    "pipeline/segment/config.py": ("affinity_weight: float = 0.1", "affinity_weight: float = 0.2"),  # a train default
}


def edit(repo: Path, path: str, old: str, new: str) -> None:
    text = (repo / path).read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test's edit"
    (repo / path).write_text(text.replace(old, new, 1))


def changed_stages(repo: Path) -> dict:
    import json

    return json.loads(run(["dvc", "status", "--json"], repo).strip().splitlines()[-1])


def test_plumbing_edits_leave_stage_a_clean_and_reused_and_its_params_and_algorithm_rerun_it(tmp_path):
    """Stage A's key is its params' resolved values, its algorithm code, its layouts and its inputs: edits to
    the runner, the skeleton, a params docstring and another section's default leave `dvc status` clean for
    it and its per-image resume reuses every image; its own param reruns it alone, the runner's params
    nothing; an edit to its algorithm code reruns it on every image."""
    repo = copy_repo(tmp_path / "repo")
    edit_params(repo, lambda p: (p["shapes"].update(splits={"train": 8, "val": 4}),
                                 p["diffusion_attention"].update(eval_images=0, splits=[]), p["runner"].update(in_process=True)))
    commit(repo)
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == {"shapes_world", "prepare", "diffusion_attention"}
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == set()
    edit_params(repo, lambda p: p["diffusion_attention"]["diclip"].update(threshold=0.3))
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == {"diffusion_attention"}
    edit_params(repo, lambda p: p["runner"].update(n_workers=1))  # results never depend on the runner
    assert ran(run(["dvc", "repro", "diffusion_attention"], repo)) == set()
    for path, (old, new) in PLUMBING_EDITS.items():
        edit(repo, path, old, new)
    run(["diclip", "dvcfile", "--write"], repo)  # the train default reaches defaults.yaml
    status = changed_stages(repo)
    assert not {"shapes_world", "prepare", "diffusion_attention"} & set(status), status
    assert any("changed deps" in c and "pipeline/params/defaults.yaml" in c["changed deps"] for c in status["train"])
    again = run(["diclip", "diffusion-attention"], repo)  # the stage itself, not DVC: every image is reused
    assert "12 images (0 computed, 12 reused, 0 failed)" in again, again

    edit(repo, "pipeline/diffusion/correlation.py", "EPS = 1e-5", "EPS = 1e-5  # an edit to stage A's algorithm")
    status = changed_stages(repo)
    assert {"pipeline/diffusion/correlation.py": "modified"} == \
        next(c["changed deps"] for c in status["diffusion_attention"] if "changed deps" in c)
    rerun = run(["dvc", "repro", "diffusion_attention"], repo)
    assert ran(rerun) == {"diffusion_attention"} and "12 images (12 computed, 0 reused, 0 failed)" in rerun, rerun
