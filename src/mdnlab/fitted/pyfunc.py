"""A run's model as an MLflow pyfunc model, so that ``mlflow models serve`` answers predictions.

Each training run logs a LoggedModel named ``model`` (``log_pyfunc``): it carries the run's
checkpoint, ``config.yaml`` and data encodings as one artifact (``run``), a signature (the raw
training x columns in; one column per predicted quantity out; params ``what`` and
``quantiles``) and an input example of five training rows. ``runs:/<id>/model`` then resolves
to it (MLflow merges the run's own ``model/`` folder, where ``model.ckpt`` stays for
``mdnlab.load``, with the LoggedModel's files).

Serving runs in the environment mdnlab is installed in (``--env-manager local``): mdnlab is
not on PyPI, so the requirements the model lists (torch, numpy, pandas, mlflow at the versions
that trained it) do not make a fresh environment on their own.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from mdnlab.tracking import global_tracking_uri, no_artifact_progress_bars

MODEL_NAME = "model"  # runs:/<id>/model
RUN_ARTIFACT = "run"
RUN_FILES = ("model/model.ckpt", "config.yaml", "data/encoding.json", "data/y_encoding.json")
EXAMPLE_ROWS = 5
DEFAULT_QUANTILES = [0.05, 0.5, 0.95]  # a request's quantiles when its params name none
REQUIREMENTS = ("torch", "numpy", "pandas", "scipy", "mlflow")


def default_what(model) -> str:
    """What a request gets without ``params``: the predictive summary each family is used for."""
    family = model.family.name
    if family == "categorical":
        return "probabilities"
    if family == "wishart":
        return "mean"
    return "mean,sd,quantiles" if model.scalar_y else "mean,variance"


def wide_predictions(model, x, what: str, quantiles) -> pd.DataFrame:
    """One row per row of x, one column per quantity (named as in ``predictions.csv``)."""
    long = model.predict(x, what=what, quantiles=quantiles)
    order = list(dict.fromkeys(long.quantity))
    wide = long.pivot(index="row", columns="quantity", values="value")
    wide = wide.reindex(index=range(len(model.inputs(x))), columns=order)
    wide.columns.name = None
    return wide.reset_index(drop=True)


class MdnPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(x, params={"what": "mean,quantiles", "quantiles": [0.05, 0.5, 0.95]})``.

    The DataFrame hint tells MLflow to check requests against the logged signature (a hint it
    cannot build a schema from; without any hint it warns on every load)."""

    def load_context(self, context):
        from mdnlab.fitted.loading import load_path

        self.model = load_path(Path(context.artifacts[RUN_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from mdnlab.errors import MdnlabError

        params = params or {}
        try:
            what = params.get("what") or default_what(self.model)
            quantiles = [float(q) for q in (params.get("quantiles") or DEFAULT_QUANTILES)]
            return wide_predictions(self.model, model_input, what, quantiles)
        except (MdnlabError, ValueError, TypeError) as err:
            # the request is at fault: the scoring server answers 400 with this one line
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None


def example_frame(model, x_encoded: np.ndarray, rows: int = EXAMPLE_ROWS) -> pd.DataFrame:
    """The first ``rows`` training rows as raw x columns (text columns decoded from their
    one-hot indicators): what a user sends."""
    schema, x = model.schema, np.asarray(x_encoded)[:rows]
    columns, position = {}, 0
    for column in schema.x_columns:
        levels = schema.x_levels.get(column)
        if levels is None:
            columns[column] = x[:, position]
            position += 1
            continue
        indicators = x[:, position : position + len(levels) - 1]
        chosen = np.where(indicators.any(axis=1), indicators.argmax(axis=1) + 1, 0)
        columns[column] = [levels[i] for i in chosen]
        position += len(levels) - 1
    return pd.DataFrame(columns)


def requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def log_pyfunc(tracking_uri: str, run_id: str, artifacts: Path, x_train: np.ndarray) -> str:
    """Log the run whose files are in ``artifacts`` as pyfunc model ``model``; its model id."""
    from mlflow.models import Model, infer_signature
    from mlflow.tracking import MlflowClient

    from mdnlab.fitted.loading import load_path

    with tempfile.TemporaryDirectory(prefix="mdnlab-pyfunc-") as tmp:
        staged = Path(tmp) / RUN_ARTIFACT
        for name in RUN_FILES:
            if (artifacts / name).is_file():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(artifacts / name, staged / name)
        model = load_path(staged)
        example = example_frame(model, x_train)
        what = default_what(model)
        params = {"what": what, "quantiles": DEFAULT_QUANTILES}
        output = wide_predictions(model, example, what, params["quantiles"])
        client = MlflowClient(tracking_uri)
        # Created here, in the run's experiment: MLflow's own creation would file it under the
        # active (default) experiment, where ``runs:/<id>/model`` does not look.
        logged = client.create_logged_model(
            client.get_run(run_id).info.experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            model_type="mdnlab",
        )
        with _model_logging(tracking_uri):
            info = Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                python_model=MdnPyfunc(),
                artifacts={RUN_ARTIFACT: str(staged)},
                signature=infer_signature(example, output, params=params),
                input_example=example,
                pip_requirements=requirements(),
            )
    return info.model_id


@contextmanager
def _model_logging(uri: str):
    """MLflow's model logging on store ``uri``, with its advice on CloudPickle kept quiet: it
    does not apply to a model whose class mdnlab imports from its own package."""
    loggers = [logging.getLogger(name) for name in ("mlflow.pyfunc", "mlflow.models")]
    levels = [logger.level for logger in loggers]
    try:
        with (
            global_tracking_uri(uri),
            no_artifact_progress_bars(),
            warnings.catch_warnings(),
            _no_requirement_check(),
        ):
            warnings.simplefilter("ignore", UserWarning)
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def _no_requirement_check():
    """MLflow checks each listed requirement against the installed packages (when it saves the
    model and again when it loads it to check the input example), which costs about 3 s of
    package-metadata scanning per process; ``requirements()`` reads them from the installed
    packages, so the check can only pass. Skipped in the modules where MLflow still has it."""
    from mlflow.utils import environment

    modules = [m for m in (environment, mlflow.pyfunc) if hasattr(m, _CHECK)]
    saved = [getattr(m, _CHECK) for m in modules]
    for module in modules:
        setattr(module, _CHECK, lambda requirements: None)
    try:
        yield
    finally:
        for module, check in zip(modules, saved, strict=True):
            setattr(module, _CHECK, check)


_CHECK = "warn_dependency_requirement_mismatches"
