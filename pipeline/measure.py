"""Wall time and peak memory of a stage run as `dvc repro` runs it: its `diclip` command in a fresh process.

The peak is the largest resident set of the command and every process below it (the runner's dask
workers included): a small wrapper process waits for the command and reads
``getrusage(RUSAGE_CHILDREN)``, which covers every descendant reaped under it. Used by the benchmarks
(bench/bench_scale.py, bench/fullsize.py), which run stages in folders of their own: hence
:func:`portable_params` too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.codegraph import REPO_ROOT

_WRAPPER = ("import resource, subprocess, sys, json\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "print(json.dumps({'rc': rc, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")


@dataclass(frozen=True)
class Measured:
    """One command's exit status, wall seconds, peak resident MiB and the tail of its stderr."""

    rc: int
    seconds: float
    peak_mib: float
    stderr: str
    peak_gpu_mib: float | None = None  # the largest memory.used nvidia-smi saw on any GPU while it ran


def stage_commands(dvc_yaml: Path = REPO_ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """{stage: its `diclip` subcommand words}, as dvc.yaml runs them."""
    import yaml

    return {name: entry["cmd"].split()[1:] for name, entry in yaml.safe_load(dvc_yaml.read_text())["stages"].items()}


def portable_params(value: Any, root: Path = REPO_ROOT) -> Any:
    """Params with every value that names a file of the checkout made absolute, so the stages can run in
    another folder (a prompt template, which holds spaces, is never a path)."""
    if isinstance(value, dict):
        return {k: portable_params(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_params(v, root) for v in value]
    if isinstance(value, str) and value and " " not in value and not value.startswith("/") and (root / value).exists():
        return str(root / value)
    return value


def run_stage_measured(stage: str, cwd: Path, *, args: Sequence[str] = (), env: dict[str, str] | None = None,
                       gpu: bool = False) -> Measured:
    """Run ``stage``'s `diclip` command as dvc.yaml has it (every artifact at its default path under ``cwd``),
    with this interpreter's environment's `diclip`, and measure it (:func:`run_measured`)."""
    cmd = [str(Path(sys.executable).parent / "diclip"), "-q", *stage_commands()[stage], *args]
    return run_measured(cmd, cwd, env, gpu=gpu)


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, *, gpu: bool = False) -> Measured:
    """Run ``cmd`` in ``cwd`` and measure it; its stderr's last 4,000 characters are kept, its stdout dropped.

    With ``gpu``, nvidia-smi samples the GPUs' used memory every 200 ms meanwhile (what a user sees there:
    the CUDA context and torch's cached blocks included); without nvidia-smi the GPU peak is None."""
    sampler = None
    if gpu and shutil.which("nvidia-smi"):
        sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    peak_gpu = None
    if sampler is not None:
        sampler.terminate()
        samples = [float(v) for v in sampler.communicate()[0].split() if v.replace(".", "", 1).isdigit()]
        peak_gpu = max(samples, default=None)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measured(rc=result["rc"], seconds=seconds, peak_mib=result["maxrss_kib"] / 1024, stderr=proc.stderr[-4000:],
                    peak_gpu_mib=peak_gpu)


def artifact_bytes(folder: Path) -> dict[str, int]:
    """Bytes on disk of each entry of ``folder``/artifacts (a store, a folder or a file): the benchmarks'
    per-image disk figures come from these at two dataset sizes."""
    sizes = {}
    for entry in sorted((folder / "artifacts").iterdir()):
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        sizes[entry.name] = sum(f.stat().st_size for f in files)
    return sizes
