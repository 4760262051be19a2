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
    frame = pd.DataFrame(prices, columns=INDICES)
    frame.insert(0, "time", 1991.5 + np.arange(n) / 260)
    frame.to_csv(folder / "EuStockMarkets.csv", index=False)
    pd.DataFrame(
        {"extra": np.arange(n), "times": np.arange(n) * 2.5, "accel": rng.normal(size=n)}
    ).to_csv(folder / "mcycle.csv", index=False)
    return folder


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
    built = real.eustock_returns(raw)
    lags = [f"{c}_lag1" for c in INDICES]
    assert sorted(built.columns) == sorted(INDICES + lags)
    assert len(built) == len(prices) - 2
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
    assert sorted(p.name for p in written) == ["eustock_returns.csv", "geyser.csv", "mcycle.csv"]
    back = pd.read_csv(tmp_path / "out" / "geyser.csv")
    pd.testing.assert_frame_equal(back, real.geyser(raw), check_dtype=False)
    back = pd.read_csv(tmp_path / "out" / "eustock_returns.csv")
    np.testing.assert_allclose(back.to_numpy(), real.eustock_returns(raw).to_numpy(), rtol=1e-14)
    assert b"\r\n" not in (tmp_path / "out" / "mcycle.csv").read_bytes()


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
