"""The theory studies: coverage arithmetic on cases with a known answer, the row-weight
bootstrap against refits on explicitly resampled rows, the params checks, and each study end
to end at a tiny size (files, metrics, MLflow parent and children)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy import stats

from mdnlab.errors import ConfigError
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.fit import PolishSettings
from mdnlab.estimation.objective import objective
from mdnlab.polish import lbfgs_polish
from mdnlab.studies import settings as study_settings
from mdnlab.studies.bootstrap import bootstrap_refits, multinomial_counts
from mdnlab.studies.coverage import SETTINGS, summarise
from mdnlab.studies.kl_curve import loglog_slope
from mdnlab.studies.projection import fitted_limit
from mdnlab.studies.replicates import FitSettings, ModelSpec, build_module, n_drawn

torch.set_num_threads(1)


def toy_coverage_frame(replicates: int, points: int, se_scale: dict, seed: int = 0):
    """Estimates = target + N(0, se^2) draws; each estimator reports se * its scale."""
    rng = np.random.default_rng(seed)
    se = np.linspace(0.5, 2.0, points)
    rows = []
    for r in range(replicates):
        estimate = 3.0 + se * rng.standard_normal(points)
        for i in range(points):
            rows.append(
                {
                    "setting": "toy",
                    "relation": "well specified",
                    "n": 100,
                    "replicate": r,
                    "point": i,
                    "quantity": "mean[0]",
                    "estimate": estimate[i],
                    "target": 3.0,
                }
                | {f"se_{k}": se[i] * v for k, v in se_scale.items()}
            )
    return pd.DataFrame(rows)


def test_coverage_with_the_true_se_is_nominal_and_with_half_of_it_is_not():
    frame = toy_coverage_frame(2000, 3, {"hessian": 1.0, "sandwich": 0.5, "bootstrap": 2.0})
    table = summarise(frame, 0.95).set_index("estimator")
    nominal = table.loc["hessian"]
    assert abs(nominal.coverage - 0.95) < 3 * nominal.coverage_se
    expected = {  # P(|Z| <= 1.96 * scale)
        "sandwich": 2 * stats.norm.cdf(1.959964 * 0.5) - 1,
        "bootstrap": 2 * stats.norm.cdf(1.959964 * 2.0) - 1,
    }
    for estimator, value in expected.items():
        row = table.loc[estimator]
        assert abs(row.coverage - value) < 4 * max(row.coverage_se, 1e-3)
    # widths: 2 z se, averaged over points
    se = np.linspace(0.5, 2.0, 3)
    assert nominal.width == pytest.approx(2 * 1.959964 * se.mean(), rel=1e-5)
    assert abs(nominal.bias) < 4 * nominal.bias_se
    # binomial MC SE over all intervals, sqrt(c (1 - c) / (M * points))
    c = nominal.coverage
    assert nominal.coverage_se_binomial == pytest.approx(np.sqrt(c * (1 - c) / 6000), rel=1e-9)


def test_multinomial_counts_resample_n_rows():
    counts = multinomial_counts(50, 400, seed=3)
    assert counts.shape == (400, 50)
    assert torch.all(counts.sum(dim=1) == 50)
    # each row's count is Binomial(n, 1/n): mean 1, variance 1 - 1/n
    assert abs(float(counts.mean()) - 1.0) < 1e-12
    assert abs(float(counts.var()) - (1 - 1 / 50)) < 0.05


def small_fit(n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 1))
    y = 0.5 * x + 0.3 * np.sin(3 * x) + 0.2 * rng.standard_normal((n, 1))
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    torch.manual_seed(seed)
    module = build_module(ModelSpec(n_components=1, hidden_sizes=(3,)), 1, [1])
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    params = list(module.net.parameters())
    lbfgs_polish(lambda: objective(module, x, y, 1.0), params, tol=1e-9, max_iter=5000)
    return module, x, y


def test_row_weight_refits_equal_fits_on_resampled_rows():
    """Refit b with multinomial counts c_b minimises the same objective as a fit on the
    rows repeated c_b times (same n, same penalty)."""
    module, x, y = small_fit()
    refits = bootstrap_refits(module, x, y, 1.0, count=3, seed=5, tol=1e-9)
    counts = multinomial_counts(x.shape[0], 3, seed=5).long()
    for b in range(3):
        rows = torch.repeat_interleave(torch.arange(x.shape[0]), counts[b])
        xb, yb = x[rows], y[rows]
        assert bool(refits.converged[b])
        refit = refits.modules[b]
        params = list(refit.net.parameters())
        value = objective(refit, xb, yb, 1.0)
        grads = torch.autograd.grad(value, params)
        assert max(float(g.abs().max()) for g in grads) < 1e-8  # optimum of the resampled fit
        with torch.no_grad():  # and not the original fit's
            moved = max(
                float((p - q).abs().max())
                for p, q in zip(refit.net.parameters(), module.net.parameters(), strict=True)
            )
        assert moved > 1e-4


def test_loglog_slope_and_fitted_limit_recover_known_curves():
    n = np.array([250, 500, 1000, 2000, 4000])
    assert loglog_slope(n, 3.0 / n) == pytest.approx(-1.0, abs=1e-12)
    assert loglog_slope(n, 2.0 * n**-0.5) == pytest.approx(-0.5, abs=1e-12)
    assert fitted_limit(n, 0.08 + 5.0 / n) == pytest.approx(0.08, abs=1e-12)


def test_fit_settings_keep_the_step_budget_with_mini_batches():
    settings = FitSettings(trainer=TrainerSettings(max_epochs=3000, patience=200), batch_rows=2000)
    assert settings.batch_size(2000) is None
    assert settings.trainer_for(2000).max_epochs == 3000
    assert settings.batch_size(16000) == 2000
    assert settings.trainer_for(16000).max_epochs == 375  # 8 batches per epoch
    assert settings.trainer_for(16000).patience == 25
    assert n_drawn(1000, 0.2) == 1250


def params_with(study: str, block: dict) -> dict:
    return {"studies": {"size": "smoke", "seed": 0, study: {"smoke": block}}}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"sizes": [100], "replicates": 1, "restarts": 1, "eval_rows": 10}, "replicates"),
        ({"sizes": [200, 100], "replicates": 2, "restarts": 1, "eval_rows": 10}, "increasing"),
        ({"sizes": [100], "replicates": 2, "restarts": "two", "eval_rows": 10}, "restarts"),
        ({"sizes": [100], "replicates": 2, "restarts": 1, "eval_rows": 10, "bogus": 1}, "bogus"),
        ({"sizes": [100], "replicates": 2, "restarts": 1}, "missing eval_rows"),
    ],
)
def test_study_params_are_checked_with_the_key_named(block, message):
    with pytest.raises(ConfigError, match=message):
        study_settings.read(
            study_settings.CurveSize, "consistency", params_with("consistency", block), "smoke"
        )


def test_unknown_size_is_refused():
    with pytest.raises(ConfigError, match="studies.size='huge'; expected one of smoke, full"):
        study_settings.read(study_settings.CurveSize, "consistency", {}, "huge")


TINY_FIT = FitSettings(
    restarts=1,
    trainer=TrainerSettings(max_epochs=150, patience=20),
    polish=PolishSettings(tol=1e-5, max_iter=300, newton_max_params=0),
    reference_rows=2000,
)
TINY = {
    "consistency": {"sizes": [80, 160], "replicates": 2, "restarts": 1, "eval_rows": 4000,
                    "tail_from": 80},
    "projection": {"sizes": [80, 160], "replicates": 2, "restarts": 1, "eval_rows": 4000,
                   "tail_from": 80, "x_nodes": 8, "y_nodes": 201, "population_starts": 1,
                   "population_max_iter": 300},
    "coverage": {"sizes": [120], "replicates": 3, "bootstrap": 6, "restarts": 1, "points": 3},
}  # fmt: skip


@pytest.mark.parametrize("study", ["consistency", "projection", "coverage"])
def test_study_end_to_end_at_a_tiny_size(study, tmp_path):
    from mdnlab.studies import runner

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    metrics = runner.run_study(study, params_with(study, TINY[study]), None, out, uri, fit=TINY_FIT)
    assert np.isfinite(metrics["seconds"])
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == f"study_{study}"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mdnlab.role") == "study_fit"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    if study == "coverage":
        assert len(children) == 5 * 3  # settings x replicates
        table = pd.read_csv(out / "coverage_summary.csv")
        assert set(table.setting) == {s.name for s in SETTINGS}
        assert set(table.estimator) == {"hessian", "sandwich", "bootstrap"}
        assert table.coverage.between(0, 1).all() and (table.width > 0).all()
        frame = pd.read_csv(out / "coverage.csv")
        assert (frame.se_bootstrap > 0).all() and (frame.se_sandwich > 0).all()
        assert {"coverage.png", "coverage_qq.png"} <= {p.name for p in out.iterdir()}
    else:
        assert len(children) == 2 * 2 * 2  # cases x sizes x replicates
        frame = pd.read_csv(out / f"{study}.csv")
        assert (frame.kl > 0).all() and (frame.tic_trace > 0).all()
        assert np.allclose(frame.predicted_excess, frame.tic_trace / (2 * frame.n))
        # two estimators of one KL: the evaluation sample's within its Monte Carlo error of
        # the quadrature's
        assert (np.abs(frame.kl - frame.kl_quadrature) < 5 * frame.kl_se + 1e-4).all()
        assert (out / f"{study}.png").is_file()
    assert parents[0].data.metrics["seconds"] == pytest.approx(metrics["seconds"])
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert any(a.endswith(".png") for a in artifacts)
    if study == "projection":
        for case in ("bimodal_K1", "heavytail_K2"):
            assert metrics[f"{case}/kl_projection"] > 0
            assert metrics[f"{case}/quadrature_mass_error"] < 1e-6


def test_coverage_units_give_the_same_numbers_in_parallel_processes(monkeypatch):
    from mdnlab.studies import coverage

    cheap = tuple(s for s in coverage.SETTINGS if s.name.startswith("categorical"))
    monkeypatch.setattr(coverage, "SETTINGS", cheap)
    size = study_settings.CoverageSize(sizes=[60], replicates=2, bootstrap=3, restarts=1)
    serial = coverage.fit_units(size, 0, TINY_FIT)
    parallel = coverage.fit_units(
        study_settings.CoverageSize(**(vars(size) | {"jobs": 2})), 0, TINY_FIT
    )
    assert [(u.setting, u.n) for u in serial] == [(u.setting, u.n) for u in parallel]
    assert len(serial) == 2
    for a, b in zip(serial, parallel, strict=True):
        pd.testing.assert_frame_equal(a.frame, b.frame)
