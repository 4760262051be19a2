"""End-to-end estimation options: restarts, the penalty and its selection, their errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, cli_env, run_cli
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mdnlab.module import MDNModule

pytestmark = pytest.mark.slow


def only_run(tmp_path):
    client = MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("file")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def file_args(path) -> list[str]:
    return ["data=file", f"data.path={path}", "data.x_cols=[x]", "data.y_cols=[y]"]


def test_restarts_log_every_member_and_keep_the_best(tmp_path, tiny_csv):
    result = run_cli([*file_args(tiny_csv), *TINY, "train.restarts=3", "train.penalty=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    client, run = only_run(tmp_path)
    metrics = run.data.metrics
    assert metrics["train/penalty"] == 2.0
    objective = client.get_metric_history(run.info.run_id, "restarts/objective")
    assert [m.step for m in objective] == [0, 1, 2]
    values = [m.value for m in objective]
    best = int(run.data.tags["restarts.best"])
    assert values[best] == min(values) == pytest.approx(metrics["train/objective"], abs=1e-12)
    for name in ("restarts/val_nll", "restarts/grad_norm"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3

    local = tmp_path / "artifacts"
    local.mkdir()
    client.download_artifacts(run.info.run_id, "", str(local))
    table = pd.read_csv(local / "restarts" / "restarts.csv")
    assert list(table.restart) == [0, 1, 2] and table.best.sum() == 1
    assert int(table.restart[table.best].iloc[0]) == best
    # Every restart loads on its own, and its objective is the logged one.
    frame = pd.read_csv(tiny_csv)
    for r in range(3):
        module = MDNModule.load_from_checkpoint(local / "restarts" / f"restart_{r}.ckpt")
        assert module.family.n_components == 2
    winner = MDNModule.load_from_checkpoint(local / "model" / "model.ckpt")
    again = MDNModule.load_from_checkpoint(local / "restarts" / f"restart_{best}.ckpt")
    x = torch.tensor(frame[["x"]].to_numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(winner.net(x).numpy(), again.net(x).numpy())
    # The penalty term is lambda / (2 n_train) |theta|^2 of the winner; n_train = 120 - 2 * 18.
    squares = sum(float(p.detach().pow(2).sum()) for p in winner.net.parameters())
    assert metrics["train/penalty_term"] == pytest.approx(2.0 / (2 * 84) * squares, rel=1e-10)
    assert metrics["train/objective"] == pytest.approx(
        metrics["train/nll"] + metrics["train/penalty_term"], rel=1e-10
    )


def test_evidence_selection_logs_the_chosen_penalty(tmp_path, tiny_csv):
    args = [
        *file_args(tiny_csv),
        *TINY,
        "train.penalty_select=evidence",
        "train.polish_max_iter=400",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    _, run = only_run(tmp_path)
    metrics = run.data.metrics
    # It walked from its start (the default 3) to MacKay's fixed point lambda = gamma / |theta|^2
    # and kept the visited lambda with the highest evidence: the fixed point itself (to the 0.1%
    # the update loop stops at), or an earlier lambda, which the run then names in a warning.
    assert metrics["train/evidence_iterations"] >= 2
    fixed_point = metrics["train/effective_params"] / metrics["train/weight_norm"] ** 2
    at_fixed_point = metrics["train/penalty"] == pytest.approx(fixed_point, rel=2e-3)
    kept_earlier = "keeping the visited lambda with the highest log evidence" in result.stderr
    assert at_fixed_point != kept_earlier, result.stderr
    assert 0 < metrics["train/effective_params"] <= metrics["inference/n_params"]
    assert np.isfinite(metrics["train/log_evidence"])


def test_validation_selection_logs_the_path_and_its_chosen_penalty(tmp_path, tiny_csv):
    args = [
        *file_args(tiny_csv),
        *TINY,
        "train.penalty_select=validation",
        "train.penalty_path.strongest=100",
        "train.penalty_path.weakest=0.1",
        "train.penalty_path.count=5",
        "train.polish_max_iter=3000",
        "train.scale_penalty=1",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    client, run = only_run(tmp_path)
    metrics = run.data.metrics
    local = tmp_path / "artifacts"
    local.mkdir()
    client.download_artifacts(run.info.run_id, "plots", str(local))
    path = pd.read_csv(local / "plots" / "penalty_path.csv")
    assert (local / "plots" / "penalty_path.png").stat().st_size > 0
    assert len(path) == metrics["train/penalty_path_points"]
    # a contiguous stretch of the grid, strongest first, through the point nearest the start (3)
    grid = list(np.geomspace(100, 0.1, 5))
    at = [int(np.argmin(np.abs(np.subtract(grid, v)))) for v in path.penalty]
    assert at == list(range(at[0], at[0] + len(at))) and 2 in at
    np.testing.assert_allclose(path.penalty, [grid[i] for i in at], rtol=1e-12)
    chosen = path[path.chosen]
    assert len(chosen) == 1
    assert metrics["train/penalty"] == pytest.approx(float(chosen.penalty.iloc[0]), rel=1e-12)
    # the run's estimate is the chosen point: its val NLL, objective, and the lowest val NLL
    # among the converged points
    assert metrics["val/nll"] == pytest.approx(float(chosen.val_nll.iloc[0]), abs=1e-9)
    assert metrics["train/objective"] == pytest.approx(float(chosen.objective.iloc[0]), abs=1e-9)
    assert float(chosen.val_nll.iloc[0]) == path.val_nll[path.converged].min()
    assert metrics["val/polish_rise"] == pytest.approx(
        metrics["val/nll"] - metrics["val/nll_before_polish"], abs=1e-12
    )
    # the scale penalty's reference (the residual variance of the standardised y around the
    # early-stopped mean; here close to the marginal one, since the mean of two branches +-(1+x)
    # is near 0) is saved with the model, as logged
    client.download_artifacts(run.info.run_id, "model", str(local))
    module = MDNModule.load_from_checkpoint(local / "model" / "model.ckpt")
    (reference,) = module.scale_reference.tolist()
    assert reference == pytest.approx(metrics["train/scale_reference"], rel=1e-12)
    assert 0.5 < reference <= 1.0


def test_a_loaded_model_gives_the_runs_ses_at_the_scale_penalty_the_path_chose(tmp_path, tiny_csv):
    import mdnlab
    from mdnlab.pipeline import SplitTensors, load_data

    args = [
        *file_args(tiny_csv),
        *TINY,
        "train.penalty_select=validation",
        "train.penalty_path.count=5",
        "train.polish_max_iter=3000",
        "train.scale_penalty=1",  # not in the list: the chosen c differs from the configured one
        "train.penalty_path.scale_penalties=[0.3,3]",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    client, run = only_run(tmp_path)
    chosen = run.data.metrics["train/scale_penalty"]
    assert chosen in (0.3, 3.0)
    fitted = mdnlab.load(run.info.run_id, tracking_uri=client.tracking_uri)
    assert fitted.scale_penalty == chosen
    cfg = OmegaConf.create(fitted.config)
    points = SplitTensors.from_table(*load_data(cfg)).x["test"].numpy()[:, 0]
    logged = pd.read_csv(
        client.download_artifacts(run.info.run_id, "inference/predictions.csv", str(tmp_path))
    ).rename(columns={"point": "row"})
    got = fitted.predict(pd.DataFrame({"x": points}), what="mean,variance", se=True)
    both = got.merge(logged, on=["row", "quantity"], suffixes=("", "_logged"))
    assert len(both) == 2 * len(points)
    for column in ("se_hessian", "se_sandwich"):
        np.testing.assert_allclose(both[column], both[f"{column}_logged"], rtol=1e-8)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.penalty_select=validation data.val_fraction=0", "needs validation rows"),
        ("train.penalty_select=validation train.polish=false", "needs train.polish=true"),
        ("train.penalty_path.rule=best", "train.penalty_path.rule='best'"),
        ("train.penalty=-1", "train.penalty must be a finite number >= 0"),
        ("train.penalty=abc", "train.penalty must be a number"),
        ("train.restarts=0", "train.restarts must be a positive integer"),
        ("train.penalty_select=bic", "train.penalty_select='bic'"),
        ("train.scale_reference=mad", "train.scale_reference='mad'"),
    ],
)
def test_bad_estimation_options_stop_before_any_run(tmp_path, tiny_csv, override, expected):
    result = run_cli([*file_args(tiny_csv), *TINY, *override.split()], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
