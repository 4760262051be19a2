"""Simulators with known p(y | x): checked against independent references, not their own output.

- densities integrate to one (adaptive quadrature / fine grids);
- samples agree with the densities (KS and chi-square tests at fixed x; probability integral
  transform on joint samples, with CDFs obtained by numerically integrating exp(log_prob));
- Bishop's m(x) against a brute-force count; the heavy-tail density against scipy;
- the writer is reproducible and round-trips; the CLI works and fails cleanly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from mdnlab.data import simulators as sims
from mdnlab.data.simulators import SIMULATORS, write_dataset

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "src" / "make_synthetic.py"
X_FIXED = [-0.9, -0.35, 0.1, 0.8]
X_FIXED_BISHOP = [0.05, 0.35, 0.5, 0.62, 0.9]  # x must lie in (-0.1, 1.1)
ONE_D = ["synth_mixture", "bishop", "synth_heavytail"]
P_MIN = 1e-3  # fixed seeds, so these statistical tests are deterministic


def density(name: str, x0: float, y: np.ndarray) -> np.ndarray:
    """exp(log p(y | x0)) for y of shape (m,) or (m, q)."""
    y = np.asarray(y, dtype=float)
    return np.exp(SIMULATORS[name].log_prob(np.full((len(y), 1), x0), y))


def grid_cdf(name: str, x0: float) -> tuple[np.ndarray, np.ndarray]:
    """Conditional CDF of a 1-d y at x0 on a fine grid, by cumulative trapezoid of the density."""
    lo, hi = {"synth_mixture": (-4, 4), "bishop": (0, 1), "synth_heavytail": (-80, 30)}[name]
    y = np.linspace(lo, hi, 400_001)
    cdf = integrate.cumulative_trapezoid(density(name, x0, y), y, initial=0.0)
    return y, cdf


def cdf_up_to(name: str, x: np.ndarray, y: np.ndarray, n_grid: int = 1000) -> np.ndarray:
    """F(y_i | x_i) for each joint sample, integrating exp(log_prob) numerically per row."""
    if name == "bishop":
        grid = np.linspace(0.0, 1.0, n_grid)[None, :] * y  # [0, t_i]
    else:  # y_i - w with w on a geometric grid: resolves the peak and the far tail alike
        w = np.concatenate([[0.0], np.geomspace(1e-7, 1e3, n_grid - 1)])
        grid = y - w[::-1][None, :]
    x_rep = np.repeat(x, n_grid, axis=0)
    dens = np.exp(SIMULATORS[name].log_prob(x_rep, grid.reshape(-1, 1))).reshape(grid.shape)
    return integrate.trapezoid(dens, grid, axis=1)


# --------------------------------------------------------------------------------------------
# registry, shapes, determinism
# --------------------------------------------------------------------------------------------


def test_registry_has_the_simulators_with_their_columns():
    assert {"synth_mixture", "synth_mixture2d", "bishop", "synth_heavytail"} <= set(SIMULATORS)
    assert {"synth_latent_class", "synth_wishart"} <= set(SIMULATORS)
    cols = {name: (s.x_cols, s.y_cols) for name, s in SIMULATORS.items()}
    assert cols["synth_mixture"] == (["x"], ["y"])
    assert cols["synth_mixture2d"] == (["x"], ["y1", "y2"])
    assert cols["bishop"] == (["x"], ["t"])
    assert cols["synth_heavytail"] == (["x"], ["y"])
    assert cols["synth_latent_class"] == (["x"], ["y1", "y2"])
    for name, sim in SIMULATORS.items():
        assert sim.name == name
        assert sim.__doc__ and "x" in sim.__doc__


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_sample_shapes_dtype_determinism_and_finite_log_prob(name):
    sim = SIMULATORS[name]
    x, y = sim.sample(500, np.random.default_rng(3))
    assert x.shape == (500, len(sim.x_cols)) and flat_targets(y).shape == (500, len(sim.y_cols))
    assert x.dtype == np.float64 and y.dtype == np.float64
    lp = sim.log_prob(x, y)
    assert lp.shape == (500,) and np.all(np.isfinite(lp))
    x2, y2 = sim.sample(500, np.random.default_rng(3))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    # 1-d x and y may be passed flat
    if y.ndim == 2 and y.shape[1] == 1:
        np.testing.assert_array_equal(sim.log_prob(x[:, 0], y[:, 0]), lp)


def flat_targets(y: np.ndarray) -> np.ndarray:
    """(n, q) as is; (n, p, p) matrices as their lower triangle in row-major order (the CSV)."""
    if y.ndim == 2:
        return y
    rows, cols = np.tril_indices(y.shape[1])
    return y[:, rows, cols]


@pytest.mark.parametrize("name", ["synth_mixture", "synth_mixture2d", "synth_heavytail"])
def test_x_is_uniform_on_minus_one_one(name):
    x, _ = SIMULATORS[name].sample(20_000, np.random.default_rng(4))
    assert stats.kstest(x[:, 0], stats.uniform(-1, 2).cdf).pvalue > P_MIN


# --------------------------------------------------------------------------------------------
# densities integrate to one
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["synth_mixture", "synth_heavytail"])
@pytest.mark.parametrize("x0", X_FIXED)
def test_smooth_1d_density_integrates_to_one(name, x0):
    def f(y):
        return float(density(name, x0, np.array([y]))[0])

    # adaptive quadrature; the finite middle piece holds all modes
    total = (
        integrate.quad(f, -np.inf, -5)[0]
        + integrate.quad(f, -5, 5, limit=200)[0]
        + integrate.quad(f, 5, np.inf)[0]
    )
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("x0", X_FIXED)
def test_mixture2d_density_integrates_to_one(x0):
    g = np.linspace(-4.5, 4.5, 601)
    y1, y2 = np.meshgrid(g, g, indexing="ij")
    dens = density("synth_mixture2d", x0, np.column_stack([y1.ravel(), y2.ravel()]))
    total = integrate.trapezoid(integrate.trapezoid(dens.reshape(y1.shape), g, axis=1), g)
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("x0", [-0.08, 0.0, 0.3, 0.45, 0.5, 0.6, 0.75, 1.09])
def test_bishop_density_integrates_to_one_over_0_1(x0):
    t = np.linspace(0.0, 1.0, 2_000_001)
    assert integrate.trapezoid(density("bishop", x0, t), t) == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------------------------
# mixtures: the density is the mixture that the parameters describe (scipy reference)
# --------------------------------------------------------------------------------------------


def test_mixture1d_log_prob_matches_scipy_mixture_of_normals():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, size=(300, 1))
    y = rng.uniform(-3, 3, size=(300, 1))
    w, mu, sd = sims.mixture1d_params(x)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    ref = (w * stats.norm.pdf(y, mu, sd)).sum(axis=1)
    np.testing.assert_allclose(SIMULATORS["synth_mixture"].log_prob(x, y), np.log(ref), rtol=1e-12)


def test_mixture1d_is_multimodal_for_most_x():
    y = np.linspace(-3, 3, 6001)
    n_modes = []
    for x0 in np.linspace(-1, 1, 41):
        d = density("synth_mixture", x0, y)
        n_modes.append(int(np.sum((d[1:-1] > d[:-2]) & (d[1:-1] > d[2:]))))
    assert np.mean(np.array(n_modes) >= 2) >= 0.8
    assert max(n_modes) == 3


def test_mixture2d_log_prob_matches_scipy_multivariate_normal():
    rng = np.random.default_rng(6)
    for x0 in [-0.7, 0.0, 0.6]:
        y = rng.uniform(-2.5, 2.5, size=(50, 2))
        w, mean, sd, rho = (a[0] for a in sims.mixture2d_params(np.array([[x0]])))
        ref = np.zeros(len(y))
        for k in range(len(w)):
            cov_xy = rho[k] * sd[k, 0] * sd[k, 1]
            cov = [[sd[k, 0] ** 2, cov_xy], [cov_xy, sd[k, 1] ** 2]]
            ref += w[k] * stats.multivariate_normal(mean[k], cov).pdf(y)
        got = SIMULATORS["synth_mixture2d"].log_prob(np.full((50, 1), x0), y)
        np.testing.assert_allclose(got, np.log(ref), rtol=1e-10)


def test_mixture2d_first_component_correlation_is_0_8_tanh_2x():
    _, _, _, rho = sims.mixture2d_params(np.array([[-0.5], [0.0], [0.7]]))
    np.testing.assert_allclose(rho[:, 0], 0.8 * np.tanh(2 * np.array([-0.5, 0.0, 0.7])))


# --------------------------------------------------------------------------------------------
# samples agree with the densities
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, x0",
    [(n, x0) for n in ["synth_mixture", "synth_heavytail"] for x0 in X_FIXED]
    + [("bishop", x0) for x0 in X_FIXED_BISHOP],
)
def test_conditional_samples_match_integrated_cdf(name, x0):
    y_grid, cdf = grid_cdf(name, x0)
    y = SIMULATORS[name].sample_y(np.full((20_000, 1), x0), np.random.default_rng(7))[:, 0]
    result = stats.kstest(y, lambda v: np.interp(v, y_grid, cdf, left=0.0, right=1.0))
    assert result.pvalue > P_MIN


@pytest.mark.parametrize("name", ONE_D)
def test_joint_samples_have_uniform_probability_integral_transform(name):
    # For bishop this checks the literal generative model (t first, then x) against p(t | x).
    n = 5000 if name == "bishop" else 1000  # bishop's log_prob is cheap on repeated x
    x, y = SIMULATORS[name].sample(n, np.random.default_rng(8))
    u = cdf_up_to(name, x, y)
    assert stats.kstest(u, "uniform").pvalue > P_MIN
    # binned too: KS is weak at the ends of [0, 1], where a too narrow or too wide conditional
    # distribution shows up
    counts = np.histogram(u, bins=20, range=(0.0, 1.0))[0]
    assert stats.chisquare(counts).pvalue > P_MIN


@pytest.mark.parametrize("x0", X_FIXED)
def test_mixture2d_samples_match_cell_probabilities(x0):
    # Cell probabilities by the midpoint rule on 0.0125-wide subcells of [-4.5, 4.5]^2.
    h, n_sub, n_cell = 0.0125, 60, 12  # 12 x 12 cells of width 0.75
    centres = -4.5 + h * (np.arange(n_sub * n_cell) + 0.5)
    c1, c2 = np.meshgrid(centres, centres, indexing="ij")
    dens = density("synth_mixture2d", x0, np.column_stack([c1.ravel(), c2.ravel()]))
    fine = dens.reshape(c1.shape) * h * h
    probs = fine.reshape(n_cell, n_sub, n_cell, n_sub).sum(axis=(1, 3)).ravel()
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)

    n = 20_000
    y = SIMULATORS["synth_mixture2d"].sample_y(np.full((n, 1), x0), np.random.default_rng(9))
    idx = np.floor((y + 4.5) / (h * n_sub)).astype(int)
    assert np.all((idx >= 0) & (idx < n_cell))
    counts = np.bincount(idx[:, 0] * n_cell + idx[:, 1], minlength=n_cell**2)
    expected = probs * n
    big = expected >= 5  # pool the sparse cells into one
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > P_MIN


def test_mean_log_prob_of_samples_matches_quadrature_entropy():
    # E[log p(y|x0)] over samples vs the integral of p log p, for every simulator's y at x0 = 0.2
    for name in ["synth_mixture", "synth_heavytail", "bishop"]:
        y_grid, _ = grid_cdf(name, 0.2)
        d = density(name, 0.2, y_grid)
        neg_entropy = integrate.trapezoid(
            np.where(d > 0, d * np.log(np.where(d > 0, d, 1)), 0), y_grid
        )
        y = SIMULATORS[name].sample_y(np.full((40_000, 1), 0.2), np.random.default_rng(10))
        lp = SIMULATORS[name].log_prob(np.full((40_000, 1), 0.2), y)
        se = max(lp.std() / np.sqrt(len(lp)), 1e-6)
        assert abs(lp.mean() - neg_entropy) < 5 * se + 1e-3, name


# --------------------------------------------------------------------------------------------
# bishop
# --------------------------------------------------------------------------------------------


def test_bishop_measure_matches_brute_force_count():
    s = (np.arange(2_000_000) + 0.5) / 2_000_000  # midpoints of a 5e-7 grid on [0, 1]
    g = s + 0.3 * np.sin(2 * np.pi * s)
    xs = np.array([-0.12, -0.05, 0.02, 0.3, 0.42, 0.5, 0.55, 0.62, 0.69, 0.75, 1.0, 1.08, 1.2])
    brute = np.array([np.mean(np.abs(x0 - g) < 0.1) for x0 in xs])
    np.testing.assert_allclose(sims.bishop_measure(xs), brute, atol=4e-6)
    assert sims.bishop_measure(np.array([-0.1, 1.1, -0.5, 2.0])).tolist() == [0, 0, 0, 0]


def test_bishop_measure_closed_form_where_the_support_is_one_interval():
    # For 0.1 < x < 0.3, {|x - g(s)| < 0.1} lies in the first increasing piece: m = s_b - s_a
    # with g(s_a) = x - 0.1, g(s_b) = x + 0.1 (brentq, an independent root finder).
    from scipy.optimize import brentq

    for x0 in [0.12, 0.2, 0.28]:
        s_a = brentq(
            lambda s, v=x0 - 0.1: s + 0.3 * np.sin(2 * np.pi * s) - v, 0, 0.339, xtol=1e-15
        )
        s_b = brentq(
            lambda s, v=x0 + 0.1: s + 0.3 * np.sin(2 * np.pi * s) - v, 0, 0.339, xtol=1e-15
        )
        assert sims.bishop_measure(np.array([x0]))[0] == pytest.approx(s_b - s_a, abs=1e-12)


def test_bishop_x_marginal_is_m_over_noise_width():
    # p(x) = integral of p(x | t) dt = m(x) / 0.2: ties the joint sampler to m(x).
    grid = np.linspace(-0.1, 1.1, 24_001)
    cdf = integrate.cumulative_trapezoid(sims.bishop_measure(grid) / 0.2, grid, initial=0.0)
    assert cdf[-1] == pytest.approx(1.0, abs=1e-6)
    x, _ = SIMULATORS["bishop"].sample(50_000, np.random.default_rng(15))
    assert stats.kstest(x[:, 0], lambda v: np.interp(v, grid, cdf)).pvalue > P_MIN


def test_bishop_support_is_right():
    sim = SIMULATORS["bishop"]
    x, t = sim.sample(100_000, np.random.default_rng(11))
    assert np.all(np.isfinite(sim.log_prob(x, t)))
    assert np.all((t >= 0) & (t <= 1)) and np.all((x > -0.1) & (x < 1.1))
    # outside: t out of [0, 1], |x - g(t)| >= 0.1, and x with empty support
    x_out = np.array([[0.5], [0.5], [0.2], [0.2], [-0.3], [1.3]])
    t_out = np.array([[-0.01], [1.01], [0.9], [0.3], [0.0], [1.0]])
    assert np.all(sim.log_prob(x_out, t_out) == -np.inf)
    # inside: density is 1 / m(x) on the support, so log p = -log m(x)
    x_in, t_in = np.array([[0.2]]), np.array([[0.08]])
    assert sim.log_prob(x_in, t_in)[0] == pytest.approx(-np.log(sims.bishop_measure(x_in))[0])


def test_bishop_conditional_samples_stay_in_support():
    sim = SIMULATORS["bishop"]
    x = np.random.default_rng(12).uniform(-0.099, 1.099, size=(50_000, 1))
    t = sim.sample_y(x, np.random.default_rng(13))
    assert np.all(np.isfinite(sim.log_prob(x, t)))


# --------------------------------------------------------------------------------------------
# heavy tail
# --------------------------------------------------------------------------------------------


def heavytail_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y|x) from the docstring's model via scipy: y = mu + s (T - E T) / sd T."""
    a, b = 2.5, 5.0
    mu = 0.8 * np.sin(np.pi * x) + 0.3 * x
    s = 0.25 * np.exp(0.6 * x)
    t_mean, t_sd = stats.jf_skew_t.mean(a, b), stats.jf_skew_t.std(a, b)
    return stats.jf_skew_t(a, b, loc=mu - s * t_mean / t_sd, scale=s / t_sd).logpdf(y)


