"""``train.penalty_select=evidence``: lambda by MacKay's fixed point on the Laplace evidence.

Starting from ``train.penalty``: at the best member's penalized optimum take the eigenvalues
of A, update lambda = gamma / |theta|^2, re-polish every member warm-started at the new lambda,
and repeat until lambda moves by less than ``REL_TOL`` (relative) or ``MAX_UPDATES`` updates.
Each update costs one exact Hessian (``hessian_mean_nll``) and its eigenvalues, plus a polish.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from mdnlab.estimation.evidence import fixed_point_penalty, laplace_evidence
from mdnlab.estimation.fit import FitData, MemberResult, PolishSettings, best_member, polish_members
from mdnlab.inference.curvature import hessian_mean_nll
from mdnlab.inference.functional import FlatModel
from mdnlab.progress import say, warn

REL_TOL = 1e-3
MAX_UPDATES = 50
PENALTY_RANGE = (1e-6, 1e6)


@dataclass(frozen=True)
class PenaltyChoice:
    penalty: float
    log_evidence: float
    effective_params: float
    iterations: int
    path: list[tuple[float, float]]  # (lambda, log evidence) at each update


def evidence_at(module, x: torch.Tensor, y: torch.Tensor, penalty: float):
    """Laplace evidence terms of ``module``'s weights, taken as the optimum for ``penalty``."""
    flat = FlatModel(module, "all")
    a = hessian_mean_nll(flat, x, y).numpy()
    eigenvalues = scipy.linalg.eigvalsh((a + a.T) / 2)
    with torch.no_grad():
        nll = float(module.nll(x, y))
    squared = float(flat.theta.pow(2).sum())
    return laplace_evidence(nll, squared, eigenvalues, x.shape[0], penalty), squared


def select_penalty(
    ensemble, members: list[MemberResult], data: FitData, polish: PolishSettings, label: str = ""
) -> PenaltyChoice:
    """Updates ``ensemble.penalty`` and the members' weights in place; returns the choice."""
    x, y = data.x_train, data.y_train
    penalty = float(ensemble.penalty)
    path = []
    for update in range(1, MAX_UPDATES + 1):
        try:
            terms, squared = evidence_at(best_member(members).module, x, y, penalty)
        except ValueError as err:  # not at a minimum: the Laplace approximation has no centre
            warn(
                f"{label}train.penalty_select=evidence stopped at lambda {penalty:.4g} after "
                f"{update - 1} update(s): {err} (did the polish converge? see train/grad_norm)"
            )
            nan = float("nan")
            return PenaltyChoice(penalty, nan, nan, update - 1, path)
        path.append((penalty, terms.log_evidence))
        proposal = float(
            np.clip(fixed_point_penalty(terms.effective_params, squared), *PENALTY_RANGE)
        )
        say(
            f"{label}evidence: lambda {penalty:.4g}, log evidence {terms.log_evidence:.3f}, "
            f"gamma {terms.effective_params:.2f} -> lambda {proposal:.4g}"
        )
        if abs(proposal - penalty) <= REL_TOL * penalty:
            return PenaltyChoice(penalty, terms.log_evidence, terms.effective_params, update, path)
        penalty = proposal
        ensemble.penalty = penalty
        polish_members(ensemble, members, data, polish, label)
    warn(
        f"{label}train.penalty_select=evidence: lambda did not settle in {MAX_UPDATES} updates "
        f"(last {penalty:.4g}); reporting the evidence there"
    )
    try:
        terms, _ = evidence_at(best_member(members).module, x, y, penalty)
    except ValueError:
        return PenaltyChoice(penalty, float("nan"), float("nan"), MAX_UPDATES, path)
    return PenaltyChoice(penalty, terms.log_evidence, terms.effective_params, MAX_UPDATES, path)
