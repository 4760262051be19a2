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
    """Updates ``ensemble.penalty`` and the members' weights in place; returns the choice.

    Robust to the fixed point's failures: lambda stays in ``PENALTY_RANGE`` (a proposal beyond
    it stops the iteration with a warning, rather than running to the bound), and whatever stops
    it (settled, failed Laplace approximation, the bound, ``MAX_UPDATES``), the estimate is the
    visited lambda with the highest log evidence, the start included: never a worse evidence
    than the fit at ``train.penalty``."""
    x, y = data.x_train, data.y_train
    penalty = float(ensemble.penalty)
    path: list[tuple[float, float]] = []
    best: tuple[float, float, float, torch.Tensor] | None = None  # (log ev, lambda, gamma, theta)
    stop = ""
    for update in range(1, MAX_UPDATES + 1):
        try:
            terms, squared = evidence_at(best_member(members).module, x, y, penalty)
        except ValueError as err:  # not at a minimum: the Laplace approximation has no centre
            stop = (
                f"stopped at lambda {penalty:.4g} after {update - 1} update(s): {err} (did the "
                "polish converge? see train/grad_norm)"
            )
            break
        path.append((penalty, terms.log_evidence))
        if best is None or terms.log_evidence > best[0]:
            theta = ensemble.members.flat().detach().clone()
            best = (terms.log_evidence, penalty, terms.effective_params, theta)
        wanted = fixed_point_penalty(terms.effective_params, squared)
        proposal = float(np.clip(wanted, *PENALTY_RANGE))
        say(
            f"{label}evidence: lambda {penalty:.4g}, log evidence {terms.log_evidence:.3f}, "
            f"gamma {terms.effective_params:.2f} -> lambda {proposal:.4g}"
        )
        if abs(proposal - penalty) <= REL_TOL * penalty:
            break
        if proposal != wanted:
            stop = (
                f"the fixed point runs past the bound lambda {proposal:g} (it asks for "
                f"{wanted:.3g}; the search stays in [{PENALTY_RANGE[0]:g}, {PENALTY_RANGE[1]:g}]): "
                "the evidence has no maximum inside it for this fit"
            )
            break
        penalty = proposal
        ensemble.penalty = penalty
        polish_members(ensemble, members, data, polish, label)
    else:
        stop = f"lambda did not settle in {MAX_UPDATES} updates (last {penalty:.4g})"
    if best is None:
        warn(f"{label}train.penalty_select=evidence {stop}")
        nan = float("nan")
        return PenaltyChoice(penalty, nan, nan, 0, path)
    log_evidence, chosen, gamma, theta = best
    if not stop and chosen != penalty:
        stop = (
            f"the fixed point settled at lambda {penalty:.4g} with a lower log evidence than "
            f"lambda {chosen:.4g} had ({path[-1][1]:.3f} < {log_evidence:.3f}; the Hessian moved "
            "with lambda)"
        )
    if stop:
        warn(
            f"{label}train.penalty_select=evidence: {stop}; keeping the visited lambda with the "
            f"highest log evidence, {chosen:.4g} ({log_evidence:.3f})"
        )
    if chosen != penalty:
        ensemble.members.set_flat(theta)
        ensemble.penalty = chosen
        polish_members(ensemble, members, data, polish, label)  # at its optimum: fills results
    return PenaltyChoice(chosen, log_evidence, gamma, len(path), path)
