"""Sweeps under faults and load: a diverging job fails alone and the sweep lists it; a sweep
re-run after a crash skips the jobs that finished; 8 parallel jobs over 4 workers all land."""

from __future__ import annotations

import pytest
from conftest import TINY, run_cli
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def file_args(path) -> list[str]:
    return ["data=file", f"data.path={path}", "data.x_cols=[x]", "data.y_cols=[y]", *TINY]


def sweep_args(tmp_path, name: str, *overrides: str) -> list[str]:
    return ["-m", *overrides, f"hydra.sweep.dir={tmp_path / name}", "diagnostics.enabled=false"]


def runs_by_role(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, runs, parents, children


def test_a_diverging_job_fails_alone_and_the_sweep_lists_it(tmp_path, tiny_csv):
    args = sweep_args(tmp_path, "sweep", *file_args(tiny_csv), "trainer.lr=1000,0.01")
    result = run_cli([*args, "model.min_scale=0"], tmp_path)

    assert result.returncode == 1, result.stderr
    assert "train NLL became non-finite at epoch 1" in result.stderr
    assert "sweep: 1 job(s) failed" in result.stderr
    assert "#0 " in result.stderr and "trainer.lr=1000" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "sweep" / "0" / "FAILED.txt").is_file()
    assert not (tmp_path / "sweep" / "1" / "FAILED.txt").exists()

    _, runs, parents, children = runs_by_role(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["sweep.failed_jobs"] == "1"
    status = {r.data.params["trainer.lr"]: r.info.status for r in children}
    assert status == {"1000": "FAILED", "0.01": "FINISHED"}
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_a_sweep_run_again_skips_the_jobs_that_finished(tmp_path, tiny_csv):
    first = run_cli([*sweep_args(tmp_path, "first", *file_args(tiny_csv), "seed=0")], tmp_path)
    assert first.returncode == 0, first.stderr
    client, _, (crashed,), _ = runs_by_role(tmp_path)
    client.set_terminated(crashed.info.run_id, "KILLED")  # as a crash halfway leaves it

    again = run_cli([*sweep_args(tmp_path, "again", *file_args(tiny_csv), "seed=0,1")], tmp_path)
    assert again.returncode == 0, again.stderr
    _, runs, parents, children = runs_by_role(tmp_path)
    assert len(runs) == 4 and len(children) == 2  # seed 0 was not trained again
    (new_parent,) = [p for p in parents if p.info.run_id != crashed.info.run_id]
    # the finished job of the crashed sweep now completes the new one
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {new_parent.info.run_id}

    forced = [*sweep_args(tmp_path, "forced", *file_args(tiny_csv), "seed=0"), "rerun=true"]
    result = run_cli(forced, tmp_path)
    assert result.returncode == 0, result.stderr
    _, runs, _, children = runs_by_role(tmp_path)
    assert len(runs) == 6 and len(children) == 3
    by_seed = {}
    for child in children:
        by_seed.setdefault(child.data.params["seed"], []).append(child.data.metrics["test/nll"])
    assert by_seed["0"][0] == by_seed["0"][1]  # retrained: the same numbers


@pytest.mark.parametrize("store", ["fresh", "existing"])
def test_eight_parallel_jobs_over_four_workers_all_land(tmp_path, tiny_csv, store):
    if store == "existing":
        warm = run_cli([*file_args(tiny_csv), "seed=99", "diagnostics.enabled=false"], tmp_path)
        assert warm.returncode == 0, warm.stderr
    args = sweep_args(
        tmp_path,
        "load",
        *file_args(tiny_csv),
        "seed=0,1,2,3,4,5,6,7",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
    )
    result = run_cli(args, tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr

    client, runs, parents, children = runs_by_role(tmp_path)
    assert len(parents) == 1 and len(children) == 8
    assert len(runs) == 9 + (store == "existing")
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params["seed"] for c in children) == [str(s) for s in range(8)]
    assert all(r.info.status == "FINISHED" for r in runs)
    for child in children:
        assert {"test/nll", "val/nll", "train/nll"} <= set(child.data.metrics)
        logged = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"model", "metrics.json", "config.yaml"} <= logged, logged
