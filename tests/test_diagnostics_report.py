"""The diagnostics step of a run: settings, artifacts and metrics under diagnostics/."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mdnlab.diagnostics.report import DiagnosticSettings, diagnose
from mdnlab.errors import ConfigError
from mdnlab.estimation.objective import objective
from mdnlab.inference.step import run_inference
from mdnlab.module import MDNModule
from mdnlab.polish import newton_polish
from mdnlab.progress import recorded_warnings


@pytest.mark.parametrize(
    "section, message",
    [
        ({"reference_rows": 0}, "diagnostics.reference_rows must be an integer >= 1, got 0"),
        ({"im_test": {"subset": "heads"}}, "diagnostics.im_test.subset='heads'"),
        ({"im_test": {"bootstrap": 2.5}}, "diagnostics.im_test.bootstrap must be an integer"),
        ({"duplicate_skl": "abc"}, "diagnostics.duplicate_skl must be a number"),
    ],
)
def test_bad_settings_name_the_field(section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        DiagnosticSettings.from_config(section)


def fitted(penalty: float):
    torch.manual_seed(1)
    x = torch.linspace(-2, 2, 200, dtype=torch.float64)[:, None]
    y = torch.where(torch.rand(200, 1, dtype=torch.float64) < 0.5, -1.0, 1.0) * (1 + x.abs())
    y = y + 0.3 * torch.randn(200, 1, dtype=torch.float64)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[])
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    loss = lambda: objective(module, x, y, penalty)  # noqa: E731
    newton_polish(loss, list(module.net.parameters()), 1e-10, max_iter=200)
    member = SimpleNamespace(
        index=0, module=module, objective=float(loss()), alive=True, val_nll=float("nan")
    )
    fit = SimpleNamespace(
        module=module,
        members=[member],
        best=member,
        penalty=penalty,
        ordering=None,
        scale_penalty=0.0,
    )
    return fit, x, y


def test_diagnose_at_lambda_zero_reports_the_null_space_and_a_bootstrap_p_value(tmp_path):
    fit, x, y = fitted(0.0)
    inference = run_inference(fit.module, x, y, x[:3].numpy(), eig_rtol=1e-8)
    settings = DiagnosticSettings(im_bootstrap=3)
    with recorded_warnings() as warned:
        metrics = diagnose(
            fit, x, y, inference, settings, tmp_path, "test", seed=4, polish_tol=1e-8
        )
    # one restart: the bootstrap p-value is not calibrated, and the run says so
    assert any("bootstrap with 1 restart(s)" in w and "train.restarts >= 5" in w for w in warned)
    assert metrics["diagnostics/null_measured"] == inference.metrics["inference/n_null_eigs"]
    assert metrics["diagnostics/null_excess"] == (
        metrics["diagnostics/null_measured"] - metrics["diagnostics/null_predicted"]
    )
    assert metrics["diagnostics/effective_components"] in (1.0, 2.0)
    refits = metrics["diagnostics/im_test_bootstrap_refits"]
    assert 1 <= refits <= 3
    p = metrics["diagnostics/im_test_bootstrap_pvalue"]
    assert p * (1 + refits) == pytest.approx(round(p * (1 + refits)))  # (1 + count) / (1 + B')
    assert 0 < metrics["diagnostics/im_test_pvalue"] <= 1 and metrics["diagnostics/im_test_df"] >= 1
    boot = pd.read_csv(tmp_path / "im_test_bootstrap.csv")
    assert len(boot) == 3 and set(boot.columns) >= {"statistic", "converged", "df"}
    summary = json.loads((tmp_path / "identifiability.json").read_text())
    assert summary["n_components"] == 2 and summary["notes"] == []
    for name in ["components.csv", "component_weights.png", "null_space.csv"]:
        assert (tmp_path / name).is_file(), name


def test_diagnose_with_a_penalty_reports_effective_parameters_not_null_counts(tmp_path):
    fit, x, y = fitted(2.0)
    inference = run_inference(fit.module, x, y, x[:3].numpy(), penalty=2.0)
    settings = DiagnosticSettings(im_test=False)
    metrics = diagnose(fit, x, y, inference, settings, tmp_path, "test")
    fraction = (
        inference.metrics["inference/effective_params"] / inference.metrics["inference/n_params"]
    )
    assert metrics["diagnostics/effective_params_fraction"] == pytest.approx(fraction)
    assert "diagnostics/null_predicted" not in metrics
    assert not any(k.startswith("diagnostics/im_test") for k in metrics)
    assert np.isfinite(metrics["diagnostics/effective_components"])
