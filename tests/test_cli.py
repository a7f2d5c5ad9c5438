"""The `diclip` command line: every command explains itself; user errors are one clear message."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stages.cli import main


def commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):
            yield from commands(cmd, prefix + (name,))


ALL = list(commands(main))
# what the README documents; a command added or renamed must be added here (and to the README)
DOCUMENTED = {
    ("shapes",), ("shapes", "generate"), ("shapes", "pretrain-clip"), ("shapes", "pretrain-sd"),
    ("prepare",), ("diffusion-attention",), ("tsa-cache",), ("cams",), ("eval-cams",), ("tsa-adapt",), ("train",), ("evaluate",),
    ("report",), ("predict",), ("params",), ("params", "check"), ("params", "show"),
    ("params", "preset"), ("dvcfile",),
}


def test_the_commands_are_the_documented_ones():
    assert {path for path, _ in ALL} == DOCUMENTED


def test_top_level_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for path in DOCUMENTED:
        if len(path) == 1:
            assert path[0] in result.output


@pytest.mark.parametrize("path", sorted(DOCUMENTED), ids=" ".join)
def test_each_command_help_explains_its_options(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    cmd = dict(ALL)[path]
    assert cmd.help and len(cmd.help.split()) >= 5, f"{path} needs a real description"
    for param in cmd.params:
        if param.param_type_name == "option":
            assert param.help, f"option {param.opts} of {path} has no help text"
            assert param.opts[-1] in result.output


@pytest.mark.parametrize("args", [["prepare"], ["diffusion-attention"], ["shapes", "generate"]], ids=" ".join)
def test_a_refused_run_imports_nothing_heavy(tmp_path, args):
    """A bad params file is reported without importing torch, diffusers, open_clip or dask."""
    import subprocess
    import sys

    bad = tmp_path / "p.yaml"
    bad.write_text("runner:\n  n_workers: 0\n")
    code = (
        "import sys\nfrom stages.cli import main\n"
        f"try:\n    main({[*args, '--params', str(bad)]!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'open_clip', 'distributed', 'zarr') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "runner.n_workers must be >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "EXIT 1 HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_bad_params_file_is_one_message_not_a_traceback(tmp_path):
    (tmp_path / "p.yaml").write_text("dataset:\n  kind: pascal\n")
    result = CliRunner().invoke(main, ["prepare", "--params", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1
    assert "dataset.kind must be one of 'folder', 'voc', 'coco', got 'pascal'" in result.output
    assert "Traceback" not in result.output


def test_prepare_on_a_missing_dataset_names_the_folder(tmp_path):
    (tmp_path / "p.yaml").write_text(f"dataset:\n  root: {tmp_path / 'nowhere'}\nrunner:\n  in_process: true\n")
    result = CliRunner().invoke(main, ["prepare", "--params", str(tmp_path / "p.yaml"), "--index", str(tmp_path / "i")])
    assert result.exit_code == 1 and str(tmp_path / "nowhere") in result.output
    assert "Traceback" not in result.output


def test_shapes_generate_then_prepare_from_the_command_line(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"dataset:\n  root: {tmp_path / 'w'}\nrunner:\n  in_process: true\n")
    runner = CliRunner()
    gen = runner.invoke(main, ["shapes", "generate", "--params", str(params), "--shapes", str(tmp_path / "w"),
                               "--split", "train=6", "--split", "val=3"])
    assert gen.exit_code == 0, gen.output
    prep = runner.invoke(main, ["prepare", "--params", str(params), "--index", str(tmp_path / "i")])
    assert prep.exit_code == 0, prep.output
    assert "train: 6 images indexed" in prep.output and "val: 3 images indexed" in prep.output
    assert "prepare: done in" in prep.output and "9 images (9 computed, 0 reused, 0 failed)" in prep.output
    bad = runner.invoke(main, ["shapes", "generate", "--split", "train"])
    assert bad.exit_code == 2 and "expected NAME=COUNT" in bad.output


def test_pretrain_sd_rejects_an_unknown_tiny_config_before_training(tmp_path):
    out = tmp_path / "sd"
    result = CliRunner().invoke(main, ["shapes", "pretrain-sd", "--out", str(out), "--tiny-config", "no-such-config"])
    assert result.exit_code == 2
    assert "no-such-config" in result.output and "diclip-tiny-sd" in result.output  # names the shipped ones
    assert not out.exists()