def test_heavytail_log_prob_matches_scipy_jf_skew_t_after_affine_change():
    rng = np.random.default_rng(14)
    x = rng.uniform(-1, 1, size=2000)
    y = rng.uniform(-6, 4, size=2000)
    got = SIMULATORS["synth_heavytail"].log_prob(x[:, None], y[:, None])
    np.testing.assert_allclose(got, heavytail_reference(x, y), rtol=1e-10, atol=1e-10)


def test_heavytail_log_prob_is_finite_far_in_the_tails():
    sim = SIMULATORS["synth_heavytail"]
    y = np.array([[-1e12], [-1e6], [1e6], [1e12]])
    lp = sim.log_prob(np.zeros((4, 1)), y)
    assert np.all(np.isfinite(lp))
    # polynomial tails: left ~ |y|^-(2a+1) = |y|^-6, right ~ y^-(2b+1) = y^-11
    assert (lp[0] - lp[1]) / np.log(1e6) == pytest.approx(-6, abs=1e-3)
    assert (lp[3] - lp[2]) / np.log(1e6) == pytest.approx(-11, abs=1e-3)


@pytest.mark.parametrize("x0", [-0.6, 0.4])
def test_heavytail_conditional_mean_and_sd_are_mu_and_s(x0):
    def moment(k):
        def f(y):
            return y**k * float(density("synth_heavytail", x0, np.array([y]))[0])

        return sum(
            integrate.quad(f, lo, hi, limit=200)[0]
            for lo, hi in [(-np.inf, -5), (-5, 5), (5, np.inf)]
        )

    mean = moment(1)
    sd = np.sqrt(moment(2) - mean**2)
    assert mean == pytest.approx(0.8 * np.sin(np.pi * x0) + 0.3 * x0, abs=1e-6)
    assert sd == pytest.approx(0.25 * np.exp(0.6 * x0), rel=1e-5)


