"""Everything MLflow: the store, experiments, runs, and the fixed artifact layout.

All calls go through an explicit ``MlflowClient`` (never MLflow's global "active run"), so
nothing leaks from one job into the next when a launcher reuses worker processes.

A brand-new SQLite store is created (schema migration) and experiments are created under an
exclusive file lock beside the database file: several processes starting at once on a fresh
``mlflow.db`` would otherwise race in the migration or file a run under the wrong experiment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mdnlab.progress import quiet

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Opens experiments on MLflow's model-training view rather than its GenAI overview.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
SQLITE_PREFIX = "sqlite:///"
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


def resolve_tracking_uri(configured: str | None = None) -> str:
    """``logger.tracking_uri`` if set, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

    A relative SQLite path is made absolute against the launch directory.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = sqlite_path(uri)
    return f"{SQLITE_PREFIX}{db}" if db is not None else uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri[len(SQLITE_PREFIX) :]).expanduser().resolve()


def missing_store(uri: str) -> str | None:
    """The error line for a command that reads a store: an SQLite file that is not there
    (MLflow would create an empty one); None when there is one, or for a server."""
    db = sqlite_path(uri)
    if db is None or db.is_file():
        return None
    return f"error: no MLflow store at {db}: run `make pipeline` (or a training run) first"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_lock(uri: str):
    db = sqlite_path(uri)
    return file_lock(db.with_name(db.name + ".lock")) if db is not None else nullcontext()


def prepare_experiment(uri: str, name: str) -> tuple[MlflowClient, str]:
    """Create the store if needed and get or create the experiment; returns its id."""
    if quiet():
        for logger in ("mlflow", "alembic"):
            logging.getLogger(logger).setLevel(logging.WARNING)
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(
                    name, artifact_location=_artifact_location(uri, name), tags=EXPERIMENT_KIND_TAGS
                )
            except MlflowException:  # created meanwhile by a process that did not take our lock
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            for key, value in EXPERIMENT_KIND_TAGS.items():
                if experiment.tags.get(key) != value:
                    client.set_experiment_tag(experiment_id, key, value)
    return client, experiment_id


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    """Beside a SQLite store: ``mlartifacts/<experiment>``; a server decides for itself."""
    db = sqlite_path(uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name) or "experiment"
    return (db.parent / "mlartifacts" / slug).as_uri()


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then put back. For the MLflow
    calls that read it whatever client they are given: model logging, and the resolution of a
    run's logged model when its artifacts are listed or downloaded."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


@contextmanager
def no_artifact_progress_bars() -> Iterator[None]:
    """MLflow's download progress bars, unless the user asked for them, are noise here."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


class RunLog:
    """One MLflow run, written through a client; ``finish`` always ends it."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> RunLog:
        tags = dict(tags)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return cls(client, run.info.run_id)

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[start : start + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._log([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_curve(self, name: str, values: list[float]) -> None:
        now = int(time.time() * 1000)
        self._log([Metric(name, float(v), now, step) for step, v in enumerate(values)])

    def _log(self, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifacts(self, local_dir: Path) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir))

    def log_dataset(
        self,
        name: str,
        source: str,
        digest: str,
        split_sizes: Mapping[str, int],
        dvc_md5: str | None = None,
    ) -> None:
        """The run's dataset as an MLflow input (the UI's Dataset column): ``digest`` the data
        file's md5 (tag ``data_md5``), the split sizes as its context and in its profile."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = {
            "rows": sum(split_sizes.values()),
            **{f"{k}_rows": v for k, v in split_sizes.items()},
        }
        if dvc_md5:
            profile["dvc_md5"] = dvc_md5
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": str(Path(source).resolve())}),
            profile=json.dumps(profile),
        )
        context = " ".join(f"{k}={v}" for k, v in split_sizes.items())
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _param_value(value: object) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole (``[32, 32]``)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


PROCESS_TAGS = ("mdnlab.host", "mdnlab.pid")


def process_tags() -> dict[str, str]:
    """Which process a run lives in: what ``python -m mdnlab.doctor`` checks a RUNNING run by."""
    return {"mdnlab.host": socket.gethostname(), "mdnlab.pid": str(os.getpid())}


def git_commit(cwd: Path | None = None) -> str:
    """HEAD's commit, with ``-dirty`` when tracked files differ; ``unknown`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_out_hash(data_file: Path, root: Path = Path(".")) -> str | None:
    """The md5 DVC recorded (``dvc.lock`` or ``data.dvc``) for the output holding ``data_file``."""
    import yaml

    try:
        target = data_file.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    outs = []
    lock, tracked = root / "dvc.lock", root / "data.dvc"
    if lock.is_file():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            outs += stage.get("outs", [])
    if tracked.is_file():
        outs += (yaml.safe_load(tracked.read_text()) or {}).get("outs", [])
    for out in outs:
        out_path = Path(out["path"])
        if target == out_path or out_path in target.parents:
            return out.get("md5")
    return None


if __name__ == "__main__":
    # `python -m mdnlab.tracking doctor [...]`, the name issue 12 gave: mdnlab.doctor's CLI.
    import sys

    if sys.argv[1:2] != ["doctor"]:
        sys.exit("usage: python -m mdnlab.tracking doctor [--mark-killed] [--older-than HOURS]")
    from mdnlab.doctor import main

    sys.exit(main(sys.argv[2:]))
