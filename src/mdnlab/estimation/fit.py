"""R members from R seeds, trained together: Adam with per-member early stopping, then the
batched L-BFGS polish of the penalized objective (Newton steps finish small networks).

The caller builds each member's ``MDNModule`` (``make_module(seed)``: weights initialised
from that seed, scalers fitted on the training split) and picks among the results; nothing
here knows about MLflow or Hydra.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mdnlab.data.loaders import batch_loader
from mdnlab.distributed import is_worker_process
from mdnlab.estimation.adam import TrainerSettings, fit_adam
from mdnlab.estimation.checkpoints import Checkpointing
from mdnlab.estimation.ensemble import MemberEnsemble
from mdnlab.estimation.lbfgs import lbfgs_members, value_and_grad
from mdnlab.estimation.members import BatchedMLP
from mdnlab.estimation.objective import objective
from mdnlab.polish import newton_polish
from mdnlab.progress import say


@dataclass(frozen=True)
class PolishSettings:
    enabled: bool = True
    tol: float = 1e-6
    max_iter: int = 5000
    newton_max_params: int = 300


@dataclass(frozen=True)
class FitData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def stacked(self) -> bool:
        """True: each member has its own rows, x (R, n, d) and y (R, n, *event)."""
        return self.x_train.dim() == 3

    @property
    def n_train(self) -> int:
        return self.x_train.shape[1 if self.stacked else 0]

    @property
    def has_val(self) -> bool:
        return self.x_val is not None and self.x_val.shape[-2] > 0


@dataclass
class MemberResult:
    index: int
    seed: int
    module: object  # MDNModule at the final weights
    before_polish: dict  # its net's state_dict at the early-stopped weights
    epochs: int  # epoch at which this member stopped
    best_epoch: int
    alive: bool
    history: dict[str, list[float]] = field(default_factory=dict)
    val_nll_before_polish: float = float("nan")
    objective: float = float("nan")  # penalized training objective at the final weights
    nll: float = float("nan")  # mean training NLL
    penalty_term: float = float("nan")  # the ridge penalty's part of the objective
    scale_term: float = 0.0  # the scale penalty's part
    grad_max: float = float("nan")  # largest |entry| of the objective's gradient
    converged: bool = False
    polish_iterations: int = 0
    val_nll: float = float("nan")


def member_seeds(seed: int, count: int) -> list[int]:
    """Member 0 uses the run's own seed (so R = 1 is the plain run); the others are drawn from
    a SeedSequence of (seed, r), so they collide with no other run's member 0."""
    seeds = [int(seed)]
    for r in range(1, count):
        seeds.append(int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0]))
    return seeds


def fit_members(
    make_module: Callable[[int], object],
    seeds: list[int],
    data: FitData,
    penalty: float,
    trainer: TrainerSettings,
    lr: float,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    loader_seed: int = 0,
    polish: PolishSettings = PolishSettings(),
    label: str = "",
    checkpoints: Checkpointing | None = None,
    scale_penalty: float = 0.0,
) -> tuple[MemberEnsemble, list[MemberResult]]:
    modules = [make_module(s) for s in seeds]
    members = BatchedMLP.from_members([m.net for m in modules])
    ensemble = MemberEnsemble(
        modules[0],
        members,
        data.n_train,
        penalty,
        lr,
        weight_decay,
        stacked=data.stacked,
        scale_penalty=scale_penalty,
    )
    if data.stacked and data.x_train.shape[0] != len(seeds):
        raise ValueError(
            f"stacked data needs one set of rows per member: got {data.x_train.shape[0]} "
            f"sets for {len(seeds)} seeds"
        )
    if len(seeds) > 1:
        say(f"{label}training {len(seeds)} restarts as one batched network")
    row_dim = 1 if data.stacked else 0
    train_loader = batch_loader(data.x_train, data.y_train, batch_size, loader_seed, row_dim)
    val_loader = batch_loader(data.x_val, data.y_val) if data.has_val else None
    adam = fit_adam(ensemble, train_loader, val_loader, trainer, label, checkpoints)
    if is_worker_process():
        return ensemble, []  # a DDP process other than rank 0: its part was Adam

    results = []
    with torch.no_grad():
        val_before = ensemble.nll(data.x_val, data.y_val) if data.has_val else None
    for r, (seed, module) in enumerate(zip(seeds, modules, strict=True)):
        members.copy_member_into(r, module.net)
        stop = adam.stopped_epoch[r]
        history = {
            "train/nll_epoch": [e[r] for e in ensemble.epoch_history["train"][:stop]],
            "val/nll_epoch": [e[r] for e in ensemble.epoch_history["val"][:stop]],
        }
        results.append(
            MemberResult(
                index=r,
                seed=seed,
                module=module,
                before_polish=copy.deepcopy(module.net.state_dict()),
                epochs=stop,
                best_epoch=adam.best_epoch[r],
                alive=adam.alive[r],
                history=history,
                val_nll_before_polish=float(val_before[r])
                if val_before is not None
                else float("nan"),
            )
        )
    polish_members(ensemble, results, data, polish, label)
    return ensemble, results


