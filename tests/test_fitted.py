"""The fitted-model API (``mdnlab.load``, ``FittedModel``) against independent references.

References: the head's raw outputs decoded in numpy by the documented layouts and scipy's
densities, CDFs and quantiles; the module's own ``log_prob`` (the run's NLL path); numeric
integrals and grid searches of that log density; Monte Carlo moments with their standard
errors. Models are built directly (hand-set heads where the answer must be known exactly),
saved with ``pipeline.save_checkpoint`` beside a small config.yaml and loaded back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import integrate, stats
from scipy.special import logsumexp, softmax

import mdnlab
from mdnlab.errors import DataError, MdnlabError
from mdnlab.fitted import FittedModel, FittedModelError, LoadError
from mdnlab.fitted.distributions import wishart_moments
from mdnlab.module import MDNModule
from mdnlab.pipeline import save_checkpoint

torch.set_num_threads(1)

MIN_SCALE = 1e-3


def softplus(v):
    return np.logaddexp(0.0, v)


def softplus_inverse(v):
    return np.log(np.expm1(v))


def gaussian_module(k, q=1, in_dim=1, hidden=(4,), seed=0, covariance="full"):
    """Random weights; scalers fitted to shifted, scaled data (loc and scale far from 0, 1)."""
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=in_dim,
        event_shape=[q],
        n_components=k,
        hidden_sizes=list(hidden),
        covariance=covariance,
    )
    rng = np.random.default_rng(seed)
    module.x_scaler.fit(torch.as_tensor(rng.normal(2.0, 3.0, (200, in_dim))))
    module.y_scaler.fit(torch.as_tensor(rng.normal(5.0, [2.0, 0.5, 4.0][:q], (200, q))))
    return module.eval()


def constant_gaussian(weights, means, sds, loc=10.0, scale=2.0):
    """K components with the given weights, standardised means and sds at every x."""
    k = len(weights)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=k, hidden_sizes=[])
    logits = np.log(weights) - np.log(weights[-1])
    raw = [*logits[:-1]]
    for m, s in zip(means, sds, strict=True):
        raw += [m, softplus_inverse(s - MIN_SCALE)]
    with torch.no_grad():
        module.net[-1].weight.zero_()
        module.net[-1].bias.copy_(torch.tensor(raw, dtype=torch.float64))
        module.y_scaler.loc.fill_(loc)
        module.y_scaler.scale.fill_(scale)
    return module.eval()


def decode_gaussian(module, x):
    """Numpy decoding of a full-covariance Gaussian head: log weights (n, K), means (n, K, q),
    covariances (n, K, q, q), in original units of y."""
    k, q = module.family.n_components, module.family.event_shape[0]
    x_s = (x - module.x_scaler.loc.numpy()) / module.x_scaler.scale.numpy()
    with torch.no_grad():
        raw = module.net(torch.as_tensor(x_s)).numpy()
    n = raw.shape[0]
    logits = np.concatenate([raw[:, : k - 1], np.zeros((n, 1))], axis=1)
    log_w = logits - logsumexp(logits, axis=1, keepdims=True)
    comp = raw[:, k - 1 :].reshape(n, k, -1)
    chol = np.zeros((n, k, q, q))
    for i in range(q):
        chol[..., i, i] = softplus(comp[..., q + i]) + MIN_SCALE
    pos = 2 * q
    for i in range(q):
        for j in range(i):
            chol[..., i, j] = comp[..., pos]
            pos += 1
    s, loc = module.y_scaler.scale.numpy(), module.y_scaler.loc.numpy()
    means = comp[..., :q] * s + loc
    chol = chol * s[:, None]
    return log_w, means, chol @ np.swapaxes(chol, -1, -2)


def write_run(folder: Path, module, config=None, encoding=None, y_encoding=None) -> Path:
    """A run's artifact layout: model/model.ckpt, config.yaml, data/*.json."""
    save_checkpoint(module, folder / "model" / "model.ckpt")
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if encoding:
        (folder / "data").mkdir(exist_ok=True)
        table = {
            col: {"reference": lv[0], "indicators": [f"{col}={v}" for v in lv[1:]]}
            for col, lv in encoding.items()
        }
        (folder / "data" / "encoding.json").write_text(json.dumps(table))
    if y_encoding:
        (folder / "data").mkdir(exist_ok=True)
        codes = {col: dict(enumerate(labels)) for col, labels in y_encoding.items()}
        (folder / "data" / "y_encoding.json").write_text(json.dumps(codes))
    return folder


