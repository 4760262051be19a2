"""The scale penalty (``train.scale_penalty``): its value against numpy's inverse-Wishart
terms, its derivatives against finite differences, the penalized objective's curvature in the
inference step against autograd's Hessian of the objective written out here, and what it is
for: a fit on data with an atom keeps every component scale far above the floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from mdnlab.errors import ConfigError
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.fit import FitData, PolishSettings, fit_members
from mdnlab.estimation.objective import objective
from mdnlab.families import build_family
from mdnlab.inference.curvature import hessian_mean_nll, hessian_mean_nll_loop
from mdnlab.inference.functional import FlatModel
from mdnlab.module import MDNModule


def covariances(family, raw: torch.Tensor) -> np.ndarray:
    components = family.mixture(raw).component_distribution
    if hasattr(components, "covariance_matrix"):
        return components.covariance_matrix.detach().numpy()
    variances = components.variance.detach().numpy()  # (batch, K, q)
    return np.einsum("bkq,qr->bkqr", variances, np.eye(variances.shape[-1]))


@pytest.mark.parametrize(
    ("covariance", "q"), [("full", 1), ("full", 2), ("full", 3), ("diagonal", 2)]
)
def test_value_is_the_inverse_wishart_terms(covariance, q):
    torch.manual_seed(0)
    family = build_family("gaussian", 3, (q,), covariance=covariance)
    raw = torch.randn(9, family.n_raw_outputs, dtype=torch.float64)
    want = [
        sum(np.trace(np.linalg.inv(s)) + np.linalg.slogdet(s)[1] - q for s in row)
        for row in covariances(family, raw)
    ]
    np.testing.assert_allclose(family.scale_penalty(raw).numpy(), want, rtol=1e-10)


def test_zero_at_the_identity_and_unbounded_as_a_scale_shrinks():
    family = build_family("gaussian", 2, (1,), min_scale=1e-6)
    raw = torch.zeros(1, family.n_raw_outputs, dtype=torch.float64)
    softplus_inverse_of_one = float(np.log(np.expm1(1.0)))
    raw[0, 2] = raw[0, 4] = softplus_inverse_of_one  # both scales exactly 1 (floor 1e-6 aside)
    assert abs(float(family.scale_penalty(raw))) < 1e-5
    values = []
    for log_scale in (-2.0, -4.0, -6.0):
        raw[0, 2] = float(np.log(np.expm1(np.exp(log_scale))))
        values.append(float(family.scale_penalty(raw)))
    assert values[0] < values[1] < values[2] and values[2] > 1e4


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_derivatives_against_finite_differences(covariance):
    torch.manual_seed(1)
    family = build_family("gaussian", 2, (2,), covariance=covariance)
    raw = torch.randn(3, family.n_raw_outputs, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(family.scale_penalty, (raw,))
    assert torch.autograd.gradgradcheck(family.scale_penalty, (raw,))


def small_module(seed=0, k=2, q=1, hidden=(3,)):
    torch.manual_seed(seed)
    return MDNModule(in_dim=1, event_shape=[q], n_components=k, hidden_sizes=list(hidden))


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 1))
    y = np.where(rng.uniform(size=(n, 1)) < 0.5, 1 + x, -1 - x) + 0.2 * rng.standard_normal((n, 1))
    return torch.as_tensor(x), torch.as_tensor(y)


def test_objective_adds_the_mean_penalty_over_the_rows_x():
    module = small_module()
    x, y = data()
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    c, lam, n = 2.0, 3.0, x.shape[0]
    raw = module.net(module.x_scaler(x))
    squares = sum(float(p.detach().pow(2).sum()) for p in module.net.parameters())
    want = (
        float(-module.log_prob(x, y).mean())
        + c / n * float(module.family.scale_penalty(raw).mean())
        + lam / (2 * n) * squares
    )
    assert float(objective(module, x, y, lam, c)) == pytest.approx(want, rel=1e-13)


def test_inference_curvature_is_that_of_the_penalized_objective():
    module = small_module(seed=2)
    x, y = data(seed=2)
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    c, n = 1.5, x.shape[0]
    module.scale_weight = c / n
    flat = FlatModel(module, "all")
    names = [name for name, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]

    def data_part(theta):  # mean NLL + (c / n) mean_i s(x_i), written out
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        raw = functional_call(
            module.net, {k[4:]: v for k, v in params.items()}, (module.x_scaler(x),)
        )
        log_q = module.family.mixture(raw).log_prob(module.y_scaler(y))
        log_q = log_q + module.y_scaler.log_abs_det_jacobian()
        return -log_q.mean() + c / n * module.family.scale_penalty(raw).mean()

    want = torch.autograd.functional.hessian(data_part, flat.theta.detach())
    fast = hessian_mean_nll(flat, x, y)  # the Kronecker-block route
    loop = hessian_mean_nll_loop(flat, x, y, chunk=16)  # the plain route
    np.testing.assert_allclose(fast.numpy(), want.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(loop.numpy(), want.numpy(), rtol=1e-9, atol=1e-11)
    module.scale_weight = 0.0
    unpenalized = hessian_mean_nll(flat, x, y)
    assert float((unpenalized - want).abs().max()) > 1e-3  # the penalty's curvature counts


def atom_data(n=300, seed=3):
    """y continuous except that 20% of the rows sit exactly on one value."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 1))
    y = x + 0.3 * rng.standard_normal((n, 1))
    y[rng.uniform(size=n) < 0.2] = 0.5
    return torch.as_tensor(x), torch.as_tensor(y)