def polish_members(
    ensemble: MemberEnsemble,
    results: list[MemberResult],
    data: FitData,
    settings: PolishSettings,
    label: str = "",
) -> None:
    """Polish every member of ``ensemble`` on the training split at ``ensemble.penalty`` (from
    its current weights), then copy the weights into the results' modules and fill in their
    objective, gradient and validation numbers."""
    members = ensemble.members
    x, y = data.x_train, data.y_train

    def fn(theta: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return ensemble.objective(x, y, theta=theta, members=index)

    if settings.enabled:
        outcome = lbfgs_members(fn, members.flat(), settings.tol, settings.max_iter, label=label)
        members.set_flat(outcome.theta)
        iterations = [int(i) for i in outcome.iterations]
        n_params = members.flat().shape[1]
        for r, result in enumerate(results):
            members.copy_member_into(r, result.module.net)
            if bool(outcome.converged[r]) or n_params > settings.newton_max_params:
                continue
            module = result.module
            x_r, y_r = (x[r], y[r]) if data.stacked else (x, y)
            finish = newton_polish(
                lambda module=module, x_r=x_r, y_r=y_r: objective(
                    module, x_r, y_r, ensemble.penalty, ensemble.scale_penalty
                ),
                list(module.net.parameters()),
                settings.tol,
                label=label,
            )
            iterations[r] += finish.iterations
            with torch.no_grad():
                for p, q in zip(members.flat_views(r), module.net.parameters(), strict=True):
                    p.copy_(q)
    else:
        iterations = [0] * len(results)
    values, gradient = value_and_grad(fn, members.flat())
    with torch.no_grad():
        nll, scale = ensemble.data_terms(x, y)
        val = ensemble.nll(data.x_val, data.y_val) if data.has_val else None
    for r, result in enumerate(results):
        members.copy_member_into(r, result.module.net)
        result.objective = float(values[r])
        result.nll = float(nll[r])
        result.scale_term = 0.0 if scale is None else float(scale[r])
        result.penalty_term = float(values[r] - nll[r]) - result.scale_term
        result.grad_max = float(gradient[r].abs().max())
        result.converged = settings.enabled and result.grad_max <= settings.tol
        result.polish_iterations = iterations[r]
        result.val_nll = float(val[r]) if val is not None else float("nan")
    if settings.enabled:
        done = sum(r.converged for r in results)
        worst = max(r.grad_max for r in results)
        say(
            f"{label}polish: {done}/{len(results)} member(s) converged (max|grad| <= "
            f"{settings.tol:g}; worst {worst:.2e}), {max(iterations)} iterations at most"
        )


def best_member(results: list[MemberResult]) -> MemberResult:
    """The member with the lowest penalized training objective among the finite ones."""
    finite = [r for r in results if r.alive and np.isfinite(r.objective)]
    if not finite:
        finite = [r for r in results if np.isfinite(r.objective)]
    return min(finite, key=lambda r: r.objective)
