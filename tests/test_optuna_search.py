"""End-to-end: an Optuna search (`hydra/sweeper=optuna +search=mdn`) of 3 trials on a tiny CSV."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from conftest import REPO, TINY, cli_env, run_cli
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SEARCHED = ("model.n_components", "model.hidden_sizes", "train.penalty")


SWEEPER = yaml.safe_load((REPO / "conf" / "search" / "mdn.yaml").read_text())["hydra"]["sweeper"]


def search_space() -> dict[str, optuna.distributions.BaseDistribution]:
    """The shipped search space, read by the sweeper's own parser."""
    params = SWEEPER["params"]
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    assert fixed == {} and set(distributions) == set(SEARCHED)
    return distributions


def as_trial_value(name: str, logged: str):
    """A child run's logged param as the value Optuna sampled: int K, float penalty, and the
    hidden sizes as the override text the sweeper wrote ("[4,4]"; MLflow has "[4, 4]")."""
    if name == "model.n_components":
        return int(logged)
    if name == "train.penalty":
        return float(logged)
    return "[" + ",".join(str(h) for h in yaml.safe_load(logged)) + "]"


def test_optuna_search_files_trials_as_children_and_picks_the_lowest_val_nll(tmp_path, tiny_csv):
    # TINY without the two searched model settings (given here they would be fixed, not searched).
    tiny = [a for a in TINY if not a.startswith(("model.n_components=", "model.hidden_sizes="))]
    args = [
        "-m",
        "hydra/sweeper=optuna",
        "+search=mdn",
        "data=file",
        f"data.path={tiny_csv}",
        "data.x_cols=[x]",
        "data.y_cols=[y]",
        *tiny,
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr

    client = MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("file")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3 and len(runs) == 4
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(math.isfinite(r.data.metrics["val/nll"]) for r in children)

    # Every trial inside the search space, and no two trials alike.
    space = search_space()
    trials = [
        {name: as_trial_value(name, r.data.params[name]) for name in SEARCHED} for r in children
    ]
    for trial in trials:
        for name, value in trial.items():
            distribution = space[name]
            assert distribution._contains(distribution.to_internal_repr(value)), (name, value)
    assert len({tuple(t.values()) for t in trials}) == 3
    assert len({t["train.penalty"] for t in trials}) == 3

    # The seeded sampler: a fresh study with the same seed asks for the same 3 trials (the first
    # n_startup_trials of TPE are random draws, whatever the results).
    sampler = optuna.samplers.TPESampler(seed=SWEEPER["sampler"]["seed"])
    study = optuna.create_study(sampler=sampler, direction="minimize")
    expected = []
    for _ in range(3):
        trial = study.ask()
        expected.append({name: trial._suggest(name, space[name]) for name in SEARCHED})
        study.tell(trial, 0.0)
    # (Exact floats: the penalty travels as Python's round-trip repr, in the override and in MLflow.)
    assert sorted(trials, key=str) == sorted(expected, key=str)

    # The sweeper's best trial is the child with the lowest val/nll: it minimised what
    # src/train.py returned.
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    best_child = min(children, key=lambda r: r.data.metrics["val/nll"])
    assert results["best_value"] == pytest.approx(best_child.data.metrics["val/nll"], rel=1e-12)
    best_params = {name: as_trial_value(name, best_child.data.params[name]) for name in SEARCHED}
    assert results["best_params"] == best_params
