"""Adam under Lightning for R batched members, with early stopping tracked per member.

Each member keeps the weights of its own best validation NLL and its own patience counter
(the rules of Lightning's ``EarlyStopping(mode="min")`` and of keeping the best weights,
applied member by member); training ends when every member has run out of patience or at
``max_epochs``, and each member's best weights are restored. A member that has stopped keeps
training with the others, but its restored weights are those of its best epoch, so its
result is the one it would reach alone.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from mdnlab.estimation.checkpoints import (
    Checkpointing,
    EpochCheckpoint,
    load_adam_done,
    save_adam_done,
)
from mdnlab.estimation.ensemble import MemberEnsemble
from mdnlab.progress import Ticker, say

for _name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
warnings.filterwarnings(
    "ignore", message=".*number of training batches.*smaller than the logging interval.*"
)


@dataclass(frozen=True)
class TrainerSettings:
    max_epochs: int = 2000
    patience: int = 100
    min_delta: float = 0.0
    # Lightning's accelerator for the Adam phase (cpu | gpu | auto). The weights come back to
    # the CPU afterwards: the polish, the Hessian and the inference run there in float64.
    accelerator: str = "cpu"
    # Lightning's strategy and processes: trainer=ddp sets ddp and 2 (mdnlab.distributed).
    strategy: str = "auto"
    devices: int = 1


class MemberEarlyStopping(Callback):
    """Per member: best validation NLL, its epoch and weights; a patience counter."""

    def __init__(self, n_members: int, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best = torch.full((n_members,), float("inf"), dtype=torch.float64)
        self.best_epoch = torch.full((n_members,), -1, dtype=torch.long)
        self.wait = torch.zeros(n_members, dtype=torch.long)
        self.stopped_epoch = torch.full((n_members,), -1, dtype=torch.long)
        self.states: list[list[torch.Tensor] | None] = [None] * n_members

    @property
    def stopped(self) -> torch.Tensor:
        return self.stopped_epoch >= 0

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "states": [None if s is None else [t.cpu() for t in s] for s in self.states],
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("best", "best_epoch", "wait", "stopped_epoch"):
            getattr(self, name).copy_(state[name])
        self.states = [None if s is None else list(s) for s in state["states"]]

    def on_validation_end(self, trainer, module: MemberEnsemble) -> None:
        if trainer.sanity_checking or module.last_val is None:
            return
        epoch = trainer.current_epoch
        value = torch.where(
            module.alive, module.last_val, torch.full_like(module.last_val, torch.nan)
        )
        for r in range(module.n_members):
            if self.stopped[r]:
                continue
            v = float(value[r])
            if v < self.best[r]:  # best weights: any improvement
                self.best_epoch[r] = epoch
                self.states[r] = module.members.member_state(r)
            if v < self.best[r] - self.min_delta:  # patience: improvement beyond min_delta
                self.wait[r] = 0
            else:
                self.wait[r] += 1
            self.best[r] = min(float(self.best[r]), v) if v == v else self.best[r]
            if self.wait[r] >= self.patience or not module.alive[r]:
                self.stopped_epoch[r] = epoch
                module.training_mask[r] = False
        if bool(self.stopped.all()):
            trainer.should_stop = True

    def on_fit_end(self, trainer, module: MemberEnsemble) -> None:
        for r, state in enumerate(self.states):
            if state is not None:
                module.members.load_member_state(r, state)


class ProgressLines(Callback):
    """One line every few seconds: epoch, best member's train and validation NLL."""

    def __init__(self, label: str, max_epochs: int, stopping: MemberEarlyStopping | None):
        self.label, self.max_epochs, self.stopping = label, max_epochs, stopping
        self.ticker = Ticker(every_s=5.0)

    def on_train_epoch_end(self, trainer, module: MemberEnsemble) -> None:
        if not self.ticker.due():
            return
        line = f"{self.label}epoch {trainer.current_epoch + 1}/{self.max_epochs}"
        train = module.epoch_history["train"]
        active = [v for v in train[-1] if math.isfinite(v)] if train else []  # stopped: NaN
        if active:
            line += f"  train/nll {min(active):.4f}"
        if self.stopping is not None and bool((self.stopping.best_epoch >= 0).any()):
            line += f"  best val/nll {float(self.stopping.best.min()):.4f}"
            if module.n_members > 1:
                line += f"  ({int(self.stopping.stopped.sum())}/{module.n_members} members stopped)"
        say(line + f"  {self.ticker.elapsed:.0f}s")


@dataclass
class AdamResult:
    epochs: int  # epochs run (the longest member)
    best_epoch: list[int]  # per member, 1-based; epochs when there is no validation split
    stopped_epoch: list[int]  # per member, 1-based
    alive: list[bool]  # False: the member's loss became non-finite


def fit_adam(
    ensemble: MemberEnsemble,
    train_loader,
    val_loader,
    settings: TrainerSettings,
    label: str = "",
    checkpoints: Checkpointing | None = None,
) -> AdamResult:
    """Adam on the summed member objectives; early stopping per member when there is a
    validation split (else ``max_epochs``). With ``checkpoints``, the state is saved as it goes
    and a resumed fit starts from it."""
    if checkpoints is not None and checkpoints.resume and checkpoints.done.is_file():
        say(f"{label}resumed: Adam had finished; its weights are in {checkpoints.done}")
        return load_adam_done(ensemble, checkpoints.done, AdamResult)
    resume_from = checkpoints.resumable_epochs() if checkpoints is not None else None
    if resume_from is not None:
        say(f"{label}resumed: Adam continues from {resume_from}")
    callbacks: list[Callback] = []
    stopping = None
    if val_loader is not None:
        stopping = MemberEarlyStopping(ensemble.n_members, settings.patience, settings.min_delta)
        callbacks.append(stopping)
    callbacks.append(ProgressLines(label, settings.max_epochs, stopping))
    if checkpoints is not None:
        callbacks.append(EpochCheckpoint(checkpoints.last, checkpoints.every_s))
    trainer = pl.Trainer(
        max_epochs=settings.max_epochs,
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_loader is not None else 0,
        callbacks=callbacks,
        deterministic=True,
    )
    with torch.enable_grad():
        trainer.fit(
            ensemble,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=resume_from,
        )
    ensemble.cpu()
    epochs = trainer.current_epoch
    r = ensemble.n_members
    if stopping is None:
        best, stopped = [epochs] * r, [epochs] * r
    else:
        best = [int(e) + 1 if e >= 0 else 0 for e in stopping.best_epoch]
        stopped = [int(e) + 1 if e >= 0 else epochs for e in stopping.stopped_epoch]
    result = AdamResult(epochs, best, stopped, [bool(a) for a in ensemble.alive])
    if checkpoints is not None:
        save_adam_done(ensemble, result, checkpoints.done)
    return result
