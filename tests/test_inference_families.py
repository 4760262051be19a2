"""The inference step for the categorical and Wishart families against closed forms.

Saturated designs: x takes three levels and a network with a tanh hidden layer can fit each
level's distribution exactly, so the fitted quantities are the per-level maximum-likelihood
estimates and exponential-family facts give their standard errors in closed form:

- categorical: p_hat = the level's class share; Var = p(1 - p) / n_l (Hessian and sandwich);
- Wishart (K = 1): the MLE of E[Y] is the level's sample mean (mean-value parameter of an
  exponential family); inverse-Hessian Var of an entry = Var_theta_hat(Y_ij) / n_l
  = df (S_ij^2 + S_ii S_jj) / n_l at the level's MLE (df, S), found here with scipy;
  sandwich Var = the entry's empirical variance / n_l.

The network has more weights than the levels have parameters, so A is singular.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from mdnlab.inference.step import run_inference
from mdnlab.module import MDNModule
from mdnlab.polish import polish

torch.set_num_threads(1)

LEVELS = np.array([-1.0, 0.0, 1.0])


def fit_to_the_mle(module, x, y):
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    result = polish(lambda: module.nll(x, y), list(module.parameters()), tol=1e-9, max_iter=5000)
    assert result.grad_max < 1e-6, result


def by_point(predictions):
    return {
        (int(r.point), r.quantity): (r.estimate, r.se_hessian, r.se_sandwich)
        for r in predictions.itertuples()
    }


def test_categorical_saturated_design_matches_class_shares_and_binomial_standard_errors():
    rng = np.random.default_rng(0)
    counts = [150, 220, 180]
    shares = [[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.25, 0.25, 0.5]]
    x = np.repeat(LEVELS, counts)[:, None]
    y = np.concatenate([rng.choice(3, size=n, p=p) for n, p in zip(counts, shares, strict=True)])
    xt, yt = torch.tensor(x), torch.tensor(y[:, None], dtype=torch.float64)
    torch.manual_seed(1)
    module = MDNModule(
        in_dim=1,
        event_shape=[1],
        family="categorical",
        n_components=1,
        hidden_sizes=[3],
        n_classes=[3],
    )
    fit_to_the_mle(module, xt, yt)
    result = run_inference(module, xt, yt, LEVELS[:, None])
    assert result.metrics["inference/n_null_eigs"] > 0  # 14 weights, 6 identified
    table = by_point(result.predictions)
    for point, level in enumerate(LEVELS):
        group = y[x[:, 0] == level]
        for c in range(3):
            p_hat = np.mean(group == c)
            se = np.sqrt(p_hat * (1 - p_hat) / group.size)
            estimate, se_h, se_s = table[(point, f"prob[0,{c}]")]
            assert estimate == pytest.approx(p_hat, abs=1e-7)
            assert se_h == pytest.approx(se, rel=1e-4)
            assert se_s == pytest.approx(se, rel=1e-4)


def wishart_mle(sample: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-level Wishart MLE with scipy: S = mean / df, df maximising the profile likelihood."""
    p = sample.shape[1]
    mean = sample.mean(axis=0)

    def neg_profile(log_excess):
        df = p - 1 + np.exp(log_excess)
        return -np.sum(stats.wishart.logpdf(np.moveaxis(sample, 0, -1), df=df, scale=mean / df))

    best = optimize.minimize_scalar(
        neg_profile, bounds=(-5, 8), method="bounded", options={"xatol": 1e-10}
    )
    df = p - 1 + np.exp(best.x)
    return df, mean / df


def test_wishart_saturated_design_matches_sample_means_and_exponential_family_errors():
    rng = np.random.default_rng(3)
    counts = [200, 260, 230]
    dfs = [6.0, 9.0, 4.5]
    scales = [
        np.array([[1.0, 0.3], [0.3, 0.5]]),
        np.array([[0.4, -0.1], [-0.1, 0.8]]),
        np.array([[2.0, 0.9], [0.9, 1.0]]),
    ]
    x = np.repeat(LEVELS, counts)[:, None]
    y = np.concatenate(
        [
            stats.wishart.rvs(df=df, scale=s, size=n, random_state=rng)
            for n, df, s in zip(counts, dfs, scales, strict=True)
        ]
    )
    xt, yt = torch.tensor(x), torch.tensor(y)
    torch.manual_seed(2)
    module = MDNModule(
        in_dim=1, event_shape=[2, 2], family="wishart", n_components=1, hidden_sizes=[3]
    )
    fit_to_the_mle(module, xt, yt)
    result = run_inference(module, xt, yt, LEVELS[:, None])
    assert result.metrics["inference/n_null_eigs"] > 0
    table = by_point(result.predictions)
    for point, level in enumerate(LEVELS):
        group = y[x[:, 0] == level]
        n_l = group.shape[0]
        df, s = wishart_mle(group)
        for i in range(2):
            for j in range(i + 1):
                estimate, se_h, se_s = table[(point, f"mean[{i},{j}]")]
                assert estimate == pytest.approx(group[:, i, j].mean(), rel=1e-7)
                model_var = df * (s[i, j] ** 2 + s[i, i] * s[j, j])
                assert se_h == pytest.approx(np.sqrt(model_var / n_l), rel=1e-4)
                assert se_s == pytest.approx(np.sqrt(group[:, i, j].var() / n_l), rel=1e-4)
