"""The data schema of a fitted run, and turning a user's x and y into the network's tensors.

A run's ``config.yaml`` names the x and y columns (``data.x_cols``, ``data.y_cols``; null for
an .npz dataset, whose columns are then ``x0, x1, ...``); ``data/encoding.json`` holds the
levels of its text x columns and ``data/y_encoding.json`` the labels of its text y columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mdnlab.data.table import encode_inputs, lower_triangle_names
from mdnlab.errors import DataError, LoadError
from mdnlab.families.categorical import CategoricalFamily


@dataclass
class Schema:
    """What the training data looked like; ``x_columns`` None: a bare checkpoint (arrays only)."""

    x_columns: list[str] | None = None
    # Text x columns: their levels, the first the reference (no indicator).
    x_levels: dict[str, list[str]] = field(default_factory=dict)
    y_columns: list[str] | None = None
    # Text y columns (categorical): labels in code order.
    y_levels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def input_width(self) -> int | None:
        if self.x_columns is None:
            return None
        return sum(len(self.x_levels[c]) - 1 if c in self.x_levels else 1 for c in self.x_columns)


def read_schema(folder: Path, module) -> tuple[Schema, dict]:
    """The schema and the resolved config of the run whose artifacts are in ``folder``."""
    import yaml

    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LoadError(f"{path}: not a readable YAML file ({_first_line(err)})") from None
    data = config.get("data") or {}
    in_dim = int(module.hparams.in_dim)
    x_columns = [str(c) for c in data.get("x_cols") or [f"x{j}" for j in range(in_dim)]]
    y_columns = [str(c) for c in data.get("y_cols") or default_y_names(module)]
    x_levels = {
        col: [entry["reference"], *(name[len(col) + 1 :] for name in entry["indicators"])]
        for col, entry in _read_json(folder / "data" / "encoding.json").items()
    }
    y_levels = {
        col: [labels[str(code)] for code in range(len(labels))]
        for col, labels in _read_json(folder / "data" / "y_encoding.json").items()
    }
    schema = Schema(x_columns, x_levels, y_columns, y_levels)
    if schema.input_width != in_dim:
        raise LoadError(
            f"{path}: data.x_cols ({', '.join(x_columns)}) encode to {schema.input_width} "
            f"network inputs but the checkpoint's network takes {in_dim}"
        )
    return schema, config


def default_y_names(module) -> list[str]:
    shape = list(module.hparams.event_shape)
    if len(shape) == 2:
        return lower_triangle_names(shape[0])
    return [f"y{j}" for j in range(shape[0])]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoadError(f"{path}: not a readable JSON file ({err})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- inputs --------------------------------------------------------------------------------
def encode_x(x, schema: Schema, in_dim: int) -> torch.Tensor:
    """(n, in_dim) float64 network inputs from a DataFrame of raw x columns (text columns
    one-hot with the training levels; other columns ignored) or a numeric array."""
    if isinstance(x, Mapping):
        x = pd.DataFrame(x)
    if isinstance(x, pd.DataFrame):
        if schema.x_columns is None:
            raise DataError(
                "x: this model was loaded from a bare checkpoint, without its run's config.yaml, "
                f"so its x columns have no names; pass a numeric array of shape (n, {in_dim})"
            )
        missing = [c for c in schema.x_columns if c not in x.columns]
        if missing:
            known = schema.x_columns + (schema.y_columns or [])
            extra = [str(c) for c in x.columns if c not in known]
            also = f"; unexpected column(s): {', '.join(map(repr, extra))}" if extra else ""
            raise DataError(
                f"x: column(s) {', '.join(map(repr, missing))} missing{also}; expected the "
                f"training x columns {', '.join(schema.x_columns)}"
            )
        values, _, _ = encode_inputs(x, schema.x_columns, "x", encodings=schema.x_levels)
        return torch.as_tensor(values, dtype=torch.float64)
    values = _numeric_array(x, "x")
    if values.ndim == 1 and in_dim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] != in_dim:
        hint = "" if in_dim == 1 else "; for a single row use x[None, :]"
        text = "" if not schema.x_levels else ", text columns one-hot encoded (or pass a DataFrame)"
        raise DataError(
            f"x: an array of shape {tuple(values.shape)}; expected (n, {in_dim}): {in_dim} numeric "
            f"column{'s' if in_dim > 1 else ''}{text}{hint}"
        )
    _check_finite(values, "x")
    return torch.as_tensor(values, dtype=torch.float64)


def encode_y(y, schema: Schema, module, n_rows: int) -> torch.Tensor:
    """(n, *event_shape) float64 targets in original units (class codes for categorical) from
    a DataFrame of y columns (text labels mapped to codes) or an array."""
    family = module.family
    columns = schema.y_columns or default_y_names(module)
    if isinstance(y, Mapping):
        y = pd.DataFrame(y)
    if isinstance(y, pd.DataFrame):
        missing = [c for c in columns if c not in y.columns]
        if missing:
            raise DataError(
                f"y: column(s) {', '.join(map(repr, missing))} missing; expected the training "
                f"y columns {', '.join(columns)}"
            )
        blocks = []
        for col in columns:
            if col in schema.y_levels:
                codes = {label: code for code, label in enumerate(schema.y_levels[col])}
                labels = y[col].astype(str)
                unknown = sorted(set(labels) - set(codes))
                if unknown:
                    raise DataError(
                        f"y: column {col!r}: label {unknown[0]!r} was not seen in training; "
                        f"known labels: {', '.join(schema.y_levels[col])}"
                    )
                blocks.append(labels.map(codes).to_numpy(dtype=np.float64))
            else:
                blocks.append(_numeric_array(y[col], f"y column {col!r}"))
        values = np.column_stack(blocks)
    else:
        values = _numeric_array(y, "y")
        if values.ndim == 1 and len(family.event_shape) == 1 and family.event_shape[0] == 1:
            values = values[:, None]
    _check_finite(values, "y")
    # The Gaussian's own check rejects constant columns: a check on training data, not on y
    # to evaluate (one row is constant). The others check codes and matrices.
    if family.name != "gaussian":
        values = family.prepare_targets(values, "y", columns)
    if tuple(values.shape[1:]) != tuple(family.event_shape):
        raise DataError(
            f"y: shape {tuple(values.shape)}; expected (n, {', '.join(map(str, family.event_shape))})"
        )
    if isinstance(family, CategoricalFamily):
        family.check_codes(values, family.n_classes, columns, "y", schema.y_levels)
    if values.shape[0] != n_rows:
        raise DataError(f"y has {values.shape[0]} rows but x has {n_rows}; expected equal")
    return torch.as_tensor(values, dtype=torch.float64)


def _numeric_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        return np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):
        raise DataError(
            f"{name}: not numeric; pass numbers (or a DataFrame, whose text columns are encoded "
            "with the training levels)"
        ) from None


def _check_finite(values: np.ndarray, name: str) -> None:
    bad = np.argwhere(~np.isfinite(values.reshape(values.shape[0], -1)))
    if bad.size:
        raise DataError(f"{name}, row {bad[0][0]}: not a finite number; expected finite numbers")
