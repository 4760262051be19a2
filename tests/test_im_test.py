"""White's information-matrix test (``diagnostics.im_test``) against an independent numpy
computation on the K = 1 linear Gaussian model, its size and power on simulated data,
degenerate indicators, and the other families.

The numpy reference derives the scores, Hessians and third derivatives of
log N(y_s; mu, sigma), mu = out_0, sigma = softplus(out_1) + min_scale, by hand in the
standardised units the module sees (out = W x_s + b), and never calls the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2, wishart

from mdnlab.diagnostics.im_test import IMTest, im_test
from mdnlab.estimation.objective import objective
from mdnlab.module import MDNModule
from mdnlab.polish import lbfgs_polish

torch.set_num_threads(1)

MIN_SCALE = 1e-3  # the Gaussian family's default floor


def fitted(x, y, penalty=0.0, seed=0, tol=1e-9, **options) -> MDNModule:
    defaults = dict(event_shape=[1], family="gaussian", n_components=1, hidden_sizes=[])
    torch.manual_seed(seed)
    module = MDNModule(in_dim=x.shape[1], **(defaults | options))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    module.x_scaler.fit(xt)
    module.y_scaler.fit(yt)
    result = lbfgs_polish(
        lambda: objective(module, xt, yt, penalty), list(module.parameters()), tol, 3000
    )
    assert result.grad_max < max(tol, 1e-8) * 10
    return module


def run(module, x, y, **kwargs) -> IMTest:
    return im_test(module, torch.as_tensor(x), torch.as_tensor(y), **kwargs)


def heteroscedastic(n, in_dim, seed):
    """A softplus scale in original units: near, not in, the model (whose softplus acts in
    standardised units), so for comparisons, not for size."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, in_dim))
    scale = np.log1p(np.exp(0.2 + 0.6 * x[:, 0]))
    y = 1.0 + x @ np.linspace(2.0, -1.0, in_dim) + scale * rng.standard_normal(n)
    return x, y[:, None]


# --- the numpy reference ---------------------------------------------------------------------
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def out_derivatives(out, ys):
    """First, second and third derivatives of log N(ys; mu, sigma) in out = (mu, r):
    g (n, 2), h (n, 2, 2), t (n, 2, 2, 2)."""
    mu, r = out[:, 0], out[:, 1]
    sigma = np.log1p(np.exp(r)) + MIN_SCALE
    s1 = sigmoid(r)  # dsigma/dr
    s2 = s1 * (1 - s1)
    s3 = s2 * (1 - 2 * s1)
    e = ys - mu
    f_m, f_s = e / sigma**2, -1 / sigma + e**2 / sigma**3
    f_mm, f_ms, f_ss = -1 / sigma**2, -2 * e / sigma**3, 1 / sigma**2 - 3 * e**2 / sigma**4
    f_mms, f_mss = 2 / sigma**3, 6 * e / sigma**4
    f_sss = -2 / sigma**3 + 12 * e**2 / sigma**5
    n = out.shape[0]
    g = np.stack([f_m, f_s * s1], axis=1)
    h = np.empty((n, 2, 2))
    h[:, 0, 0] = f_mm
    h[:, 0, 1] = h[:, 1, 0] = f_ms * s1
    h[:, 1, 1] = f_ss * s1**2 + f_s * s2
    t = np.empty((n, 2, 2, 2))
    t[:, 0, 0, 0] = 0.0
    t[:, 0, 0, 1] = t[:, 0, 1, 0] = t[:, 1, 0, 0] = f_mms * s1
    t[:, 0, 1, 1] = t[:, 1, 0, 1] = t[:, 1, 1, 0] = f_mss * s1**2 + f_ms * s2
    t[:, 1, 1, 1] = f_sss * s1**3 + 3 * f_ss * s1 * s2 + f_s * s3
    return g, h, t


