"""Nonparametric bootstrap of a fitted model: B refits on resampled rows, all at once.

Resampling n rows with replacement is the same as giving the original rows multinomial
counts c ~ Mult(n, 1/n) in the likelihood: refit b minimises sum_i c_bi (-log q(y_i|x_i)) / n
+ lambda/(2n)|theta|^2. The B refits are members of one ``MemberEnsemble`` with those row
weights, polished together by the batched L-BFGS from the fitted weights (the optimum next to
them, as ``refit.refit_on_targets`` does for the parametric bootstrap): a local bootstrap of
the estimator's sampling variability within the fitted basin, skipping Adam and restarts.
"""

from __future__ import annotations

import numpy as np
import torch

from mdnlab.estimation.ensemble import MemberEnsemble
from mdnlab.estimation.members import BatchedMLP
from mdnlab.estimation.refit import Refits, polish_copies


def multinomial_counts(n: int, count: int, seed: int) -> torch.Tensor:
    """(count, n) row counts, each row summing to n: resampling with replacement."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.multinomial(n, np.full(n, 1.0 / n), size=count), dtype=torch.float64)


def bootstrap_refits(
    module,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: float,
    count: int,
    seed: int,
    tol: float = 1e-6,
    max_iter: int = 5000,
) -> Refits:
    """``count`` refits of ``module`` on resampled rows of (x, y) at ``penalty``."""
    n = x.shape[0]
    counts = multinomial_counts(n, count, seed)
    members = BatchedMLP.from_members([module.net] * count)
    ensemble = MemberEnsemble(module, members, n, penalty, row_weights=counts)

    def objective(theta: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return ensemble.objective(x, y, theta=theta, members=index)

    return polish_copies(module, members, objective, tol, max_iter)
