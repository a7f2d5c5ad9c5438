"""Every script in scripts/ and bench/ imports: none names a module or function the library no longer has
(such a script fails only when somebody runs it, months later). Importing runs no work: each keeps its
work under `if __name__ == "__main__"`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for folder in ("scripts", "bench") for p in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.relative_to(ROOT).as_posix() for p in SCRIPTS])
def test_the_script_imports(path):
    spec = importlib.util.spec_from_file_location(f"_script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name}: its work lives in a main() under __main__"


def test_every_script_was_found():
    assert {p.parent.name for p in SCRIPTS} == {"scripts", "bench"} and len(SCRIPTS) >= 8


def test_the_ablations_overrides_set_dotted_keys_as_yaml_and_are_validated():
    from pipeline.params import load_params
    from pipeline.errors import ParamsError
    from pipeline.params.schema import to_plain

    spec = importlib.util.spec_from_file_location("_script_cam_ablation", ROOT / "scripts" / "cam_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    base = to_plain(load_params(ROOT / "params.yaml"))
    out = ablation.with_overrides(base, ["cams.clip_size=96", "cams.scales=[1.0, 0.5]", "cams.attributes_file=null"])
    assert (out["cams"]["clip_size"], out["cams"]["scales"], out["cams"]["attributes_file"]) == (96, [1.0, 0.5], None)
    assert base["cams"]["clip_size"] == 128  # the base is left as it was
    with pytest.raises(ParamsError, match=r"cams.clip_size must be >= 8, got -3"):
        ablation.with_overrides(base, ["cams.clip_size=-3"])
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        ablation.with_overrides(base, ["cams.clip_size"])