def fit_one(module_of_seed, x, y, penalty, epochs, lr, scale_penalty, tol=1e-6):
    """One member: Adam for ``epochs`` (no early stopping), then the polish to ``tol``."""

    def make(seed):
        module = module_of_seed(seed)
        module.x_scaler.fit(x)
        module.y_scaler.fit(y)
        return module

    _, (member,) = fit_members(
        make,
        [0],
        FitData(x, y),
        penalty=penalty,
        trainer=TrainerSettings(epochs, epochs, 0.0),
        lr=lr,
        polish=PolishSettings(True, tol, 3000, 0),
        scale_penalty=scale_penalty,
    )
    return member


def fit_on_atom(scale_penalty: float):
    x, y = atom_data()
    member = fit_one(
        lambda seed: small_module(seed=seed, k=2, hidden=(4,)), x, y, 1.0, 400, 0.02, scale_penalty
    )
    with torch.no_grad():
        ratio = member.module.family.scale_floor_ratio(member.module.mixture(x))
    return ratio, member


def test_an_atom_collapses_a_component_without_the_penalty_and_not_with_it():
    ratio_without, _ = fit_on_atom(0.0)
    ratio_with, member = fit_on_atom(1.0)
    assert ratio_without < 10.0  # a component sits on the atom, held only by min_scale
    assert ratio_with > 10.0 and member.converged
    assert member.scale_term > 0


def test_categorical_value_is_dirichlet_log_density_relative_to_uniform():
    from scipy.stats import dirichlet

    torch.manual_seed(2)
    family = build_family("categorical", 2, (2,), n_classes=[3, 2])
    raw = torch.randn(5, family.n_raw_outputs, dtype=torch.float64)
    a = 0.7  # any pseudo-count: the terms are proportional to it
    want = []
    for row in range(5):
        total = 0.0
        for probs in family.mixture(raw).component_distribution.probs:  # (5, K, C_d)
            for p in probs[row].numpy():
                c = p.size
                alpha = np.full(c, 1.0 + a)
                uniform = np.full(c, 1.0 / c)
                total += (dirichlet.logpdf(uniform, alpha) - dirichlet.logpdf(p, alpha)) / (a * c)
        want.append(total)
    np.testing.assert_allclose(family.scale_penalty(raw).numpy(), want, rtol=1e-10)
    assert torch.autograd.gradcheck(family.scale_penalty, (raw.requires_grad_(),))


def separable_fit(scale_penalty: float):
    x = torch.linspace(-1, 1, 80, dtype=torch.float64)[:, None]
    y = (x[:, 0] > 0).to(torch.float64)[:, None]  # classes separated at x = 0

    def categorical(seed):
        torch.manual_seed(seed)
        return MDNModule(
            1, [1], n_components=1, hidden_sizes=[3], family="categorical", n_classes=[2]
        )

    member = fit_one(categorical, x, y, 0.0, 200, 0.05, scale_penalty, tol=1e-7)
    with torch.no_grad():
        probs = member.module.mixture(x).component_distribution.probs[0]
    return float(probs.min()), member


def test_dirichlet_pseudo_counts_keep_class_probabilities_off_0_and_1_on_separable_rows():
    smallest_without, _ = separable_fit(0.0)
    smallest_with, member = separable_fit(1.0)
    assert smallest_without < 1e-4  # the MLE runs off to a hard 0/1 rule
    assert smallest_with > 1e-3 and member.converged


