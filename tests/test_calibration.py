"""Calibration metrics against scipy and brute force, and nominal coverage on rows drawn from
the model itself."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from mdnlab.diagnostics.calibration import LEVELS, calibrate, coverage_se
from mdnlab.module import MDNModule


def make(family, k, event_shape, seed=0, **options):
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=1, event_shape=event_shape, family=family, n_components=k, hidden_sizes=[3],
        **options,
    )  # fmt: skip
    return module.eval()


def draw(module, n, seed=1):
    """x ~ U(-1, 1) and y ~ q(. | x): rows on which the model is calibrated by construction."""
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.uniform(-1, 1, (n, 1)))
    torch.manual_seed(seed)
    with torch.no_grad():
        y = module.y_scaler.inverse(module.mixture(x).sample())
    return x, y


def test_scalar_pit_and_intervals_against_scipy():
    module = make("gaussian", 1, [1])
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(-1, 1, (300, 1)))
    y = torch.as_tensor(rng.normal(0, 1.5, (300, 1)))  # not the model's law: coverage is off
    with torch.no_grad():
        part = module.mixture(x).component_distribution
    mean, sd = part.mean[:, 0, 0].numpy(), part.stddev[:, 0, 0].numpy()
    u = stats.norm.cdf(y[:, 0].numpy(), mean, sd)
    result = calibrate(module, x, y)
    np.testing.assert_allclose(result.pit, u, atol=1e-12)
    assert result.pit_ks == pytest.approx(stats.kstest(u, "uniform").statistic, abs=1e-12)
    for level in LEVELS:
        lo, hi = stats.norm.interval(level, mean, sd)
        inside = (lo <= y[:, 0].numpy()) & (y[:, 0].numpy() <= hi)
        assert result.coverage[level] == pytest.approx(inside.mean(), abs=1e-12)
    assert set(result.metrics()) == {
        "test/pit_ks", "test/coverage_50", "test/coverage_80", "test/coverage_90",
        "test/coverage_95",
    }  # fmt: skip


def test_density_region_of_a_gaussian_is_the_chi2_ellipse():
    module = make("gaussian", 1, [2])
    x, _ = draw(module, 400)
    y = torch.as_tensor(np.random.default_rng(2).normal(0, 1.2, (400, 2)))
    with torch.no_grad():
        part = module.mixture(x).component_distribution
    mean, cov = part.mean[:, 0].numpy(), part.covariance_matrix[:, 0].numpy()
    diff = y.numpy() - mean
    d2 = np.einsum("ni,nij,nj->n", diff, np.linalg.inv(cov), diff)
    result = calibrate(module, x, y, draws=4000)
    assert result.region == "highest-density region" and result.pit is None
    for level in LEVELS:
        exact = float(np.mean(d2 <= stats.chi2.ppf(level, 2)))
        # the Monte Carlo threshold moves only rows next to the boundary
        assert abs(result.coverage[level] - exact) < 0.03, (level, result.coverage, exact)


def brute_force_set(probs: np.ndarray, level: float) -> set[int]:
    """The smallest set of cells with probability >= level (ties: the more probable set)."""
    cells = range(len(probs))
    for size in range(1, len(probs) + 1):
        best = max(itertools.combinations(cells, size), key=lambda s: probs[list(s)].sum())
        if probs[list(best)].sum() >= level - 1e-12:
            return set(best)
    raise AssertionError("unreachable")


def test_class_sets_against_brute_force():
    module = make("categorical", 2, [2], n_classes=[3, 2])
    rng = np.random.default_rng(3)
    x = torch.as_tensor(rng.uniform(-1, 1, (60, 1)))
    y = torch.as_tensor(np.column_stack([rng.integers(0, 3, 60), rng.integers(0, 2, 60)]))
    y = y.to(torch.float64)
    cells = list(itertools.product(range(3), range(2)))
    with torch.no_grad():
        probs = np.stack(
            [module.log_prob(x, torch.tensor([c] * 60, dtype=torch.float64)).exp().numpy()
             for c in cells], axis=1,
        )  # fmt: skip
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    result = calibrate(module, x, y)
    for level in LEVELS:
        inside = [
            cells.index(tuple(int(v) for v in row)) in brute_force_set(p, level)
            for p, row in zip(probs, y.numpy(), strict=True)
        ]
        assert result.coverage[level] == pytest.approx(np.mean(inside), abs=1e-12)


@pytest.mark.parametrize(
    ("family", "k", "event_shape", "options"),
    [
        ("gaussian", 2, [1], {}),
        ("gaussian", 2, [2], {}),
        ("wishart", 2, [2, 2], {}),
        ("categorical", 2, [2], {"n_classes": [3, 2]}),
    ],
)
def test_rows_drawn_from_the_model_are_covered_at_the_nominal_rate(family, k, event_shape, options):
    module = make(family, k, event_shape, seed=4, **options)
    x, y = draw(module, 1500, seed=5)
    result = calibrate(module, x, y, draws=500)
    for level in LEVELS:
        tolerance = 3.5 * coverage_se(level, 1500) + 2.5 * coverage_se(level, 500) / 1500**0.5
        if family == "categorical":  # class sets hold at least the level: conservative
            assert result.coverage[level] >= level - tolerance
        else:
            assert abs(result.coverage[level] - level) < tolerance, (level, result.coverage)
    if result.pit is not None:
        assert result.pit_ks < stats.kstwo.ppf(0.999, 1500)
