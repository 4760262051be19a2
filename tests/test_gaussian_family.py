"""The Gaussian family against independent references.

The raw head layout is decoded here in numpy (gating: K - 1 free logits and a fixed 0 logit;
per component q means, q softplus diagonal entries floored by ``min_scale``, then the
strictly-lower Cholesky entries in row-major order) and the mixture density, mean and
covariance are computed with scipy / numpy, never with the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from mdnlab.errors import ConfigError, DataError
from mdnlab.families import build_family
from mdnlab.families.gaussian import GaussianFamily, mixture_mean_and_covariance
from mdnlab.scaling import AffineScaler

torch.set_num_threads(1)

CASES = list(itertools.product([1, 2, 3], ["full", "diagonal"], [1, 3]))


def softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)


def expected_raw_size(k: int, q: int, covariance: str) -> int:
    per = 2 * q + (q * (q - 1) // 2 if covariance == "full" else 0)
    return (k - 1) + k * per


def decode(raw: np.ndarray, k: int, q: int, covariance: str, min_scale: float):
    """Numpy decoding of the raw layout: log weights (n, K), means (n, K, q), covs (n, K, q, q)."""
    n = raw.shape[0]
    logits = np.concatenate([raw[:, : k - 1], np.zeros((n, 1))], axis=1)
    log_w = logits - logsumexp(logits, axis=1, keepdims=True)
    n_lower = q * (q - 1) // 2 if covariance == "full" else 0
    comp = raw[:, k - 1 :].reshape(n, k, 2 * q + n_lower)
    means = comp[..., :q]
    chol = np.zeros((n, k, q, q))
    for i in range(q):
        chol[..., i, i] = softplus(comp[..., q + i]) + min_scale
    pos = 2 * q
    if covariance == "full":
        for i in range(q):
            for j in range(i):
                chol[..., i, j] = comp[..., pos]
                pos += 1
    assert pos == comp.shape[-1]
    covs = chol @ np.swapaxes(chol, -1, -2)
    return log_w, means, covs


def numpy_mixture_logpdf(y, log_w, means, covs):
    n, k = log_w.shape
    terms = np.empty((n, k))
    for b in range(n):
        for c in range(k):
            terms[b, c] = log_w[b, c] + stats.multivariate_normal.logpdf(
                y[b], means[b, c], covs[b, c]
            )
    return logsumexp(terms, axis=1)


def numpy_moments(log_w, means, covs):
    w = np.exp(log_w)
    mean = np.einsum("bk,bkq->bq", w, means)
    dev = means - mean[:, None, :]
    within = np.einsum("bk,bkij->bij", w, covs)
    between = np.einsum("bk,bki,bkj->bij", w, dev, dev)
    return mean, within + between


def random_raw(rng, family: GaussianFamily, n: int = 20) -> np.ndarray:
    return rng.normal(scale=1.2, size=(n, family.n_raw_outputs))


@pytest.mark.parametrize(("q", "covariance", "k"), CASES)
def test_n_raw_outputs_matches_layout(q, covariance, k):
    family = GaussianFamily(k, (q,), covariance=covariance)
    assert family.n_raw_outputs == expected_raw_size(k, q, covariance)


@pytest.mark.parametrize(("q", "covariance", "k"), CASES)
def test_mixture_log_prob_matches_scipy(q, covariance, k):
    rng = np.random.default_rng(100 * q + 10 * k + (covariance == "full"))
    min_scale = 0.05
    family = GaussianFamily(k, (q,), covariance=covariance, min_scale=min_scale)
    raw = random_raw(rng, family)
    y = rng.normal(scale=1.5, size=(raw.shape[0], q))
    mixture = family.mixture(torch.as_tensor(raw))
    got = mixture.log_prob(torch.as_tensor(y)).numpy()
    log_w, means, covs = decode(raw, k, q, covariance, min_scale)
    want = numpy_mixture_logpdf(y, log_w, means, covs)
    assert got.shape == (raw.shape[0],)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # The gating weights themselves (the fixed 0 logit is the last component).
    np.testing.assert_allclose(
        mixture.mixture_distribution.probs.numpy(), np.exp(log_w), rtol=1e-12
    )


def test_min_scale_floors_the_diagonal():
    """Very negative raw diagonal entries give standard deviations of about ``min_scale``."""
    family = GaussianFamily(1, (2,), covariance="diagonal", min_scale=0.25)
    raw = np.array([[0.3, -0.7, -60.0, -60.0]])
    mixture = family.mixture(torch.as_tensor(raw))
    y = np.array([[0.1, -0.5]])
    want = stats.norm.logpdf(y, loc=[0.3, -0.7], scale=0.25).sum()
    np.testing.assert_allclose(mixture.log_prob(torch.as_tensor(y)).numpy(), [want], rtol=1e-12)


@pytest.mark.parametrize(("q", "covariance", "k"), CASES)
def test_mixture_mean_and_covariance_law_of_total_variance(q, covariance, k):
    rng = np.random.default_rng(7 + q + k)
    min_scale = 0.01
    family = GaussianFamily(k, (q,), covariance=covariance, min_scale=min_scale)
    raw = random_raw(rng, family)
    mean, cov = mixture_mean_and_covariance(family.mixture(torch.as_tensor(raw)))
    log_w, means, covs = decode(raw, k, q, covariance, min_scale)
    want_mean, want_cov = numpy_moments(log_w, means, covs)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), want_cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_mixture_mean_and_covariance_monte_carlo(covariance):
    """Against sample moments of draws made in numpy from the decoded parameters."""
    q, k, n_draws = 3, 3, 200_000
    rng = np.random.default_rng(2024)
    family = GaussianFamily(k, (q,), covariance=covariance, min_scale=0.01)
    raw = random_raw(rng, family, n=3)
    mean, cov = mixture_mean_and_covariance(family.mixture(torch.as_tensor(raw)))
    log_w, means, covs = decode(raw, k, q, covariance, 0.01)
    for b in range(raw.shape[0]):
        labels = rng.choice(k, size=n_draws, p=np.exp(log_w[b]))
        chols = np.linalg.cholesky(covs[b])
        z = rng.standard_normal((n_draws, q))
        draws = means[b, labels] + np.einsum("nij,nj->ni", chols[labels], z)
        mc_mean = draws.mean(axis=0)
        centred = draws - mc_mean
        products = centred[:, :, None] * centred[:, None, :]
        mc_cov = products.mean(axis=0)
        se_mean = draws.std(axis=0) / np.sqrt(n_draws)
        se_cov = products.std(axis=0) / np.sqrt(n_draws)
        assert np.all(np.abs(mean[b].numpy() - mc_mean) < 5 * se_mean)
        assert np.all(np.abs(cov[b].numpy() - mc_cov) < 5 * se_cov + 1e-12)


@pytest.mark.parametrize(
    ("q", "covariance"), [(1, "full"), (2, "full"), (3, "diagonal"), (3, "full")]
)
def test_quantities_in_original_units(q, covariance):
    rng = np.random.default_rng(11 * q)
    k = 2
    family = GaussianFamily(k, (q,), covariance=covariance, min_scale=0.02)
    raw = random_raw(rng, family, n=6)
    loc = rng.normal(scale=50.0, size=q)
    scale = rng.uniform(0.01, 20.0, size=q)
    scaler = AffineScaler(q)
    with torch.no_grad():
        scaler.loc.copy_(torch.as_tensor(loc))
        scaler.scale.copy_(torch.as_tensor(scale))
    out = family.quantities(family.mixture(torch.as_tensor(raw)), scaler)

    names = [f"mean[{j}]" for j in range(q)] + [
        f"cov[{i},{j}]" for i in range(q) for j in range(i + 1)
    ]
    assert sorted(out) == sorted(names)
    mean_s, cov_s = numpy_moments(*decode(raw, k, q, covariance, 0.02))
    for j in range(q):
        np.testing.assert_allclose(
            out[f"mean[{j}]"].numpy(), loc[j] + scale[j] * mean_s[:, j], rtol=1e-10
        )
    for i in range(q):
        for j in range(i + 1):
            want = scale[i] * scale[j] * cov_s[:, i, j]
            np.testing.assert_allclose(out[f"cov[{i},{j}]"].numpy(), want, rtol=1e-9, atol=1e-12)
    for value in out.values():
        assert value.shape == (raw.shape[0],)


def test_prepare_targets_rejects_matrix_targets():
    with pytest.raises(DataError, match="model=wishart") as info:
        GaussianFamily.prepare_targets(np.zeros((5, 2, 2)), "data/spd.npz", ["a", "b", "c"])
    assert "data/spd.npz" in str(info.value)
    assert "(5, 2, 2)" in str(info.value)
    ok = GaussianFamily.prepare_targets(
        np.arange(10.0, dtype=np.float32).reshape(5, 2), "data/ok.csv", ["a", "b"]
    )
    assert ok.shape == (5, 2) and ok.dtype == np.float64


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="covariance"):
        GaussianFamily(2, (2,), covariance="spherical")
    with pytest.raises(ConfigError, match="n_components"):
        build_family("gaussian", 0, (2,))
    with pytest.raises(ConfigError, match="gaussian"):
        build_family("gamma", 2, (2,))
