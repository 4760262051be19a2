"""Run status tells the truth when a training process is stopped: SIGTERM ends the run KILLED
with exit code 143; SIGKILL cannot be caught, and ``python -m mdnlab.doctor`` finds the run it
left RUNNING (its recorded pid is gone) and marks it KILLED."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, cli_env
from mlflow.tracking import MlflowClient

from mdnlab import doctor
from mdnlab.tracking import store_lock


def start_long_training(tmp_path, tiny_csv) -> subprocess.Popen:
    args = [
        "data=file",
        f"data.path={tiny_csv}",
        "data.x_cols=[x]",
        "data.y_cols=[y]",
        "data.val_fraction=0",  # no early stopping: it trains until stopped
        "trainer.max_epochs=1000000",
    ]
    return subprocess.Popen(
        [sys.executable, str(REPO / "src" / "train.py"), *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_running_run(tmp_path, process, timeout: float = 120.0):
    uri = cli_env(tmp_path)["MLFLOW_TRACKING_URI"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        if (tmp_path / "mlflow.db").exists():
            with store_lock(uri):  # not while the trainer creates the store's tables
                client = MlflowClient(uri)
                experiment = client.get_experiment_by_name("file")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and runs[0].data.tags.get("mdnlab.pid") == str(process.pid):
                time.sleep(1.0)  # into the training loop
                return client, runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError("no RUNNING run appeared")


@pytest.mark.slow
def test_sigterm_during_training_ends_the_run_killed(tmp_path, tiny_csv):
    process = start_long_training(tmp_path, tiny_csv)
    try:
        client, run_id = wait_for_running_run(tmp_path, process)
        assert client.get_run(run_id).info.status == "RUNNING"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-1500:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted by SIGTERM: the run is marked KILLED"
    assert client.get_run(run_id).info.status == "KILLED"


@pytest.mark.slow
def test_the_doctor_finds_and_ends_a_run_sigkill_left_running(tmp_path, tiny_csv, capsys):
    process = start_long_training(tmp_path, tiny_csv)
    try:
        client, run_id = wait_for_running_run(tmp_path, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert client.get_run(run_id).info.status == "RUNNING"
    uri = cli_env(tmp_path)["MLFLOW_TRACKING_URI"]

    assert doctor.main(["--tracking-uri", uri]) == 0
    listed = capsys.readouterr().out
    assert run_id in listed and f"its process {process.pid}" in listed
    assert client.get_run(run_id).info.status == "RUNNING"  # listing alone changes nothing

    assert doctor.main(["--tracking-uri", uri, "--mark-killed"]) == 0
    assert client.get_run(run_id).info.status == "KILLED"
    assert doctor.main(["--tracking-uri", uri]) == 0
    assert "no stale RUNNING runs" in capsys.readouterr().out


def test_the_doctor_answers_under_the_issue_s_name_too(tmp_path):
    """``python -m mdnlab.tracking doctor`` is ``python -m mdnlab.doctor``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outputs = [
        subprocess.run(
            [sys.executable, "-m", *module, "--tracking-uri", uri],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        for module in (["mdnlab.doctor"], ["mdnlab.tracking", "doctor"])
    ]
    assert [o.returncode for o in outputs] == [2, 2], outputs[1].stderr  # no store there yet
    assert outputs[0].stderr == outputs[1].stderr
    assert "no MLflow store at" in outputs[1].stderr and "Traceback" not in outputs[1].stderr
