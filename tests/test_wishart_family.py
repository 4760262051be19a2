"""The Wishart family, its scaler and the synth_wishart simulator against independent references.

The raw head layout is decoded here in numpy (gating: K - 1 free logits and a fixed 0 logit;
per component 1 df entry, df = p - 1 + min_df_excess + softplus(raw); p softplus diagonal
entries of L floored by ``min_scale``; then the strictly-lower entries of L in row-major
order) and densities are computed with ``scipy.stats.wishart``, never with the code under test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from mdnlab.data.simulators import SIMULATORS, wishart_params, write_dataset
from mdnlab.errors import DataError
from mdnlab.families import build_family
from mdnlab.families.wishart import WishartFamily, WishartScaler
from mdnlab.module import MDNModule

torch.set_num_threads(1)

CASES = list(itertools.product([1, 2, 3], [1, 3]))
TRIANGLE = {p: [(i, j) for i in range(p) for j in range(i + 1)] for p in (1, 2, 3, 4)}


def softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)


def decode(raw: np.ndarray, k: int, p: int, min_scale: float, min_df_excess: float):
    """log weights (n, K), df (n, K), scale matrices (n, K, p, p), from the documented layout."""
    n = raw.shape[0]
    logits = np.concatenate([raw[:, : k - 1], np.zeros((n, 1))], axis=1)
    log_w = logits - logsumexp(logits, axis=1, keepdims=True)
    per = 1 + p + p * (p - 1) // 2
    comp = raw[:, k - 1 :].reshape(n, k, per)
    df = (p - 1) + min_df_excess + softplus(comp[..., 0])
    chol = np.zeros((n, k, p, p))
    for i in range(p):
        chol[..., i, i] = softplus(comp[..., 1 + i]) + min_scale
    pos = 1 + p
    for i in range(p):
        for j in range(i):
            chol[..., i, j] = comp[..., pos]
            pos += 1
    assert pos == per
    return log_w, df, chol @ np.swapaxes(chol, -1, -2)


def scipy_mixture_logpdf(y, log_w, df, scale):
    n, k = log_w.shape
    terms = np.empty((n, k))
    for b in range(n):
        for c in range(k):
            terms[b, c] = log_w[b, c] + stats.wishart.logpdf(y[b], df[b, c], scale[b, c])
    return logsumexp(terms, axis=1)


def random_spd(rng, n: int, p: int, scale: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(n, p, p))
    return scale * (a @ np.swapaxes(a, 1, 2) / p + 0.3 * np.eye(p))


@pytest.mark.parametrize(("p", "k"), CASES)
def test_n_raw_outputs_matches_layout(p, k):
    family = WishartFamily(k, (p, p))
    assert family.n_raw_outputs == (k - 1) + k * (1 + p + p * (p - 1) // 2)


@pytest.mark.parametrize(("p", "k"), CASES)
def test_mixture_log_prob_matches_scipy(p, k):
    rng = np.random.default_rng(10 * p + k)
    min_scale, min_df_excess = 0.05, 0.02
    family = WishartFamily(k, (p, p), min_scale=min_scale, min_df_excess=min_df_excess)
    raw = rng.normal(scale=1.2, size=(15, family.n_raw_outputs))
    y = random_spd(rng, raw.shape[0], p)
    mixture = family.mixture(torch.as_tensor(raw))
    got = mixture.log_prob(torch.as_tensor(y)).numpy()
    log_w, df, scale = decode(raw, k, p, min_scale, min_df_excess)
    want = scipy_mixture_logpdf(y, log_w, df, scale)
    assert got.shape == (raw.shape[0],)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        mixture.mixture_distribution.probs.numpy(), np.exp(log_w), rtol=1e-12
    )


def test_df_stays_above_p_minus_one_for_extreme_raw_values():
    p, k = 3, 2
    family = WishartFamily(k, (p, p), min_df_excess=1e-3)
    raw = np.zeros((4, family.n_raw_outputs))
    per = family.params_per_component
    for c in range(k):
        raw[:, (k - 1) + c * per] = [-1e4, -50.0, 0.0, 50.0]
    components = family.mixture(torch.as_tensor(raw)).component_distribution
    df = components.df.numpy()
    assert np.all(df > p - 1)
    np.testing.assert_allclose(df[0], p - 1 + 1e-3, rtol=1e-12)
    # The density is finite even at the df floor.
    y = torch.as_tensor(random_spd(np.random.default_rng(0), 4, p))
    assert torch.all(torch.isfinite(family.mixture(torch.as_tensor(raw)).log_prob(y)))


def test_min_scale_floors_the_diagonal():
    family = WishartFamily(1, (2, 2), min_scale=0.25)
    raw = np.array([[1.0, -80.0, -80.0, 0.0]])
    scale_tril = family.mixture(torch.as_tensor(raw)).component_distribution.scale_tril
    np.testing.assert_allclose(scale_tril.numpy()[0, 0], 0.25 * np.eye(2), atol=1e-30)


def fitted_scaler(d: np.ndarray) -> WishartScaler:
    scaler = WishartScaler(len(d))
    with torch.no_grad():
        scaler.d.copy_(torch.as_tensor(d))
    return scaler


def test_scaler_fit_forward_inverse():
    rng = np.random.default_rng(3)
    a = np.array([1.0, 40.0, 0.01])
    y = a[:, None] * random_spd(rng, 50, 3) * a[None, :]
    scaler = WishartScaler(3).fit(torch.as_tensor(y))
    d = np.sqrt(np.mean(np.diagonal(y, axis1=1, axis2=2), axis=0))
    np.testing.assert_allclose(scaler.d.numpy(), d, rtol=1e-12)
    assert scaler.d.dtype == torch.float64 and "d" in scaler.state_dict()
    y_s = scaler(torch.as_tensor(y)).numpy()
    np.testing.assert_allclose(y_s, y / d[:, None] / d[None, :], rtol=1e-12)
    np.testing.assert_allclose(np.mean(np.diagonal(y_s, axis1=1, axis2=2), axis=0), 1.0)
    np.testing.assert_allclose(scaler.inverse(torch.as_tensor(y_s)).numpy(), y, rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(y_s) > 0)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_scaler_log_abs_det_jacobian_vs_autograd(p):
    """log |det| of the map on the p(p+1)/2 free entries, by autograd, vs the closed form."""
    d = np.random.default_rng(p).uniform(0.05, 30.0, size=p)
    scaler = fitted_scaler(d)
    rows, cols = np.tril_indices(p)

    def on_free_entries(v: torch.Tensor) -> torch.Tensor:
        y = v.new_zeros(p, p)
        y = y.index_put((torch.as_tensor(rows), torch.as_tensor(cols)), v)
        y = y + y.T - torch.diag(torch.diagonal(y))
        return scaler(y)[rows, cols]

    v = torch.as_tensor(np.random.default_rng(9).normal(size=len(rows)))
    jac = torch.autograd.functional.jacobian(on_free_entries, v).numpy()
    want = np.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(scaler.log_abs_det_jacobian().item(), want, rtol=1e-12)
    np.testing.assert_allclose(want, -(p + 1) * np.log(d).sum(), rtol=1e-12)


def make_module(hidden=(3,), seed=0) -> MDNModule:
    torch.manual_seed(seed)
    return MDNModule(
        in_dim=1, event_shape=[3, 3], family="wishart", n_components=2, hidden_sizes=list(hidden)
    )


def test_nll_in_original_units_is_invariant_to_rescaling():
    """Y' = A Y A, A = diag(a): the fitted scaler maps Y' and Y to the same standardised
    matrices, so log q(Y') = log q(Y) - (p + 1) sum log a_i (change of variables; with
    a = c 1: -(p + 1) p log c)."""
    sim = SIMULATORS["synth_wishart"]
    x, y = sim.sample(200, np.random.default_rng(5))
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(y)
    module = make_module()
    module.x_scaler.fit(x_t)
    module.y_scaler.fit(y_t)
    base = module.log_prob(x_t, y_t).detach().numpy()
    for a in (np.full(3, 7.5), np.array([0.01, 3.0, 250.0])):
        module.y_scaler.fit(torch.as_tensor(a[:, None] * y * a[None, :]))
        rescaled = module.log_prob(x_t, torch.as_tensor(a[:, None] * y * a[None, :]))
        want = base - 4 * np.log(a).sum()
        np.testing.assert_allclose(rescaled.detach().numpy(), want, rtol=1e-10, atol=1e-9)
    c = 7.5
    np.testing.assert_allclose(4 * np.log(np.full(3, c)).sum(), (3 + 1) * 3 * np.log(c))


@pytest.mark.parametrize("p", [1, 2, 3])
def test_quantities_mean_in_original_units(p):
    rng = np.random.default_rng(20 + p)
    k, min_scale, min_df_excess = 3, 0.02, 1e-3
    family = WishartFamily(k, (p, p), min_scale=min_scale)
    raw = rng.normal(size=(6, family.n_raw_outputs))
    d = rng.uniform(0.1, 20.0, size=p)
    out = family.quantities(family.mixture(torch.as_tensor(raw)), fitted_scaler(d))
    assert sorted(out) == sorted(f"mean[{i},{j}]" for i, j in TRIANGLE[p])
    log_w, df, scale = decode(raw, k, p, min_scale, min_df_excess)
    mean_s = np.einsum("bk,bkij->bij", np.exp(log_w) * df, scale)
    mean = d[:, None] * mean_s * d[None, :]
    for i, j in TRIANGLE[p]:
        assert out[f"mean[{i},{j}]"].shape == (raw.shape[0],)
        np.testing.assert_allclose(out[f"mean[{i},{j}]"].numpy(), mean[:, i, j], rtol=1e-10)


# --- prepare_targets -------------------------------------------------------------------------


def lower_columns(y: np.ndarray) -> np.ndarray:
    p = y.shape[1]
    return np.column_stack([y[:, i, j] for i, j in TRIANGLE[p]])


def test_prepare_targets_npz_shape_and_dtype():
    y = random_spd(np.random.default_rng(1), 8, 3).astype(np.float32)
    y = 0.5 * (y + np.swapaxes(y, 1, 2))
    out = WishartFamily.prepare_targets(y, "data/m.npz", [])
    assert out.shape == (8, 3, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out, y.astype(np.float64))


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_prepare_targets_csv_triangle_round_trip(p):
    y = random_spd(np.random.default_rng(p), 10, p)
    columns = [f"y[{i},{j}]" for i, j in TRIANGLE[p]]
    out = WishartFamily.prepare_targets(lower_columns(y), "data/m.csv", columns)
    assert out.shape == (10, p, p)
    np.testing.assert_allclose(out, y, rtol=1e-15)


def test_prepare_targets_names_the_non_symmetric_row():
    y = random_spd(np.random.default_rng(2), 6, 3)
    y[4, 0, 2] += 1e-3
    y[5, 1, 0] += 1.0
    with pytest.raises(DataError) as info:
        WishartFamily.prepare_targets(y, "data/m.npz", [])
    msg = str(info.value)
    assert "data/m.npz" in msg and "row 4" in msg and "not symmetric" in msg
    assert "2 such rows" in msg and "line" not in msg and "positive definite" in msg
    # Rounding-level asymmetry is accepted.
    z = random_spd(np.random.default_rng(2), 6, 3)
    z[3, 0, 1] *= 1 + 1e-12
    WishartFamily.prepare_targets(z, "data/m.npz", [])


def test_prepare_targets_names_the_non_positive_definite_row_with_csv_line():
    y = random_spd(np.random.default_rng(4), 7, 3)
    y[3] = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # eigenvalue -1
    y[5] = np.diag([1.0, 0.0, 2.0])  # singular
    columns = [f"y[{i},{j}]" for i, j in TRIANGLE[3]]
    with pytest.raises(DataError) as info:
        WishartFamily.prepare_targets(lower_columns(y), "data/m.csv", columns)
    msg = str(info.value)
    assert "data/m.csv" in msg and "row 3 (line 5)" in msg
    assert "not positive definite" in msg and "2 such rows" in msg
    with pytest.raises(DataError, match=r"row 1: .*not positive definite .*eigenvalue 0;"):
        WishartFamily.prepare_targets(y[4:], "data/m.npz", [])


@pytest.mark.parametrize("m", [2, 4, 5])
def test_prepare_targets_rejects_non_triangular_column_counts(m):
    columns = [f"y{j}" for j in range(m)]
    with pytest.raises(DataError) as info:
        WishartFamily.prepare_targets(np.ones((5, m)), "data/v.csv", columns)
    msg = str(info.value)
    assert "data/v.csv" in msg and "model=wishart" in msg and f"names {m}" in msg
    assert "y[0,0], y[1,0], y[1,1], y[2,0]" in msg and "row-major" in msg


def test_prepare_targets_rejects_non_square_arrays():
    with pytest.raises(DataError, match=r"\(4, 2, 3\)"):
        WishartFamily.prepare_targets(np.ones((4, 2, 3)), "data/m.npz", [])


# --- the simulator ---------------------------------------------------------------------------


def test_simulator_log_prob_matches_scipy():
    sim = SIMULATORS["synth_wishart"]
    x, y = sim.sample(8, np.random.default_rng(11))
    assert x.shape == (8, 1) and y.shape == (8, 3, 3)
    got = sim.log_prob(x, y)
    w, df, chol = wishart_params(x)
    for b in range(8):
        terms = [
            np.log(w[b, c]) + stats.wishart.logpdf(y[b], df[b, c], chol[b, c] @ chol[b, c].T)
            for c in range(2)
        ]
        np.testing.assert_allclose(got[b], logsumexp(terms), rtol=1e-11)
    assert np.all(df > 2.0 + 1.0)


def test_simulator_sample_mean_and_distribution_at_fixed_x():
    """Mean matrix vs sum_k pi_k df_k S_k within Monte Carlo error, and the law of a summary
    statistic vs draws from scipy.stats.wishart."""
    sim = SIMULATORS["synth_wishart"]
    n = 40_000
    rng = np.random.default_rng(12)
    for x0 in (-0.7, 0.4):
        x = np.full((n, 1), x0)
        y = sim.sample_y(x, rng)
        w, df, chol = wishart_params(x[:1])
        scale = chol[0] @ np.swapaxes(chol[0], -1, -2)
        want = np.einsum("k,kij->ij", w[0] * df[0], scale)
        se = y.std(axis=0) / np.sqrt(n)
        assert np.all(np.abs(y.mean(axis=0) - want) < 5 * se)
        counts = rng.multinomial(n, w[0])
        ref = np.concatenate(
            [
                stats.wishart(df[0, c], scale[c])
                .rvs(size=counts[c], random_state=rng)
                .reshape(-1, 3, 3)
                for c in range(2)
            ]
        )
        for stat in (lambda m: np.linalg.slogdet(m)[1], lambda m: m[:, 2, 1]):
            assert stats.ks_2samp(stat(y), stat(ref)).pvalue > 1e-3


def test_write_dataset_round_trip(tmp_path: Path):
    sim = SIMULATORS["synth_wishart"]
    assert sim.y_cols == ["y[0,0]", "y[1,0]", "y[1,1]", "y[2,0]", "y[2,1]", "y[2,2]"]
    write_dataset("synth_wishart", tmp_path, n=30, seed=6, eval_n=20, eval_seed=7)
    frame = pd.read_csv(tmp_path / "data.csv")
    assert list(frame.columns) == ["x"] + sim.y_cols
    y = WishartFamily.prepare_targets(
        frame[sim.y_cols].to_numpy(), str(tmp_path / "data.csv"), sim.y_cols
    )
    assert y.shape == (30, 3, 3)
    x_want, y_want = sim.sample(30, np.random.default_rng(6))
    np.testing.assert_array_equal(frame["x"].to_numpy(), x_want[:, 0])
    np.testing.assert_array_equal(y, y_want)
    with np.load(tmp_path / "eval.npz") as archive:
        x_eval, y_eval, log_p = archive["x"], archive["y"], archive["log_p"]
    assert y_eval.shape == (20, 3, 3)
    x_e, y_e = sim.sample(20, np.random.default_rng(7))
    np.testing.assert_array_equal(x_eval, x_e)
    np.testing.assert_array_equal(y_eval, y_e)
    np.testing.assert_array_equal(WishartFamily.prepare_targets(y_eval, "e.npz", []), y_e)
    np.testing.assert_allclose(log_p, sim.log_prob(x_e, y_e), rtol=1e-13)


# --- the module ------------------------------------------------------------------------------


def test_module_round_trip_log_prob_and_gradient():
    sim = SIMULATORS["synth_wishart"]
    x, y = sim.sample(64, np.random.default_rng(13))
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(y)
    module = make_module(hidden=(3,))
    assert isinstance(module.family, WishartFamily)
    module.x_scaler.fit(x_t)
    module.y_scaler.fit(y_t)
    log_p = module.log_prob(x_t, y_t)
    assert log_p.shape == (64,) and torch.all(torch.isfinite(log_p))
    module.nll(x_t, y_t).backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.all(torch.isfinite(g)) for g in grads)
    out = module.quantities(x_t)
    # 6 entries of E[Y|x]; ordered components add weight[k] and 6 component_mean[k,i,j] each
    assert len(out) == 6 + 2 * 7 and all(torch.all(torch.isfinite(v)) for v in out.values())
    # The scaler is in the state dict, so a checkpoint carries it.
    state = module.state_dict()
    assert "y_scaler.d" in state
    restored = make_module(hidden=(3,), seed=1)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.log_prob(x_t, y_t), log_p)


def test_build_family_registers_wishart():
    family = build_family("wishart", 2, (3, 3), min_scale=0.01, min_df_excess=0.1)
    assert isinstance(family, WishartFamily) and family.min_df_excess == 0.1
    with pytest.raises(ValueError, match=r"\(p, p\)"):
        build_family("wishart", 2, (3,))


def test_inference_functional_paths_work_under_vmap():
    """The inference step takes per-sample scores with torch.func.vmap: torch's own Wishart
    fails there (data-dependent df checks, mvlgamma's .item()); the family's must not."""
    from mdnlab.inference.curvature import hessian_mean_nll, per_sample_scores
    from mdnlab.inference.functional import FlatModel

    sim = SIMULATORS["synth_wishart"]
    x, y = sim.sample(12, np.random.default_rng(14))
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(y)
    module = make_module(hidden=(2,))
    module.x_scaler.fit(x_t)
    module.y_scaler.fit(y_t)
    flat = FlatModel(module)
    scores = per_sample_scores(flat, x_t, y_t)
    assert scores.shape == (12, flat.n_params)
    for i in (0, 7):
        module.zero_grad()
        module.log_prob(x_t[i : i + 1], y_t[i : i + 1]).sum().backward()
        want = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
        torch.testing.assert_close(scores[i], want, rtol=1e-10, atol=1e-12)
    hessian = hessian_mean_nll(flat, x_t, y_t)
    assert hessian.shape == (flat.n_params, flat.n_params) and torch.all(torch.isfinite(hessian))
    torch.testing.assert_close(hessian, hessian.T)


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # torch's sampler, spurious
def test_components_sample_and_expand_like_torch_wishart():
    family = WishartFamily(2, (3, 3))
    raw = torch.as_tensor(np.random.default_rng(15).normal(size=(4, family.n_raw_outputs)))
    components = family.mixture(raw).component_distribution
    draws = components.sample((5,))
    assert draws.shape == (5, 4, 2, 3, 3)
    expanded = components.expand((6, 4, 2))
    torch.testing.assert_close(
        expanded.log_prob(draws[0]), components.log_prob(draws[0]).expand(6, 4, 2)
    )
