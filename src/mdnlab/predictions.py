"""Predicted identifiable quantities at chosen points, in long form (``inference/predictions.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mdnlab.data.table import Table, encode_inputs
from mdnlab.errors import DataError

COLUMNS = ["point", "quantity", "estimate", "se_hessian", "se_sandwich"]
DEFAULT_POINTS = 100


def read_points(path: str | Path, table: Table, x_cols: list[str]) -> np.ndarray:
    """x at which to predict, in original units: a CSV with the data's x columns or an npz ``x``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"inference.points: no file at {path} (expected a .csv or .npz file)")
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path)
        missing = [c for c in x_cols if c not in frame.columns]
        if missing:
            raise DataError(
                f"inference.points: column(s) {', '.join(map(repr, missing))} not in {path}; "
                f"expected the data's x columns {', '.join(x_cols)}"
            )
        x, _, _ = encode_inputs(frame, x_cols, str(path), encodings=table.encodings)
    elif path.suffix.lower() == ".npz":
        with np.load(path) as archive:
            if "x" not in archive.files:
                raise DataError(f"inference.points: {path} holds no array 'x'")
            x = np.asarray(archive["x"], dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
    else:
        raise DataError(
            f"inference.points: {path} has suffix {path.suffix!r}; expected .csv or .npz"
        )
    if x.ndim != 2 or x.shape[1] != table.x.shape[1]:
        raise DataError(
            f"inference.points: {path} gives x of shape {x.shape}; expected (m, {table.x.shape[1]})"
        )
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        raise DataError(f"inference.points: {path}, row {bad[0][0]}: x is not finite")
    return x


def long_form(names: list[str], estimates: np.ndarray, se_hessian=np.nan, se_sandwich=np.nan):
    """One row per (point, quantity); ``estimates`` is (points, quantities), SEs flat or NaN."""
    m = estimates.shape[0]
    return pd.DataFrame(
        {
            "point": np.repeat(np.arange(m), len(names)),
            "quantity": np.tile(names, m),
            "estimate": estimates.reshape(-1),
            "se_hessian": se_hessian,
            "se_sandwich": se_sandwich,
        },
        columns=COLUMNS,
    )


@torch.no_grad()
def predictions_frame(module, x_points: np.ndarray) -> pd.DataFrame:
    """Predicted quantities without standard errors (when the inference step is off)."""
    values = module.quantities(torch.as_tensor(x_points, dtype=torch.float64))
    names = list(values)
    return long_form(names, torch.stack([values[name] for name in names], dim=1).numpy())
