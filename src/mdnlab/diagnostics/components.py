"""Redundant components and the effective number of components.

Two ways a fitted mixture can carry more components than the data support: a component whose
mixing weight stays negligible over the reference x (it explains nothing, and its parameters
are not identified), and a pair of components that are nearly the same distribution at every
reference x (their split of weight is not identified). The effective K counts the groups of
mutually duplicate components among the non-negligible ones.

Divergences between components are Monte Carlo estimates (no closed form is needed, so every
family goes through its own ``sample`` and ``log_prob``): KL(p_j || p_k) at x as the mean of
log p_j - log p_k over draws from p_j, a seeded, fixed number of draws per x. Identical
components give exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mdnlab.sampling import seeded_sample

NEGLIGIBLE_WEIGHT = 0.01  # a component whose weight stays below this at every reference x
DUPLICATE_SKL = 0.01  # nats: components whose symmetric KL stays below this at every x
MC_DRAWS = 64  # draws per component and reference x
MC_SEED = 12345


@dataclass
class ComponentReport:
    table: pd.DataFrame  # one row per component
    effective: int
    negligible: list[int]
    duplicates: list[tuple[int, int]]

    def metrics(self) -> dict[str, float]:
        return {
            "diagnostics/effective_components": float(self.effective),
            "diagnostics/negligible_components": float(len(self.negligible)),
            "diagnostics/duplicate_component_pairs": float(len(self.duplicates)),
        }

    def describe(self) -> str:
        k = len(self.table)
        parts = [f"effective K {self.effective} of {k}"]
        if self.negligible:
            parts.append(f"negligible weight: {self.negligible}")
        if self.duplicates:
            parts.append(f"duplicates: {self.duplicates}")
        return "; ".join(parts)


def finite_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the first (draws) dimension of the finite entries."""
    finite = torch.isfinite(values)
    return torch.where(finite, values, 0.0).sum(dim=0) / finite.sum(dim=0).clamp(min=1)


@torch.no_grad()
def component_skl(components, draws: int = MC_DRAWS, seed: int = MC_SEED) -> torch.Tensor:
    """(n, K, K) symmetric KL between the components at each x, by Monte Carlo."""
    samples = seeded_sample(components, draws, seed)  # (S, n, K, *event)
    value = samples.movedim(2, 1).unsqueeze(3)  # (S, K_from, n, 1, *event)
    log_p = components.log_prob(value)  # (S, K_from, n, K_to)
    own = torch.diagonal(log_p, dim1=1, dim2=3).movedim(-1, 1)  # (S, K_from, n)
    kl = finite_mean(own[..., None] - log_p)  # (K_from, n, K_to): KL(from || to) at x
    kl = kl.movedim(1, 0)  # (n, K_from, K_to)
    return kl + kl.transpose(1, 2)


@torch.no_grad()
def component_report(
    module,
    x_ref: torch.Tensor,
    negligible_weight: float = NEGLIGIBLE_WEIGHT,
    duplicate_skl: float = DUPLICATE_SKL,
    draws: int = MC_DRAWS,
) -> ComponentReport:
    mixture = module.mixture(x_ref)
    weights = mixture.mixture_distribution.probs.numpy()  # (n, K)
    k = weights.shape[1]
    negligible = [j for j in range(k) if weights[:, j].max() < negligible_weight]
    skl = component_skl(mixture.component_distribution, draws).numpy() if k > 1 else None
    duplicates = []
    group = list(range(k))  # union-find over duplicate pairs

    def root(j: int) -> int:
        while group[j] != j:
            j = group[j]
        return j

    max_skl = np.full((k, k), np.nan)
    for a in range(k):
        for b in range(a + 1, k):
            max_skl[a, b] = max_skl[b, a] = float(skl[:, a, b].max())
            if max_skl[a, b] < duplicate_skl and a not in negligible and b not in negligible:
                duplicates.append((a, b))
                group[root(b)] = root(a)
    kept = [j for j in range(k) if j not in negligible]
    effective = len({root(j) for j in kept})
    table = pd.DataFrame(
        {
            "component": np.arange(k),
            "weight_mean": weights.mean(axis=0),
            "weight_min": weights.min(axis=0),
            "weight_max": weights.max(axis=0),
            "negligible": [j in negligible for j in range(k)],
            "nearest": [int(np.nanargmin(max_skl[j])) if k > 1 else -1 for j in range(k)],
            "nearest_max_skl": [
                float(np.nanmin(max_skl[j])) if k > 1 else np.nan for j in range(k)
            ],
            "duplicate_of": [root(j) if root(j) != j else -1 for j in range(k)],
        }
    )
    return ComponentReport(table, effective, negligible, duplicates)