def data_config(x_cols, y_cols):
    return {"data": {"x_cols": x_cols, "y_cols": y_cols}, "seed": 0}


def assert_mc(per_draw: np.ndarray, target, z: float = 5.0):
    """mean over draws (axis 0) of per_draw equals target within z Monte Carlo SEs."""
    n = per_draw.shape[0]
    se = per_draw.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(per_draw.mean(axis=0) - target) <= z * se + 1e-12)


# --- loading and the distribution ----------------------------------------------------------
@pytest.mark.parametrize("q,covariance", [(1, "full"), (2, "full"), (3, "diagonal")])
def test_gaussian_distribution_is_the_module_in_original_units(tmp_path, q, covariance):
    module = gaussian_module(3, q, in_dim=2, covariance=covariance)
    x_cols, y_cols = ["a", "b"], [f"y{j}" for j in range(q)]
    fitted = mdnlab.load(write_run(tmp_path, module, data_config(x_cols, y_cols)))
    assert isinstance(fitted, FittedModel)
    assert fitted.schema.x_columns == x_cols and fitted.schema.y_columns == y_cols
    rng = np.random.default_rng(1)
    x, y = rng.normal(2, 3, (40, 2)), rng.normal(5, 2, (40, q))
    want = module.log_prob(torch.as_tensor(x), torch.as_tensor(y)).detach().numpy()
    got = fitted.distribution(x).log_prob(torch.as_tensor(y)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)
    frame = pd.DataFrame(x, columns=x_cols).assign(other="ignored")
    np.testing.assert_array_equal(fitted.log_prob(frame, pd.DataFrame(y, columns=y_cols)), want)


@pytest.mark.parametrize("q", [1, 2])
def test_gaussian_k1_against_scipy(q):
    module = gaussian_module(1, q, hidden=(3,), seed=2)
    fitted = FittedModel(module)
    rng = np.random.default_rng(2)
    x, y = rng.normal(2, 3, (25, 1)), rng.normal(5, 2, (25, q))
    _, means, covs = decode_gaussian(module, x)
    want = [stats.multivariate_normal(means[i, 0], covs[i, 0]).logpdf(y[i]) for i in range(25)]
    np.testing.assert_allclose(fitted.log_prob(x, y), want, rtol=1e-12)
    np.testing.assert_allclose(fitted.distribution(x).log_prob(torch.tensor(y)), want, rtol=1e-12)
    np.testing.assert_allclose(fitted.mean(x), means[:, 0], rtol=1e-12)
    np.testing.assert_allclose(fitted.covariance(x), covs[:, 0], rtol=1e-12)
    if q == 1:
        sd = np.sqrt(covs[:, 0, 0, 0])
        probs = [1e-6, 0.05, 0.5, 0.95]
        want_q = stats.norm.ppf(np.array(probs)[None, :], means[:, 0], sd[:, None])
        np.testing.assert_allclose(fitted.quantile(x, probs), want_q, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            fitted.cdf(x, y[:, 0]), stats.norm.cdf(y[:, 0], means[:, 0, 0], sd), rtol=1e-12
        )


