"""Inference core against independent references: finite differences and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import saturated_gaussian_fit, textbook_standard_errors

from mdnlab.inference.covariance import Curvature
from mdnlab.inference.curvature import hessian_mean_nll, per_sample_scores, score_outer_product
from mdnlab.inference.delta import quantity_jacobian
from mdnlab.inference.functional import FlatModel
from mdnlab.module import MDNModule
from mdnlab.polish import polish

torch.set_num_threads(1)


def small_model(seed=0, q=2, hidden=(3,), k=2):
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=1, event_shape=[q], n_components=k, hidden_sizes=list(hidden), identifiability="none"
    )
    x = torch.randn(40, 1, dtype=torch.float64)
    y = torch.randn(40, q, dtype=torch.float64) * 2 + 1
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    return module, x, y


def mean_nll(flat, theta, x, y):
    return float(-flat.log_prob(theta, x, y).mean())


@pytest.mark.parametrize("params", ["all", "head"])
def test_hessian_matches_finite_differences_of_the_loss(params):
    module, x, y = small_model()
    flat = FlatModel(module, params)
    a = hessian_mean_nll(flat, x, y, chunk=13).numpy()
    theta, h = flat.theta.clone(), 1e-4
    p = theta.numel()
    fd = np.zeros((p, p))
    eye = torch.eye(p, dtype=torch.float64) * h
    f0 = mean_nll(flat, theta, x, y)
    for i in range(p):
        for j in range(i, p):
            fpp = mean_nll(flat, theta + eye[i] + eye[j], x, y)
            fpm = mean_nll(flat, theta + eye[i] - eye[j], x, y)
            fmp = mean_nll(flat, theta - eye[i] + eye[j], x, y)
            fmm = mean_nll(flat, theta - eye[i] - eye[j], x, y)
            fd[i, j] = fd[j, i] = (fpp - fpm - fmp + fmm) / (4 * h * h)
    assert f0 == pytest.approx(float(module.nll(x, y).detach()), rel=1e-14)
    np.testing.assert_allclose(a, fd, atol=2e-5 * max(1.0, np.abs(fd).max()))


def test_scores_match_per_sample_finite_differences_and_b_is_their_mean_outer_product():
    module, x, y = small_model(seed=1)
    flat = FlatModel(module)
    scores = per_sample_scores(flat, x, y).numpy()
    theta, h = flat.theta.clone(), 1e-6
    fd = np.zeros_like(scores)
    for j in range(theta.numel()):
        step = torch.zeros_like(theta)
        step[j] = h
        fd[:, j] = (
            ((flat.log_prob(theta + step, x, y) - flat.log_prob(theta - step, x, y)) / (2 * h))
            .detach()
            .numpy()
        )
    np.testing.assert_allclose(scores, fd, rtol=1e-6, atol=1e-7)
    b = score_outer_product(flat, x, y, chunk=7).numpy()
    np.testing.assert_allclose(b, fd.T @ fd / len(x), rtol=1e-6, atol=1e-8)


def test_quantity_gradients_match_finite_differences():
    module, x, _ = small_model(seed=2)
    flat = FlatModel(module)
    names, values, jac = quantity_jacobian(flat, x[:5])
    assert names == ["mean[0]", "mean[1]", "cov[0,0]", "cov[1,0]", "cov[1,1]"]
    with torch.no_grad():
        direct = module.quantities(x[:5])
    np.testing.assert_allclose(
        values.numpy(), torch.stack([direct[n] for n in names], 1).numpy(), rtol=1e-12
    )
    theta, h = flat.theta.clone(), 1e-6
    for j in range(0, theta.numel(), 5):
        step = torch.zeros_like(theta)
        step[j] = h
        up = torch.stack([flat.quantities(theta + step, x[:5])[n] for n in names], 1).reshape(-1)
        down = torch.stack([flat.quantities(theta - step, x[:5])[n] for n in names], 1).reshape(-1)
        np.testing.assert_allclose(
            jac[:, j].numpy(), ((up - down) / (2 * h)).detach().numpy(), rtol=1e-5, atol=1e-7
        )


def test_saturated_design_gives_the_closed_form_standard_errors():
    """x with 3 levels, K = 1, one tanh hidden layer big enough to fit each level: at the MLE the
    predicted mean and variance at a level are its sample mean and (1/n) variance, and the
    delta-method SEs are the textbook ones, though A is singular (14 weights, 6 identified)."""
    levels, x, y, module = saturated_gaussian_fit()
    xt, yt = torch.tensor(x), torch.tensor(y)
    flat = FlatModel(module)
    a = hessian_mean_nll(flat, xt, yt).numpy()
    b = score_outer_product(flat, xt, yt).numpy()
    curvature = Curvature.from_matrices(a, b, n=len(x))
    assert curvature.spectrum.n_null > 0  # singular: more weights than identified quantities
    names, values, jac = quantity_jacobian(flat, torch.tensor(levels[:, None]))
    se_h, se_s = curvature.standard_errors(jac.numpy())
    se_h, se_s = se_h.reshape(3, 2), se_s.reshape(3, 2)
    assert names == ["mean[0]", "cov[0,0]"]
    for i, level in enumerate(levels):
        group = y[x[:, 0] == level, 0]
        np.testing.assert_allclose(values[i].numpy(), [group.mean(), group.var()], rtol=1e-7)
        want_h, want_s = textbook_standard_errors(group)
        np.testing.assert_allclose(se_h[i], want_h, rtol=1e-4)
        np.testing.assert_allclose(se_s[i], want_s, rtol=1e-4)


def fitted_standard_errors(module, x, y, x_points):
    params = list(module.parameters())
    result = polish(lambda: module.nll(x, y), params, tol=1e-7, max_iter=3000)
    assert result.grad_max < 1e-5
    flat = FlatModel(module)
    curvature = Curvature.from_matrices(
        hessian_mean_nll(flat, x, y).numpy(), score_outer_product(flat, x, y).numpy(), n=len(x)
    )
    names, _, jac = quantity_jacobian(flat, x_points)
    se_h, se_s = curvature.standard_errors(jac.numpy())
    return names, se_h.reshape(len(x_points), -1), se_s.reshape(len(x_points), -1)


def test_sandwich_equals_inverse_hessian_under_correct_specification():
    """Data drawn from an MDN of the fitted architecture (K = 2, one hidden layer), n = 20,000."""
    torch.manual_seed(11)
    truth = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[3])
    x = torch.rand(20_000, 1, dtype=torch.float64) * 4 - 2
    with torch.no_grad():
        y = truth.mixture(x).sample()  # scalers are the identity here
    module = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[3])
    module.load_state_dict(truth.state_dict())
    names, se_h, se_s = fitted_standard_errors(
        module, x, y, torch.linspace(-1.5, 1.5, 7)[:, None].double()
    )
    ratio = se_s[:, names.index("mean[0]")] / se_h[:, names.index("mean[0]")]
    np.testing.assert_allclose(ratio, 1.0, atol=0.10)


def test_sandwich_differs_from_inverse_hessian_under_heavy_tails():
    """Skewed, heavy-tailed noise, one Gaussian component, linear heads (a finite MLE): the
    sandwich and inverse-Hessian SEs of the variance differ (excess kurtosis)."""
    from mdnlab.data.simulators import SIMULATORS

    x_np, y_np = SIMULATORS["synth_heavytail"].sample(20_000, np.random.default_rng(5))
    x, y = torch.tensor(x_np), torch.tensor(y_np)
    torch.manual_seed(0)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=1, hidden_sizes=[])
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    names, se_h, se_s = fitted_standard_errors(
        module, x, y, torch.linspace(-0.8, 0.8, 5)[:, None].double()
    )
    ratio = se_s[:, names.index("cov[0,0]")] / se_h[:, names.index("cov[0,0]")]
    assert np.mean(np.abs(ratio - 1)) > 0.10, ratio  # versus every point within 10% above


def test_a_variance_below_zero_by_round_off_gives_se_0_and_beyond_it_nan():
    from mdnlab.inference.delta import standard_errors_of

    variance = np.array([4.0, 1e-2, -1e-17, 0.0, -0.3])
    got = standard_errors_of(variance)
    np.testing.assert_array_equal(got[:4], [2.0, 0.1, 0.0, 0.0])
    assert np.isnan(got[4])  # -0.3 of a largest 4.0: not round-off, no SE exists
    assert np.isnan(standard_errors_of(np.array([-1e-20]))[0])  # all of the batch negative
