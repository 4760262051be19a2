"""Fitting: Adam under Lightning with early stopping on validation NLL, best weights restored."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping

from mdnlab.module import MDNModule
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


class BestWeights(Callback):
    """Keeps the weights of the best validation NLL in memory and restores them at the end."""

    def __init__(self, monitor: str = "val/nll"):
        self.monitor = monitor
        self.best = float("inf")
        self.best_epoch = -1
        self.state: dict | None = None

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value < self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = copy.deepcopy(module.state_dict())

    def on_fit_end(self, trainer, module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


class ProgressLines(Callback):
    """One line every few seconds: epoch, train and validation NLL, best so far."""

    def __init__(self, label: str, max_epochs: int, best: BestWeights | None):
        self.label, self.max_epochs, self.best = label, max_epochs, best
        self.ticker = Ticker(every_s=5.0)

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self.ticker.due():
            return
        history = module.epoch_history
        line = f"{self.label}epoch {trainer.current_epoch + 1}/{self.max_epochs}"
        if history["train/nll_epoch"]:
            line += f"  train/nll {history['train/nll_epoch'][-1]:.4f}"
        if history["val/nll_epoch"]:
            line += f"  val/nll {history['val/nll_epoch'][-1]:.4f}"
        if self.best is not None and self.best.best_epoch >= 0:
            line += f"  (best {self.best.best:.4f} at epoch {self.best.best_epoch + 1})"
        say(line + f"  {self.ticker.elapsed:.0f}s")


def fit_adam(
    module: MDNModule,
    train_loader,
    val_loader,
    settings: TrainerSettings,
    label: str = "",
) -> tuple[pl.Trainer, dict[str, int]]:
    """Adam with early stopping when there is a validation split; the trainer and what happened."""
    callbacks: list[Callback] = []
    best = None
    if val_loader is not None:
        best = BestWeights()
        callbacks += [
            best,
            EarlyStopping(
                "val/nll",
                patience=settings.patience,
                min_delta=settings.min_delta,
                mode="min",
                check_finite=True,
            ),
        ]
    callbacks.append(ProgressLines(label, settings.max_epochs, best))
    trainer = pl.Trainer(
        max_epochs=settings.max_epochs,
        accelerator="cpu",
        devices=1,
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
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    return trainer, {
        "epochs": trainer.current_epoch,
        "best_epoch": (best.best_epoch + 1) if best is not None else trainer.current_epoch,
    }
