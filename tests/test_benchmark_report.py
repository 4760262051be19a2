"""The benchmark's scores and summaries against scipy and hand-written formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mdnlab.benchmark.peers import gaussian_scores
from mdnlab.benchmark.report import markdown, summarize, table_row
from mdnlab.families import build_family
from mdnlab.scaling import AffineScaler


def test_gaussian_scores_against_hand_formulas():
    rng = np.random.default_rng(3)
    y, mean = rng.normal(size=400), rng.normal(size=400)
    sd = rng.uniform(0.5, 2.0, 400)
    scores = gaussian_scores(y, mean, sd)
    nll = np.mean(0.5 * np.log(2 * np.pi * sd**2) + (y - mean) ** 2 / (2 * sd**2))
    assert scores["nll"] == pytest.approx(nll, rel=1e-12)
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((y - mean) ** 2)), rel=1e-12)
    low, high = stats.norm.interval(0.9, loc=mean, scale=sd)
    assert scores["coverage_90"] == np.mean((y >= low) & (y <= high))
    u = np.sort(stats.norm.cdf((y - mean) / sd))
    i = np.arange(1, u.size + 1)
    ks = max(np.max(i / u.size - u), np.max(u - (i - 1) / u.size))
    assert scores["pit_ks"] == pytest.approx(ks, rel=1e-12)


def frame(rng, n=20):
    return pd.DataFrame(
        {
            "split": np.arange(n),
            "n_test": rng.integers(50, 52, n),
            **{
                f"{fit}_{k}": rng.normal(loc, 0.1, n)
                for fit, loc in (("mdnlab", 2.5), ("ngboost", 2.45))
                for k in ("nll", "rmse", "pit_ks", "seconds")
            },
            "mdnlab_coverage_90": rng.uniform(0.8, 1.0, n),
            "ngboost_coverage_90": rng.uniform(0.8, 1.0, n),
        }
    )


def test_summary_against_scipy():
    f = frame(np.random.default_rng(0))
    s = summarize(f)
    assert s["mdnlab/nll_mean"] == pytest.approx(np.mean(f["mdnlab_nll"]), rel=1e-14)
    assert s["mdnlab/nll_se"] == pytest.approx(stats.sem(f["mdnlab_nll"]), rel=1e-12)
    assert s["ngboost/nll_sd"] == pytest.approx(np.std(f["ngboost_nll"], ddof=1), rel=1e-12)
    diff = f["mdnlab_nll"] - f["ngboost_nll"]
    assert s["paired/nll_diff_se"] == pytest.approx(stats.sem(diff), rel=1e-12)
    # the paired t statistic is the difference over its SE
    t = stats.ttest_rel(f["mdnlab_nll"], f["ngboost_nll"]).statistic
    assert s["paired/nll_diff_mean"] / s["paired/nll_diff_se"] == pytest.approx(t, rel=1e-10)
    covered = np.sum(f["mdnlab_coverage_90"] * f["n_test"]) / np.sum(f["n_test"])
    assert s["mdnlab/coverage_90"] == pytest.approx(covered, rel=1e-14)
    assert s["paired/mdnlab_wins"] == np.sum(f["mdnlab_nll"] < f["ngboost_nll"])


def test_table_row_carries_the_published_columns():
    row = table_row("boston", summarize(frame(np.random.default_rng(1))), 12.0)
    assert row["PBP"] == "2.57" and row["MC dropout 2018"] == "2.40"
    text = markdown([row])
    assert text.splitlines()[0].startswith("| dataset | splits | mdnlab |")


@pytest.mark.parametrize("dim", [1, 2])
def test_gaussian_rmse_is_that_of_the_mixture_mean_in_original_units(dim):
    torch.manual_seed(0)
    family = build_family("gaussian", 3, (dim,))
    raw = torch.randn(50, family.n_raw_outputs, dtype=torch.float64)
    mixture = family.mixture(raw)
    scaler = AffineScaler(dim)
    scaler.loc.copy_(torch.linspace(5.0, 6.0, dim))
    scaler.scale.copy_(torch.linspace(2.0, 3.0, dim))
    y = torch.randn(50, dim, dtype=torch.float64) * 3 + 5
    weights = mixture.mixture_distribution.probs.numpy()
    means = mixture.component_distribution.mean.numpy()  # standardised, (50, K, dim)
    mean = np.einsum("nk,nkd->nd", weights, means) * scaler.scale.numpy() + scaler.loc.numpy()
    want = np.sqrt(np.mean((mean - y.numpy()) ** 2, axis=0))
    got = family.evaluation_metrics(mixture, scaler(y), scaler)
    names = ["rmse"] if dim == 1 else [f"rmse_{j}" for j in range(dim)]
    assert list(got) == names
    np.testing.assert_allclose([got[k] for k in names], want, rtol=1e-12)


def test_outputs_for_dvc_leave_the_timings_out(tmp_path):
    import json

    from mdnlab.benchmark.runner import write_outputs

    f = frame(np.random.default_rng(2), n=3)
    summary = summarize(f) | {"benchmark/seconds": 12.0}
    write_outputs(f, summary, "boston", tmp_path, timings=False)
    written = pd.read_csv(tmp_path / "splits.csv")
    assert "mdnlab_seconds" not in written and "mdnlab_nll" in written
    kept = json.loads((tmp_path / "summary.json").read_text())
    assert not any("seconds" in k for k in kept) and "mdnlab/nll_mean" in kept
    write_outputs(f, summary, "boston", tmp_path, timings=True)
    assert "ngboost_seconds" in pd.read_csv(tmp_path / "splits.csv")


def test_an_earlier_runs_peer_columns_are_reused_only_on_the_same_rows(tmp_path):
    from mdnlab.benchmark.runner import earlier_peer
    from mdnlab.errors import MdnlabError

    f = frame(np.random.default_rng(3), n=3).assign(n_train=387, n_val=68)
    f["ngboost_rounds"] = [120, 340, 95]
    (tmp_path / "boston").mkdir()
    f.drop(index=2).to_csv(tmp_path / "boston" / "splits.csv", index=False)
    row = {"split": 1, "n_train": 387, "n_val": 68, "n_test": int(f["n_test"][1])}
    got = earlier_peer(tmp_path, "boston", row)
    want = {k: f[k][1] for k in f if k.startswith("ngboost_")}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-15)
    assert isinstance(got["ngboost_rounds"], int) and got["ngboost_rounds"] == 340
    assert earlier_peer(tmp_path, "boston", row | {"split": 2}) is None  # not in the file
    assert earlier_peer(tmp_path, "concrete", row) is None  # no file
    assert earlier_peer(None, "boston", row) is None
    with pytest.raises(MdnlabError, match=r"boston/splits.csv: split 1 has n_train = 387"):
        earlier_peer(tmp_path, "boston", row | {"n_train": 400})
    (tmp_path / "wine").mkdir()
    f[["split", "n_test"]].to_csv(tmp_path / "wine" / "splits.csv", index=False)
    with pytest.raises(MdnlabError, match=r"wine/splits.csv: expected the columns"):
        earlier_peer(tmp_path, "wine", row)
