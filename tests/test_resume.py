"""An interrupted run resumes into the same MLflow run (``resume=<run id>``) and reaches the
numbers of an uninterrupted run with the same seed, bit for bit (full-batch Adam from its
checkpointed state is deterministic); bad resume requests are refused before anything
changes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY, cli_env, run_cli
from mlflow.tracking import MlflowClient
from test_pipeline_run import config

from mdnlab.errors import ConfigError
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.checkpoints import Checkpointing
from mdnlab.estimation.fit import FitData, fit_members
from mdnlab.module import MDNModule
from mdnlab.pipeline import run


def long_args(csv) -> list[str]:
    return [
        "data=file",
        f"data.path={csv}",
        "data.x_cols=[x]",
        "data.y_cols=[y]",
        *TINY,
        "trainer.max_epochs=300",
        "trainer.patience=300",
        "trainer.checkpoint_every_s=0",  # every epoch: the kill lands after a checkpoint
        "diagnostics.enabled=false",
    ]


def curve(client, run_id, name):
    return [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


@pytest.mark.slow
def test_a_run_killed_during_adam_resumes_to_the_uninterrupted_numbers(tmp_path, tiny_csv):
    args = long_args(tiny_csv)
    whole = run_cli([*args, f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path)
    assert whole.returncode == 0, whole.stderr

    checkpoint = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "src" / "train.py"),
            *args,
            f"hydra.run.dir={tmp_path / 'cut'}",
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143

    client = MlflowClient(cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("file").experiment_id])
    (killed,) = [r for r in runs if r.info.status == "KILLED"]
    (reference,) = [r for r in runs if r.info.status == "FINISHED"]
    epochs_done = len(
        torch.load(checkpoint, weights_only=True)["mdnlab_bookkeeping"]["epoch_history"]["train"]
    )
    assert 0 < epochs_done < 300  # it was stopped inside Adam

    resumed = run_cli(
        [*args, f"hydra.run.dir={tmp_path / 'resumed'}", f"resume={killed.info.run_id}"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    after = client.get_run(killed.info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags["mdnlab.resumed"] == "1"
    assert len(client.search_runs([after.info.experiment_id])) == 2  # no new run
    for name in ("test/nll", "val/nll", "train/objective", "train/grad_norm", "train/epochs"):
        assert after.data.metrics[name] == reference.data.metrics[name], name
    for name in ("train/nll_epoch", "val/nll_epoch"):
        assert curve(client, after.info.run_id, name) == curve(client, reference.info.run_id, name)
    assert not checkpoint.parent.exists()  # finished: nothing left to resume

    # Refused before anything changes: a finished run, another config, an unknown id.
    again = run_cli([*args, f"resume={killed.info.run_id}"], tmp_path)
    assert again.returncode == 2 and "the run finished; there is nothing to resume" in again.stderr
    same = long_args(tiny_csv)[4 + len(TINY) :]  # the overrides after the data and TINY ones
    with pytest.raises(ConfigError, match="from another config or other data"):
        run(config(tmp_path, tiny_csv, *same, "seed=5", f"resume={killed.info.run_id}"))
    assert len(client.search_runs([after.info.experiment_id])) == 2


def test_a_run_stopped_after_adam_resumes_without_training_again(tmp_path, tiny_csv):
    """``adam_done.pt``: the early-stopped weights and the per-member results, as they were."""
    cfg = config(tmp_path, tiny_csv)
    x = torch.linspace(-1, 1, 60, dtype=torch.float64)[:, None]
    y = torch.sin(3 * x) + 0.1 * torch.cos(17 * x)
    data = FitData(x[:40], y[:40], x[40:], y[40:])

    def make_module(seed):
        torch.manual_seed(seed)
        module = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[3])
        module.x_scaler.fit(data.x_train)
        module.y_scaler.fit(data.y_train)
        return module

    settings = dict(penalty=1.0, lr=0.01, trainer=TrainerSettings(max_epochs=60, patience=60))
    folder = tmp_path / "checkpoints"
    first, members = fit_members(
        make_module, [0, 1], data, checkpoints=Checkpointing(folder), **settings
    )
    assert (folder / "adam_done.pt").is_file()
    # Different initial weights: only the checkpoint can give the same answer.
    second, again = fit_members(
        lambda seed: make_module(seed + 100),
        [0, 1],
        data,
        checkpoints=Checkpointing(folder, resume=True),
        **settings,
    )
    for a, b in zip(members, again, strict=True):
        assert a.epochs == b.epochs and a.best_epoch == b.best_epoch
        assert a.history == b.history
        assert a.objective == b.objective
    assert cfg.resume is None


def test_resume_is_refused_for_a_run_that_is_not_there(tmp_path, tiny_csv):
    with pytest.raises(ConfigError, match=r"resume=nope: no such run"):
        run(config(tmp_path, tiny_csv, "resume=nope"))
