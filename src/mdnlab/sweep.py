"""Multirun sweeps in MLflow: one parent run per sweep, every job a child of it.

Hydra calls :class:`MlflowSweepCallback` in the launching process before any worker starts
(``on_multirun_start``): it creates the store, the experiment and the parent run there, once.
The callback object travels to each job (also into joblib's worker processes), where
``on_job_start`` hands the sweep's identity to the job and ``on_job_end`` clears it again,
so that a reused worker starts the next job clean. When the sweep ends
(``on_multirun_end``, in the launching process again) each parent run gets the model
selection over K of its children (``mdnlab.diagnostics.model_selection``: a CSV, a figure and
the K each criterion picks, when the children differ in ``model.n_components``) and is then
marked FINISHED.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mdnlab import tracking
from mdnlab.diagnostics.model_selection import report_sweep

SWEEP_TAG = "mdnlab.sweep"
ROLE_TAG = "mdnlab.role"
REUSED_TAG = "sweep.reused"
FAILED_TAG = "sweep.failed_jobs"
FAILED_FILE = "FAILED.txt"


@dataclass
class SweepContext:
    sweep_id: str
    sweep_dir: Path
    tracking_uri: str
    parents: dict[str, str] = field(default_factory=dict)  # experiment id -> parent run id

    def parent_run(self, client, experiment_id: str) -> str:
        """The sweep's parent run in this experiment, created once across all workers."""
        if experiment_id not in self.parents:
            with tracking.file_lock(self.sweep_dir / ".mlflow-sweep.lock"):
                found = client.search_runs(
                    [experiment_id],
                    filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep_id}' and tags.`{ROLE_TAG}` = 'parent'",
                    max_results=1,
                )
                if found:
                    self.parents[experiment_id] = found[0].info.run_id
                else:
                    run = tracking.RunLog.start(
                        client,
                        experiment_id,
                        run_name=f"sweep-{self.sweep_dir.name}",
                        tags={
                            SWEEP_TAG: self.sweep_id,
                            ROLE_TAG: "parent",
                            "sweep.dir": str(self.sweep_dir),
                        },
                    )
                    self.parents[experiment_id] = run.run_id
        return self.parents[experiment_id]

    def adopt(self, client, experiment_id: str, run) -> None:
        """File a skipped job's finished run under this sweep's parent when the sweep that
        made it did not finish (it crashed halfway: this sweep completes it); a run of a
        finished sweep stays where it is and is listed in this parent's ``sweep.reused`` tag."""
        parent = self.parent_run(client, experiment_id)
        old_parent = run.data.tags.get("mlflow.parentRunId")
        if old_parent == parent:
            return
        if old_parent is not None and client.get_run(old_parent).info.status != "FINISHED":
            client.set_tag(run.info.run_id, "mlflow.parentRunId", parent)
            return
        with tracking.file_lock(self.sweep_dir / ".mlflow-sweep.lock"):
            reused = client.get_run(parent).data.tags.get(REUSED_TAG, "")
            ids = [i for i in reused.split(",") if i] + [run.info.run_id]
            client.set_tag(parent, REUSED_TAG, ",".join(ids))


_active: SweepContext | None = None


def active_sweep() -> SweepContext | None:
    return _active


@contextmanager
def sweep_context(context: SweepContext) -> Iterator[SweepContext]:
    """Runs started in the block are children of ``context``'s parent runs (for a sweep that
    is not Hydra's: the UCI benchmark's splits)."""
    global _active
    before, _active = _active, context
    try:
        yield context
    finally:
        _active = before


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def record_job_failure(message: str) -> None:
    """Note in this job's folder that it failed and why: the sweep goes on with its other
    jobs and lists the failures when it ends (files, so that jobs on other hosts count too)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = " ".join(hydra_cfg.overrides.task)
    text = f"#{hydra_cfg.job.num} {overrides}\n{message}\n"
    Path(hydra_cfg.runtime.output_dir, FAILED_FILE).write_text(text)


def failed_jobs(sweep_dir: Path) -> list[str]:
    """'#<job> <overrides>: <message>' for every job of the sweep that recorded a failure."""
    lines = []
    for path in sorted(sweep_dir.glob(f"*/{FAILED_FILE}"), key=lambda p: _job_order(p.parent)):
        head, _, message = path.read_text().partition("\n")
        lines.append(f"{head}: {message.strip()}")
    return lines


def _job_order(job_dir: Path) -> tuple[int, str]:
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (1 << 30, job_dir.name)


def experiment_name(cfg: DictConfig) -> str:
    return cfg.logger.get("experiment") or cfg.data.name


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.context: SweepContext | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = tracking.resolve_tracking_uri(config.logger.get("tracking_uri"))
        self.context = SweepContext(
            sweep_id=hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:16],
            sweep_dir=sweep_dir,
            tracking_uri=uri,
        )
        client, experiment_id = tracking.prepare_experiment(uri, experiment_name(config))
        self.context.parent_run(client, experiment_id)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        global _active
        _active = self.context

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        global _active
        _active = None

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.context is None:
            return
        client = tracking.MlflowClient(tracking_uri=self.context.tracking_uri)
        failures = failed_jobs(self.context.sweep_dir)
        for run_id in self._all_parents(client):
            report_sweep(client, run_id)  # never raises
            client.set_tag(run_id, FAILED_TAG, str(len(failures)))
            client.set_terminated(run_id, status="FINISHED")
        if failures:
            listing = "\n".join(f"  {line}" for line in failures)
            print(
                f"sweep: {len(failures)} job(s) failed (the others finished; their notes are "
                f"{FAILED_FILE} in the job folders under {self.context.sweep_dir}):\n{listing}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)

    def _all_parents(self, client) -> list[str]:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.`{SWEEP_TAG}` = '{self.context.sweep_id}' and tags.`{ROLE_TAG}` = 'parent'",
        )
        return [r.info.run_id for r in runs]
