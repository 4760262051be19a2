"""Real-data builders on hand-made raw files, and export_raw's DVC hash against DVC itself."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mdnlab.data import real

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")
INDICES = ["DAX", "SMI", "CAC", "FTSE"]


def load_export_raw():
    spec = importlib.util.spec_from_file_location(
        "export_raw_under_test", REPO / "src" / "export_raw.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_raw = load_export_raw()


@pytest.fixture
def raw(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "raw"
    folder.mkdir()
    n = 9
    pd.DataFrame(
        {"duration": np.round(rng.uniform(1, 5, n), 3), "waiting": rng.integers(40, 100, n)},
    )[["duration", "waiting"]].to_csv(folder / "geyser.csv", index=False)
    prices = 1000.0 * np.exp(np.cumsum(rng.normal(scale=0.01, size=(n, 4)), axis=0))
    prices[4, 1] = prices[3, 1]  # SMI closed on day 4: its last price carried forward
    frame = pd.DataFrame(prices, columns=INDICES)
    frame.insert(0, "time", 1991.5 + np.arange(n) / 260)
    frame.to_csv(folder / "EuStockMarkets.csv", index=False)
    pd.DataFrame(
        {"extra": np.arange(n), "times": np.arange(n) * 2.5, "accel": rng.normal(size=n)}
    ).to_csv(folder / "mcycle.csv", index=False)
    beps_frame(rng, 12).to_csv(folder / "BEPS.csv", index=False)
    wvs_frame(rng, 11).to_csv(folder / "WVS.csv", index=False)
    return folder


BEPS_COLUMNS = [
    "vote",
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
VOTES = ["Conservative", "Labour", "Liberal Democrat"]


def beps_frame(rng, n):
    """A BEPS-like raw export (the source's column order, text vote and gender)."""
    frame = pd.DataFrame({c: rng.integers(1, 6, n) for c in BEPS_COLUMNS})
    frame["vote"] = rng.choice(VOTES, n)
    frame["age"] = rng.integers(18, 90, n)
    frame["gender"] = rng.choice(["female", "male"], n)
    return frame


def wvs_frame(rng, n):
    return pd.DataFrame(
        {
            "poverty": rng.choice(["Too Little", "About Right", "Too Much"], n),
            "religion": rng.choice(["yes", "no"], n),
            "degree": rng.choice(["yes", "no"], n),
            "country": rng.choice(["Australia", "Norway", "Sweden", "USA"], n),
            "age": rng.integers(18, 90, n),
            "gender": rng.choice(["female", "male"], n),
        }
    )


def test_geyser_pairs_previous_duration_with_current_waiting(raw):
    source = pd.read_csv(raw / "geyser.csv")
    built = real.geyser(raw)
    assert list(built.columns) == ["duration", "waiting"]
    assert len(built) == len(source) - 1
    for t in range(1, len(source)):
        assert built["duration"].iloc[t - 1] == source["duration"].iloc[t - 1]
        assert built["waiting"].iloc[t - 1] == source["waiting"].iloc[t]


def test_eustock_returns_are_log_differences_with_lag(raw):
    prices = pd.read_csv(raw / "EuStockMarkets.csv")[INDICES].to_numpy()
    log_returns = np.log(prices[1:] / prices[:-1])  # r_t = log P_t - log P_{t-1}
    carried = (prices[1:] == prices[:-1]).any(axis=1)  # some market closed: price carried forward
    assert carried.sum() == 1
    log_returns = log_returns[~carried]
    built = real.eustock_returns(raw)
    lags = [f"{c}_lag1" for c in INDICES]
    assert sorted(built.columns) == sorted(INDICES + lags)
    assert len(built) == len(prices) - 1 - carried.sum() - 1
    assert not (built[INDICES].to_numpy() == 0).any()
    np.testing.assert_allclose(built[INDICES].to_numpy(), log_returns[1:], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(built[lags].to_numpy(), log_returns[:-1], rtol=1e-12, atol=1e-15)
    # Row t's lag is row t-1's return.
    np.testing.assert_array_equal(built[lags].to_numpy()[1:], built[INDICES].to_numpy()[:-1])


def test_mcycle_keeps_times_and_accel(raw):
    source = pd.read_csv(raw / "mcycle.csv")
    built = real.mcycle(raw)
    assert list(built.columns) == ["times", "accel"]
    np.testing.assert_array_equal(built.to_numpy(), source[["times", "accel"]].to_numpy())


def test_write_all_round_trips(raw, tmp_path):
    written = real.write_all(raw, tmp_path / "out")
    assert sorted(p.name for p in written) == [
        "beps.csv",
        "eustock_rcov.csv",
        "eustock_returns.csv",
        "geyser.csv",
        "mcycle.csv",
        "wvs.csv",
    ]
    back = pd.read_csv(tmp_path / "out" / "geyser.csv")
    pd.testing.assert_frame_equal(back, real.geyser(raw), check_dtype=False)
    back = pd.read_csv(tmp_path / "out" / "eustock_returns.csv")
    np.testing.assert_allclose(back.to_numpy(), real.eustock_returns(raw).to_numpy(), rtol=1e-14)
    assert b"\r\n" not in (tmp_path / "out" / "mcycle.csv").read_bytes()
    for name in ("beps", "wvs"):
        back = pd.read_csv(tmp_path / "out" / f"{name}.csv")
        pd.testing.assert_frame_equal(back, real.BUILDERS[name](raw))


def test_beps_keeps_every_row_and_the_text_vote(raw):
    source = pd.read_csv(raw / "BEPS.csv")
    built = real.beps(raw)
    assert list(built.columns) == BEPS_COLUMNS[1:] + ["vote"]
    assert len(built) == len(source) == 12
    assert pd.api.types.is_string_dtype(built["vote"]) and set(built["vote"]) <= set(VOTES)
    pd.testing.assert_frame_equal(built, source[BEPS_COLUMNS[1:] + ["vote"]])


def test_wvs_keeps_every_row_and_the_text_outputs(raw):
    source = pd.read_csv(raw / "WVS.csv")
    built = real.wvs(raw)
    assert list(built.columns) == ["country", "age", "gender", "poverty", "religion", "degree"]
    assert len(built) == len(source) == 11
    pd.testing.assert_frame_equal(built, source[list(built.columns)])
    for column in ("poverty", "religion", "degree", "country", "gender"):
        assert pd.api.types.is_string_dtype(built[column])


@pytest.mark.parametrize("name", ["beps", "wvs"])
def test_categorical_builders_refuse_missing_values(raw, name):
    filename = {"beps": "BEPS.csv", "wvs": "WVS.csv"}[name]
    frame = pd.read_csv(raw / filename)
    frame.loc[3, "age"] = np.nan
    frame.to_csv(raw / filename, index=False)
    with pytest.raises(ValueError, match="missing values \\(age: 1\\)"):
        real.BUILDERS[name](raw)


def write_prices(folder, prices):
    frame = pd.DataFrame(prices, columns=INDICES)
    frame.insert(0, "time", 1991.5 + np.arange(len(prices)) / 260)
    frame.to_csv(folder / "EuStockMarkets.csv", index=False)


def weekly_rc_by_loops(prices, days=5):
    """Realized covariances written out day by day, independently of the builder."""
    weeks = []
    for start in range(1, len(prices) - days + 1, days):
        rc = np.zeros((4, 4))
        for d in range(start, start + days):
            r = np.log(prices[d]) - np.log(prices[d - 1])
            rc += np.outer(r, r)
        weeks.append(rc)
    return weeks


RC_Y = [
    "DAX_DAX",
    "SMI_DAX",
    "SMI_SMI",
    "CAC_DAX",
    "CAC_SMI",
    "CAC_CAC",
    "FTSE_DAX",
    "FTSE_SMI",
    "FTSE_CAC",
    "FTSE_FTSE",
]
RC_CORR = ["SMI_DAX", "CAC_DAX", "CAC_SMI", "FTSE_DAX", "FTSE_SMI", "FTSE_CAC"]


@pytest.mark.parametrize("n_prices", [16, 19, 20])
def test_eustock_rcov_matches_numpy(tmp_path, n_prices):
    rng = np.random.default_rng(n_prices)
    prices = 1000.0 * np.exp(np.cumsum(rng.normal(scale=0.01, size=(n_prices, 4)), axis=0))
    write_prices(tmp_path, prices)
    built = real.eustock_rcov(tmp_path)
    lag_x = [f"logvar_{c}_lag1" for c in INDICES] + [f"corr_{p}_lag1" for p in RC_CORR]
    assert list(built.columns) == ["week"] + lag_x + RC_Y
    assert (real.RCOV_X, real.RCOV_Y) == (lag_x, RC_Y)
    assert len(built) == (n_prices - 1) // 5 - 1  # incomplete last week and first week dropped
    weeks = weekly_rc_by_loops(prices)
    assert len(weeks) == (n_prices - 1) // 5
    np.testing.assert_array_equal(built["week"], np.arange(2, len(weeks) + 1))
    for row, t in enumerate(range(1, len(weeks))):
        rc, prev = weeks[t], weeks[t - 1]
        assert np.linalg.eigvalsh(rc).min() > 0
        target = [rc[0, 0], rc[1, 0], rc[1, 1], rc[2, 0], rc[2, 1], rc[2, 2]]
        target += [rc[3, 0], rc[3, 1], rc[3, 2], rc[3, 3]]
        np.testing.assert_allclose(built.loc[row, RC_Y], target, rtol=1e-12)
        np.testing.assert_allclose(built.loc[row, lag_x[:4]], np.log(np.diag(prev)), rtol=1e-12)
        corr = prev / np.sqrt(np.outer(np.diag(prev), np.diag(prev)))
        expected = [corr[1, 0], corr[2, 0], corr[2, 1], corr[3, 0], corr[3, 1], corr[3, 2]]
        np.testing.assert_allclose(built.loc[row, lag_x[4:]], expected, rtol=1e-10)
    # The written CSV keeps full precision.
    path = tmp_path / "rcov.csv"
    built.to_csv(path, index=False, lineterminator="\n")
    pd.testing.assert_frame_equal(pd.read_csv(path), built, check_exact=True)


def test_eustock_rcov_skips_days_when_no_market_traded(tmp_path):
    rng = np.random.default_rng(5)
    prices = 1000.0 * np.exp(np.cumsum(rng.normal(scale=0.01, size=(16, 4)), axis=0))
    # Two common holidays (all four prices carried forward) and a day on which only FTSE
    # was closed (kept: a trading day for the others).
    with_closures = np.insert(prices, [4, 9], prices[[3, 8]], axis=0)
    with_closures[12, 3] = with_closures[11, 3]
    write_prices(tmp_path, with_closures)
    returns, dropped = real.trading_returns(with_closures)
    assert dropped == 2 and len(returns) == 15
    built = real.eustock_rcov(tmp_path)
    assert len(built) == 2
    days = np.delete(with_closures, [4, 10], axis=0)  # the repeated rows
    assert len(days) == 16
    weeks = weekly_rc_by_loops(days)
    for row in range(2):
        rc = weeks[row + 1]
        np.testing.assert_allclose(built.loc[row, "FTSE_FTSE"], rc[3, 3], rtol=1e-12)
        np.testing.assert_allclose(built.loc[row, "CAC_SMI"], rc[2, 1], rtol=1e-12)


def test_eustock_rcov_refuses_a_singular_week(tmp_path):
    rng = np.random.default_rng(6)
    prices = 1000.0 * np.exp(np.cumsum(rng.normal(scale=0.01, size=(16, 4)), axis=0))
    prices[6:11, 3] = prices[5, 3]  # FTSE flat through week 2: RC_2 is singular
    write_prices(tmp_path, prices)
    with pytest.raises(ValueError, match=r"week\(s\) \[2\] is not positive definite"):
        real.eustock_rcov(tmp_path)


def dvc(*args, cwd):
    # Keep DVC's site cache inside the temporary project.
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(cwd / ".site-cache"))
    subprocess.run(
        [str(DVC), *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=120
    )


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvcproj")
    dvc("init", "--no-scm", "-q", cwd=root)
    folder = root / "folder"
    (folder / "a").mkdir(parents=True)
    (folder / "geyser.csv").write_bytes(b"waiting,duration\n80,4.01\n71,2.15\n")
    (folder / "B.csv").write_bytes(b"x\n1\n")
    (folder / "a-b.txt").write_bytes("caf\u00e9\n".encode())
    (folder / "a" / "b.txt").write_bytes(b"\x00\x01binary\xff")
    dvc("add", "-q", "folder", cwd=root)
    recorded = yaml.safe_load((root / "folder.dvc").read_text())["outs"][0]
    return root, folder, recorded


def test_dvc_dir_md5_equals_dvc(dvc_project):
    _, folder, recorded = dvc_project
    assert recorded["md5"].endswith(".dir")
    assert export_raw.dvc_dir_md5(folder) == recorded["md5"]


def test_verify_accepts_then_names_both_hashes_on_change(dvc_project, monkeypatch, capsys):
    root, folder, recorded = dvc_project
    monkeypatch.chdir(root)
    export_raw.verify(Path("folder"), Path("folder.dvc"))
    assert recorded["md5"] in capsys.readouterr().out

    original = (folder / "B.csv").read_bytes()
    try:
        (folder / "B.csv").write_bytes(b"x\n2\n")
        changed = export_raw.dvc_dir_md5(folder)
        assert changed != recorded["md5"]
        with pytest.raises(SystemExit) as info:
            export_raw.verify(Path("folder"), Path("folder.dvc"))
        message = str(info.value.code)
        assert recorded["md5"] in message and changed in message
        with pytest.raises(SystemExit, match="records no output"):
            export_raw.verify(Path("elsewhere"), Path("folder.dvc"))
    finally:
        (folder / "B.csv").write_bytes(original)
    assert export_raw.dvc_dir_md5(folder) == recorded["md5"]


def test_real_exports_when_present():
    """On the rebuilt data/raw (skipped without it): sizes, classes, and no dropped rows."""
    folder = REPO / "data" / "raw"
    if not all((folder / f).exists() for f in ("BEPS.csv", "WVS.csv", "EuStockMarkets.csv")):
        pytest.skip("data/raw not built (make data)")
    built = real.beps(folder)
    assert len(built) == 1525 and sorted(built["vote"].unique()) == VOTES
    built = real.wvs(folder)
    assert len(built) == 5381
    assert built["poverty"].nunique() == 3 and built["religion"].nunique() == 2
    returns, dropped = real.trading_returns(
        pd.read_csv(folder / "EuStockMarkets.csv")[INDICES].to_numpy()
    )
    assert (len(returns), dropped) == (1833, 26)
    assert len(real.eustock_rcov(folder)) == 1833 // 5 - 1 == 365
    # Daily returns: 164 days on which some market was closed (a zero return) are dropped.
    assert len(real.eustock_returns(folder)) == 1860 - 1 - 164 - 1