def test_gaussian_mixture_moments_components_and_samples():
    module = gaussian_module(2, 2, hidden=(4,), seed=3)
    fitted = FittedModel(module)
    x = np.array([[-1.0], [2.0], [6.0]])
    log_w, means, covs = decode_gaussian(module, x)
    w = np.exp(log_w)
    parts = fitted.components(x)
    np.testing.assert_allclose(parts["weights"], w, rtol=1e-12)
    np.testing.assert_allclose(fitted.weights(x), w, rtol=1e-12)
    np.testing.assert_allclose(parts["means"], means, rtol=1e-12)
    np.testing.assert_allclose(parts["covariances"], covs, rtol=1e-12, atol=1e-14)
    mean = np.einsum("nk,nkq->nq", w, means)
    second = covs + means[..., :, None] * means[..., None, :]
    cov = np.einsum("nk,nkij->nij", w, second) - mean[:, :, None] * mean[:, None, :]
    np.testing.assert_allclose(fitted.mean(x), mean, rtol=1e-12)
    np.testing.assert_allclose(fitted.covariance(x), cov, rtol=1e-11)

    draws = fitted.sample(x, 20_000, seed=0)
    assert draws.shape == (3, 20_000, 2)
    for i in range(3):
        y = draws[i]
        assert_mc(y, mean[i])
        centred = y - y.mean(axis=0)
        assert_mc(centred[:, :, None] * centred[:, None, :], cov[i])


def test_categorical_distribution_probabilities_and_samples(tmp_path):
    torch.manual_seed(4)
    module = MDNModule(
        in_dim=2,
        event_shape=[2],
        family="categorical",
        n_components=2,
        hidden_sizes=[3],
        n_classes=[3, 2],
    ).eval()
    labels = ["Conservative", "Labour", "Liberal Democrat"]
    run = write_run(
        tmp_path, module, data_config(["u", "v"], ["vote", "turnout"]), y_encoding={"vote": labels}
    )
    fitted = mdnlab.load(str(run))
    x = np.random.default_rng(4).normal(size=(5, 2))
    codes = np.array([[a, b] for a in range(3) for b in range(2)], dtype=float)
    joint = np.stack(
        [
            module.log_prob(torch.tensor(x), torch.tensor(np.tile(c, (5, 1)))).detach().numpy()
            for c in codes
        ],
        axis=1,
    )
    dist = fitted.distribution(x)
    for j, c in enumerate(codes):
        got = dist.log_prob(torch.tensor(np.tile(c, (5, 1)))).numpy()
        np.testing.assert_allclose(got, joint[:, j], rtol=0, atol=1e-13)
    pmf = np.exp(joint)
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, rtol=1e-12)

    probs = fitted.class_probabilities(pd.DataFrame(x, columns=["u", "v"], index=list("abcde")))
    assert list(probs) == ["vote", "turnout"]
    assert list(probs["vote"].columns) == labels and list(probs["turnout"].columns) == [0, 1]
    assert list(probs["vote"].index) == list("abcde")
    np.testing.assert_allclose(probs["vote"].to_numpy(), pmf.reshape(5, 3, 2).sum(2), rtol=1e-12)
    np.testing.assert_allclose(probs["turnout"].to_numpy(), pmf.reshape(5, 3, 2).sum(1), rtol=1e-12)
    # Text labels in a y frame are the training codes.
    frame = pd.DataFrame({"vote": ["Labour"] * 5, "turnout": [1] * 5})
    np.testing.assert_allclose(fitted.log_prob(x, frame), joint[:, 3], rtol=1e-13)
    with pytest.raises(DataError, match="'Green' was not seen"):
        fitted.log_prob(x, frame.assign(vote="Green"))

    n = 20_000
    draws = fitted.sample(x[:2], n, seed=1)
    assert draws.shape == (2, n, 2) and draws.dtype == np.int64
    for i in range(2):
        cells = draws[i, :, 0] * 2 + draws[i, :, 1]
        assert_mc(cells[:, None] == np.arange(6)[None, :], pmf[i])
    table = fitted.predict(x, what=["probabilities", "weights"])
    assert set(table.quantity) == {
        f"prob[{d},{c}]" for d, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    } | {
        "weight[0]",
        "weight[1]",
    }
    with pytest.raises(FittedModelError, match="scalar y"):
        fitted.quantile(x, 0.5)
    with pytest.raises(FittedModelError, match="not defined"):
        fitted.covariance(x)


