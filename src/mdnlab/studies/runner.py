"""A study from its params: read and check the size, set threads, log to MLflow, run."""

from __future__ import annotations

import time
from pathlib import Path

from mdnlab.errors import ConfigError
from mdnlab.pipeline import configure_threads
from mdnlab.progress import say
from mdnlab.studies import settings as study_settings
from mdnlab.studies.mlflow_log import StudyLog


def _studies():
    from mdnlab.studies import consistency, coverage, projection

    return {
        "consistency": (study_settings.CurveSize, consistency.run),
        "projection": (study_settings.CurveSize, projection.run),
        "coverage": (study_settings.CoverageSize, coverage.run),
    }


def run_study(
    name: str,
    params: dict,
    size: str | None,
    out: Path,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    fit=None,
) -> dict[str, float]:
    """Metrics of study ``name`` at ``size`` (None: ``params['studies']['size']``); ``fit``:
    the estimator's ``FitSettings`` (default ``FitSettings.for_size`` of the size)."""
    studies = _studies()
    if name not in studies:
        raise ConfigError(f"unknown study {name!r}; expected one of {', '.join(studies)}")
    block = params.get("studies") if isinstance(params, dict) else None
    if not isinstance(block, dict):
        raise ConfigError("params.yaml: no studies: block")
    size = size or block.get("size", "smoke")
    seed = block.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"params.yaml studies.seed: expected an integer >= 0, got {seed!r}")
    kind, run = studies[name]
    chosen = study_settings.read(kind, name, params, size)
    # One thread: the steps of these small networks are too small to share (measured here, a
    # replicate fit at n = 100 took 143 s on 2 threads beside a busy process against 8 s on 1).
    threads = configure_threads(1)
    say(f"study {name} ({size}): {chosen}; seed {seed}; {threads} thread(s)")
    started = time.perf_counter()
    log_params = {"size": size, "seed": seed} | {f"{size}.{k}": v for k, v in vars(chosen).items()}
    out = Path(out)
    if not mlflow:
        metrics = run(chosen, seed, out, None, fit)
        return metrics | {"seconds": time.perf_counter() - started}
    with StudyLog(name, log_params, tracking_uri) as log:
        metrics = run(chosen, seed, out, log, fit)
        metrics["seconds"] = time.perf_counter() - started
        log.finish(metrics, out)
    return metrics
