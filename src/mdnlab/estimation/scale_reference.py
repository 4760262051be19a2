"""The scale penalty's reference scale: the variance of y around its conditional mean, estimated
before any network is fitted, from nearest-neighbour differences.

For each training row i let j(i) be its nearest other training row in the standardised inputs.
Where the conditional mean is smooth, y_i - y_j(i) is the difference of two independent noises
at nearly the same x, so half its mean square estimates the noise variance (the difference-based
estimator of Rice 1984; with nearest neighbours in several inputs, Devroye, Gyorfi, Lugosi &
Walk 2018). It is biased upwards by whatever the mean changes between neighbours, which makes it
a conservative reference: the penalty never pulls a component below the noise the data show.
Each output coordinate gets its own variance (the reference is diagonal).
"""

from __future__ import annotations

import torch

# Rows compared at once: a (chunk, n) distance block in float64.
CHUNK_ROWS = 512


def nearest_other_rows(x: torch.Tensor, chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """(n,) index of each row's nearest other row (Euclidean; ties to the lower index)."""
    n = x.shape[0]
    nearest = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk):
        block = torch.cdist(x[start : start + chunk], x)  # (b, n)
        rows = torch.arange(block.shape[0])
        block[rows, rows + start] = torch.inf  # not itself
        nearest[start : start + chunk] = block.argmin(dim=1)
    return nearest


def neighbour_noise_variance(
    x: torch.Tensor, y: torch.Tensor, floor: float, ceiling: float = 1.0
) -> torch.Tensor:
    """(q,) half the mean squared difference of y between each row and its nearest other row
    in x, per coordinate of y (n, q), clipped to [floor, ceiling]. Both x and y standardised;
    the ceiling 1 is the marginal variance there. Fewer than 2 rows, or no inputs: the ceiling."""
    x = x.double().reshape(x.shape[0], -1)
    y = y.double().reshape(y.shape[0], -1)
    if x.shape[0] < 2 or x.shape[1] == 0:
        return torch.full((y.shape[1],), float(ceiling), dtype=torch.float64)
    difference = y - y[nearest_other_rows(x)]
    return (0.5 * difference.pow(2).mean(dim=0)).clamp(float(floor), float(ceiling))
