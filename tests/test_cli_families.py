"""End-to-end CLI runs of the categorical and Wishart families, and family/data mismatches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_env, run_cli
from mlflow.tracking import MlflowClient
from scipy import stats
from sklearn.metrics import accuracy_score

from mdnlab.data.splits import split_rows
from mdnlab.module import MDNModule

pytestmark = pytest.mark.slow

FAST = ["trainer.max_epochs=60", "train.polish_max_iter=200", "model.hidden_sizes=[]"]
LABELS = np.array(["amber", "blue", "crimson"])


def only_run(tmp_path, experiment: str):
    client = MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    local = tmp_path / "artifacts"
    local.mkdir()
    client.download_artifacts(run.info.run_id, "", str(local))
    return run, local


def test_categorical_run_with_text_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 400)
    logits = np.stack([2 * x, np.zeros_like(x), -2 * x + 0.5], axis=1)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    codes = (rng.uniform(size=(400, 1)) > p.cumsum(axis=1)).sum(axis=1)
    path = tmp_path / "votes.csv"
    pd.DataFrame({"x": x, "colour": LABELS[codes]}).to_csv(path, index=False)
    args = ["data=file", f"data.path={path}", "data.x_cols=[x]", "data.y_cols=[colour]"]
    result = run_cli([*args, "model=categorical", "model.n_components=1", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr

    run, local = only_run(tmp_path, "file")
    assert run.data.tags["family"] == "categorical"
    assert json.loads((local / "data" / "y_encoding.json").read_text()) == {
        "colour": {"0": "amber", "1": "blue", "2": "crimson"}
    }
    for plot in [
        "class_probabilities.png",
        "calibration.png",
        "confidence_bands.png",
        "predictive_calibration.png",
    ]:
        assert (local / "plots" / plot).is_file(), plot

    # Accuracy and Brier score of the test split, recomputed from the checkpoint with sklearn.
    splits = split_rows(400, 0.15, 0.15, "random", seed=0, strata=codes)
    module = MDNModule.load_from_checkpoint(local / "model" / "model.ckpt")
    with torch.no_grad():
        values = module.quantities(torch.tensor(x[splits.test, None]))
    probs = np.column_stack([values[f"prob[0,{c}]"].numpy() for c in range(3)])
    truth = codes[splits.test]
    metrics = run.data.metrics
    assert metrics["test/accuracy"] == pytest.approx(accuracy_score(truth, probs.argmax(1)))
    brier = np.mean(np.sum((probs - np.eye(3)[truth]) ** 2, axis=1))
    assert metrics["test/brier"] == pytest.approx(brier, rel=1e-10)

    predictions = pd.read_csv(local / "inference" / "predictions.csv")
    assert set(predictions.quantity) == {"prob[0,0]", "prob[0,1]", "prob[0,2]"}
    assert np.all(predictions.se_hessian > 0) and np.all(predictions.se_sandwich > 0)


def test_wishart_run_from_lower_triangle_columns(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 300)
    y = np.stack(
        [
            stats.wishart.rvs(
                df=5 + 2 * xi, scale=np.array([[1, 0.5 * xi], [0.5 * xi, 1]]) / 5, random_state=rng
            )
            for xi in x
        ]
    )
    path = tmp_path / "spd.csv"
    pd.DataFrame(
        {"x": x, "a_a": y[:, 0, 0] * 1e-3, "b_a": y[:, 1, 0] * 1e-3, "b_b": y[:, 1, 1] * 1e-3}
    ).to_csv(path, index=False)
    args = ["data=file", f"data.path={path}", "data.x_cols=[x]", "data.y_cols=[a_a,b_a,b_b]"]
    result = run_cli([*args, "model=wishart", "model.n_components=1", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr

    run, local = only_run(tmp_path, "file")
    assert run.data.tags["family"] == "wishart"
    assert np.isfinite(run.data.metrics["test/nll"])
    for plot in ["realized_vs_predicted.png", "confidence_bands.png", "hessian_spectrum.png"]:
        assert (local / "plots" / plot).is_file(), plot
    predictions = pd.read_csv(local / "inference" / "predictions.csv")
    assert set(predictions.quantity) == {"mean[0,0]", "mean[1,0]", "mean[1,1]"}
    assert np.all(predictions.se_hessian > 0) and np.all(predictions.se_sandwich > 0)
    # Predicted means are in the data's units (1e-3 scale), not standardised ones.
    assert predictions[predictions.quantity == "mean[0,0]"].estimate.between(1e-4, 1e-2).all()


@pytest.mark.parametrize(
    "family, y_cols, fragment",
    [
        ("wishart", "[y]", "row 0"),  # a 1 x 1 "matrix" must be positive: y here is not
        ("wishart", "[y,z]", "model=wishart"),  # 2 columns: not a lower triangle
        ("categorical", "[y]", "model=categorical"),  # real-valued y
    ],
)
def test_a_family_that_does_not_fit_the_data_stops_with_a_clear_error(
    tmp_path, family, y_cols, fragment
):
    rng = np.random.default_rng(2)
    path = tmp_path / "real.csv"
    frame = pd.DataFrame({"x": rng.uniform(size=50), "y": -1 - rng.uniform(size=50)})
    frame["z"] = rng.normal(size=50)
    frame.to_csv(path, index=False)
    args = ["data=file", f"data.path={path}", "data.x_cols=[x]", f"data.y_cols={y_cols}"]
    result = run_cli([*args, f"model={family}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
