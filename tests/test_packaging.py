"""The wheel carries the package's data (tiny weights and configs, word files, params presets and defaults)
and no __pycache__ or tests, and setuptools builds it without a packaging warning; constraints.txt is a
lock (every line an exact `==` pin, torch/torchvision at the pinned CUDA builds) that covers every
dependency setup.cfg declares, and pyproject.toml's build backend is the locked one.

Why: the demo and the tests load the tiny models from inside the installed package, so a wheel (or a
non-editable install) without them is broken although `pip install -e .` works; and the parity tests
depend on diffusers' and open_clip's weight-init order, so a fresh clone must install the versions the
suite passed with, not whatever is newest. The wheel is built with `python -m build --no-isolation`
(the `test` extra installs build and the locked setuptools/wheel) from a copy of the packaging inputs,
so the repository gets no build/ or *.egg-info."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGING_INPUTS = ("setup.cfg", "pyproject.toml", "README.md")
PACKAGES = ("pipeline", "stages")
# the one "warning" line a build prints by design: build_py/install_lib skip byte-compiling when told to
BENIGN_WARNING = re.compile(r"byte-compiling is disabled")


def repo_files(folder: str, pattern: str = "*") -> list[str]:
    """Files under ROOT/folder matching `pattern` (recursively), as wheel paths; never __pycache__."""
    return sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / folder).rglob(pattern)
                  if path.is_file() and "__pycache__" not in path.parts)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, zipfile.ZipFile]:
    """(build's output, the wheel) for a copy of the packaging inputs with a stray __pycache__ planted in a
    code folder and a data folder: the configuration, not the copy, must keep them out."""
    src = tmp_path_factory.mktemp("src")
    for name in PACKAGING_INPUTS:
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for folder in ("pipeline", "pipeline/models/weights"):
        (src / folder / "__pycache__").mkdir()
        (src / folder / "__pycache__" / "stray.cpython-311.pyc").write_bytes(b"\0")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, ("the wheel did not build (the environment needs the test extra: "
                                  f"`bash scripts/setup.sh test`):\n{log[-3000:]}")
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return log, zipfile.ZipFile(wheels[0])


def test_the_wheel_builds_without_a_packaging_warning(built):
    log, _ = built
    warnings = [line for line in log.splitlines() if re.search(r"warn", line, re.I) and not BENIGN_WARNING.search(line)]
    assert warnings == [], "setuptools warned while building the wheel:\n" + "\n".join(warnings)


@pytest.mark.parametrize("folder, pattern", [
    ("pipeline/models/weights", "*"),
    ("pipeline/models/tiny_configs", "*.json"),
    ("pipeline/data/words", "*"),
    ("pipeline/params/presets", "*.yaml"),
])
def test_the_wheel_carries_the_data_files(built, folder: str, pattern: str):
    _, wheel = built
    expected = repo_files(folder, pattern)
    assert expected, f"no {pattern} under {folder}: the test would check nothing"
    sizes = {info.filename: info.file_size for info in wheel.infolist()}
    missing = [name for name in expected if name not in sizes]
    assert missing == [], f"the wheel lacks {missing}"
    wrong = [name for name in expected if sizes[name] != (ROOT / name).stat().st_size]
    assert wrong == [], f"the wheel's copies of {wrong} differ in size from the repository's"


def test_the_wheel_carries_the_params_defaults(built):
    if not (ROOT / "pipeline/params/defaults.yaml").is_file():
        pytest.skip("pipeline/params/defaults.yaml does not exist (yet)")
    _, wheel = built
    assert "pipeline/params/defaults.yaml" in wheel.namelist()


def test_the_wheel_carries_every_module_and_nothing_else(built):
    _, wheel = built
    names = wheel.namelist()
    modules = [name for package in PACKAGES for name in repo_files(package, "*.py")]
    assert [name for name in modules if name not in names] == []
    assert [name for name in names if "__pycache__" in name or name.endswith((".pyc", ".pyo"))] == []
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {*PACKAGES, "diclip-0.1.0.dist-info"}, f"unexpected top-level entries (tests?): {sorted(tops)}"
    top_level = next(name for name in names if name.endswith(".dist-info/top_level.txt"))
    assert wheel.read(top_level).decode().split() == list(PACKAGES)


def locked() -> dict[str, list[Requirement]]:
    """constraints.txt's requirements by canonical name (a name may repeat under exclusive markers)."""
    pins: dict[str, list[Requirement]] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"constraints.txt:{number}: {line!r} is an option, not a pin"
        requirement = Requirement(line)
        pins.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return pins


def test_every_line_of_the_lock_is_an_exact_pin():
    pins = locked()
    assert len(pins) > 100, f"constraints.txt pins only {len(pins)} packages"
    loose = [str(r) for rs in pins.values() for r in rs
             if r.extras or r.url or [(s.operator, "*" in s.version) for s in r.specifier] != [("==", False)]]
    assert loose == [], f"constraints.txt lines that are not a bare `name==version` pin: {loose}"
    assert [str(r.specifier) for r in pins["torch"]] == ["==2.14.1"]
    assert [str(r.specifier) for r in pins["torchvision"]] == ["==0.29.1"]


def test_the_lock_covers_every_declared_dependency():
    """Every requirement in install_requires and the extras is locked, at a version it allows."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = config["options"]["install_requires"].split("\n")
    declared += [line for extra in config["options.extras_require"].values() for line in extra.split("\n")]
    pins = locked()
    problems = []
    for line in filter(None, (line.strip() for line in declared)):
        requirement = Requirement(line)
        versions = [next(iter(r.specifier)).version for r in pins.get(canonicalize_name(requirement.name), [])]
        if not versions:
            problems.append(f"{line}: not in constraints.txt")
        elif not all(requirement.specifier.contains(version, prereleases=True) for version in versions):
            problems.append(f"{line}: constraints.txt pins {versions}")
    assert problems == [], "constraints.txt is stale; relock with the command in its header:\n" + "\n".join(problems)


def test_the_build_backend_is_pinned_to_the_locked_versions():
    tomllib = pytest.importorskip("tomllib")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = locked()
    for line in requires:
        requirement = Requirement(line)
        assert [s.operator for s in requirement.specifier] == ["=="], f"pyproject.toml: {line} is not an exact pin"
        assert [str(r.specifier) for r in pins[canonicalize_name(requirement.name)]] == [str(requirement.specifier)], \
            f"pyproject.toml's {line} differs from constraints.txt"
