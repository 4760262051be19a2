"""``load(ref)``: a fitted model from an MLflow run, a checkpoint file or a run's artifacts."""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from pathlib import Path

import torch

from mdnlab.errors import MdnlabError
from mdnlab.fitted.model import FittedModel
from mdnlab.fitted.schema import LoadError, Schema, _first_line, read_schema

CHECKPOINT = "model/model.ckpt"  # where a run keeps its model, in its artifact tree
RUN_ID = re.compile(r"[0-9a-fA-F]{32}")
RUNS_URI = "runs:/"


def load(ref, tracking_uri: str | None = None) -> FittedModel:
    """A fitted model from ``ref``: an MLflow run id, ``runs:/<id>`` (optionally
    ``runs:/<id>/model`` or ``runs:/<id>/<path>.ckpt``), a checkpoint file, or a run's artifact
    directory (holding ``model/model.ckpt``). ``tracking_uri``: the MLflow store of a run
    (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``)."""
    if isinstance(ref, os.PathLike):
        return load_path(Path(ref))
    ref = str(ref)
    if ref.startswith(RUNS_URI):
        run_id, _, subpath = ref[len(RUNS_URI) :].strip("/").partition("/")
        return load_run(run_id, subpath, tracking_uri)
    path = Path(ref).expanduser()
    if path.exists():
        return load_path(path)
    if RUN_ID.fullmatch(ref):
        return load_run(ref, "", tracking_uri)
    raise LoadError(
        f"no file or directory at {ref}; expected an MLflow run id, a runs:/<id> URI, a .ckpt "
        "file or a run's artifact directory"
    )


def load_path(path: Path) -> FittedModel:
    if not path.exists():
        raise LoadError(f"no file or directory at {path}")
    if path.is_dir():
        candidates = [path / CHECKPOINT, path / Path(CHECKPOINT).name]
        checkpoint = next((c for c in candidates if c.is_file()), None)
        if checkpoint is None:
            raise LoadError(
                f"{path}: no {CHECKPOINT} in this directory; expected a run's artifact directory "
                "(model/model.ckpt beside config.yaml) or a .ckpt file"
            )
    else:
        checkpoint = path
    module = read_checkpoint(checkpoint)
    # A run's own checkpoint is model/model.ckpt, a restart's restarts/restart_<r>.ckpt: the
    # run's config.yaml is one level up; a checkpoint copied out may have it beside it.
    root = next(
        (d for d in (checkpoint.parent, checkpoint.parent.parent) if (d / "config.yaml").is_file()),
        None,
    )
    schema, config = read_schema(root, module) if root is not None else (Schema(), None)
    penalty, scale = fitted_penalties(root, config) if root is not None else (None, None)
    return FittedModel(
        module, schema, config, source=str(checkpoint), penalty=penalty, scale_penalty=scale
    )


def read_checkpoint(path: Path):
    """The MDNModule a checkpoint holds (``pipeline.save_checkpoint``), in eval mode."""
    from mdnlab.module import MDNModule

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise LoadError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
    if not isinstance(state, dict) or not {"state_dict", "hyper_parameters"} <= set(state):
        raise LoadError(
            f"{path}: not an mdnlab checkpoint (no state_dict and hyper_parameters entries)"
        )
    try:
        module = MDNModule(**dict(state["hyper_parameters"]))
        module.load_state_dict(state["state_dict"])
    except (MdnlabError, TypeError, ValueError, RuntimeError, KeyError) as err:
        raise LoadError(f"{path}: not an mdnlab checkpoint ({_first_line(err)})") from None
    return module.eval()


def load_run(run_id: str, subpath: str, tracking_uri: str | None) -> FittedModel:
    """Download the run's checkpoint, config.yaml and data/ to a temporary folder and load."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mdnlab.config_checks import check_tracking_uri
    from mdnlab.tracking import (
        global_tracking_uri,
        no_artifact_progress_bars,
        resolve_tracking_uri,
        sqlite_path,
    )

    uri = resolve_tracking_uri(tracking_uri)
    try:
        check_tracking_uri(uri)
    except MdnlabError as err:
        raise LoadError(str(err).replace("logger.tracking_uri=", "tracking URI ")) from None
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store there
        raise LoadError(
            f"no MLflow store at {db} (tracking URI {uri}) to find run {run_id!r} in; pass "
            "tracking_uri= or set MLFLOW_TRACKING_URI"
        )
    if not run_id:
        raise LoadError(f"{RUNS_URI}: no run id; expected runs:/<run id>[/model]")
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise LoadError(f"no MLflow run {run_id!r} in {uri}") from None
        raise LoadError(f"MLflow run {run_id!r} in {uri}: {_first_line(err)}") from None
    checkpoint = checkpoint_artifact(subpath)
    folder = posixpath.dirname(checkpoint)
    with global_tracking_uri(uri):  # a run with a logged model: MLflow resolves it globally
        listed = {f.path for f in client.list_artifacts(run_id, folder or None)}
        root = {f.path for f in client.list_artifacts(run_id)}
    if checkpoint not in listed:
        raise LoadError(
            f"MLflow run {run_id} has no artifact {checkpoint}: not an mdnlab run (or its model "
            "was not logged)"
        )
    with (
        tempfile.TemporaryDirectory(prefix="mdnlab-load-") as tmp,
        no_artifact_progress_bars(),
        global_tracking_uri(uri),
    ):
        # Each artifact lands under its own name in tmp: model.ckpt, config.yaml, data/.
        local = [
            download_artifacts(run_id=run_id, artifact_path=a, dst_path=tmp, tracking_uri=uri)
            for a in [checkpoint]
            + [a for a in ("config.yaml", "metrics.json", "data") if a in root]
        ]
        module = read_checkpoint(Path(local[0]))
        has_config = (Path(tmp) / "config.yaml").is_file()
        schema, config = read_schema(Path(tmp), module) if has_config else (Schema(), None)
        penalty, scale = fitted_penalties(Path(tmp), config) if has_config else (None, None)
    return FittedModel(
        module,
        schema,
        config,
        source=f"{RUNS_URI}{run_id}/{checkpoint}",
        run_id=run_id,
        penalty=penalty,
        scale_penalty=scale,
    )


def fitted_penalties(folder: Path, config: dict | None) -> tuple[float | None, float | None]:
    """The lambda and the scale-penalty strength c the run's estimate minimised:
    ``train/penalty`` and ``train/scale_penalty`` in its metrics.json (the validation path or
    the evidence may have moved them from the configured ones; a run logs the second only when
    it is above 0), else ``train.penalty`` and ``train.scale_penalty`` in its config."""
    import json

    path = folder / "metrics.json"
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
            return float(metrics["train/penalty"]), float(metrics.get("train/scale_penalty", 0.0))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LoadError(
                f"{path}: expected JSON with a number train/penalty ({_first_line(err)}); "
                "without it the penalty the estimate minimised, which its standard errors "
                "need, is unknown"
            ) from None
    train = (config or {}).get("train") or {}
    penalty = float(train["penalty"]) if "penalty" in train else None
    return penalty, float(train.get("scale_penalty", 0.0) or 0.0)


def checkpoint_artifact(subpath: str) -> str:
    """``runs:/<id>/<subpath>`` -> the checkpoint's artifact path: the run's model for ""
    or "model", a .ckpt as named, else ``<subpath>/model.ckpt``."""
    subpath = subpath.strip("/")
    if subpath in ("", posixpath.dirname(CHECKPOINT)):
        return CHECKPOINT
    if subpath.endswith(".ckpt"):
        return subpath
    return f"{subpath}/{posixpath.basename(CHECKPOINT)}"
