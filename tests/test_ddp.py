"""trainer=ddp: Lightning's DDP on the CPU with 2 processes (gloo). Each process takes half of
the rows for Adam; rank 0 alone polishes, infers and logs one MLflow run, and the fit is the
single-process one to within rounding."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, TINY, cli_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def train(tmp_path, csv, *extra):
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "CI"}  # progress lines wanted
    args = ["data=file", f"data.path={csv}", "data.x_cols=[x]", "data.y_cols=[y]", *TINY]
    args += ["trainer.max_epochs=200", "diagnostics.enabled=false", *extra]
    return subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ddp_on_two_cpu_processes_gives_the_single_process_fit(tmp_path, tiny_csv):
    single = train(tmp_path, tiny_csv, f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    ddp = train(tmp_path, tiny_csv, "trainer=ddp", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr

    assert "ddp worker] epoch 1/200" in ddp.stderr  # the second process trained
    assert ddp.stderr.count("inference: Hessian and scores") == 1  # rank 0 only
    assert ddp.stderr.count("MLflow run ") == 1

    client = MlflowClient(cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    (on_ddp,) = [r for r in runs if r.data.params.get("trainer.strategy") == "ddp"]
    (alone,) = [r for r in runs if r.data.params.get("trainer.strategy") == "auto"]
    assert on_ddp.data.params["trainer.devices"] == "2"
    for name in ("test/nll", "val/nll", "train/objective", "val/nll_before_polish"):
        assert on_ddp.data.metrics[name] == pytest.approx(alone.data.metrics[name], abs=1e-8)
    assert on_ddp.data.metrics["train/epochs"] == alone.data.metrics["train/epochs"]
