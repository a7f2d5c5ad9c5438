"""Training curves through DVCLive: `metrics.json` (the last values) and `plots/metrics/**.tsv`, written
whole from the logged rows, so a resumed run's curves hold each step once; `dvc plots show` and
`dvc exp show` read them."""

from __future__ import annotations

from pathlib import Path

from pipeline import atomic


def write_live(folder: Path, history: list[dict]) -> None:
    """Rewrite `folder` from `history` (rows of {"step": n, name: value, ...}) atomically."""
    from dvclive import Live

    def write(tmp: Path) -> None:
        with Live(dir=str(tmp), save_dvc_exp=False, dvcyaml=False, report=None) as live:
            for row in history:
                live.step = row["step"]
                for name, value in row.items():
                    if name != "step":
                        live.log_metric(name, value)
                live.make_summary()

    atomic.write_with(folder, write)
