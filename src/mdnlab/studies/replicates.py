"""Replicate fits of a simulation study, all at once through the batched trainer.

M replicate datasets of n training rows are drawn from a truth; each is fitted as the pipeline
fits a run (``R`` restarts, Adam with per-member early stopping on a validation split of
``val_fraction`` of the drawn rows, the L-BFGS polish of the penalized objective, the best
member by training objective kept). The M x R members train as one ``BatchedMLP`` on stacked
rows (member (m, r) sees replicate m's rows only), which costs a few single fits instead of
M x R of them.

One difference from ``pipeline.estimate``: every member shares one pair of scalers, fitted on
a large reference sample of the truth rather than on its own training split (stacking needs
one set). Standardisation is affine, so the fitted family is the same; only the penalty's
geometry, lambda/(2n)|theta|^2 in standardised units, differs slightly. Components are not
relabelled (nothing a study measures depends on the labels).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.fit import FitData, PolishSettings, fit_members, member_seeds
from mdnlab.module import MDNModule


@dataclass(frozen=True)
class ModelSpec:
    """The fitted architecture and its estimator (train.penalty, trainer.lr)."""

    family: str = "gaussian"
    n_components: int = 3
    hidden_sizes: tuple[int, ...] = (8,)
    activation: str = "tanh"
    penalty: float = 3.0
    lr: float = 0.01
    n_classes: tuple[int, ...] | None = None  # family categorical: classes per y column

    @property
    def label(self) -> str:
        hidden = ",".join(str(h) for h in self.hidden_sizes)
        return f"{self.family} K={self.n_components} [{hidden}] λ={self.penalty:g}"

    @property
    def family_options(self) -> dict:
        return {} if self.n_classes is None else {"n_classes": list(self.n_classes)}


@dataclass(frozen=True)
class FitSettings:
    """``trainer`` counts Adam steps: full-batch epochs up to ``batch_rows`` training rows
    (conf/trainer/default.yaml's budget); above it, shuffled mini-batches of ``batch_rows``
    rows, with max_epochs and patience divided by the batches per epoch, so that the step
    budget stays the same at every n while an epoch costs n rows."""

    restarts: int = 3
    val_fraction: float = 0.2
    trainer: TrainerSettings = TrainerSettings(max_epochs=3000, patience=200)
    polish: PolishSettings = PolishSettings(tol=1e-6, max_iter=5000, newton_max_params=300)
    reference_rows: int = 20_000  # the sample the shared scalers are fitted on
    batch_rows: int = 2000

    @classmethod
    def for_size(cls, size) -> FitSettings:
        """The fits of a study at ``size`` (a ``settings.CurveSize`` / ``CoverageSize``): the
        pipeline's estimator with the size's restarts, Adam epochs and polish budget."""
        return cls(
            restarts=size.restarts,
            trainer=TrainerSettings(max_epochs=size.max_epochs, patience=200),
            polish=PolishSettings(tol=1e-6, max_iter=size.polish_max_iter, newton_max_params=300),
        )

    def batch_size(self, n: int) -> int | None:
        return None if n <= self.batch_rows else self.batch_rows

    def trainer_for(self, n: int) -> TrainerSettings:
        steps = math.ceil(n / self.batch_rows) if n > self.batch_rows else 1
        return TrainerSettings(
            max_epochs=max(1, math.ceil(self.trainer.max_epochs / steps)),
            patience=max(10, math.ceil(self.trainer.patience / steps)),
            min_delta=self.trainer.min_delta,
        )


@dataclass
class ReplicateFit:
    replicate: int
    n: int
    module: MDNModule
    x_train: torch.Tensor
    y_train: torch.Tensor
    objective: float
    nll: float
    grad_max: float
    converged: bool
    epochs: int
    restart_objectives: list[float] = field(default_factory=list)


def n_drawn(n_train: int, val_fraction: float) -> int:
    """Rows to draw so that n_train remain after the validation split."""
    return int(round(n_train / (1.0 - val_fraction)))


def replicate_rng(seed: int, code: int, n: int, replicate: int) -> np.random.Generator:
    """The generator of replicate ``replicate`` at size ``n`` (``code`` names the truth)."""
    return np.random.default_rng(np.random.SeedSequence([seed, code, n, replicate]))


def reference_scalers(truth, spec: ModelSpec, rows: int, seed: int) -> MDNModule:
    """A module whose scalers are fitted on ``rows`` draws from the truth (weights unused)."""
    x, y = truth.sample(rows, np.random.default_rng(np.random.SeedSequence([seed, 7919])))
    module = build_module(spec, x.shape[1], y.shape[1:])
    module.x_scaler.fit(torch.as_tensor(x))
    module.y_scaler.fit(torch.as_tensor(y))
    return module


def build_module(spec: ModelSpec, in_dim: int, event_shape) -> MDNModule:
    return MDNModule(
        in_dim=in_dim,
        event_shape=list(event_shape),
        family=spec.family,
        n_components=spec.n_components,
        hidden_sizes=list(spec.hidden_sizes),
        activation=spec.activation,
        lr=spec.lr,
        identifiability="none",
        **spec.family_options,
    )


def module_factory(spec: ModelSpec, scalers: MDNModule, in_dim: int, event_shape):
    """``make_module(seed)``: a module of ``spec`` initialised from ``seed``, carrying the
    scalers of ``scalers`` (members that share an ensemble must share their scalers)."""

    def make_module(member_seed: int) -> MDNModule:
        torch.manual_seed(member_seed)
        module = build_module(spec, in_dim, event_shape)
        module.x_scaler.load_state_dict(scalers.x_scaler.state_dict())
        module.y_scaler.load_state_dict(scalers.y_scaler.state_dict())
        return module

    return make_module


def fit_replicates(
    truth,
    spec: ModelSpec,
    n: int,
    replicates: list[int],
    seed: int,
    code: int,
    settings: FitSettings = FitSettings(),
    scalers: MDNModule | None = None,
    label: str = "",
    quiet: bool = True,
) -> list[ReplicateFit]:
    """Fit ``replicates`` (their indices) of ``n`` training rows each, in one batched network.

    Replicate m's rows come from ``replicate_rng(seed, code, n, m)``; its R members start from
    ``member_seeds(m, R)`` (member 0: seed m), as a run with ``seed=m train.restarts=R``."""
    if scalers is None:
        scalers = reference_scalers(truth, spec, settings.reference_rows, seed)
    parts, seeds = [], []
    for m in replicates:
        x, y = truth.sample(n_drawn(n, settings.val_fraction), replicate_rng(seed, code, n, m))
        t = [torch.as_tensor(a, dtype=torch.float64) for a in (x, y)]
        part = (t[0][:n], t[1][:n], t[0][n:], t[1][n:])
        for member_seed in member_seeds(m, settings.restarts):
            parts.append(part)
            seeds.append(member_seed)
    data = FitData(*(torch.stack([p[i] for p in parts]) for i in range(4)))

    make_module = module_factory(spec, scalers, data.x_train.shape[2], data.y_train.shape[2:])

    sink = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    with sink:
        _, members = fit_members(
            make_module,
            seeds,
            data,
            spec.penalty,
            settings.trainer_for(n),
            spec.lr,
            batch_size=settings.batch_size(n),
            loader_seed=seed,
            polish=settings.polish,
            label=label,
        )
    fits = []
    restarts = settings.restarts
    for i, m in enumerate(replicates):
        group = members[i * restarts : (i + 1) * restarts]
        finite = [r for r in group if np.isfinite(r.objective)] or group
        best = min(finite, key=lambda r: r.objective)
        x_train, y_train = parts[i * restarts][:2]
        fits.append(
            ReplicateFit(
                replicate=m,
                n=n,
                module=best.module,
                x_train=x_train,
                y_train=y_train,
                objective=best.objective,
                nll=best.nll,
                grad_max=best.grad_max,
                converged=bool(best.converged),
                epochs=best.epochs,
                restart_objectives=[r.objective for r in group],
            )
        )
    return fits
