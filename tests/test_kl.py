"""Monte Carlo KL estimate against the closed form for two Gaussians; evaluation-sample errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mdnlab.diagnostics.kl import kl_estimate, load_eval_sample
from mdnlab.errors import DataError

torch.set_num_threads(1)


def gaussian_kl(m1, s1, m2, s2):
    """KL(N(m1, s1^2) || N(m2, s2^2))."""
    return np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


@pytest.mark.parametrize(
    ("m1", "s1", "m2", "s2"), [(0.0, 1.0, 0.5, 1.5), (2.0, 0.3, 1.0, 1.0), (-1.0, 2.0, -1.0, 2.2)]
)
def test_kl_estimate_matches_closed_form(m1, s1, m2, s2):
    rng = np.random.default_rng(42)
    n = 20_000
    y = rng.normal(m1, s1, size=n)
    log_p = stats.norm.logpdf(y, m1, s1)
    log_q = stats.norm.logpdf(y, m2, s2)
    result = kl_estimate(log_p, log_q)
    diff = log_p - log_q
    assert result.n == n
    assert result.value == pytest.approx(np.sum(diff) / n, rel=1e-12)
    se = np.sqrt(np.sum((diff - diff.mean()) ** 2) / (n - 1)) / np.sqrt(n)
    assert result.se == pytest.approx(se, rel=1e-10)
    assert abs(result.value - gaussian_kl(m1, s1, m2, s2)) < 4 * result.se


def test_kl_of_identical_laws_is_zero():
    log_p = stats.norm.logpdf(np.linspace(-3, 3, 50))
    result = kl_estimate(log_p, log_p.copy())
    assert result.value == 0.0 and result.se == 0.0 and result.n == 50


def test_load_eval_sample(tmp_path):
    rng = np.random.default_rng(0)
    x, y, log_p = rng.normal(size=(8, 2)), rng.normal(size=(8, 3)), rng.normal(size=8)
    path = tmp_path / "eval.npz"
    np.savez(path, x=x, y=y, log_p=log_p)
    gx, gy, glp = load_eval_sample(path, 2, (3,))
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    np.testing.assert_array_equal(glp, log_p)
    # 1-d x and y are reshaped to (n, 1).
    np.savez(path, x=x[:, 0], y=y[:, 0], log_p=log_p)
    gx, gy, _ = load_eval_sample(path, 1, (1,))
    assert gx.shape == (8, 1) and gy.shape == (8, 1)


def test_load_eval_sample_errors(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(DataError, match="no evaluation sample") as info:
        load_eval_sample(missing, 1, (1,))
    assert str(missing) in str(info.value)

    path = tmp_path / "partial.npz"
    np.savez(path, x=np.zeros((4, 1)), y=np.zeros((4, 1)))
    with pytest.raises(DataError, match="log_p") as info:
        load_eval_sample(path, 1, (1,))
    assert str(path) in str(info.value) and "Traceback" not in str(info.value)

    path = tmp_path / "wide.npz"
    np.savez(path, x=np.zeros((4, 3)), y=np.zeros((4, 1)), log_p=np.zeros(4))
    with pytest.raises(DataError, match="3 columns"):
        load_eval_sample(path, 2, (1,))
