"""The MLflow UI in headless Chromium: the runs table behind ``make ui``'s link lists a pipeline
experiment's runs with their metric values."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from mdnlab import browser, ui
from mdnlab.tracking import RunLog, prepare_experiment

RUNS = {"mcycle-gaussian-K2-s0": 1.2345, "mcycle-gaussian-K3-s0": 0.9876}


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with apt-get (as root) when missing."""
    try:
        return browser.chromium_binary()
    except browser.ChromiumMissing:
        pass
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"chromium is missing and cannot be installed here: `{browser.INSTALL_HINT}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}")
    return browser.chromium_binary()


def pipeline_like_store(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = prepare_experiment(uri, "mcycle")
    for name, nll in RUNS.items():
        run = RunLog.start(client, experiment_id, name, tags={"family": "gaussian"})
        run.log_params({"model.n_components": name.split("-K")[1][0]})
        run.log_metrics({"test/nll": nll, "val/nll": nll + 0.5, "run/seconds": 3.0})
        run.finish()
    return uri


def group_is_gone(pgid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_the_runs_table_link_shows_the_runs_and_their_metrics(tmp_path, chromium):
    uri = pipeline_like_store(tmp_path)
    with browser.mlflow_ui(uri) as server:
        url = ui.metrics_runs_table_url(uri, server.base, "mcycle")
        assert url.endswith(f"/runs?viewStateShareKey={ui.METRICS_VIEW_KEY}")
        dom = browser.dump_dom(url)
        pgid = server.process.pid
    for name, nll in RUNS.items():
        assert name in dom, f"run {name} not in the runs table"
        assert str(nll) in dom, f"test/nll {nll} of {name} not in the runs table"
    assert "metrics.`test/nll`" in dom  # the column itself, not only a sort label
    assert server.process.returncode is not None
    assert group_is_gone(pgid), "mlflow ui's process group outlived the test"
