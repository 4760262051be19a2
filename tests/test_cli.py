"""End-to-end: the real `python src/train.py` on tiny configs, with a temp MLflow store."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, cli_env, run_cli
from mlflow.tracking import MlflowClient

from mdnlab.data.splits import split_rows
from mdnlab.module import MDNModule

pytestmark = pytest.mark.slow


def client_for(tmp_path) -> MlflowClient:
    return MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])


def file_args(path) -> list[str]:
    return ["data=file", f"data.path={path}", "data.x_cols=[x]", "data.y_cols=[y]"]


def test_single_run_logs_metrics_params_tags_and_artifacts(tmp_path, tiny_csv):
    result = run_cli([*file_args(tiny_csv), *TINY, "seed=3"], tmp_path)
    assert result.returncode == 0, result.stderr

    client = client_for(tmp_path)
    experiment = client.get_experiment_by_name("file")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "file-gaussian-K2-s3"

    metrics = run.data.metrics
    for name in ["train/nll", "val/nll", "test/nll", "train/grad_norm"]:
        assert np.isfinite(metrics[name]), name
    assert 0 <= metrics["test/pit_ks"] <= 1
    coverages = [metrics[f"test/coverage_{level}"] for level in (50, 80, 90, 95)]
    assert coverages == sorted(coverages) and 0 <= coverages[0] and coverages[-1] <= 1
    curve = client.get_metric_history(run.info.run_id, "train/nll_epoch")
    assert len(curve) == metrics["train/epochs"] and len(curve) > 1
    assert run.data.params["model.n_components"] == "2"
    assert run.data.params["trainer.max_epochs"] == "40"
    tags = run.data.tags
    assert tags["inference.path"] == "dense"
    assert tags["family"] == "gaussian" and tags["dataset"] == "file"
    assert tags["data_md5"] == hashlib.md5(tiny_csv.read_bytes()).hexdigest()
    assert tags["git_commit"]

    local = tmp_path / "artifacts"
    client.download_artifacts(run.info.run_id, "", str(local.mkdir() or local))
    for path in [
        "config.yaml",
        "model/model.ckpt",
        "plots/training_curves.png",
        "plots/conditional_density.png",
        "plots/predictive_calibration.png",
        "inference/predictions.csv",
        "inference/parameters.csv",
        "plots/hessian_spectrum.png",
        "plots/confidence_bands.png",
        "inference/bands.csv",
        "diagnostics/identifiability.json",
        "diagnostics/components.csv",
        "diagnostics/component_weights.png",
    ]:
        assert (local / path).is_file(), path

    # The checkpoint alone reproduces the logged test NLL (scalers travel in it).
    module = MDNModule.load_from_checkpoint(local / "model" / "model.ckpt")
    frame = pd.read_csv(tiny_csv)
    splits = split_rows(len(frame), 0.15, 0.15, "random", seed=3)
    x = torch.tensor(frame[["x"]].to_numpy()[splits.test])
    y = torch.tensor(frame[["y"]].to_numpy()[splits.test])
    with torch.no_grad():
        assert float(module.nll(x, y)) == pytest.approx(metrics["test/nll"], rel=1e-12)

    predictions = pd.read_csv(local / "inference" / "predictions.csv")
    assert list(predictions.columns) == [
        "point",
        "quantity",
        "estimate",
        "se_hessian",
        "se_sandwich",
        "identified",
    ]
    # the mixture's quantities, then per ordered component its weight and mean
    per_component = {
        f"{name}[{k}{rest}]"
        for k in (0, 1)
        for name, rest in (("weight", ""), ("component_mean", ",0"))
    }
    assert set(predictions.quantity) == {"mean[0]", "cov[0,0]"} | per_component
    assert metrics["diagnostics/effective_components"] in (1.0, 2.0)
    assert predictions.point.nunique() == len(splits.test)
    # Predicted means at the test points, in original units, from the mixture's own parameters.
    with torch.no_grad():
        mixture = module.mixture(x)
        weights = mixture.mixture_distribution.probs
        means = (
            mixture.component_distribution.mean[..., 0] * module.y_scaler.scale
            + module.y_scaler.loc
        )
        expected = (weights * means).sum(dim=1).numpy()
    got = predictions[predictions.quantity == "mean[0]"].sort_values("point").estimate.to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_bad_input_stops_with_a_clear_message_and_no_run(tmp_path, tiny_csv):
    frame = pd.read_csv(tiny_csv)
    frame.loc[3, "y"] = np.nan
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)

    result = run_cli([*file_args(bad), *TINY], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert str(bad) in message and "'y'" in message and "row 3" in message

    misspelt = run_cli([*file_args(tiny_csv)[:2], "data.x_cols=[xx]", "data.y_cols=[y]"], tmp_path)
    assert misspelt.returncode == 2 and "Traceback" not in misspelt.stderr
    assert "'xx'" in misspelt.stderr and "x, y" in misspelt.stderr

    if (tmp_path / "mlflow.db").exists():
        assert (
            client_for(tmp_path).search_runs(
                [e.experiment_id for e in client_for(tmp_path).search_experiments()]
            )
            == []
        )


def test_joblib_multirun_on_a_fresh_store_files_every_child_under_one_parent(tmp_path, tiny_csv):
    args = [*file_args(tiny_csv), *TINY]
    sweep = [
        "-m",
        *args,
        "model.n_components=1,2",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    result = run_cli(sweep, tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr

    client = client_for(tmp_path)
    experiment = client.get_experiment_by_name("file")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.info.run_name for r in children) == [
        "file-gaussian-K1-s0",
        "file-gaussian-K1-s1",
        "file-gaussian-K2-s0",
        "file-gaussian-K2-s1",
    ]
    default = client.get_experiment_by_name("Default")
    assert default is None or client.search_runs([default.experiment_id]) == []

    # Same config and seed in a fresh process: the same numbers (no state leaked between jobs
    # that shared a worker process).
    single = run_cli([*args, "model.n_components=2", "seed=1"], tmp_path)
    assert single.returncode == 0, single.stderr
    fresh = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("mdnlab.role") != "parent"
    ]
    (swept,) = [r for r in children if r.info.run_name == "file-gaussian-K2-s1"]
    assert fresh[0].data.metrics["test/nll"] == swept.data.metrics["test/nll"]
    assert fresh[0].data.metrics["train/grad_norm"] == swept.data.metrics["train/grad_norm"]
