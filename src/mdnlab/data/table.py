"""Reading a dataset file (.csv or .npz) into checked arrays, with errors a person can act on.

Every check names the file, the column and the row at fault and says what was expected.
Rows are numbered from 0 in data order; for CSV files the line number (header = line 1) is
given too, so that the row can be found in an editor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mdnlab.errors import DataError


@dataclass
class Table:
    """Inputs x (n, d) float64 and targets y ((n, q) or (n, p, p)), as read and checked."""

    x: np.ndarray
    y: np.ndarray
    x_names: list[str]
    y_names: list[str]
    source: str
    # For each text-valued x column: its levels; the first is the reference (no indicator).
    encodings: dict[str, list[str]] = field(default_factory=dict)
    # For each text-valued y column (discrete families only): its levels; y holds 0-based codes.
    y_levels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return self.x.shape[0]


def read_table(
    path: str | Path, x_cols=None, y_cols=None, min_rows: int = 10, text_y: bool = False
) -> Table:
    """Read and check a dataset; ``x_cols``/``y_cols`` are required for CSV files.

    With ``text_y`` (discrete families), text-valued y columns become 0-based class codes in
    the sorted order of their levels, kept in ``Table.y_levels``.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parts[:1] == ("data",):
            hint = "; the datasets under data/ are made by the pipeline: run `make pipeline` first"
        raise DataError(f"data.path: no file at {path} (expected a .csv or .npz file){hint}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = _read_csv(path, x_cols, y_cols, text_y)
    elif suffix == ".npz":
        table = _read_npz(path, x_cols, y_cols)
    else:
        raise DataError(f"data.path: {path} has suffix {suffix!r}; expected .csv or .npz")
    check_row_count(table, min_rows)
    check_not_constant(table.x, table.x_names, table.source, "x")
    return table


def check_row_count(table: Table, min_rows: int) -> None:
    if table.n_rows < min_rows:
        raise DataError(
            f"{table.source}: {table.n_rows} rows; at least {min_rows} are needed "
            f"(data.min_rows) to split, fit and evaluate a model"
        )


def check_not_constant(values: np.ndarray, names: list[str], source: str, role: str) -> None:
    for j, name in enumerate(names):
        column = values[:, j]
        if np.all(column == column[0]):
            raise DataError(
                f"{source}: {role} column {name!r} is constant (every row is {float(column[0]):g}); "
                f"it carries no information and cannot be standardised: drop it"
            )


def _read_csv(path: Path, x_cols, y_cols, text_y: bool = False) -> Table:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from None
    return table_from_frame(frame, x_cols, y_cols, str(path), text_y)


def table_from_frame(
    frame: pd.DataFrame, x_cols, y_cols, source: str, text_y: bool = False
) -> Table:
    """A table from a DataFrame's columns, checked as a CSV file's are (``source`` names it in
    the messages): text x columns one-hot, text y columns class codes with ``text_y``."""
    for field_name, cols in (("data.x_cols", x_cols), ("data.y_cols", y_cols)):
        if not cols:
            raise DataError(
                f"{field_name} is required for the CSV file {source}; its columns are: "
                f"{', '.join(map(str, frame.columns))}"
            )
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(
                f"{field_name}: column(s) {', '.join(map(repr, missing))} not in {source}; "
                f"its columns are: {', '.join(map(str, frame.columns))}"
            )
    x, x_names, encodings = encode_inputs(frame, list(x_cols), source)
    y_levels: dict[str, list[str]] = {}
    y_blocks = []
    for col in y_cols:
        if text_y and is_text(frame[col]):
            check_no_missing(frame[col], col, source)
            values = frame[col].astype(str)
            y_levels[col] = sorted(values.unique())
            y_blocks.append(
                pd.Categorical(values, categories=y_levels[col]).codes.astype(np.float64)
            )
        else:
            y_blocks.append(numeric_column(frame, col, source))
    y = np.column_stack(y_blocks)
    return Table(x, y, x_names, list(y_cols), source, encodings, y_levels)


def encode_inputs(
    frame: pd.DataFrame, x_cols: list[str], source: str, encodings: dict | None = None
) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """Numeric x columns as they are; text columns one-hot, the first level as reference.

    With ``encodings`` given (from training), text columns use those levels and an unknown
    level is an error; otherwise the levels are learnt from ``frame`` (sorted).
    """
    learn = encodings is None
    encodings = {} if learn else encodings
    blocks, names = [], []
    for col in x_cols:
        series = frame[col]
        if col in encodings or (learn and is_text(series)):
            check_no_missing(series, col, source)
            values = series.astype(str)
            if learn:
                encodings[col] = sorted(values.unique())
                if len(encodings[col]) < 2:
                    raise DataError(
                        f"{source}: x column {col!r} is constant (every row is "
                        f"{encodings[col][0]!r}); it carries no information: drop it"
                    )
            levels = encodings[col]
            unknown = sorted(set(values) - set(levels))
            if unknown:
                row = int(np.flatnonzero(values == unknown[0])[0])
                raise DataError(
                    f"{source}: column {col!r}, {row_text(row, source)}: level {unknown[0]!r} "
                    f"was not seen in training; known levels: {', '.join(levels)}"
                )
            for level in levels[1:]:
                blocks.append((values == level).to_numpy(dtype=np.float64))
                names.append(f"{col}={level}")
        else:
            blocks.append(numeric_column(frame, col, source))
            names.append(col)
    return np.column_stack(blocks), names, encodings


def is_text(series: pd.Series) -> bool:
    """Text-valued: not numeric, and not a numeric column spoilt by a few stray values."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    parsed = pd.to_numeric(series, errors="coerce")
    return parsed.notna().mean() < 0.5


def row_text(row: int, source: str) -> str:
    line = f" (line {row + 2})" if source.lower().endswith(".csv") else ""
    return f"row {row}{line}"


def check_no_missing(series: pd.Series, col: str, source: str) -> None:
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        raise DataError(
            f"{source}: column {col!r}, {row_text(int(missing[0]), source)}: value is missing "
            f"({missing.size} missing in all); expected a value in every row"
        )


def numeric_column(frame: pd.DataFrame, col: str, source: str) -> np.ndarray:
    """The column as float64; a missing, non-numeric or non-finite value is an error."""
    series = frame[col]
    check_no_missing(series, col, source)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{source}: column {col!r}, {row_text(row, source)}: value {series.iloc[row]!r} is "
            f"not a finite number ({bad.size} such row{'s' if bad.size > 1 else ''} in all); "
            "expected a finite number"
        )
    return values


def _read_npz(path: Path, x_cols, y_cols) -> Table:
    source = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise DataError(
                f"{path}: array(s) {', '.join(missing)} missing; the file holds "
                f"{', '.join(archive.files) or 'no arrays'}; expected x (n, d) and y (n,), (n, q) "
                f"or (n, p, p)"
            )
        try:
            x, y = archive["x"], archive["y"]
        except ValueError as err:  # object arrays: numpy refuses them without pickle
            raise DataError(
                f"{path}: arrays x and y must hold numbers ({err}); expected numeric arrays"
            ) from None
    return table_from_arrays(x, y, x_cols, y_cols, source)


def table_from_arrays(x: np.ndarray, y: np.ndarray, x_cols, y_cols, source: str) -> Table:
    """A table from arrays x (n, d) or (n,) and y (n,), (n, q) or (n, p, p), checked as an
    .npz file's are (``source`` names them in the messages); ``x_cols``/``y_cols`` name the
    columns (None: x0, x1, ... and y0, ...)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"{source}: x has shape {x.shape}; expected (n, d)")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim not in (2, 3):
        raise DataError(f"{source}: y has shape {y.shape}; expected (n,), (n, q) or (n, p, p)")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{source}: x has {x.shape[0]} rows but y has {y.shape[0]}; expected equal")
    x_names = list(x_cols) if x_cols else [f"x{j}" for j in range(x.shape[1])]
    y_names = list(y_cols) if y_cols else _default_y_names(y)
    if len(x_names) != x.shape[1]:
        raise DataError(
            f"data.x_cols names {len(x_names)} columns but x in {source} has {x.shape[1]}"
        )
    if len(y_names) != len(_default_y_names(y)):
        raise DataError(
            f"data.y_cols names {len(y_names)} columns but y in {source} has shape {y.shape[1:]} "
            f"per row ({len(_default_y_names(y))} entries)"
        )
    for name, values in (("x", x), ("y", y)):
        if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise DataError(
                f"{source}: array {name} has dtype {values.dtype}; expected real numbers"
            )
        values = values.astype(np.float64)
        flat = values.reshape(values.shape[0], -1)
        bad_rows, bad_cols = np.nonzero(~np.isfinite(flat))
        if bad_rows.size:
            raise DataError(
                f"{source}: array {name}, row {bad_rows[0]}, entry {bad_cols[0]}: value "
                f"{flat[bad_rows[0], bad_cols[0]]} is not a finite number; expected finite numbers"
            )
    return Table(x.astype(np.float64), y.astype(np.float64), x_names, y_names, source)


def _default_y_names(y: np.ndarray) -> list[str]:
    if y.ndim == 2:
        return [f"y{j}" for j in range(y.shape[1])]
    return lower_triangle_names(y.shape[1])


def lower_triangle_names(p: int, name: str = "y") -> list[str]:
    """``y[0,0], y[1,0], y[1,1], y[2,0], ...``: a p x p matrix's lower triangle in row-major
    order, the layout of matrix targets in CSV files."""
    return [f"{name}[{i},{j}]" for i in range(p) for j in range(i + 1)]