def wishart_module(k=2, seed=5, df_bias=6.0):
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=1, event_shape=[2, 2], family="wishart", n_components=k, hidden_sizes=[]
    )
    with torch.no_grad():
        head = module.net[-1]
        head.weight.mul_(0.3)
        for c in range(k):  # a df around p + df_bias for stable Monte Carlo moments
            head.bias[k - 1 + c * 4] = df_bias + c
        module.y_scaler.d.copy_(torch.tensor([2.0, 0.5], dtype=torch.float64))
    return module.eval()


def test_wishart_distribution_moments_and_samples():
    module = wishart_module()
    fitted = FittedModel(module)
    x = np.array([[-1.0], [1.5]])
    rng = np.random.default_rng(5)
    a = rng.normal(size=(2, 2, 5))
    y = a @ np.swapaxes(a, 1, 2) * np.array([2.0, 0.5])[:, None] * np.array([2.0, 0.5])
    want = module.log_prob(torch.tensor(x), torch.tensor(y)).detach().numpy()
    np.testing.assert_allclose(fitted.distribution(x).log_prob(torch.tensor(y)), want, atol=1e-11)
    np.testing.assert_allclose(fitted.log_prob(x, y), want, rtol=1e-13)
    # Lower-triangle columns, as in a CSV, give the same matrices.
    frame = pd.DataFrame({"y[0,0]": y[:, 0, 0], "y[1,0]": y[:, 1, 0], "y[1,1]": y[:, 1, 1]})
    np.testing.assert_allclose(fitted.log_prob(x, frame), want, rtol=1e-13)

    parts = fitted.components(x)
    d = np.diag([2.0, 0.5])
    comp = fitted.distribution(x).component_distribution.log_prob(torch.tensor(y[:, None]))
    for i, k in np.ndindex(2, 2):  # each component's density is scipy's Wishart
        got = stats.wishart(parts["df"][i, k], parts["scales"][i, k]).logpdf(y[i])
        assert comp[i, k].item() == pytest.approx(got, rel=1e-12)
    np.testing.assert_allclose(parts["means"], parts["df"][..., None, None] * parts["scales"])
    std_comp = module.mixture(torch.tensor(x)).component_distribution
    scale_s = (std_comp.scale_tril @ std_comp.scale_tril.transpose(-1, -2)).detach().numpy()
    np.testing.assert_allclose(parts["scales"], d @ scale_s @ d, rtol=1e-12)

    mean, cov = fitted.mean(x), fitted.covariance(x)
    assert mean.shape == (2, 2, 2) and cov.shape == (2, 2, 2, 2, 2)
    draws = fitted.sample(x, 20_000, seed=2)
    assert draws.shape == (2, 20_000, 2, 2)
    for i in range(2):
        flat = draws[i].reshape(-1, 4)
        assert_mc(flat, mean[i].reshape(4))
        centred = flat - flat.mean(axis=0)
        assert_mc(centred[:, :, None] * centred[:, None, :], cov[i].reshape(4, 4))
    table = fitted.predict(x, what="mean,sd")
    wide = table.pivot(index="row", columns="quantity", values="value")
    np.testing.assert_allclose(wide["mean[1,0]"], mean[:, 1, 0])
    np.testing.assert_allclose(wide["sd[1,1]"], np.sqrt(cov[:, 1, 1, 1, 1]))


