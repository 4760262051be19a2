"""Predict from a fitted run: x from a CSV or .npz file, predictions to a CSV or .npz file.

    python src/predict.py run=<run id> input=points.csv output=pred.csv \\
        what=mean,quantiles quantiles=[0.05,0.5,0.95]
    python src/predict.py run=runs:/<id> input=x.npz output=draws.npz what=samples n_samples=1000

Keys (key=value; run, input and output are required):
  run                 an MLflow run id, runs:/<id>, a .ckpt file or a run's artifact folder
  input               a CSV with the training x columns, or an .npz with an array x (n, d)
  output              .csv: one row per input row, the input's x columns (an .npz input: its
                      row number) then one column per quantity (mean[0], sd[0],
                      quantile[0.05], prob[0,1], ...; samples: sample[0], sample[1], ...);
                      .npz: one array (rows,) per quantity, x (the network's inputs), x_names
                      and samples (rows, n_samples, *event shape)
  what                comma list of mean, sd, variance, quantiles, probabilities, weights,
                      modes, samples (default mean)
  quantiles           with what=quantiles: probabilities, e.g. [0.05,0.5,0.95] (the default)
  n_samples           with what=samples: draws per row (default 100)
  seed                with what=samples: the draws' seed (default 0: the same draws each time)
  temperature         with what=samples: scales each component's spread (default 1)
  weight_temperature  with what=samples: flattens (> 1) or sharpens (< 1) the mixing weights
  se                  true: add the delta-method SEs se_hessian[<quantity>] and
                      se_sandwich[<quantity>] where the inference step has them (mean,
                      variance, probabilities, weights), recomputed from the run's training
                      data, which must still be at its data.path (default false)
  tracking_uri        the MLflow store of a run id (default MLFLOW_TRACKING_URI, else
                      sqlite:///mlflow.db)

A bad argument or input is one line on stderr, `error: <message>`, exit status 2, and no
output file is written; the output is written to a temporary file beside it, then renamed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mdnlab.errors import ConfigError, DataError, MdnlabError

KEYS = (
    "run",
    "input",
    "output",
    "what",
    "quantiles",
    "n_samples",
    "seed",
    "temperature",
    "weight_temperature",
    "se",
    "tracking_uri",
)
SE_COLUMNS = ("se_hessian", "se_sandwich")
REQUIRED = ("run", "input", "output")
SUFFIXES = (".csv", ".npz")
QUANTITIES = ("mean", "sd", "variance", "quantiles", "probabilities", "weights", "modes")
WHAT = (*QUANTITIES, "samples")
# Keys that only make sense with one entry of `what`.
NEEDS = {
    "quantiles": "quantiles",
    "n_samples": "samples",
    "seed": "samples",
    "temperature": "samples",
    "weight_temperature": "samples",
}


@dataclass
class Request:
    run: str
    input: Path
    output: Path
    what: list[str] = field(default_factory=lambda: ["mean"])
    quantiles: list[float] = field(default_factory=lambda: [0.05, 0.5, 0.95])
    n_samples: int = 100
    seed: int = 0
    temperature: float = 1.0
    weight_temperature: float | None = None
    se: bool = False
    tracking_uri: str | None = None

    @property
    def samples(self) -> bool:
        return "samples" in self.what


# --- arguments -------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> Request:
    given: dict[str, str] = {}
    for token in argv:
        key, sep, value = token.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"argument {token!r} is not key=value; known keys: {', '.join(KEYS)}")
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(KEYS)}")
        if key in given:
            raise ConfigError(f"{key}= is given twice")
        given[key] = value.strip()
    missing = [k for k in REQUIRED if not given.get(k)]
    if missing:
        raise ConfigError(
            f"{', '.join(f'{k}=' for k in missing)} required; e.g. python src/predict.py "
            "run=<run id> input=points.csv output=predictions.csv what=mean,quantiles"
        )
    request = Request(given["run"], Path(given["input"]), Path(given["output"]))
    if "what" in given:
        request.what = parse_what(given["what"])
    for key, needs in NEEDS.items():
        if key in given and needs not in request.what:
            raise ConfigError(
                f"{key}= applies to what={needs} only; add {needs} to what "
                f"(what={','.join([*request.what, needs])})"
            )
    if "quantiles" in given:
        request.quantiles = parse_quantiles(given["quantiles"])
    if "n_samples" in given:
        request.n_samples = parse_int(given["n_samples"], "n_samples", minimum=1)
    if "seed" in given:
        request.seed = parse_int(given["seed"], "seed", minimum=0)
    if "temperature" in given:
        request.temperature = parse_positive(given["temperature"], "temperature")
    if "weight_temperature" in given:
        request.weight_temperature = parse_positive(
            given["weight_temperature"], "weight_temperature"
        )
    if "se" in given:
        request.se = parse_bool(given["se"], "se")
    request.tracking_uri = given.get("tracking_uri") or None
    for key in ("input", "output"):
        path = getattr(request, key)
        if path.suffix.lower() not in SUFFIXES:
            raise ConfigError(f"{key}={path}: suffix {path.suffix!r}; expected .csv or .npz")
    if request.input.resolve() == request.output.resolve():
        raise ConfigError(f"output={request.output} is the input file; choose another output")
    return request


def _items(text: str) -> list[str]:
    """``[a,b]``, ``(a,b)`` or ``a,b`` -> ["a", "b"]."""
    text = text.strip()
    if text[:1] in "[(" and text[-1:] in "])":
        text = text[1:-1]
    return [item.strip().strip("'\"") for item in text.split(",") if item.strip()]


def parse_what(text: str) -> list[str]:
    names = list(dict.fromkeys(_items(text)))
    if not names:
        raise ConfigError(f"what: empty; choose from {', '.join(WHAT)}")
    unknown = [w for w in names if w not in WHAT]
    if unknown:
        raise ConfigError(f"what: {unknown[0]!r} is not known; choose from {', '.join(WHAT)}")
    return names


def parse_quantiles(text: str) -> list[float]:
    items = _items(text)
    try:
        values = [float(item) for item in items]
    except ValueError:
        values = []
    if not values or not all(0.0 <= q <= 1.0 for q in values):
        raise ConfigError(
            f"quantiles={text}: expected probabilities in [0, 1], e.g. quantiles=[0.05,0.5,0.95]"
        )
    return values


def parse_bool(text: str, key: str) -> bool:
    value = text.lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{key}={text!r}; expected true or false")
    return value == "true"


def parse_int(text: str, key: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"{key}={text}: expected an integer >= {minimum}")
    return value


def parse_positive(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{key}={text}: expected a positive number")
    return value


# --- input -----------------------------------------------------------------------------------
@dataclass
class Inputs:
    x: object  # np.ndarray (n, d): the network's inputs, original units
    names: list[str]  # x's columns (text x columns one-hot: g=level)
    shown: object  # pd.DataFrame: the columns that lead each output row


def read_input(path: Path, model) -> Inputs:
    """The rows to predict at, checked as training data is (file, column and row named)."""
    if not path.is_file():
        raise DataError(f"input: no file at {path} (expected a .csv or .npz file)")
    if path.suffix.lower() == ".csv":
        return _read_csv(path, model)
    return _read_npz(path, model)


def _read_csv(path: Path, model) -> Inputs:
    import pandas as pd

    from mdnlab.data.table import encode_inputs

    schema = model.schema
    if schema.x_columns is None:
        raise DataError(
            f"input={path}: this model was loaded from a bare checkpoint, without its run's "
            f"config.yaml, so its x columns have no names; pass an .npz file with an array x "
            f"(n, {model.n_inputs})"
        )
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({_first_line(err)})") from None
    missing = [c for c in schema.x_columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"input: column(s) {', '.join(map(repr, missing))} not in {path}; expected the "
            f"training x columns {', '.join(schema.x_columns)}; its columns are: "
            f"{', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise DataError(f"{path}: no rows; expected one row per point to predict at")
    x, names, _ = encode_inputs(frame, schema.x_columns, str(path), encodings=schema.x_levels)
    return Inputs(x, names, frame[schema.x_columns].reset_index(drop=True))


def _read_npz(path: Path, model) -> Inputs:
    import numpy as np
    import pandas as pd

    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({_first_line(err)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive with an array x")
    with archive:
        if "x" not in archive.files:
            raise DataError(
                f"{path}: array x missing; the file holds {', '.join(archive.files) or 'no arrays'};"
                f" expected x (n, {model.n_inputs})"
            )
        x = archive["x"]
    d = model.n_inputs
    names = input_names(model)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != d:
        raise DataError(
            f"{path}: x has shape {x.shape}; expected (n, {d}): the model's inputs "
            f"{', '.join(names)}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{path}: x has no rows; expected one row per point to predict at")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: array x has dtype {x.dtype}; expected real numbers")
    x = x.astype(np.float64)
    rows, cols = np.nonzero(~np.isfinite(x))
    if rows.size:
        raise DataError(
            f"{path}: array x, row {rows[0]}, entry {cols[0]}: value {x[rows[0], cols[0]]} is "
            "not a finite number; expected finite numbers"
        )
    return Inputs(x, names, pd.DataFrame({"row": np.arange(x.shape[0])}))


def input_names(model) -> list[str]:
    """The network's input columns: x columns, text ones as their indicators (g=level)."""
    schema = model.schema
    if schema.x_columns is None:
        return [f"x{j}" for j in range(model.n_inputs)]
    names = []
    for col in schema.x_columns:
        levels = schema.x_levels.get(col)
        names += [f"{col}={lv}" for lv in levels[1:]] if levels else [col]
    return names


