"""Train / validation / test row indices, reproducible from the run's seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdnlab.errors import ConfigError, DataError

SPLIT_KINDS = ("random", "chronological")


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_rows(
    n_rows: int,
    val_fraction: float,
    test_fraction: float,
    kind: str,
    seed: int,
    source: str = "",
    strata: np.ndarray | None = None,
) -> Splits:
    """Random splits shuffle with ``seed``; chronological ones keep order: train, val, test."""
    for name, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g}; "
            "must be below 1 to leave rows for training"
        )
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"data.split must be one of {SPLIT_KINDS}, got {kind!r}")
    n_val = int(round(val_fraction * n_rows))
    n_test = int(round(test_fraction * n_rows))
    n_train = n_rows - n_val - n_test
    if n_train < 2:
        raise DataError(
            f"{source}: {n_rows} rows leave {n_train} for training; expected at least 2"
        )
    order = (
        np.arange(n_rows)
        if kind == "chronological"
        else np.random.default_rng(seed).permutation(n_rows)
    )
    return Splits(
        train=np.sort(order[:n_train]) if kind == "random" else order[:n_train],
        val=np.sort(order[n_train : n_train + n_val]),
        test=np.sort(order[n_train + n_val :]),
    )
