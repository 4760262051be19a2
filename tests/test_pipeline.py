"""`dvc repro` end to end on tiny params in a temp copy of the repo; a second repro does nothing.

The copy trains 5 of the 12 default experiments (one per family, real and synthetic, and the
two whose KL to the truth the test checks), to keep the suite short; every stage of the real
`dvc.yaml` runs in `make pipeline`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.slow


def copy_repo(target: Path) -> None:
    """The files git would ship (tracked and untracked-not-ignored), nothing generated."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_dvc_repro_twice_on_tiny_params(tmp_path):
    work = tmp_path / "repo"
    copy_repo(work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for spec in params["synthetic"].values():
        spec.update(n=200, eval_n=2000)
    params["train"]["overrides"] = (
        "trainer.max_epochs=5 train.polish_max_iter=5 diagnostics.im_test.bootstrap=2"
    )
    budget = {"max_epochs": 5, "polish_max_iter": 5, "restarts": 1}
    curve = {"sizes": [60, 120], "replicates": 2, "eval_rows": 1000, "tail_from": 60} | budget
    params["studies"]["consistency"]["smoke"] = curve
    params["studies"]["projection"]["smoke"] = curve | {
        "x_nodes": 6,
        "y_nodes": 101,
        "population_starts": 1,
        "population_max_iter": 5,
    }
    params["studies"]["coverage"]["smoke"] = {
        "sizes": [80],
        "replicates": 2,
        "bootstrap": 3,
    } | budget
    params["benchmark"] = {"datasets": ["boston"], "splits": 2}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    pipeline = yaml.safe_load((work / "dvc.yaml").read_text())
    kept = ("mcycle", "beps", "synth_mixture", "bishop", "synth_wishart")
    every = pipeline["vars"][0]["experiments"]
    assert set(kept) <= set(every)
    pipeline["vars"][0]["experiments"] = {k: v for k, v in every.items() if k in kept}
    (work / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        CI="1",
        DVC_NO_ANALYTICS="1",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    run("git", "init", "-q")
    run(sys.executable, "src/export_raw.py")  # rebuilds data/raw and checks it against data.dvc
    first = run("dvc", "repro")
    stages = yaml.safe_load((work / "dvc.yaml").read_text())
    experiments = list(stages["vars"][0]["experiments"])
    for name in experiments:
        assert f"Running stage 'train@{name}'" in first
    studies = ["consistency", "projection", "coverage"]
    for name in studies:
        assert f"Running stage 'study_{name}'" in first

    metrics = json.loads(run("dvc", "metrics", "show", "--json"))
    shown = json.dumps(metrics)
    for name in experiments:
        assert f"metrics/{name}.json" in shown
    for name in studies:
        assert f"metrics/study_{name}.json" in shown
    assert (work / "plots" / "study_coverage" / "coverage_qq.png").is_file()
    for name in ["synth_mixture", "bishop"]:
        values = json.loads((work / "metrics" / f"{name}.json").read_text())
        assert (
            values["test/kl_to_truth"] > -3 * values["test/kl_to_truth_se"]
        )  # KL >= 0 up to noise
    assert (work / "plots" / "mcycle" / "conditional_density.png").is_file()
    assert "Running stage 'benchmark@boston'" in first
    bench = json.loads((work / "metrics" / "benchmark_boston.json").read_text())
    assert bench["splits"] == 2
    for fit in ("mdnlab", "ngboost"):  # Boston's test NLL is 2-4 nats for any sensible fit
        assert 1.5 < bench[f"{fit}/nll_mean"] < 6.0
    splits = (work / "plots" / "benchmark_boston" / "splits.csv").read_text().splitlines()
    assert len(splits) == 3 and splits[0].startswith("split,n_train,n_val,n_test")
    assert (work / "plots" / "benchmark_boston" / "nll_by_split.png").is_file()

    second = run("dvc", "repro")
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
