"""Calibration of the predictive distribution on held-out rows.

For each level l in ``LEVELS`` the fraction of test rows whose y falls in the model's central
region of probability l (``test/coverage_<100 l>``); a calibrated model covers l of them.
The region depends on the family:

- scalar y (Gaussian, one column): the central interval [F^-1((1 - l)/2), F^-1((1 + l)/2)],
  i.e. the probability integral transform u = F(y | x) lies within l/2 of 1/2. The PIT itself
  is U(0, 1) under a calibrated model; ``test/pit_ks`` is its Kolmogorov-Smirnov distance
  from uniform.
- other continuous y (Gaussian vectors, Wishart matrices): the highest-density region
  {y: q(y | x) >= c_l(x)}, with c_l(x) the (1 - l) quantile of log q(Y | x) over ``draws``
  draws Y ~ q(. | x) (Monte Carlo: the region's probability is l up to about
  sqrt(l (1 - l) / draws)).
- class-coded y (categorical): the smallest set of joint cells (one class per column) whose
  probabilities sum to at least l, most probable first; covering at least l by construction
  (discrete sets cannot hit l exactly), so the coverage is conservative by the last cell's
  share.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

LEVELS = (0.5, 0.8, 0.9, 0.95)
HPD_DRAWS = 1000
MAX_CELLS = 4096  # joint class cells enumerated for the categorical sets


@dataclass
class Calibration:
    region: str  # "central interval" | "highest-density region" | "class set"
    coverage: dict[float, float]  # level -> fraction of rows inside the level's region
    rows: int
    pit: np.ndarray | None = None  # scalar y: F(y | x) per row
    pit_ks: float | None = None

    def metrics(self, split: str = "test") -> dict[str, float]:
        out = {f"{split}/coverage_{level_name(lv)}": v for lv, v in self.coverage.items()}
        if self.pit_ks is not None:
            out[f"{split}/pit_ks"] = self.pit_ks
        return out


def level_name(level: float) -> str:
    """0.9 -> "90", 0.95 -> "95", 0.975 -> "97.5"."""
    return f"{100 * level:g}"


@torch.no_grad()
def calibrate(
    module, x, y, levels=LEVELS, draws: int = HPD_DRAWS, seed: int = 0
) -> Calibration | None:
    """Coverage of the central regions at ``levels`` (and the PIT, for scalar y) of an
    ``MDNModule`` on rows (x, y) in original units; None for no rows or a categorical model
    with more than ``MAX_CELLS`` joint cells."""
    from mdnlab.fitted import FittedModel

    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.shape[0] == 0:
        return None
    model = FittedModel(module)
    levels = tuple(float(lv) for lv in levels)
    if model.scalar_y:
        u = model.cdf(x.numpy(), y[:, 0].numpy())
        coverage = {lv: float(np.mean(np.abs(u - 0.5) <= lv / 2)) for lv in levels}
        ks = float(stats.kstest(u, "uniform").statistic)
        return Calibration("central interval", coverage, len(u), pit=u, pit_ks=ks)
    if module.family.name == "categorical":
        return class_sets(module, x, y, levels)
    return density_regions(model, x, y, levels, draws, seed)


def class_sets(module, x: torch.Tensor, y: torch.Tensor, levels) -> Calibration | None:
    classes = module.family.n_classes
    if int(np.prod(classes)) > MAX_CELLS:
        return None
    cells = torch.tensor(list(itertools.product(*[range(c) for c in classes])), dtype=y.dtype)
    n, m = x.shape[0], cells.shape[0]
    log_p = module.log_prob(x.repeat_interleave(m, 0), cells.repeat(n, 1)).reshape(n, m)
    probs = log_p.exp().numpy()
    observed = [int(torch.nonzero((cells == row).all(dim=1))[0]) for row in y]
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = np.argsort(order, axis=1)[np.arange(n), observed]  # 0 = the most probable cell
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    coverage = {}
    for lv in levels:
        size = (cumulative < lv - 1e-12).sum(axis=1) + 1  # cells in the smallest set >= lv
        coverage[lv] = float(np.mean(rank < size))
    return Calibration("class set", coverage, n)


def density_regions(model, x: torch.Tensor, y: torch.Tensor, levels, draws: int, seed: int):
    n = x.shape[0]
    samples = torch.as_tensor(model.sample(x.numpy(), draws, seed=seed))  # (n, S, *event)
    flat = samples.reshape(n * draws, *samples.shape[2:])
    log_q_draws = model.module.log_prob(x.repeat_interleave(draws, 0), flat).reshape(n, draws)
    log_q = model.module.log_prob(x, y)
    coverage = {}
    for lv in levels:
        threshold = torch.quantile(log_q_draws, 1.0 - lv, dim=1)
        coverage[lv] = float((log_q >= threshold).double().mean())
    return Calibration("highest-density region", coverage, n)


def coverage_se(level: float, rows: int) -> float:
    """Binomial SE of the coverage of a calibrated model on ``rows`` rows."""
    return float(np.sqrt(level * (1 - level) / rows))