# --- sampling and temperature --------------------------------------------------------------
def test_plain_sampler_and_seeds():
    module = gaussian_module(3, 2, seed=6)
    fitted = FittedModel(module)
    x = np.linspace(-3, 7, 4)[:, None]
    state = torch.random.get_rng_state()
    plain = fitted.sample(x, 500, seed=11)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    for kwargs in ({"temperature": 1.0}, {"weight_temperature": 1.0}, {"weight_temperature": None}):
        np.testing.assert_array_equal(fitted.sample(x, 500, seed=11, **kwargs), plain)
    np.testing.assert_array_equal(
        fitted.sample(x, 500, temperature=1, weight_temperature=1, seed=11), plain
    )
    assert not np.array_equal(fitted.sample(x, 500, seed=12), plain)
    # The module's own sampler in standardised units, mapped back: the same draws.
    torch.manual_seed(11)
    with torch.no_grad():
        ys = module.mixture(torch.tensor(x)).sample((500,))
    np.testing.assert_allclose(
        plain, module.y_scaler.inverse(ys).movedim(0, 1).numpy(), rtol=1e-13, atol=1e-12
    )


def test_temperature_scales_the_spread():
    fitted = FittedModel(constant_gaussian([1.0], [0.3], [0.7], loc=4.0, scale=3.0))
    x = np.zeros((1, 1))
    sd = 0.7 * 3.0
    draws = fitted.sample(x, 40_000, temperature=2.0, seed=3)[0, :, 0]
    assert draws.std() == pytest.approx(2 * sd, rel=4 / np.sqrt(2 * 40_000))
    assert_mc(draws, 4.0 + 0.3 * 3.0)
    half = fitted.sample(x, 40_000, temperature=0.5, seed=3)[0, :, 0]
    assert half.std() == pytest.approx(0.5 * sd, rel=4 / np.sqrt(2 * 40_000))

    # Weight temperature: pi^(1/T) renormalised; separated components tell the draws apart.
    two = FittedModel(constant_gaussian([0.3, 0.7], [-4.0, 4.0], [0.5, 0.5], loc=0.0, scale=1.0))
    for t, want in ((1.0, 0.7), (2.0, np.sqrt(0.7) / (np.sqrt(0.3) + np.sqrt(0.7))), (0.02, 1.0)):
        upper = two.sample(x, 20_000, weight_temperature=t, seed=4)[0, :, 0] > 0
        assert_mc(upper.astype(float), want)
    sharp = two.sample(x, 20_000, weight_temperature=0.02, seed=4)[0, :, 0]
    assert np.all(sharp > 0)  # (0.3 / 0.7)^50 ~ 4e-19: only the top component
    with pytest.raises(FittedModelError, match="positive"):
        two.sample(x, 10, temperature=0)


def test_temperature_on_categorical_and_wishart():
    torch.manual_seed(7)
    cat = MDNModule(
        in_dim=1, event_shape=[1], family="categorical", n_components=2, n_classes=[4]
    ).eval()
    fitted = FittedModel(cat)
    x = np.array([[0.5]])
    base = fitted.components(x)["probabilities"][0]
    comp = fitted.distribution(x, temperature=0.5).component_distribution
    np.testing.assert_allclose(comp.probs[0].numpy(), softmax(2 * np.log(base), axis=-1))
    cold = fitted.distribution(x, temperature=1e-3).component_distribution.probs[0].numpy()
    np.testing.assert_allclose(cold.argmax(-1), base.argmax(-1))
    assert cold.max(-1).min() > 1 - 1e-9

    wishart = FittedModel(wishart_module())
    xw = np.array([[0.0], [1.0]])
    mean, cov = wishart.mean(xw), wishart.covariance(xw)
    tempered = wishart.distribution(xw, temperature=1.5)
    mean_t, cov_t = wishart_moments(tempered)
    np.testing.assert_allclose(mean_t, mean, rtol=1e-12)  # the mean is kept
    components = wishart.components(xw)
    np.testing.assert_allclose(
        tempered.component_distribution.df.numpy(), components["df"] / 1.5**2, rtol=1e-14
    )
    # every component's entry sds times T, so the within part of the covariance times T^2
    within = cov - (
        np.einsum(
            "nk,nkab,nkcd->nabcd", components["weights"], components["means"], components["means"]
        )
        - np.einsum("nab,ncd->nabcd", mean, mean)
    )
    within_t = cov_t.numpy() - (cov - within)
    np.testing.assert_allclose(within_t, 1.5**2 * within, rtol=1e-10, atol=1e-12)
    with pytest.raises(FittedModelError, match="must be below"):
        wishart.distribution(xw, temperature=100.0)


