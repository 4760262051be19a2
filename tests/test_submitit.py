"""Sweeps through hydra-submitit-launcher: the same ``python src/train.py -m ...`` line runs its
jobs as submitit jobs (``hydra/launcher=submitit_local`` here, ``submitit_slurm`` on a cluster).

Each submitit job is a fresh Python process that unpickles the launcher and the sweep callback:
nothing in memory is shared with the launching process or between jobs, only the tracking URI,
the sweep folder (its file lock and the job folders) and what the pickle carries."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, TINY, cli_env
from mlflow.tracking import MlflowClient


def file_args(path) -> list[str]:
    return ["data=file", f"data.path={path}", "data.x_cols=[x]", "data.y_cols=[y]"]


@pytest.mark.slow
def test_submitit_local_sweep_files_both_jobs_under_one_parent(tmp_path, tiny_csv):
    """Two jobs through submitit's local executor (a controller process per job, which starts
    the job's task process), no launcher settings beyond the timeout: submitit_local ignores
    cpus_per_task / mem_gb and starts every job of the array at once."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        str(REPO / "src" / "train.py"),
        "-m",
        *file_args(tiny_csv),
        *TINY,
        "seed=0,1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    launcher = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    wall_s = time.perf_counter() - start
    assert launcher.returncode == 0, stderr
    print(f"submitit_local sweep of 2 jobs: {wall_s:.1f} s")

    # The store: one finished parent, both jobs finished children of it, with their metrics.
    client = MlflowClient(tracking_uri=cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("file")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.info.run_name for r in children) == [
        "file-gaussian-K2-s0",
        "file-gaussian-K2-s1",
    ]
    assert all(math.isfinite(r.data.metrics["test/nll"]) for r in children)
    default = client.get_experiment_by_name("Default")
    assert default is None or client.search_runs([default.experiment_id]) == []

    # The jobs ran as submitit jobs: one folder per job under the sweep's .submitit (named by
    # the job id, the controller's pid), each with its pickled call, its result and its log.
    job_folders = sorted(p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
    assert len(job_folders) == 2
    for folder in job_folders:
        job_id = folder.name
        assert (folder / f"{job_id}_submitted.pkl").is_file()
        assert (folder / f"{job_id}_0_result.pkl").is_file()
        log = (folder / f"{job_id}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={job_id}" in log
        assert "Job completed successfully" in log
    # Hydra's job id inside each job is submitit's job id (set by the launcher in the job).
    hydra_job_ids = {
        yaml.safe_load((sweep_dir / str(n) / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"][
            "id"
        ]
        for n in (0, 1)
    }
    assert hydra_job_ids == {folder.name for folder in job_folders}

    # ... in processes of their own: the pid each child run recorded differs from the other
    # job's, from the launching process's and from the submitit controllers'.
    pids = [int(r.data.tags["mdnlab.pid"]) for r in children]
    assert len(set(pids)) == 2
    assert launcher.pid not in pids
    assert not set(pids) & {int(folder.name) for folder in job_folders}


def test_submitit_slurm_launcher_composes(tmp_path):
    """``hydra/launcher=submitit_slurm`` composes with the usual overrides and names the plugin's
    SlurmLauncher. Only the config: there is no sbatch here, so no SLURM job is submitted (and
    ``--cfg`` cannot be combined with ``-m`` in Hydra 1.3; the launcher config is the same)."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "src" / "train.py"),
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=cpu",
            "hydra.launcher.timeout_min=60",
            "hydra.launcher.cpus_per_task=4",
            "hydra.launcher.array_parallelism=8",
            "--cfg",
            "hydra",
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in (
        result.stdout
    )
    hydra_cfg = yaml.safe_load(result.stdout)["hydra"]
    launcher = hydra_cfg["launcher"]
    assert launcher["partition"] == "cpu"
    assert launcher["timeout_min"] == 60
    assert launcher["cpus_per_task"] == 4
    assert launcher["array_parallelism"] == 8
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert hydra_cfg["runtime"]["choices"]["hydra/launcher"] == "submitit_slurm"
    # The sweep callback that files the jobs under one parent run is still there.
    assert hydra_cfg["callbacks"]["mlflow_sweep"]["_target_"] == "mdnlab.sweep.MlflowSweepCallback"

    from hydra.utils import get_class

    assert get_class(launcher["_target_"]).__name__ == "SlurmLauncher"
