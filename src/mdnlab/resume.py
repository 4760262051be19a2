"""Resuming an interrupted run into the same MLflow run: ``python src/train.py <the same
overrides> resume=<run id>``.

Every run records its checkpoints folder in a tag (``mdnlab.checkpoints``; what is saved there
is in ``mdnlab.estimation.checkpoints``). Resuming checks, before anything is changed, that
the run exists in this experiment, was made from the same config and data (its fingerprint),
did not finish and still has its checkpoints; then it sets the run RUNNING again and goes on.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException

from mdnlab import tracking
from mdnlab.errors import ConfigError
from mdnlab.fingerprint import FINGERPRINT_TAG

CHECKPOINT_TAG = "mdnlab.checkpoints"
RESUMED_TAG = "mdnlab.resumed"


def reopen_run(client, run_id: str, fingerprint: str, experiment_id: str):
    """(RunLog of the reopened run, its checkpoints folder); ConfigError when it cannot be."""
    where = f"resume={run_id}"
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{where}: no such run in {client.tracking_uri}") from None
    if run.info.experiment_id != experiment_id:
        raise ConfigError(
            f"{where}: the run is in experiment {run.info.experiment_id}, this config logs to "
            f"experiment {experiment_id} (data.name or logger.experiment differ)"
        )
    if run.data.tags.get(FINGERPRINT_TAG) != fingerprint:
        raise ConfigError(
            f"{where}: the run was made from another config or other data; give the "
            "overrides that started it, plus resume=<run id>"
        )
    if run.info.status == "FINISHED":
        raise ConfigError(f"{where}: the run finished; there is nothing to resume")
    folder = run.data.tags.get(CHECKPOINT_TAG)
    if not folder or not Path(folder).is_dir():
        raise ConfigError(f"{where}: its checkpoints folder {folder} is gone")
    client.update_run(run_id, status="RUNNING")
    resumed = int(run.data.tags.get(RESUMED_TAG, "0")) + 1
    log = tracking.RunLog(client, run_id)
    log.set_tags({RESUMED_TAG: str(resumed), **tracking.process_tags()})
    return log, Path(folder)