# --- scalar y: cdf, quantiles, modes -------------------------------------------------------
def test_quantile_inverts_the_cdf_and_cdf_is_the_integral():
    module = gaussian_module(3, 1, hidden=(5,), seed=8)
    fitted = FittedModel(module)
    x = np.linspace(-5, 9, 7)
    probs = np.array([1e-8, 0.001, 0.05, 0.3, 0.5, 0.77, 0.95, 0.999, 1 - 1e-8])
    qs = fitted.quantile(x, probs)
    assert qs.shape == (7, 9) and np.all(np.diff(qs, axis=1) > 0)
    np.testing.assert_allclose(fitted.cdf(x, qs), np.tile(probs, (7, 1)), rtol=0, atol=1e-12)
    assert fitted.quantile(x, 0.5).shape == (7,)
    np.testing.assert_array_equal(fitted.quantile(x, [0.0, 1.0]), [[-np.inf, np.inf]] * 7)

    log_w, means, covs = decode_gaussian(module, x[:, None])
    sd = np.sqrt(covs[..., 0, 0])
    y = np.linspace(-10, 20, 13)
    want = np.einsum(
        "nk,nmk->nm",
        np.exp(log_w),
        stats.norm.cdf(y[None, :, None], means[:, None, :, 0], sd[:, None]),
    )
    got = fitted.cdf(x, np.tile(y, (7, 1)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)

    def density(v, row):
        xv = torch.tensor([[x[row]]])
        return float(
            torch.exp(module.log_prob(xv, torch.tensor([[v]], dtype=torch.float64))).detach()
        )

    for row in (0, 4):
        lo = (means[row, :, 0] - 12 * sd[row]).min()  # below: mass < 1e-32
        for v in (qs[row, 2], qs[row, 6]):
            integral, _ = integrate.quad(
                density,
                lo,
                v,
                args=(row,),
                points=means[row, :, 0],
                epsabs=1e-13,
                epsrel=1e-12,
                limit=200,
            )
            assert fitted.cdf(x[row : row + 1], v)[0] == pytest.approx(integral, abs=1e-9)


def grid_modes(fitted, x_row, lo, hi, n=200_001):
    """Local maxima of exp(log_prob) on a fine grid, refined by a parabola through 3 points."""
    grid = np.linspace(lo, hi, n)
    log_p = (
        fitted.module.log_prob(torch.tensor(np.tile(x_row, (n, 1))), torch.tensor(grid[:, None]))
        .detach()
        .numpy()
    )
    i = np.flatnonzero((log_p[1:-1] > log_p[:-2]) & (log_p[1:-1] >= log_p[2:])) + 1
    a, b, c = log_p[i - 1], log_p[i], log_p[i + 1]
    return grid[i] + 0.5 * (a - c) / (a - 2 * b + c) * (grid[1] - grid[0])


def test_modes():
    x = np.zeros((2, 1))
    # Well separated: the modes are the component means (the other's tail shifts them by
    # w_j N(6 sd) / ... ~ 1e-8 sd), ordered by density.
    sep = FittedModel(constant_gaussian([0.4, 0.6], [-1.5, 1.5], [0.25, 0.5], loc=10.0, scale=2.0))
    modes, density = sep.modes(x)
    assert modes.shape == (2, 2) and not np.isnan(modes).any()
    np.testing.assert_allclose(modes[0], [10.0 - 3.0, 10.0 + 3.0], atol=1e-3 * 0.5)
    want = np.exp(sep.log_prob(np.zeros((2, 1)), modes[0][:, None]))
    np.testing.assert_allclose(density[0], want, rtol=1e-12)
    assert density[0, 0] > density[0, 1]

    # Unimodal: two overlapping components give one mode, the rest NaN.
    one = FittedModel(constant_gaussian([0.5, 0.5], [0.0, 0.8], [1.0, 1.0], loc=0.0, scale=1.0))
    modes, density = one.modes(x)
    assert np.isnan(modes[:, 1]).all() and np.isnan(density[:, 1]).all()
    assert modes[0, 0] == pytest.approx(0.4, abs=1e-10)  # symmetric: the midpoint

    # Three overlapping components: modes shifted from the means, against a grid search.
    three = FittedModel(
        constant_gaussian([0.3, 0.25, 0.45], [-1.6, 0.0, 1.5], [0.5, 0.4, 0.7], 1.0, 3.0)
    )
    modes, density = three.modes(x[:1])
    found = np.sort(modes[0][~np.isnan(modes[0])])
    want = grid_modes(three, np.zeros(1), -12.0, 14.0)
    assert len(found) == len(want) == 3
    np.testing.assert_allclose(found, want, atol=1e-6)
    assert np.all(np.diff(density[0]) <= 0)
    table = three.predict(x[:1], what="modes")
    assert list(table.quantity) == [f"{n}[{i}]" for i in range(3) for n in ("mode", "mode_density")]


def test_predict_layout():
    module = gaussian_module(2, 1, seed=9)
    model = FittedModel(module)
    x = np.array([0.0, 1.0, 2.0])
    table = model.predict(x, what=("mean", "sd", "variance", "quantiles", "weights"))
    assert list(table.columns) == ["row", "quantity", "value"]
    assert table.row.tolist() == [r for r in range(3) for _ in range(8)]
    wide = table.pivot(index="row", columns="quantity", values="value")
    np.testing.assert_allclose(wide["mean[0]"], model.mean(x)[:, 0])
    np.testing.assert_allclose(wide["cov[0,0]"], wide["sd[0]"] ** 2)
    np.testing.assert_allclose(wide["quantile[0.95]"], model.quantile(x, 0.95))
    np.testing.assert_allclose(wide[["weight[0]", "weight[1]"]], model.weights(x))
    with pytest.raises(FittedModelError, match="'median' is not known"):
        model.predict(x, what="median")
    with pytest.raises(FittedModelError, match="model=categorical"):
        model.predict(x, what="probabilities")


# --- schemas and errors --------------------------------------------------------------------
def test_text_x_columns_use_the_training_encoding(tmp_path):
    torch.manual_seed(10)
    module = MDNModule(in_dim=3, event_shape=[1], n_components=2, hidden_sizes=[3]).eval()
    levels = {"g": ["hi", "lo", "mid"]}
    run = write_run(tmp_path, module, data_config(["a", "g"], ["y"]), encoding=levels)
    fitted = mdnlab.load(run / "model" / "model.ckpt")  # config.yaml one level up
    assert fitted.schema.x_levels == levels
    frame = pd.DataFrame({"g": ["lo", "hi", "mid"], "a": [0.5, -1.0, 2.0]})
    numeric = np.array([[0.5, 1, 0], [-1.0, 0, 0], [2.0, 0, 1]])
    np.testing.assert_allclose(fitted.mean(frame), fitted.mean(numeric), rtol=0, atol=0)
    with pytest.raises(DataError, match="level 'top' was not seen in training"):
        fitted.mean(frame.assign(g=["lo", "top", "hi"]))


def test_errors_are_one_line(tmp_path):
    module = gaussian_module(2, 2, in_dim=2, seed=11)
    run = write_run(tmp_path / "run", module, data_config(["a", "b"], ["u", "v"]))
    fitted = mdnlab.load(run)
    x = np.zeros((3, 2))
    cases = [
        (lambda: mdnlab.load(tmp_path / "nope.ckpt"), LoadError, "no file or directory"),
        (lambda: mdnlab.load(str(tmp_path / "nope")), LoadError, "no file or directory"),
        (lambda: mdnlab.load(tmp_path), LoadError, "no model/model.ckpt"),
        (lambda: fitted.mean(pd.DataFrame({"a": [1.0], "c": [2.0]})), DataError, "'b' missing"),
        (lambda: fitted.mean(pd.DataFrame({"a": [1.0], "c": [2.0]})), DataError, "unexpected.*'c'"),
        (lambda: fitted.mean(np.zeros((3, 3))), DataError, r"expected \(n, 2\)"),
        (lambda: fitted.mean(np.zeros(3)), DataError, r"expected \(n, 2\)"),
        (lambda: fitted.mean(np.array([[1.0, np.nan]])), DataError, "row 0: not a finite"),
        (lambda: fitted.log_prob(x, np.zeros((3, 3))), DataError, "expected"),
        (lambda: fitted.log_prob(x, np.zeros((2, 2))), DataError, "2 rows but x has 3"),
        (lambda: fitted.cdf(x, 0.0), FittedModelError, "scalar y"),
        (lambda: fitted.modes(x), FittedModelError, "scalar y"),
        (lambda: fitted.class_probabilities(x), FittedModelError, "model=categorical"),
    ]
    cases.append(
        (
            lambda: mdnlab.load("runs:/abc", tracking_uri="foo://bar"),
            LoadError,
            "tracking URI 'foo://bar': unsupported scheme 'foo'",
        )
    )
    broken = write_run(tmp_path / "broken", module, data_config(["a", "b"], ["u", "v"]))
    (broken / "metrics.json").write_text("{not json")
    cases.append((lambda: mdnlab.load(broken), LoadError, r"metrics.json: expected JSON"))
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    cases.append((lambda: mdnlab.load(junk), LoadError, "not a readable checkpoint"))
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern) as info:
            call()
        assert isinstance(info.value, MdnlabError) and "\n" not in str(info.value)

    bare = tmp_path / "bare.ckpt"
    save_checkpoint(module, bare)
    loaded = mdnlab.load(bare)
    assert loaded.schema.x_columns is None
    np.testing.assert_allclose(loaded.mean(x), fitted.mean(x), rtol=0, atol=0)
    with pytest.raises(DataError, match="bare checkpoint"):
        loaded.mean(pd.DataFrame(x, columns=["a", "b"]))


