"""The segmenter's training loop: steps to `iterations`, logged rows, validation, checkpoints, and a
clean stop on SIGTERM/SIGINT (a checkpoint at the end of the step, then an error saying to rerun).

Pure of files: checkpoints and curves go through the `checkpoint(history)` callback, so the loop runs
the same under a test, a stage and torchrun (only the writing rank checkpoints).
"""

from __future__ import annotations

from typing import Callable

from pipeline.errors import UserError
from pipeline.interrupt import Interrupt, step_done
from pipeline.segment.config import TrainConfig
from pipeline.segment.training import Sample, SegmenterTrainer


def fit(trainer: SegmenterTrainer, sample: Sample, config: TrainConfig, history: list[dict], *,
        validate: Callable[[], float] | None, checkpoint: Callable[[list[dict]], None], writer: bool) -> list[dict]:
    """Train from `trainer.step` to `config.iterations`, appending a row every `log_every` steps (with the
    validation mIoU every `val_every`), calling `checkpoint` every `checkpoint_every` steps when `writer`."""
    from tqdm import tqdm

    interrupt = Interrupt()
    bar = tqdm(total=config.iterations, initial=trainer.step, desc="train", unit="step", disable=not writer,
               mininterval=2.0)
    try:
        while trainer.step < config.iterations:
            out = trainer.train_step(sample)
            step = trainer.step
            bar.update(1)
            if step % config.log_every == 0 or step == config.iterations:
                row = {"step": step, "train/loss": out["loss"], "train/lr": out["lr"]}
                if validate is not None and (step % config.val_every == 0 or step == config.iterations):
                    row["val/miou_vs_pseudo_labels"] = validate()
                history.append(row)
                bar.set_postfix(loss=f"{out['loss']:.3f}")
            if writer and (step % config.checkpoint_every == 0 or interrupt.raised):
                checkpoint(history)
            if interrupt.raised:
                raise UserError(f"train: interrupted by signal {interrupt.raised} at step {step}; checkpoint kept, "
                                "rerun to resume")
            step_done()
    finally:
        bar.close()
        interrupt.restore()
    return history