# --------------------------------------------------------------------------------------------
# write_dataset and the CLI
# --------------------------------------------------------------------------------------------

FILES = ["data.csv", "eval.npz", "truth.json"]


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_write_dataset_round_trips(name, tmp_path):
    sim = SIMULATORS[name]
    write_dataset(name, tmp_path, n=300, seed=1, eval_n=400, eval_seed=101)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)

    frame = pd.read_csv(tmp_path / "data.csv")
    assert list(frame.columns) == sim.x_cols + sim.y_cols
    x, y = sim.sample(300, np.random.default_rng(1))
    np.testing.assert_array_equal(frame[sim.x_cols].to_numpy(), x)  # exact, not approximate
    np.testing.assert_array_equal(frame[sim.y_cols].to_numpy(), flat_targets(y))

    with np.load(tmp_path / "eval.npz") as ev:
        assert sorted(ev.files) == ["log_p", "x", "y"]
        x_e, y_e = sim.sample(400, np.random.default_rng(101))
        np.testing.assert_array_equal(ev["x"], x_e)
        np.testing.assert_array_equal(ev["y"], y_e)
        np.testing.assert_array_equal(ev["log_p"], sim.log_prob(x_e, y_e))
        assert ev["log_p"].shape == (400,)

    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["name"] == name and truth["n"] == 300 and truth["seed"] == 1
    assert truth["eval_n"] == 400 and truth["eval_seed"] == 101
    assert truth["x_cols"] == sim.x_cols and truth["y_cols"] == sim.y_cols
    assert truth["description"] and "\n" not in truth["description"]


