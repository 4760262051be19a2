"""`mdnlab.pipeline.run` in-process on composed configs: splits, points, reproducibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from mdnlab.errors import DataError
from mdnlab.pipeline import run


def config(tmp_path, csv, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=file",
                f"data.path={csv}",
                "data.x_cols=[x]",
                "data.y_cols=[y]",
                f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                *TINY,
                *overrides,
            ],
        )


def logged_metrics(tmp_path) -> dict[str, float]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    return run_.data.metrics


def test_no_validation_split_trains_max_epochs_and_logs_no_val_metric(tmp_path, tiny_csv):
    metrics = run(config(tmp_path, tiny_csv, "data.val_fraction=0", "trainer.max_epochs=25"))
    assert metrics["train/epochs"] == 25
    assert "val/nll" not in metrics and "test/nll" in metrics
    assert "val/nll" not in logged_metrics(tmp_path)


def test_no_validation_and_no_test_split_trains_on_every_row(tmp_path, tiny_csv):
    metrics = run(
        config(
            tmp_path, tiny_csv, "data.val_fraction=0", "data.test_fraction=0", "train.polish=false"
        )
    )
    assert "test/nll" not in metrics and "val/nll" not in metrics
    # The logged train NLL is over all 120 rows: recompute it from the checkpointed model.
    from mdnlab.module import MDNModule

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    path = client.download_artifacts(run_.info.run_id, "model/model.ckpt", str(tmp_path))
    module = MDNModule.load_from_checkpoint(path)
    frame = pd.read_csv(tiny_csv)
    import torch

    with torch.no_grad():
        nll = float(
            module.nll(torch.tensor(frame[["x"]].to_numpy()), torch.tensor(frame[["y"]].to_numpy()))
        )
    assert nll == pytest.approx(metrics["train/nll"], rel=1e-12)


def test_same_config_and_seed_give_the_same_numbers(tmp_path, tiny_csv):
    first = run(config(tmp_path, tiny_csv, "seed=5"))
    second = run(config(tmp_path, tiny_csv, "seed=5"))
    third = run(config(tmp_path, tiny_csv, "seed=6"))
    for key in ["train/nll", "val/nll", "test/nll", "train/grad_norm"]:
        assert first[key] == second[key], key
    assert first["test/nll"] != third["test/nll"]


def test_inference_points_file_sets_the_prediction_rows(tmp_path, tiny_csv):
    points = tmp_path / "points.csv"
    pd.DataFrame({"x": [-0.5, 0.0, 0.5]}).to_csv(points, index=False)
    run(config(tmp_path, tiny_csv, f"inference.points={points}"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    path = client.download_artifacts(run_.info.run_id, "inference/predictions.csv", str(tmp_path))
    frame = pd.read_csv(path)
    assert sorted(frame.point.unique()) == [0, 1, 2]
    # mean[0] and cov[0,0], then weight[k] and component_mean[k,0] of the K = 2 ordered
    # components at each point
    assert len(frame) == 3 * (2 + 2 * 2)
    assert frame.quantity[:6].tolist() == [
        "mean[0]",
        "cov[0,0]",
        "weight[0]",
        "component_mean[0,0]",
        "weight[1]",
        "component_mean[1,0]",
    ]
    weights = frame[frame.quantity.str.startswith("weight")].groupby("point").estimate
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
    # ordered by mean weight over the training x, not at every point; identified is a flag
    assert frame.identified.dtype == bool and frame.identified[frame.quantity == "mean[0]"].all()
    assert (frame[frame.quantity == "cov[0,0]"].estimate > 0).all()
    # Filled by the inference step: finite, positive standard errors for every quantity.
    assert (frame.se_hessian > 0).all() and (frame.se_sandwich > 0).all()
    metrics = logged_metrics(tmp_path)
    for name in ["inference/grad_norm", "inference/n_null_eigs", "inference/condition_number"]:
        assert np.isfinite(metrics[name]), name
    parameters = pd.read_csv(
        client.download_artifacts(run_.info.run_id, "inference/parameters.csv", str(tmp_path))
    )
    assert list(parameters.columns) == [
        "name",
        "estimate",
        "se_hessian",
        "se_sandwich",
        "identified",
    ]
    assert parameters.loc[~parameters.identified, "se_hessian"].isna().all()

    bad = tmp_path / "bad_points.csv"
    pd.DataFrame({"z": [0.0]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="'x'"):
        run(config(tmp_path, tiny_csv, f"inference.points={bad}"))
    # Checked before training: no run was created for the bad points file.
    assert len(client.search_runs([client.get_experiment_by_name("file").experiment_id])) == 1