def numpy_white(module, x, y, penalty, subset, debias=False, rtol=1e-10):
    """(statistic, df, p-value) from closed forms; theta = (W row-major, b) as in FlatModel.

    ``debias``: the mean of v_i with uncentred scores, dbar + G A_lambda^-1 sbar, for dbar."""
    weight = module.net[0].weight.detach().numpy()
    bias = module.net[0].bias.detach().numpy()
    xs = (x - module.x_scaler.loc.numpy()) / module.x_scaler.scale.numpy()
    ys = ((y - module.y_scaler.loc.numpy()) / module.y_scaler.scale.numpy())[:, 0]
    g, h, t = out_derivatives(xs @ weight.T + bias, ys)
    n, d = xs.shape
    p = 2 * d + 2
    jac = np.zeros((n, 2, p))  # d out / d theta, constant in theta (a linear head)
    for a in range(2):
        jac[:, a, a * d : (a + 1) * d] = xs
        jac[:, a, 2 * d + a] = 1.0
    s = np.einsum("na,nap->np", g, jac)
    hess = np.einsum("nab,nap,nbq->npq", h, jac, jac)
    third = np.einsum("nabc,nap,nbq,ncr->npqr", t, jac, jac, jac)
    chosen = np.arange(2 * d, p) if subset == "output_bias" else np.arange(p)
    first, second = np.triu_indices(chosen.size)
    a_idx, c_idx = chosen[first], chosen[second]
    indicators = s[:, a_idx] * s[:, c_idx] + hess[:, a_idx, c_idx]
    gradient = np.mean(
        hess[:, a_idx, :] * s[:, c_idx, None]
        + s[:, a_idx, None] * hess[:, c_idx, :]
        + third[:, a_idx, c_idx, :],
        axis=0,
    )
    curvature = -hess.mean(axis=0) + penalty / n * np.eye(p)
    u = np.linalg.solve(curvature, s.T).T
    v = indicators + u @ gradient.T
    target = v.mean(axis=0) if debias else indicators.mean(axis=0)
    v -= v.mean(axis=0)
    values, vectors = np.linalg.eigh(v.T @ v / n)
    kept = values > rtol * values.max()
    projected = vectors[:, kept].T @ target
    statistic = n * np.sum(projected**2 / values[kept])
    df = int(kept.sum())
    return statistic, df, chi2.sf(statistic, df)