def test_wishart_value_is_inverse_wishart_on_the_mean_plus_gamma_on_the_df_excess():
    from scipy.stats import gamma

    from mdnlab.families.wishart import DF_EXCESS_REFERENCE

    torch.manual_seed(4)
    p = 3
    family = build_family("wishart", 2, (p, p))
    raw = torch.randn(6, family.n_raw_outputs, dtype=torch.float64)
    components = family.mixture(raw).component_distribution
    df = components.df.numpy()
    tril = components.scale_tril.numpy()
    prior = gamma(a=2.0, scale=DF_EXCESS_REFERENCE)  # log density: log e - e / e0 + const
    want = np.zeros(6)
    for b in range(6):
        for k in range(2):
            mean = df[b, k] * tril[b, k] @ tril[b, k].T
            excess = df[b, k] - (p - 1)
            want[b] += np.trace(np.linalg.inv(mean)) + np.linalg.slogdet(mean)[1] - p
            want[b] += prior.logpdf(DF_EXCESS_REFERENCE) - prior.logpdf(excess)
    np.testing.assert_allclose(family.scale_penalty(raw).numpy(), want, rtol=1e-10)
    assert torch.autograd.gradcheck(family.scale_penalty, (raw.requires_grad_(),))


def wishart_atom_fit(scale_penalty: float):
    """2 x 2 Wishart targets, 20% of them the same matrix: an atom."""
    from torch.distributions import Wishart

    torch.manual_seed(3)
    n = 300
    x = torch.rand(n, 1, dtype=torch.float64) * 2 - 1
    scale = torch.eye(2, dtype=torch.float64) * (1 + 0.5 * x[:, :, None]) / 6
    y = Wishart(torch.tensor(6.0, dtype=torch.float64), covariance_matrix=scale).sample()
    y[torch.rand(n) < 0.2] = torch.tensor([[1.0, 0.3], [0.3, 0.8]], dtype=torch.float64)

    def wishart(seed):
        torch.manual_seed(seed)
        return MDNModule(1, [2, 2], n_components=2, hidden_sizes=[4], family="wishart")

    member = fit_one(wishart, x, y, 0.01, 1500, 0.05, scale_penalty)
    with torch.no_grad():
        ratio = member.module.family.scale_floor_ratio(member.module.mixture(x))
    return ratio, member


def test_a_wishart_atom_pins_a_component_to_the_floor_without_the_penalty_and_not_with_it():
    ratio_without, _ = wishart_atom_fit(0.0)
    ratio_with, member = wishart_atom_fit(1.0)
    assert ratio_without < 10.0  # df grows and S shrinks onto the floor at the atom
    assert ratio_with > 10.0 and member.converged


def test_scale_penalty_refusals():
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from mdnlab.pipeline import Estimation

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for overrides, message in (
            (["train.penalty_select=evidence", "train.scale_penalty=1"], "the evidence of the"),
            (["train.scale_penalty=-1"], "train.scale_penalty must be a finite number >= 0"),
        ):
            cfg = compose("train", overrides=overrides)
            with pytest.raises(ConfigError, match=message):
                Estimation.from_config(cfg)


@pytest.mark.parametrize(("covariance", "q"), [("full", 1), ("full", 3), ("diagonal", 2)])
def test_value_with_a_reference_is_the_inverse_wishart_terms_around_it(covariance, q):
    torch.manual_seed(4)
    family = build_family("gaussian", 2, (q,), covariance=covariance)
    raw = torch.randn(7, family.n_raw_outputs, dtype=torch.float64)
    reference = torch.linspace(0.05, 0.8, q, dtype=torch.float64)
    r = np.diag(reference.numpy())
    want = [
        sum(
            np.trace(r @ np.linalg.inv(s)) + np.linalg.slogdet(s)[1] - np.linalg.slogdet(r)[1] - q
            for s in row
        )
        for row in covariances(family, raw)
    ]
    got = family.scale_penalty(raw, reference).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_with_a_reference_the_penalty_is_zero_at_it_and_smaller_there_than_at_the_identity():
    family = build_family("gaussian", 1, (1,), min_scale=1e-9)
    raw = torch.zeros(1, family.n_raw_outputs, dtype=torch.float64)
    reference = torch.tensor([0.01], dtype=torch.float64)
    raw[0, 1] = float(np.log(np.expm1(0.1)))  # scale 0.1: variance 0.01, the reference
    assert abs(float(family.scale_penalty(raw, reference))) < 1e-7
    # the identity reference charges 1/0.01 + log 0.01 - 1 = 94.4 for the same component
    assert float(family.scale_penalty(raw)) == pytest.approx(100 + np.log(0.01) - 1, rel=1e-6)
