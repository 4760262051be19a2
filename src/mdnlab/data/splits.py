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
    """Random splits shuffle with ``seed``; chronological ones keep order: train, val, test.

    With ``strata`` (one label per row) a random split is stratified: each stratum is
    shuffled on its own, and the val and test rows are shared out across strata in proportion
    to their sizes (largest remainders), so that the totals are the unstratified ones
    whenever possible and every stratum keeps at least one row in training (a stratum of one
    row goes to training). Chronological splits ignore ``strata``: they keep data order.
    """
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
    if strata is not None and kind == "random":
        return _stratified(np.asarray(strata), n_rows, n_val, n_test, seed)
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


def _stratified(strata: np.ndarray, n_rows: int, n_val: int, n_test: int, seed: int) -> Splits:
    if strata.shape != (n_rows,):
        raise ValueError(f"strata has shape {strata.shape}; expected ({n_rows},)")
    _, label = np.unique(strata, return_inverse=True)
    label = label.reshape(-1)
    sizes = np.bincount(label)
    room = sizes - 1  # rows a stratum can give to val and test: one stays in training
    val = _allocate(n_val, sizes, n_rows, room)
    test = _allocate(n_test, sizes, n_rows, room - val)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for s in range(sizes.size):
        rows = rng.permutation(np.flatnonzero(label == s))
        parts["val"].append(rows[: val[s]])
        parts["test"].append(rows[val[s] : val[s] + test[s]])
        parts["train"].append(rows[val[s] + test[s] :])
    return Splits(**{k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()})


def _allocate(total: int, sizes: np.ndarray, n_rows: int, room: np.ndarray) -> np.ndarray:
    """Largest-remainder shares of ``total`` in proportion to ``sizes``, at most ``room`` each;
    what a full stratum cannot take goes to the strata furthest below their share."""
    quota = total * sizes / n_rows
    out = np.minimum(np.floor(quota).astype(np.int64), room)
    for _ in range(total - int(out.sum())):
        gap = np.where(out < room, quota - out, -np.inf)
        best = int(np.argmax(gap))  # ties: the first stratum
        if not np.isfinite(gap[best]):
            break  # no stratum has room left: fewer rows than asked
        out[best] += 1
    return out
