"""A study in MLflow: one parent run per study invocation, its fits (or replicates) as children.

Experiment ``study_<name>``; the parent carries the study's settings as params, its summary
metrics and its artifacts (tables, figures); each child carries one fit's settings and
numbers (tag ``mdnlab.role`` = ``study_fit``). Runs end FAILED on an exception and KILLED
on Ctrl-C, never RUNNING.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mdnlab import tracking
from mdnlab.interrupts import stopped_by_user

ROLE_TAG = "mdnlab.role"
STUDY_TAG = "mdnlab.study"


class StudyLog:
    def __init__(self, study: str, params: Mapping, uri: str | None = None):
        self.study = study
        self.uri = tracking.resolve_tracking_uri(uri)
        self.client, self.experiment_id = tracking.prepare_experiment(self.uri, f"study_{study}")
        commit = tracking.git_commit()
        self.tags = {STUDY_TAG: study, "git_commit": commit}
        if commit != "unknown":
            self.tags["mlflow.source.git.commit"] = commit
        self.parent = tracking.RunLog.start(
            self.client, self.experiment_id, f"study-{study}", self.tags | {ROLE_TAG: "parent"}
        )
        self.parent.log_params(tracking.flatten(dict(params)))
        self.children = 0

    def child(self, name: str, params: Mapping, metrics: Mapping[str, float]) -> None:
        run = tracking.RunLog.start(
            self.client,
            self.experiment_id,
            name,
            self.tags | {ROLE_TAG: "study_fit"},
            parent_run_id=self.parent.run_id,
        )
        try:
            run.log_params(dict(params))
            run.log_metrics({k: float(v) for k, v in metrics.items()})
        finally:
            run.finish()
        self.children += 1

    def finish(self, metrics: Mapping[str, float], artifacts: Path | None = None) -> None:
        self.parent.log_metrics({k: float(v) for k, v in metrics.items()})
        if artifacts is not None:
            self.parent.log_artifacts(artifacts)
        self.parent.finish("FINISHED")

    def __enter__(self) -> StudyLog:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            return
        self.parent.finish("KILLED" if stopped_by_user(value) else "FAILED")
