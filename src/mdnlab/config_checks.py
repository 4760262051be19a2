"""Checks of a run's config that need no data, made before anything is read or logged: a bad
value stops the run with one line naming the key, the value and what was expected (exit 2,
no MLflow run). Checks that need the data (columns, fractions, shapes) live where the data
are read."""

from __future__ import annotations

import importlib.util
import math
from urllib.parse import urlsplit

from mdnlab.errors import ConfigError

# URI scheme -> (the module its store needs, the extra that installs it); None: no driver.
TRACKING_SCHEMES = {
    "sqlite": None,
    "file": None,
    "": None,  # a local folder (MLflow's file store)
    "http": None,
    "https": None,
    "postgresql": ("psycopg", "server"),
    "postgresql+psycopg": ("psycopg", "server"),
    "postgresql+psycopg2": ("psycopg2", "server"),
}


def check_run_config(cfg) -> None:
    check_required(cfg)
    seed_of(cfg.seed)
    t = cfg.trainer
    positive_number("trainer.lr", t.lr)
    whole_number("trainer.max_epochs", t.max_epochs, minimum=1)
    whole_number("trainer.patience", t.patience, minimum=1)
    nonnegative_number("trainer.weight_decay", t.get("weight_decay", 0.0))
    nonnegative_number("trainer.min_delta", t.get("min_delta", 0.0))
    if t.get("batch_size") is not None:
        whole_number("trainer.batch_size", t.batch_size, minimum=1)
    nonnegative_number("trainer.checkpoint_every_s", t.get("checkpoint_every_s", 60.0))
    check_accelerator(t.get("accelerator", "cpu"))
    whole_number("trainer.devices", t.get("devices", 1), minimum=1)
    if not isinstance(cfg.get("rerun", False), bool):
        raise ConfigError(f"rerun={cfg.rerun!r}: expected true or false")
    check_tracking_uri(cfg.logger.get("tracking_uri"))
    check_threads(cfg.get("threads", "auto"))
    check_polish(cfg.train)
    check_inference(cfg.get("inference"))


def check_required(cfg) -> None:
    """Keys the config leaves ``???`` (such as ``data.path`` under ``data=file``) must be set."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{missing[0]} is required and not set; give it on the command line "
            f"({missing[0]}=...)"
            + (f"; also unset: {', '.join(missing[1:])}" if missing[1:] else "")
        )


def boolean(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def check_threads(value) -> None:
    if value not in (None, "auto"):
        whole_number("threads", value, minimum=1)


def check_polish(train) -> None:
    boolean("train.polish", train.get("polish", True))
    positive_number("train.polish_tol", train.get("polish_tol", 1e-6))
    whole_number("train.polish_max_iter", train.get("polish_max_iter", 5000), minimum=1)
    whole_number("train.newton_max_params", train.get("newton_max_params", 300), minimum=0)


def check_inference(inference) -> None:
    """``inference.*``, which the run reads only after training: checked before it."""
    if inference is None:
        return
    from mdnlab.inference.functional import PARAM_SETS

    boolean("inference.enabled", inference.get("enabled", True))
    params = inference.get("params", "all")
    if params not in PARAM_SETS:
        raise ConfigError(f"inference.params={params!r}: expected one of {', '.join(PARAM_SETS)}")
    for key in ("eig_rtol", "grad_tol", "solver_rtol"):
        if key in inference:
            positive_number(f"inference.{key}", inference[key])
    if "basis_rtol" in inference:
        nonnegative_number("inference.basis_rtol", inference.basis_rtol)
    for key, minimum in (
        ("chunk", 1),
        ("dense_max_params", 0),
        ("weight_se_max_params", 0),
        ("solver_max_iter", 1),
        ("lanczos_steps", 0),
        ("hvp_cache_rows", 0),
    ):
        if key in inference:
            whole_number(f"inference.{key}", inference[key], minimum=minimum)
    if inference.get("max_points") is not None:
        whole_number("inference.max_points", inference.max_points, minimum=1)


ACCELERATORS = ("cpu", "gpu", "auto")


def check_accelerator(value) -> None:
    if value not in ACCELERATORS:
        raise ConfigError(
            f"trainer.accelerator={value!r}: expected one of {', '.join(ACCELERATORS)}"
        )
    if value == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.accelerator=gpu: torch sees no CUDA device (torch.cuda.is_available() "
                "is False); use cpu or auto"
            )


def seed_of(value) -> int:
    """``seed`` as numpy and torch take it: an integer in [0, 2**32)."""
    return whole_number("seed", value, minimum=0, maximum=2**32 - 1)


def whole_number(key: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{key}={value!r}: expected an integer >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{key}={value}: expected an integer {bound}")
    return value


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: expected a finite number")
    return float(value)


def positive_number(key: str, value) -> float:
    number = _number(key, value)
    if number <= 0:
        raise ConfigError(f"{key}={value}: expected a number > 0")
    return number


def nonnegative_number(key: str, value) -> float:
    number = _number(key, value)
    if number < 0:
        raise ConfigError(f"{key}={value}: expected a number >= 0")
    return number


def check_tracking_uri(uri) -> None:
    """A scheme MLflow can store runs under, with its driver installed."""
    if uri is None:
        return
    scheme = urlsplit(str(uri)).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a local path
        return
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"logger.tracking_uri={uri!r}: unsupported scheme {scheme!r}; expected "
            "sqlite:///<file>, http(s)://<mlflow server>, postgresql://<user>@<host>/<db> or a "
            "local folder"
        )
    needs = TRACKING_SCHEMES[scheme]
    if needs and importlib.util.find_spec(needs[0]) is None:
        module, extra = needs
        raise ConfigError(
            f"logger.tracking_uri={uri!r}: a {scheme} store needs the {module} driver, which is "
            f"not installed: pip install -e '.[{extra}]'"
        )