def test_write_dataset_is_byte_identical(tmp_path, monkeypatch):
    write_dataset("synth_mixture2d", tmp_path / "a", n=200, seed=5, eval_n=300, eval_seed=6)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 86400)  # zip stamps must not leak
    write_dataset("synth_mixture2d", tmp_path / "b", n=200, seed=5, eval_n=300, eval_seed=6)
    monkeypatch.undo()
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    write_dataset("synth_mixture2d", tmp_path / "c", n=200, seed=7, eval_n=300, eval_seed=6)
    assert (tmp_path / "a" / "data.csv").read_bytes() != (tmp_path / "c" / "data.csv").read_bytes()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLI), *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_cli_writes_the_three_files(tmp_path):
    out = tmp_path / "bishop"
    args = ["--n", "50", "--seed", "1", "--eval-n", "200", "--eval-seed", "101", "--out", str(out)]
    proc = run_cli("bishop", *args)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "bishop" in proc.stdout
    assert len(pd.read_csv(out / "data.csv")) == 50
    with np.load(out / "eval.npz") as ev:
        assert ev["x"].shape == (200, 1) and ev["y"].shape == (200, 1)
    write_dataset("bishop", tmp_path / "direct", 50, 1, 200, 101)
    for f in FILES:
        assert (out / f).read_bytes() == (tmp_path / "direct" / f).read_bytes()


def test_cli_unknown_name_exits_2_with_one_line_listing_known_names(tmp_path):
    proc = run_cli(
        "nope",
        "--n",
        "5",
        "--seed",
        "1",
        "--eval-n",
        "5",
        "--eval-seed",
        "2",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert all(name in proc.stderr for name in SIMULATORS)
    assert not any(tmp_path.iterdir())


def test_cli_and_simulators_do_not_import_torch(tmp_path):
    code = (
        "import runpy, sys; "
        f"sys.argv = ['make_synthetic.py', 'synth_mixture', '--n', '5', '--seed', '1', "
        f"'--eval-n', '5', '--eval-seed', '2', '--out', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(CLI)!r}, run_name='not_main'); "
        "import mdnlab.data.simulators; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