@pytest.mark.parametrize(
    ("in_dim", "penalty", "subset", "debias"),
    [(1, 0.0, "output_bias", False), (2, 0.0, "output_bias", False), (1, 0.0, "all", False)]
    + [(2, 0.0, "all", False), (1, 4.0, "output_bias", False), (2, 4.0, "all", False)]
    + [(1, 4.0, "output_bias", True), (2, 4.0, "all", True)],
)
def test_matches_numpy_on_the_linear_gaussian(in_dim, penalty, subset, debias):
    x, y = heteroscedastic(400, in_dim, seed=in_dim)
    module = fitted(x, y, penalty)
    got = run(module, x, y, penalty=penalty, subset=subset, debias=debias)
    statistic, df, pvalue = numpy_white(module, x, y, penalty, subset, debias)
    q = 3 if subset == "output_bias" else (2 * in_dim + 2) * (2 * in_dim + 3) // 2
    assert len(got.subset_names) == q and got.n == 400
    # All weights: out = W x_s + b makes the (mu, r) indicators x~_j x~_k d_mu,r (x~ = (x_s, 1))
    # tie in pairs, (j, k) and (k, j): d(d+1)/2 ties for d inputs.
    assert got.df == df == q - (in_dim * (in_dim + 1) // 2 if subset == "all" else 0)
    np.testing.assert_allclose(got.statistic, statistic, rtol=1e-6)
    np.testing.assert_allclose(got.pvalue, pvalue, rtol=1e-6)
    if subset == "output_bias":
        assert got.subset_names == ["b[0]*b[0]", "b[0]*b[1]", "b[1]*b[1]"]


def test_size_and_power_on_simulated_data():
    """Well specified (Gaussian noise): no rejection; Student-t(2.5) noise: rejection.

    Over 60 well-specified seeds 5% of p-values fell below 0.05; over 40 heavy-tailed seeds
    95% fell below 0.01 (median 1e-5; this seed gives 2e-5)."""
    rng = np.random.default_rng(12)
    x = rng.uniform(-2, 2, size=(2000, 1))
    good = 1 + 2 * x + 0.5 * rng.standard_normal((2000, 1))
    heavy = 1 + 2 * x + 0.5 * rng.standard_t(2.5, size=(2000, 1))
    assert run(fitted(x, good), x, good).pvalue > 0.001
    assert run(fitted(x, heavy), x, heavy).pvalue < 0.01


def test_debiasing_removes_the_penalty_bias():
    """Well specified, lambda = 3, n = 4000: dbar's O(lambda/n) bias meets a near-degenerate
    direction of V (the mean-mean indicator is nearly the scale score, exactly so in the
    population for this homoscedastic truth) and rejects as specified (100% of 40 seeds below
    0.01); debiased, 2.5% of them. At lambda = 0 the two coincide (sbar = 0 at the MLE)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, size=(4000, 1))
    y = 1 + 2 * x + 0.5 * rng.standard_normal((4000, 1))
    module = fitted(x, y, penalty=3.0)
    assert run(module, x, y, penalty=3.0).pvalue < 1e-6
    assert run(module, x, y, penalty=3.0, debias=True).pvalue > 0.01
    mle = fitted(x, y)  # max|grad| ~1e-8: sbar is not exactly 0, and V's weak direction
    np.testing.assert_allclose(  # amplifies it to 2e-4 relative
        run(mle, x, y, debias=True).statistic, run(mle, x, y).statistic, rtol=1e-3
    )


def test_the_scale_penalty_is_debiased_and_left_out_of_the_indicators():
    """Well specified, lambda = 3 and scale penalty c = 1, n = 2000: the indicators and scores
    are the log-likelihood's, A is the penalized objective's, and the debiasing removes both
    penalties' first-order bias. Over 80 seeds 10% of p-values fell below 0.05 (c = 0: 6%;
    c = 3: 38%, docs/estimation.md); with the penalty's per-row terms inside the indicators,
    as before, 40 of 40 seeds were rejected at 5% (median p-value 1e-47)."""
    from mdnlab.estimation.objective import objective as penalized

    rejected = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x = rng.uniform(-2, 2, size=(2000, 1))
        y = 1 + 2 * x + 0.5 * rng.standard_normal((2000, 1))
        torch.manual_seed(0)
        module = MDNModule(1, [1], family="gaussian", n_components=1, hidden_sizes=[])
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        module.x_scaler.fit(xt)
        module.y_scaler.fit(yt)
        lbfgs_polish(
            lambda m=module, a=xt, b=yt: penalized(m, a, b, 3.0, 1.0),
            list(module.parameters()),
            1e-10,
            3000,
        )
        module.scale_weight = 1.0 / 2000
        rejected += run(module, x, y, penalty=3.0, debias=True).pvalue < 0.05
    assert rejected <= 4


def test_duplicated_input_drops_df_and_keeps_the_statistic():
    """x2 = x1: the weights on the two copies have identical scores, so the 21 indicators of
    all 6 weights span only those of the 4-weight model (less its one tie): df 9, the same
    statistic (A is singular along w[j,0] - w[j,1]: the pseudo-inverse)."""
    x, y = heteroscedastic(400, 1, seed=5)
    single = run(fitted(x, y), x, y, subset="all")
    twice = np.hstack([x, x])
    duplicated = run(fitted(twice, y), twice, y, subset="all")
    assert single.df == 9 and len(duplicated.subset_names) == 21 and duplicated.df == 9
    np.testing.assert_allclose(duplicated.statistic, single.statistic, rtol=1e-6)


def test_head_route_matches_the_per_row_route_and_cross_component_indicators_vanish():
    """The output-bias shortcut (derivatives in the head outputs) and torch.func on the named
    bias agree, on a K = 2 MLP away from any optimum (the formula holds at any theta).

    Raw outputs (logit, mu_0, r_0, mu_1, r_1): s_a s_b + H_ab = (d^2 f / d a d b) / f, and the
    density f is a sum over components, so the 4 pairs across components are identically 0:
    df 15 - 4."""
    x, y = heteroscedastic(150, 1, seed=8)
    torch.manual_seed(1)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[3])
    module.x_scaler.fit(torch.as_tensor(x))
    module.y_scaler.fit(torch.as_tensor(y))
    fast = run(module, x, y, chunk=64)
    named = run(module, x, y, subset=["net.2.bias"], chunk=64)
    assert len(fast.subset_names) == len(named.subset_names) == 5 * 6 // 2
    assert fast.df == named.df == 15 - 4
    np.testing.assert_allclose(fast.statistic, named.statistic, rtol=1e-8)
    np.testing.assert_allclose(fast.pvalue, named.pvalue, rtol=1e-8, atol=1e-300)


def test_categorical_and_wishart_families_run():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(300, 1))
    logits = np.column_stack([2 * x[:, 0], -x[:, 0], np.zeros(300)])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    codes = np.array([rng.choice(3, p=p) for p in probs], dtype=np.float64)[:, None]
    module = fitted(
        x, codes, family="categorical", n_classes=[3], hidden_sizes=[4], tol=1e-6, penalty=1.0
    )
    check(run(module, x, codes, penalty=1.0), q=3)

    df = 5.0 + x[:, 0]
    mats = np.stack(
        [
            wishart.rvs(d, np.array([[1.0, 0.3 * t], [0.3 * t, 0.5]]) / d, random_state=rng)
            for d, t in zip(df, x[:, 0], strict=True)
        ]
    )
    module = fitted(x, mats, event_shape=[2, 2], family="wishart", tol=1e-6)
    check(run(module, x, mats), q=10)


def check(result: IMTest, q: int) -> None:
    assert len(result.subset_names) == q
    assert np.isfinite(result.statistic) and result.statistic >= 0
    assert 1 <= result.df <= q
    assert 0.0 <= result.pvalue <= 1.0