# --- predictions -----------------------------------------------------------------------------
def predict_columns(model, x, request: Request) -> dict:
    """Quantity name -> values (rows,), in the order asked (NaN: a mode a row lacks)."""
    import numpy as np
    import pandas as pd

    n = x.shape[0]
    names = [name for name in request.what if name != "samples"]
    if not names:
        return {}
    long = model.predict(x, what=names, quantiles=request.quantiles, se=request.se)
    values = ["value", *SE_COLUMNS] if request.se else ["value"]
    wide = long.pivot(index="row", columns="quantity", values=values).reindex(range(n))
    columns: dict[str, np.ndarray] = {}
    for quantity in pd.unique(long["quantity"]):
        columns[quantity] = wide["value", quantity].to_numpy(dtype=np.float64)
        for se in values[1:]:
            column = wide[se, quantity].to_numpy(dtype=np.float64)
            if not np.isnan(column).all():  # quantiles and modes have no delta-method SE
                columns[f"{se}[{quantity}]"] = column
    return columns


def check_samples_fit(model, request: Request) -> None:
    size = 1
    for s in model.event_shape:
        size *= s
    if request.samples and request.output.suffix.lower() == ".csv" and size != 1:
        raise ConfigError(
            f"output={request.output}: samples of a y with event shape {model.event_shape} do not "
            "fit one CSV column per draw; write an .npz output (array samples: rows, n_samples, "
            f"{', '.join(map(str, model.event_shape))})"
        )


