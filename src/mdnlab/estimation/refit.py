"""Parametric-bootstrap refits: B copies of a fitted model, each polished on its own targets.

The fitted model is the truth of the bootstrap world: B target sets are drawn from it at the
training x (``simulate_targets``), and each copy is polished from the fitted weights to the
penalized optimum on its own targets, all B at once through the batched L-BFGS (one forward
pass of a ``BatchedMLP`` per evaluation, per-member histories and line searches). Starting at
the bootstrap world's true weights finds the optimum next to them, the one a full refit would
report for a well-identified fit; it skips Adam and the search over basins (restarts), so it
resamples the estimator's local, asymptotic variability, which is what a test statistic's
null distribution needs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from mdnlab.estimation.lbfgs import lbfgs_members, value_and_grad
from mdnlab.estimation.members import BatchedMLP
from mdnlab.sampling import seeded_sample


@dataclass
class Refits:
    modules: list  # B MDNModules at their polished weights
    converged: torch.Tensor  # (B,) bool
    grad_max: torch.Tensor  # (B,)


@torch.no_grad()
def simulate_targets(module, x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """(count, n, *event) draws of y ~ q(.|x_i) at each row of x, original units."""
    return module.y_scaler.inverse(seeded_sample(module.mixture(x), count, seed))


def refit_on_targets(
    module,
    x: torch.Tensor,
    targets: torch.Tensor,
    penalty: float,
    tol: float = 1e-6,
    max_iter: int = 5000,
    label: str = "",
    scale_penalty: float = 0.0,
) -> Refits:
    """Polish B copies of ``module`` on (x, targets[b]) at the penalties it was fitted with."""
    count, n = targets.shape[:2]
    members = BatchedMLP.from_members([module.net] * count)
    x_s = module.x_scaler(x)
    y_s = module.y_scaler(targets)  # (B, n, *event)
    family, jacobian = module.family, module.y_scaler.log_abs_det_jacobian()

    def objective(theta: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        raw = members(x_s, theta)  # (M, n, n_raw)
        chosen = y_s if index is None else y_s[index]
        m = raw.shape[0]
        raw = raw.reshape(m * n, -1)
        log_q = family.mixture(raw).log_prob(chosen.reshape(m * n, *chosen.shape[2:]))
        nll = -(log_q.reshape(m, n) + jacobian).mean(dim=1)
        if scale_penalty:
            s = family.scale_penalty(raw, module.scale_reference)
            nll = nll + scale_penalty / n * s.reshape(m, n).mean(dim=1)
        return nll + penalty / (2.0 * n) * theta.pow(2).sum(dim=1)

    return polish_copies(module, members, objective, tol, max_iter, label)


def polish_copies(
    module, members: BatchedMLP, objective, tol: float, max_iter: int, label: str = ""
) -> Refits:
    """Polish the copies of ``module`` stacked in ``members`` on ``objective(theta, index)``
    (batched L-BFGS) and return them as modules with their convergence."""
    outcome = lbfgs_members(objective, members.flat(), tol, max_iter, label=label)
    _, gradient = value_and_grad(objective, outcome.theta)
    members.set_flat(outcome.theta)
    modules = []
    for b in range(members.n_members):
        copy_b = copy.deepcopy(module)
        members.copy_member_into(b, copy_b.net)
        modules.append(copy_b)
    grad_max = gradient.abs().amax(dim=1)
    return Refits(modules, grad_max <= tol, grad_max)
