"""Inference for the penalized (ridge) estimator against independent references.

The objective is J(theta) = mean NLL + lambda/(2n)|theta|^2 over every weight of the network.
The reference is a separate implementation of the same MDN (K = 2, one tanh hidden layer of 3,
1-d x and y, Gaussian components) in plain numpy, with its own analytic gradient, minimised by
scipy; Hessians and scores come from central finite differences of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import saturated_gaussian_fit
from scipy.special import expit, logsumexp

from mdnlab.inference.cholesky import CholeskyCurvature
from mdnlab.inference.covariance import Curvature
from mdnlab.inference.curvature import hessian_mean_nll, score_outer_product
from mdnlab.inference.delta import quantity_jacobian
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.matrix_free import HessianOperator
from mdnlab.inference.scores import ScoreDirections, ScoreMatrix
from mdnlab.inference.step import run_inference, run_inference_matrix_free
from mdnlab.module import MDNModule
from mdnlab.polish import polish

torch.set_num_threads(1)

MIN_SCALE = 1e-3  # GaussianFamily's default floor on the component scales
POINTS = np.array([[-0.8], [-0.2], [0.3], [0.9]])


class NumpyMDN:
    """log q(y|x) of the K = 2, hidden [3] Gaussian MDN, written out: x and y standardised by
    their mean and population std, h = tanh(W1 u + b1), o = W2 h + b2 with o = [free gating
    logit (the second fixed at 0), mu_1, raw_1, mu_2, raw_2], scale = softplus(raw) +
    MIN_SCALE, log-Jacobian -log(std_y). theta in FlatModel's order: W1, b1, W2, b2."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.mx, self.sx, self.my, self.sy = x.mean(), x.std(), y.mean(), y.std()
        self.u, self.v, self.n = (x - self.mx) / self.sx, (y - self.my) / self.sy, len(x)

    @staticmethod
    def layers(theta, u):
        w1, b1, w2, b2 = theta[0:3], theta[3:6], theta[6:21].reshape(5, 3), theta[21:26]
        h = np.tanh(u[:, None] * w1 + b1)
        return w2, h, h @ w2.T + b2

    @staticmethod
    def components(o):
        logits = np.stack([o[:, 0], np.zeros(len(o))], axis=1)
        log_pi = logits - logsumexp(logits, axis=1, keepdims=True)
        mu, raw = o[:, [1, 3]], o[:, [2, 4]]
        return log_pi, mu, raw, np.logaddexp(0.0, raw) + MIN_SCALE

    def log_q(self, theta):
        """(n,): log q(y_i | x_i) in the original units."""
        _, _, o = self.layers(theta, self.u)
        log_pi, mu, _, s = self.components(o)
        z = (self.v[:, None] - mu) / s
        log_n = -0.5 * z**2 - np.log(s) - 0.5 * np.log(2 * np.pi)
        return logsumexp(log_pi + log_n, axis=1) - np.log(self.sy)

    def objective(self, theta, penalty):
        return -self.log_q(theta).mean() + penalty / (2 * self.n) * theta @ theta

    def gradient(self, theta, penalty):
        """dJ/dtheta by hand: backpropagation through the mixture and the network."""
        w2, h, o = self.layers(theta, self.u)
        log_pi, mu, raw, s = self.components(o)
        z = (self.v[:, None] - mu) / s
        joint = log_pi - 0.5 * z**2 - np.log(s)
        r = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))  # responsibilities
        d_o = np.zeros_like(o)  # d log q_i / d o_i
        d_o[:, 0] = r[:, 0] - np.exp(log_pi[:, 0])
        d_o[:, [1, 3]] = r * z / s
        d_o[:, [2, 4]] = r * (z**2 - 1) / s * expit(raw)
        d_z1 = (d_o @ w2) * (1 - h**2)
        score_sum = np.concatenate([d_z1.T @ self.u, d_z1.sum(0), (d_o.T @ h).ravel(), d_o.sum(0)])
        return -score_sum / self.n + penalty / self.n * theta

    def quantities(self, theta, x):
        """(points, 2): the mixture's mean and variance at x, original units."""
        _, _, o = self.layers(theta, (x[:, 0] - self.mx) / self.sx)
        log_pi, mu, _, s = self.components(o)
        pi = np.exp(log_pi)
        mean = np.sum(pi * mu, axis=1)
        var = np.sum(pi * (s**2 + mu**2), axis=1) - mean**2
        return np.stack([self.my + self.sy * mean, self.sy**2 * var], axis=1)


