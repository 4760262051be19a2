"""Agreement between restarts: labels, weights and predictions (R >= 2).

Every restart is aligned to the best one (the estimate) by optimal matching of its components'
weights and summaries on the reference x (``labels.align``). Then, per restart and per pair of
restarts:

- whether its labels were permuted relative to the best fit;
- the distance between weight vectors, raw and after relabelling by the alignment, relative to
  the best fit's weight norm: |theta_r - theta_best| / |theta_best|;
- the predictive agreement, the symmetric KL divergence KL(q_r || q_s) + KL(q_s || q_r)
  between the predictive distributions, averaged over the reference x (Monte Carlo: draws
  from each q_r(.|x), both log densities at them).

Agreement in prediction with disagreement in weights after alignment is the network's own
non-identifiability (hidden units permuted or sign-flipped, redundant directions): the weights
are not what a user can trust, the predictive distribution is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mdnlab.diagnostics.components import MC_SEED, finite_mean
from mdnlab.diagnostics.labels import align, relabel, summary_arrays
from mdnlab.sampling import seeded_sample

PREDICTIVE_DRAWS = 32  # draws per restart and reference x


@dataclass
class RestartReport:
    restarts: pd.DataFrame  # one row per restart
    pairs: pd.DataFrame  # one row per pair of restarts
    metrics: dict[str, float]


def flat_weights(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.net.parameters()])


@torch.no_grad()
def predictive_kl(modules: list, x_ref: torch.Tensor, draws: int = PREDICTIVE_DRAWS) -> np.ndarray:
    """(R, R): mean over x_ref of KL(q_r || q_s), each from draws of q_r."""
    count = len(modules)
    kl = np.zeros((count, count))
    for r, module in enumerate(modules):
        samples = seeded_sample(module.mixture(x_ref), draws, MC_SEED + r)  # standardised
        y = module.y_scaler.inverse(samples).reshape(draws * x_ref.shape[0], *samples.shape[2:])
        x = x_ref.repeat(draws, 1)
        own = module.log_prob(x, y)
        for s, other in enumerate(modules):
            if s != r:
                kl[r, s] = float(finite_mean((own - other.log_prob(x, y))[:, None]).mean())
    return kl


def restart_report(members: list, best_index: int, x_ref: torch.Tensor) -> RestartReport:
    """``members``: the estimation's MemberResults (module, objective, val_nll, index)."""
    alive = [m for m in members if m.alive and np.isfinite(m.objective)]
    best = next(m for m in alive if m.index == best_index)
    reference = summary_arrays(best.module, x_ref)
    theta_best = flat_weights(best.module)
    scale = float(theta_best.norm()) or 1.0
    rows, aligned_modules = [], []
    for member in alive:
        permutation = align(reference, summary_arrays(member.module, x_ref))
        aligned = copy.deepcopy(member.module)
        relabel(aligned.net, aligned.family, permutation)
        aligned_modules.append(aligned)
        rows.append(
            {
                "restart": member.index,
                "best": member.index == best.index,
                "permutation": " ".join(map(str, permutation)),
                "permuted": bool(np.any(permutation != np.arange(len(permutation)))),
                "objective": member.objective,
                "val_nll": member.val_nll,
                "param_distance_raw": float((flat_weights(member.module) - theta_best).norm())
                / scale,
                "param_distance_aligned": float((flat_weights(aligned) - theta_best).norm())
                / scale,
            }
        )
    kl = predictive_kl([m.module for m in alive], x_ref)
    skl = kl + kl.T
    thetas = [flat_weights(m) for m in aligned_modules]
    raw = [flat_weights(m.module) for m in alive]
    pairs = []
    for a in range(len(alive)):
        for b in range(a + 1, len(alive)):
            pairs.append(
                {
                    "restart_a": alive[a].index,
                    "restart_b": alive[b].index,
                    "predictive_skl": skl[a, b],
                    "param_distance_raw": float((raw[a] - raw[b]).norm()) / scale,
                    "param_distance_aligned": float((thetas[a] - thetas[b]).norm()) / scale,
                }
            )
    restarts = pd.DataFrame(rows)
    restarts["predictive_skl_to_best"] = skl[[m.index == best.index for m in alive]][0]
    pairs = pd.DataFrame(pairs)
    others = restarts[~restarts.best]
    metrics = {
        "diagnostics/restarts_permuted_fraction": float(others.permuted.mean()),
        "diagnostics/restarts_param_distance_raw": float(others.param_distance_raw.mean()),
        "diagnostics/restarts_param_distance_aligned": float(others.param_distance_aligned.mean()),
        "diagnostics/restarts_predictive_skl": float(pairs.predictive_skl.mean()),
        "diagnostics/restarts_objective_spread": float(np.ptp(restarts.objective)),
        "diagnostics/restarts_val_nll_spread": float(np.ptp(restarts.val_nll)),
    }
    return RestartReport(restarts, pairs, metrics)