# The draws are held in memory (float64) before they are written: at most this many bytes.
MAX_DRAW_BYTES = 2 * 1024**3


def check_draws_memory(rows: int, model, request: Request) -> None:
    if not request.samples:
        return
    size = 1
    for s in model.event_shape:
        size *= s
    needed = rows * request.n_samples * size * 8
    if needed > MAX_DRAW_BYTES:
        most = max(1, MAX_DRAW_BYTES // max(1, rows * size * 8))
        raise ConfigError(
            f"n_samples={request.n_samples}: {rows} input rows x {request.n_samples} draws need "
            f"{needed / 1024**3:.1f} GiB; at most {most} draws per row fit in "
            f"{MAX_DRAW_BYTES // 1024**3} GiB (split the input, or ask for fewer)"
        )


def sample_labels(model, draws):
    """CSV draws of a single class-coded y column: its labels where it has them."""
    import numpy as np

    schema = model.schema
    if model.family.name != "categorical" or not schema.y_columns:
        return draws
    labels = schema.y_levels.get(schema.y_columns[0])
    return np.asarray(labels, dtype=object)[draws] if labels else draws


# --- output ----------------------------------------------------------------------------------
def write_csv(path: Path, inputs: Inputs, columns: dict, draws, model) -> None:
    import pandas as pd

    parts = [inputs.shown, pd.DataFrame(columns)]
    if draws is not None:
        values = sample_labels(model, draws.reshape(draws.shape[0], draws.shape[1]))
        parts.append(pd.DataFrame(values, columns=[f"sample[{j}]" for j in range(draws.shape[1])]))
    frame = pd.concat(parts, axis=1)
    clash = [c for c in inputs.shown.columns if list(frame.columns).count(c) > 1]
    if clash:
        raise DataError(
            f"input column {clash[0]!r} has the name of an output column; rename it in the input"
        )
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_npz(path: Path, inputs: Inputs, columns: dict, draws) -> None:
    import numpy as np

    arrays = {"x": inputs.x, "x_names": np.asarray(inputs.names, dtype=str), **columns}
    if draws is not None:
        arrays["samples"] = draws

    def save(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add .npz to a name
            np.savez(handle, **arrays)

    write_atomically(path, save)


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: a
    failure leaves no half-written file (and an earlier ``path`` as it was)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise DataError(f"output={path}: cannot write there ({err.strerror or err})") from None
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an output is not
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"output={path}: cannot write there ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the command -----------------------------------------------------------------------------
def run(request: Request) -> str:
    """Predict and write; returns the summary line."""
    if not request.input.is_file():  # before loading: a run can take seconds to fetch
        raise DataError(f"input: no file at {request.input} (expected a .csv or .npz file)")
    import mdnlab

    model = mdnlab.load(request.run, tracking_uri=request.tracking_uri)
    check_samples_fit(model, request)
    inputs = read_input(request.input, model)
    check_draws_memory(inputs.x.shape[0], model, request)
    columns = predict_columns(model, inputs.x, request)
    draws = None
    if request.samples:
        draws = model.sample(
            inputs.x,
            request.n_samples,
            temperature=request.temperature,
            weight_temperature=request.weight_temperature,
            seed=request.seed,
        )
    if request.output.suffix.lower() == ".csv":
        write_csv(request.output, inputs, columns, draws, model)
    else:
        write_npz(request.output, inputs, columns, draws)
    n = inputs.x.shape[0]
    shown = list(columns)
    listed = ", ".join(shown[:6]) + (", ..." if len(shown) > 6 else "")
    parts = [f"{len(shown)} quantit{'y' if len(shown) == 1 else 'ies'} ({listed})"] if shown else []
    if draws is not None:
        parts.append(f"{request.n_samples} samples per row (seed {request.seed})")
    return f"predict: {n} row{'s' if n != 1 else ''}, {' and '.join(parts)} -> {request.output}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        summary = run(parse_args(argv))
    except MdnlabError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(summary)
    return 0


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    raise SystemExit(main())
