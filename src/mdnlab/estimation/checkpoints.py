"""Checkpoints of the Adam phase, so that an interrupted run resumes where it stopped.

While Adam runs, ``last.ckpt`` (Lightning's whole training state: the members' weights, Adam's
moments, the epoch, the per-member early stopping and the ensemble's own bookkeeping) is
rewritten at the end of an epoch, at most every ``every_s`` seconds. When Adam ends,
``adam_done.pt`` keeps the early-stopped weights and what the rest of the run reads. A resumed
run skips Adam when ``adam_done.pt`` is there, else continues it from ``last.ckpt`` at the next
epoch; the polish, the inference and the logging are redone. Full-batch Adam is deterministic,
so a resumed run reaches the numbers of an uninterrupted one (tests/test_resume.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from mdnlab.progress import Ticker


@dataclass(frozen=True)
class Checkpointing:
    folder: Path
    every_s: float = 60.0
    resume: bool = False  # pick up what is in ``folder``

    @property
    def last(self) -> Path:
        return self.folder / "last.ckpt"

    @property
    def done(self) -> Path:
        return self.folder / "adam_done.pt"

    def resumable_epochs(self) -> Path | None:
        """``last.ckpt`` when resuming from it, else None (a fresh start)."""
        return self.last if self.resume and self.last.is_file() else None


class EpochCheckpoint(Callback):
    """Rewrites ``path`` at the end of an epoch, at most every ``every_s`` seconds (the first
    epoch always): written beside it, then renamed, so that a kill never leaves half a file."""

    def __init__(self, path: Path, every_s: float):
        self.path = Path(path)
        self.ticker = Ticker(every_s=every_s)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.ticker.due():
            save_atomically(lambda target: trainer.save_checkpoint(target), self.path)


def save_atomically(write, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def save_adam_done(ensemble, result, path: Path) -> None:
    state = {
        "weights": ensemble.state_dict(),
        "bookkeeping": ensemble.bookkeeping(),
        "result": dataclasses.asdict(result),
    }
    save_atomically(lambda target: torch.save(state, target), path)


def load_adam_done(ensemble, path: Path, result_class):
    state = torch.load(path, weights_only=True)
    ensemble.load_state_dict(state["weights"])
    ensemble.restore_bookkeeping(state["bookkeeping"])
    return result_class(**state["result"])
