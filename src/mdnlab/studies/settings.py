"""The sizes of the studies, read from ``params.yaml`` (``studies:``) and checked up front.

``studies.size`` picks the block (``smoke``, run by the default ``dvc repro``, or ``full``);
each study has both. A wrong value is a ``ConfigError`` naming the key and what was
expected, raised before anything is fitted or logged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from mdnlab.errors import ConfigError

SIZES = ("smoke", "full")


@dataclass(frozen=True)
class CurveSize:
    """KL by n (consistency, projection)."""

    sizes: list[int]
    replicates: int
    restarts: int
    eval_rows: int
    tail_from: int = 1000  # slopes "past the small-n regime" use n >= this
    x_nodes: int = 32  # projection: quadrature nodes in x and y (population fit)
    y_nodes: int = 801
    population_starts: int = 2  # projection: random starts of the population fit
    population_max_iter: int = 5000  # projection: L-BFGS steps of the population fit
    max_epochs: int = 3000  # the fits' Adam budget and polish (conf/trainer/default.yaml)
    polish_max_iter: int = 5000


@dataclass(frozen=True)
class CoverageSize:
    sizes: list[int]
    replicates: int
    bootstrap: int
    restarts: int
    points: int = 5
    level: float = 0.95
    jobs: int = 1  # processes the (setting, n) units run in (one thread each)
    max_epochs: int = 3000
    polish_max_iter: int = 5000


def _positive_int(key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"params.yaml {key}: expected an integer >= {minimum}, got {value!r}")
    return value


def read(kind, study: str, params: dict, size: str):
    """The ``size`` block of ``params['studies'][study]`` as ``kind`` (a dataclass above)."""
    if size not in SIZES:
        raise ConfigError(f"studies.size={size!r}; expected one of {', '.join(SIZES)}")
    prefix = f"studies.{study}.{size}"
    try:
        block = params["studies"][study][size]
    except (KeyError, TypeError):
        raise ConfigError(f"params.yaml: no {prefix} block") from None
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ConfigError(
            f"params.yaml {prefix}: unknown key(s) {', '.join(unknown)}; expected "
            f"{', '.join(sorted(known))}"
        )
    values = {}
    for f in fields(kind):
        if f.name not in block:
            continue
        value = block[f.name]
        key = f"{prefix}.{f.name}"
        if f.name == "sizes":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"params.yaml {key}: expected a list of training sizes")
            value = [_positive_int(key, v, 20) for v in value]
            if value != sorted(set(value)):
                raise ConfigError(f"params.yaml {key}: expected increasing sizes, got {value}")
        elif f.name == "level":
            if not isinstance(value, float) or not 0 < value < 1:
                raise ConfigError(f"params.yaml {key}: expected a number in (0, 1), got {value!r}")
        else:
            value = _positive_int(key, value, 2 if f.name == "replicates" else 1)
        values[f.name] = value
    try:
        return kind(**values)
    except TypeError:
        missing = [f.name for f in fields(kind) if f.name not in block]
        raise ConfigError(f"params.yaml {prefix}: missing {', '.join(missing)}") from None