def central_jacobian(fn, theta, h):
    """d fn / d theta by central differences: (P,) for a scalar fn, else (fn's size, P)."""
    columns = [(fn(theta + h * e) - fn(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    jacobian = np.stack([np.ravel(c) for c in columns], axis=-1)
    return jacobian[0] if np.ndim(columns[0]) == 0 else jacobian


def bimodal_data(n, seed):
    """y = +-(1 + x) + 0.3 noise: two branches, so K = 2 fits and K = 1 cannot."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    y = rng.choice([-1.0, 1.0], n) * (1 + x) + 0.3 * rng.standard_normal(n)
    return x, y


def small_mdn(x, y, seed=0):
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[3], identifiability="none"
    )
    xt, yt = torch.tensor(x[:, None]), torch.tensor(y[:, None])
    module.x_scaler.fit(xt)
    module.y_scaler.fit(yt)
    return module, xt, yt


def penalized_loss(module, x, y, penalty):
    params = list(module.net.parameters())
    return lambda: module.nll(x, y) + penalty / (2 * x.shape[0]) * sum((p**2).sum() for p in params)


@pytest.fixture(scope="module")
def fitted():
    """lambda = 1, 300 rows: mdnlab's polish (L-BFGS, then Newton) of J to max|grad| 1e-10,
    and scipy's BFGS on the numpy objective from the same initial weights (gtol 1e-10)."""
    penalty = 1.0
    x, y = bimodal_data(300, seed=0)
    module, xt, yt = small_mdn(x, y)
    reference = NumpyMDN(x, y)
    start = FlatModel(module).theta.numpy().copy()
    result = polish(penalized_loss(module, xt, yt, penalty), list(module.net.parameters()), 1e-10)
    assert result.converged
    scipy_fit = scipy.optimize.minimize(
        reference.objective,
        start,
        args=(penalty,),
        jac=reference.gradient,
        method="BFGS",
        options={"gtol": 1e-10, "maxiter": 10_000},
    )
    assert np.abs(reference.gradient(scipy_fit.x, penalty)).max() < 1e-9
    return module, xt, yt, reference, scipy_fit.x, penalty


def reference_standard_errors(reference, theta, penalty, gradients, free=slice(None)):
    """Inverse-Hessian and sandwich SEs of quantities with ``gradients`` (m x the ``free``
    weights; the others held fixed): H by central differences of the analytic gradient of J,
    B the centred covariance of per-row finite-difference scores."""
    n = reference.n
    hessian = central_jacobian(lambda t: reference.gradient(t, penalty), theta, 1e-5)
    hessian = ((hessian + hessian.T) / 2)[free, free]
    scores = central_jacobian(reference.log_q, theta, 1e-5)[:, free]  # n x P
    centred = scores - scores.mean(axis=0)
    b = centred.T @ centred / n
    u = np.linalg.solve(hessian, gradients.T)
    se_h = np.sqrt(np.sum(gradients.T * u, axis=0) / n)
    se_s = np.sqrt(np.sum(u * (b @ u), axis=0) / n)
    return se_h, se_s, hessian, b


def test_penalized_gradient_and_hessian_match_finite_differences():
    """lambda = 2 at unfitted weights (60 rows): the gradient of J that grad_norm reports, the
    Hessian-vector products of J, and the matrix each dense route decomposes."""
    penalty = 2.0
    x, y = bimodal_data(60, seed=4)
    module, xt, yt = small_mdn(x, y, seed=4)
    reference = NumpyMDN(x, y)
    flat = FlatModel(module)
    theta = flat.theta.numpy().copy()
    n, shift = len(x), penalty / len(x)
    np.testing.assert_allclose(
        reference.log_q(theta), module.log_prob(xt, yt).detach().numpy(), rtol=1e-13
    )
    fd_gradient = central_jacobian(lambda t: reference.objective(t, penalty), theta, 1e-6)
    np.testing.assert_allclose(reference.gradient(theta, penalty), fd_gradient, atol=1e-8)
    fd_hessian = central_jacobian(lambda t: reference.gradient(t, penalty), theta, 1e-5)
    fd_nll_gradient = fd_gradient - shift * theta

    operator = HessianOperator(flat, xt, yt, chunk=17, shift=shift)
    np.testing.assert_allclose(operator.gradient + shift * theta, fd_gradient, atol=1e-8)
    np.testing.assert_allclose(operator.matmat(np.eye(flat.n_params)), fd_hessian, atol=1e-7)

    a = hessian_mean_nll(flat, xt, yt).numpy()
    b = score_outer_product(flat, xt, yt).numpy()
    eigen = Curvature.from_matrices(a, b, n, eig_rtol=1e-8, shift=shift)
    fd_values = np.linalg.eigvalsh((fd_hessian + fd_hessian.T) / 2)
    np.testing.assert_allclose(eigen.spectrum.eigenvalues, fd_values, atol=1e-7)

    result = run_inference(module, xt, yt, POINTS, penalty=penalty)
    m = result.metrics
    assert m["inference/grad_norm"] == pytest.approx(np.abs(fd_gradient).max(), rel=1e-6)
    assert m["inference/nll_grad_norm"] == pytest.approx(np.abs(fd_nll_gradient).max(), rel=1e-6)
    np.testing.assert_allclose(result.eigenvalues, fd_values - shift, atol=1e-7)  # A's, not H's
    free = run_inference_matrix_free(module, xt, yt, POINTS, penalty=penalty, lanczos_steps=0)
    assert free.metrics["inference/grad_norm"] == pytest.approx(m["inference/grad_norm"], rel=1e-12)


def test_penalized_fit_and_standard_errors_match_a_numpy_scipy_reference(fitted):
    module, xt, yt, reference, theta_ref, penalty = fitted
    flat = FlatModel(module)
    theta = flat.theta.numpy()
    n = reference.n
    np.testing.assert_allclose(theta, theta_ref, atol=1e-7)

    result = run_inference(module, xt, yt, POINTS, penalty=penalty)
    m = result.metrics
    assert m["inference/cholesky"] == 1.0 and m["inference/weight_ses"] == 1.0
    assert m["inference/grad_norm"] < 1e-9
    # At the penalized optimum the mean-NLL gradient is -lambda theta / n, not 0.
    assert m["inference/nll_grad_norm"] == pytest.approx(penalty / n * np.abs(theta).max(), 1e-6)

    estimates = reference.quantities(theta_ref, POINTS)
    q_gradients = central_jacobian(lambda t: reference.quantities(t, POINTS), theta_ref, 1e-5)
    se_h, se_s, hessian, _ = reference_standard_errors(reference, theta_ref, penalty, q_gradients)
    frame = result.predictions
    assert list(frame.quantity[:2]) == ["mean[0]", "cov[0,0]"]
    np.testing.assert_allclose(frame.estimate, estimates.ravel(), rtol=1e-7)
    np.testing.assert_allclose(frame.se_hessian, se_h, rtol=1e-6)
    np.testing.assert_allclose(frame.se_sandwich, se_s, rtol=1e-6)  # uncentred B: 2e-4 off
    assert np.abs(frame.se_sandwich / frame.se_hessian - 1).max() > 1e-3  # distinct estimators

    weights_h, weights_s, _, _ = reference_standard_errors(
        reference, theta_ref, penalty, np.eye(theta.size)
    )
    parameters = result.parameters
    assert parameters.identified.all()
    np.testing.assert_allclose(parameters.se_hessian, weights_h, rtol=1e-6)
    np.testing.assert_allclose(parameters.se_sandwich, weights_s, rtol=1e-6)

    a = hessian_mean_nll(flat, xt, yt).numpy()
    factor = CholeskyCurvature.factor(a, penalty / n, ScoreDirections(flat, xt, yt), n)
    lower = np.tril(factor.lower)
    np.testing.assert_allclose(lower @ lower.T, hessian, atol=1e-7)


def test_head_parameters_take_the_penalty_on_their_own_entries(fitted):
    """inference.params=head: theta is the output layer (W2, b2: entries 6-25), the curvature
    A_head + lambda/n I, the penalty on those entries only."""
    module, xt, yt, reference, theta_ref, penalty = fitted
    head = slice(6, 26)
    result = run_inference(module, xt, yt, POINTS, params="head", penalty=penalty)
    assert (
        result.metrics["inference/cholesky"] == 1.0 and result.metrics["inference/n_params"] == 20
    )
    assert result.metrics["inference/grad_norm"] < 1e-9
    q_gradients = central_jacobian(lambda t: reference.quantities(t, POINTS), theta_ref, 1e-5)
    se_h, se_s, _, _ = reference_standard_errors(
        reference, theta_ref, penalty, q_gradients[:, head], free=head
    )
    np.testing.assert_allclose(result.predictions.se_hessian, se_h, rtol=1e-6)
    np.testing.assert_allclose(result.predictions.se_sandwich, se_s, rtol=1e-6)


def mean_score(flat, xt, yt):
    """sbar, the mean per-row score: minus the mean-NLL gradient."""
    theta = flat.theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(flat.log_prob(theta, xt, yt).mean(), theta)
    return gradient.numpy()


def test_cholesky_route_equals_the_eigen_route_and_the_fast_route_the_one_forming_b(fitted):
    module, xt, yt, _, _, penalty = fitted
    flat = FlatModel(module)
    n, shift = xt.shape[0], penalty / xt.shape[0]
    a = hessian_mean_nll(flat, xt, yt).numpy()
    matrix = ScoreMatrix.build(flat, xt, yt, mean_score(flat, xt, yt))
    cholesky = CholeskyCurvature.factor(a, shift, matrix, n)
    eigen = Curvature.from_matrices(a, matrix.matrix, n, eig_rtol=1e-8, shift=shift)
    assert eigen.spectrum.retained.all()  # positive definite: the eigen-route keeps everything
    _, _, jac = quantity_jacobian(flat, torch.linspace(-1, 1, 30, dtype=torch.float64)[:, None])
    gradients = jac.numpy()
    for got, want in zip(
        cholesky.standard_errors(gradients), eigen.standard_errors(gradients), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10)
    for got, want in zip(
        cholesky.weight_standard_errors(), eigen.weight_standard_errors(), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10)
    assert cholesky.effective_params()[0] == pytest.approx(eigen.effective_params(), rel=1e-12)

    fast = CholeskyCurvature.factor(a, shift, ScoreDirections(flat, xt, yt, chunk=64), n)
    for got, want in zip(
        fast.standard_errors(gradients), cholesky.standard_errors(gradients), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10)

    grid = np.linspace(-1, 1, 7)[:, None]
    dense = run_inference(module, xt, yt, POINTS, x_grid=grid, penalty=penalty)
    quick = run_inference(
        module, xt, yt, POINTS, x_grid=grid, penalty=penalty, weight_se_max_params=10
    )
    for frame in ("predictions", "grid"):
        for column in ("estimate", "se_hessian", "se_sandwich"):
            np.testing.assert_allclose(
                getattr(quick, frame)[column], getattr(dense, frame)[column], rtol=1e-10
            )
    assert quick.eigenvalues.size == 0 and dense.eigenvalues.size == flat.n_params
    assert quick.parameters[["se_hessian", "se_sandwich", "identified"]].isna().all().all()
    np.testing.assert_array_equal(quick.parameters.estimate, dense.parameters.estimate)
    assert quick.metrics["inference/weight_ses"] == 0.0 and quick.metrics["inference/cholesky"]
    assert "inference/n_null_eigs" not in quick.metrics and "inference/n_null_eigs" in dense.metrics
    assert "inference/effective_params_se" in quick.metrics


def test_cholesky_failure_warns_and_falls_back_to_the_eigen_route(capsys):
    """Unfitted weights: A + lambda/n I is indefinite, so the factorisation fails."""
    penalty = 1.0
    x, y = bimodal_data(80, seed=2)
    module, xt, yt = small_mdn(x, y, seed=2)
    flat = FlatModel(module)
    n, shift = len(x), penalty / len(x)
    a = hessian_mean_nll(flat, xt, yt).numpy()
    assert np.linalg.eigvalsh(a + shift * np.eye(len(a)))[0] < 0
    matrix = ScoreMatrix.build(flat, xt, yt, mean_score(flat, xt, yt))
    eigen = Curvature.from_matrices(a, matrix.matrix, n, eig_rtol=1e-8, shift=shift)
    _, _, jac = quantity_jacobian(flat, torch.tensor(POINTS))
    want_h, want_s = eigen.standard_errors(jac.numpy())
    for max_params in (4000, 10):  # B formed up front, or only once the factorisation failed
        capsys.readouterr()
        result = run_inference(
            module, xt, yt, POINTS, penalty=penalty, weight_se_max_params=max_params
        )
        err = capsys.readouterr().err
        assert "A + lambda/n I (lambda = 1) is not positive definite (Cholesky failed" in err
        assert "standard errors from the eigen-route instead" in err
        assert result.metrics["inference/cholesky"] == 0.0
        assert result.metrics["inference/n_negative_eigs"] > 0
        np.testing.assert_allclose(result.predictions.se_hessian, want_h, rtol=1e-12)
        np.testing.assert_allclose(result.predictions.se_sandwich, want_s, rtol=1e-12)
        np.testing.assert_allclose(
            result.eigenvalues, np.linalg.eigvalsh(a), atol=1e-12 * np.abs(a).max()
        )
        assert result.metrics["inference/effective_params"] == pytest.approx(
            eigen.effective_params(), rel=1e-12
        )


def test_effective_params_exact_and_by_hutchinson(fitted):
    module, xt, yt, _, _, penalty = fitted
    flat = FlatModel(module)
    n, shift, p = xt.shape[0], penalty / xt.shape[0], flat.n_params
    a = hessian_mean_nll(flat, xt, yt).numpy()
    inverse = np.linalg.inv(a + shift * np.eye(p))
    want = np.trace(a @ inverse)
    cholesky = CholeskyCurvature.factor(a, shift, ScoreDirections(flat, xt, yt), n)
    exact, exact_se = cholesky.effective_params()
    assert exact == pytest.approx(want, rel=1e-10) and exact_se == 0.0
    assert 0 < want < p
    result = run_inference(module, xt, yt, POINTS, penalty=penalty)
    assert result.metrics["inference/effective_params"] == pytest.approx(want, rel=1e-10)

    probes = 4000
    estimate, se = cholesky.effective_params(probes=probes, seed=3)
    assert abs(estimate - want) < 4 * se
    off_diagonal = np.sum(inverse**2) - np.sum(np.diag(inverse) ** 2)
    theory = shift * np.sqrt(2 * off_diagonal / probes)  # Rademacher: 2 sum_{i != j} M_ij^2
    assert se == pytest.approx(theory, rel=0.15)
    quick = run_inference(module, xt, yt, POINTS, penalty=penalty, weight_se_max_params=10)
    estimate_200 = quick.metrics["inference/effective_params"]
    se_200 = quick.metrics["inference/effective_params_se"]  # the default 200 probes
    assert abs(estimate_200 - want) < 4 * se_200
    assert se_200 == pytest.approx(theory * np.sqrt(probes / 200), rel=0.3)


def test_zero_penalty_keeps_todays_numbers():
    """lambda = 0 at the MLE of the saturated design (A singular): the eigen-route with today's
    uncentred B gives the same SEs, spectrum and counts; effective_params = rank of A."""
    levels, x, y, module = saturated_gaussian_fit()
    xt, yt = torch.tensor(x), torch.tensor(y)
    flat = FlatModel(module)
    a = hessian_mean_nll(flat, xt, yt).numpy()
    today = Curvature.from_matrices(a, score_outer_product(flat, xt, yt).numpy(), n=len(x))
    result = run_inference(module, xt, yt, levels[:, None])
    m = result.metrics
    assert m["inference/cholesky"] == 0.0
    assert m["inference/grad_norm"] == m["inference/nll_grad_norm"] < 1e-8
    assert m["inference/n_null_eigs"] == today.spectrum.n_null == 8
    assert m["inference/effective_params"] == 6.0  # 14 weights, 6 identified
    np.testing.assert_array_equal(result.eigenvalues, today.spectrum.eigenvalues)
    _, _, jac = quantity_jacobian(flat, torch.tensor(levels[:, None]))
    want_h, want_s = today.standard_errors(jac.numpy())
    np.testing.assert_allclose(result.predictions.se_hessian, want_h, rtol=1e-10)
    np.testing.assert_allclose(result.predictions.se_sandwich, want_s, rtol=1e-10)
    weight_h, weight_s = today.weight_standard_errors()
    identified = result.parameters.identified.to_numpy()
    np.testing.assert_array_equal(identified, today.identified(np.eye(flat.n_params)))
    for column, want in (("se_hessian", weight_h), ("se_sandwich", weight_s)):
        np.testing.assert_allclose(result.parameters[column][identified], want[identified], 1e-10)


def test_matrix_free_with_a_penalty_matches_the_dense_cholesky_route(fitted):
    module, xt, yt, _, _, penalty = fitted
    # H = A + lambda/n I is positive definite: neither route truncates its spectrum, whatever
    # eig_rtol (1e-3 would drop H's smallest eigenvalues, 8e-5 - 2e-4 of the largest).
    dense = run_inference(module, xt, yt, POINTS, penalty=penalty, eig_rtol=1e-3)
    free = run_inference_matrix_free(
        module, xt, yt, POINTS, penalty=penalty, eig_rtol=1e-3, rtol=1e-11, max_points=None
    )
    assert free.metrics["inference/solver_unconverged"] == 0
    for column in ("estimate", "se_hessian", "se_sandwich"):
        np.testing.assert_allclose(free.predictions[column], dense.predictions[column], rtol=1e-7)
    assert free.metrics["inference/grad_norm"] == pytest.approx(
        dense.metrics["inference/grad_norm"], rel=1e-3, abs=1e-12
    )
    shift = penalty / xt.shape[0]
    assert free.metrics["inference/eig_min_estimate"] >= dense.eigenvalues.min() + shift - 1e-12
    assert free.metrics["inference/eig_max_estimate"] == pytest.approx(
        dense.eigenvalues.max() + shift, rel=1e-6
    )


# --- Takeuchi's trace tr(A_lambda^-1 B) ------------------------------------------------------
def torch_func_a_and_b(flat, xt, yt):
    """A (Hessian of the mean NLL, ``torch.func.hessian``) and the centred B (per-row scores by
    ``torch.func.jacrev``), independently of mdnlab's curvature code."""
    theta = flat.theta.detach().clone()
    a = torch.func.hessian(lambda t: -flat.log_prob(t, xt, yt).mean())(theta).numpy()
    scores = torch.func.jacrev(lambda t: flat.log_prob(t, xt, yt))(theta).numpy()  # n x P
    centred = scores - scores.mean(axis=0)
    return (a + a.T) / 2, centred.T @ centred / xt.shape[0]


def test_tic_trace_exact_with_a_penalty_matches_the_numpy_reference(fitted):
    """lambda = 1: tr(A_lambda^-1 B) with the numpy MDN's finite-difference Hessian of J and
    centred score covariance, and with torch.func's A and B."""
    module, xt, yt, reference, theta_ref, penalty = fitted
    result = run_inference(module, xt, yt, POINTS, penalty=penalty)
    assert result.metrics["inference/cholesky"] == 1.0
    assert "inference/tic_trace_se" not in result.metrics
    assert result.metrics["inference/n_rows"] == 300
    _, _, hessian, b = reference_standard_errors(reference, theta_ref, penalty, np.eye(26))
    want = np.trace(np.linalg.solve(hessian, b))
    assert result.metrics["inference/tic_trace"] == pytest.approx(want, rel=1e-6)
    a, b_func = torch_func_a_and_b(FlatModel(module), xt, yt)
    shift = penalty / xt.shape[0]
    exact = np.trace(np.linalg.solve(a + shift * np.eye(len(a)), b_func))
    assert result.metrics["inference/tic_trace"] == pytest.approx(exact, rel=1e-9)


def test_tic_trace_at_zero_penalty_is_the_pseudo_inverse_trace_on_the_retained_eigenspace():
    """lambda = 0 at the MLE of the saturated design (A singular, 6 of 14 eigenvalues kept):
    tr(A^+ B) with A^+ the pseudo-inverse on the eigenvectors above eig_rtol."""
    levels, x, y, module = saturated_gaussian_fit()
    xt, yt = torch.tensor(x), torch.tensor(y)
    a, b = torch_func_a_and_b(FlatModel(module), xt, yt)
    values, vectors = np.linalg.eigh(a)
    keep = values > 1e-8 * np.abs(values).max()
    assert keep.sum() == 6
    pinv = vectors[:, keep] @ np.diag(1 / values[keep]) @ vectors[:, keep].T
    want = np.trace(pinv @ b)
    for max_params in (4000, 10):  # B is formed on the eigen-route either way: exact
        result = run_inference(module, xt, yt, levels[:, None], weight_se_max_params=max_params)
        assert result.metrics["inference/cholesky"] == 0.0
        assert result.metrics["inference/tic_trace"] == pytest.approx(want, rel=1e-8)
        assert "inference/tic_trace_se" not in result.metrics
    # t_5 noise: B is not A (the variance's score has a fourth moment), so the trace is not 6
    assert want > 6.5


def test_tic_trace_by_hutchinson_on_the_route_without_b(fitted):
    module, xt, yt, _, _, penalty = fitted
    flat = FlatModel(module)
    n, shift, p = xt.shape[0], penalty / xt.shape[0], flat.n_params
    a, b = torch_func_a_and_b(flat, xt, yt)
    exact = np.trace(np.linalg.solve(a + shift * np.eye(p), b))
    quick = run_inference(module, xt, yt, POINTS, penalty=penalty, weight_se_max_params=10)
    estimate, se = quick.metrics["inference/tic_trace"], quick.metrics["inference/tic_trace_se"]
    assert quick.metrics["inference/weight_ses"] == 0.0 and quick.metrics["inference/cholesky"]
    assert abs(estimate - exact) < 4 * se and 0 < se < 0.2 * exact

    probes = 4000
    hessian = hessian_mean_nll(flat, xt, yt).numpy()
    cholesky = CholeskyCurvature.factor(hessian, shift, ScoreDirections(flat, xt, yt), n)
    estimate, se = cholesky.tic_trace(probes=probes, seed=5)
    assert abs(estimate - exact) < 4 * se
    lower = np.linalg.cholesky(a + shift * np.eye(p))
    c = np.linalg.solve(lower, np.linalg.solve(lower, b).T)  # L^-1 B L^-T
    theory = np.sqrt(2 * (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / probes)
    assert se == pytest.approx(theory, rel=0.15)


def test_tic_trace_counts_the_weights_of_a_well_specified_model():
    """K = 1, linear head, in_dim 1: 4 weights (mean and raw scale, each a + b x); y linear in x
    with constant Gaussian noise, n = 5,000, the MLE (lambda = 0): tr(A^-1 B) -> 4 (B = A)."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-2, 2, (5000, 1))
    y = 1.0 + 2.0 * x + 0.7 * rng.standard_normal((5000, 1))
    torch.manual_seed(0)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=1, hidden_sizes=[])
    xt, yt = torch.tensor(x), torch.tensor(y)
    module.x_scaler.fit(xt)
    module.y_scaler.fit(yt)
    result = polish(lambda: module.nll(xt, yt), list(module.net.parameters()), 1e-10)
    assert result.converged
    metrics = run_inference(module, xt, yt, POINTS).metrics
    assert metrics["inference/n_params"] == 4 and metrics["inference/effective_params"] == 4
    assert metrics["inference/tic_trace"] == pytest.approx(4.0, rel=0.15)