def test_mlflow_round_trip(tmp_path, monkeypatch):
    from mdnlab import tracking

    module = gaussian_module(2, 1, in_dim=1, seed=12)
    artifacts = write_run(tmp_path / "artifacts", module, data_config(["x"], ["y"]))
    (artifacts / "plots").mkdir()
    (artifacts / "plots" / "big.csv").write_text("not downloaded\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment = tracking.prepare_experiment(uri, "fitted")
    log = tracking.RunLog.start(client, experiment, "tiny", {})
    log.log_artifacts(artifacts)
    log.finish()
    empty = tracking.RunLog.start(client, experiment, "no-model", {})
    empty.finish()

    rng = np.random.default_rng(12)
    x, y = rng.normal(2, 3, (30, 1)), rng.normal(5, 2, (30, 1))
    want = module.log_prob(torch.tensor(x), torch.tensor(y)).detach().numpy()
    by_id = mdnlab.load(log.run_id, tracking_uri=uri)
    assert by_id.run_id == log.run_id and by_id.schema.x_columns == ["x"]
    np.testing.assert_allclose(by_id.log_prob(x, y), want, rtol=1e-10, atol=0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for ref in (f"runs:/{log.run_id}", f"runs:/{log.run_id}/model"):
        np.testing.assert_allclose(mdnlab.load(ref).log_prob(x, y), want, rtol=1e-10, atol=0)
    with pytest.raises(LoadError, match="not an mdnlab run"):
        mdnlab.load(empty.run_id)
    with pytest.raises(LoadError, match="no MLflow run '0{32}'"):
        mdnlab.load("0" * 32)
    with pytest.raises(LoadError, match="no MLflow store"):
        mdnlab.load("0" * 32, tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()
