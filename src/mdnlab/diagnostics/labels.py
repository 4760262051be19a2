"""Mixture labels: the canonical order of a fit's components, relabelling a network, and
aligning one fit's labels to another's.

A mixture is unchanged when its components are listed in another order, so the labels a fit
ends with are arbitrary: two restarts (or bootstrap refits) of the same model can give the
same predictive distribution with components 0 and 1 swapped, and any per-component summary
compared across fits mixes the two. Two remedies, as in R's ``label.switching``:

- an order fixed by the fit itself (``canonical_order``): components by decreasing mean mixing
  weight over a reference set of x, ties (weights within ``TIE_TOLERANCE``) broken by the
  family's first component summary (the mean of y_0 for Gaussians), increasing;
- alignment to a pivot (``align``): the permutation of one fit's labels that best matches
  another's per-component summaries on the reference x, by optimal assignment (Hungarian,
  ``scipy.optimize.linear_sum_assignment``), the ECR/pivot idea for fits rather than draws.

What an order does not fix: the network's own symmetries (hidden units permuted, a tanh unit's
sign flipped), which leave the weights unidentified while the order of the components is
fixed; and components whose weights are close everywhere, where the order is decided by noise
(``identified_flags`` marks where per-component summaries are separated by more than a few SEs
at a point, and nowhere else do their SEs mean anything).

Relabelling is exact (``Family.relabelling``): the same function, the same NLL; with the K-th
gating logit fixed at 0 it re-references the free logits, so the ridge penalty on the head's
logit rows, and so the penalized objective, can change: a relabelled fit is re-polished.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

TIE_TOLERANCE = 1e-3  # mean mixing weights closer than this count as tied
REFERENCE_ROWS = 500  # at most this many training rows as the reference x (evenly spaced)
IDENTIFIED_Z = 3.0  # separated by more than this many SEs: the order is strict at that x


def reference_rows(x: torch.Tensor, rows: int = REFERENCE_ROWS) -> torch.Tensor:
    """Up to ``rows`` rows of x, evenly spaced over its order (deterministic)."""
    if x.shape[0] <= rows:
        return x
    return x[np.linspace(0, x.shape[0] - 1, rows).round().astype(int)]


@torch.no_grad()
def summary_arrays(module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """``weight[{k}]`` and the family's component summaries at x, each (rows, K)."""
    return {
        name: values.numpy()
        for name, values in module.component_summaries(module.mixture(x)).items()
    }


def canonical_order(summaries: dict[str, np.ndarray], tie_tolerance: float = TIE_TOLERANCE):
    """Components by decreasing mean weight over the rows; ties by the first family summary."""
    names = list(summaries)
    weight = summaries[names[0]].mean(axis=0)
    tiebreak = summaries[names[1]].mean(axis=0) if len(names) > 1 else np.zeros_like(weight)
    order = list(np.argsort(-weight, kind="stable"))
    result, start = [], 0
    while start < len(order):  # runs of tied weights, each sorted by the tie-breaker
        stop = start + 1
        while stop < len(order) and weight[order[start]] - weight[order[stop]] < tie_tolerance:
            stop += 1
        result += sorted(order[start:stop], key=lambda k: (tiebreak[k], k))
        start = stop
    return np.array(result, dtype=int)


def head_layer(net: nn.Sequential) -> nn.Linear:
    return [m for m in net if isinstance(m, nn.Linear)][-1]


@torch.no_grad()
def relabel(net: nn.Sequential, family, order) -> None:
    """Rewrite the head so that new component j is old component ``order[j]`` (in place)."""
    t = family.relabelling(order).to(head_layer(net).weight.dtype)
    head = head_layer(net)
    head.weight.copy_(t @ head.weight)
    head.bias.copy_(t @ head.bias)


def align(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> np.ndarray:
    """The permutation p with other's component p[j] matching reference's component j: optimal
    assignment on squared differences of every summary at every reference x, each summary
    scaled by its spread over both fits (so weights and means in any units count alike)."""
    cost = 0.0
    for name in reference:
        a, b = reference[name], other[name]  # (rows, K)
        scale = np.std(np.concatenate([a, b])) or 1.0
        cost = cost + ((a[:, :, None] - b[:, None, :]) ** 2).sum(axis=0) / scale**2
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


_COMPONENT = re.compile(r"^(?P<name>weight|component_\w+)\[(?P<k>\d+)(?P<rest>(,\d+)*)\]$")


def identified_flags(predictions: pd.DataFrame, z: float = IDENTIFIED_Z) -> pd.Series:
    """Per row of ``inference/predictions.csv``: True for the mixture's own quantities; for a
    per-component quantity, whether its component is told apart from every other at that point
    (weight or some summary separated by more than z sandwich SEs of the difference, taken as
    sqrt(se_j^2 + se_k^2)); NA where the SEs are missing."""
    flags = pd.Series(True, index=predictions.index, dtype="boolean")
    parsed = predictions.quantity.str.extract(_COMPONENT)
    component_rows = parsed["k"].notna()
    if not component_rows.any():
        return flags
    frame = predictions[component_rows].assign(
        template=parsed["name"][component_rows] + parsed["rest"][component_rows].fillna(""),
        k=parsed["k"][component_rows].astype(int),
    )
    for _, group in frame.groupby("point"):
        estimate = group.pivot(index="template", columns="k", values="estimate")
        # float: without inference the SE column holds no numbers (object NaNs)
        se = group.pivot(index="template", columns="k", values="se_sandwich").astype(float)
        n_components = estimate.shape[1]
        gap = np.abs(estimate.to_numpy()[:, :, None] - estimate.to_numpy()[:, None, :])
        noise = np.sqrt(se.to_numpy()[:, :, None] ** 2 + se.to_numpy()[:, None, :] ** 2)
        separated = (gap > z * noise).any(axis=0)  # (K, K): some summary tells j from k
        missing = np.isnan(noise).any(axis=0)
        np.fill_diagonal(separated, True)
        np.fill_diagonal(missing, False)
        for k in range(n_components):
            value = pd.NA if missing[k].any() else bool(separated[k].all())
            flags[group.index[group.k == k]] = value
    return flags
