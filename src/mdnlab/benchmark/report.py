"""Summaries, tables and the figure of a UCI benchmark run (one row per split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mdnlab.benchmark.published import METHODS, REFERENCE, published

FITS = ("mdnlab", "ngboost")


def mean_se_sd(values) -> tuple[float, float, float]:
    """Mean, its standard error (SD / sqrt(n)) and the SD (ddof 1) of finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return float(v.mean()), float(sd / np.sqrt(v.size)), sd


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Flat metrics: per fit the test NLL's mean, SE and SD over splits, the mean RMSE, the
    90% interval coverage pooled over the splits' test rows and the mean PIT KS distance; the
    paired difference mdnlab - ngboost per split, with its SE."""
    out: dict[str, float] = {"splits": float(len(frame))}
    for fit in FITS:
        if f"{fit}_nll" not in frame:
            continue
        mean, se, sd = mean_se_sd(frame[f"{fit}_nll"])
        covered = (frame[f"{fit}_coverage_90"] * frame["n_test"]).sum() / frame["n_test"].sum()
        out |= {
            f"{fit}/nll_mean": mean,
            f"{fit}/nll_se": se,
            f"{fit}/nll_sd": sd,
            f"{fit}/rmse_mean": float(frame[f"{fit}_rmse"].mean()),
            f"{fit}/coverage_90": float(covered),
            f"{fit}/pit_ks_mean": float(frame[f"{fit}_pit_ks"].mean()),
            f"{fit}/seconds_mean": float(frame[f"{fit}_seconds"].mean()),
        }
    if "ngboost_nll" in frame:
        mean, se, sd = mean_se_sd(frame["mdnlab_nll"] - frame["ngboost_nll"])
        out |= {"paired/nll_diff_mean": mean, "paired/nll_diff_se": se, "paired/nll_diff_sd": sd}
        out["paired/mdnlab_wins"] = float((frame["mdnlab_nll"] < frame["ngboost_nll"]).sum())
    return out


def fmt(mean: float, se: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" if not np.isfinite(se) else f"{mean:.{digits}f} +- {se:.{digits}f}"


def table_row(dataset: str, summary: dict[str, float], seconds: float) -> dict[str, str]:
    """One dataset's line of the printed table: mdnlab, the peer, their paired difference,
    the published columns, coverage and wall time."""
    pub = published(dataset)
    row = {
        "dataset": dataset,
        "splits": f"{int(summary['splits'])}",
        "mdnlab": fmt(summary["mdnlab/nll_mean"], summary["mdnlab/nll_se"]),
        "NGBoost (same splits)": fmt(
            summary.get("ngboost/nll_mean", np.nan), summary.get("ngboost/nll_se", np.nan)
        ),
        "mdnlab - NGBoost": fmt(
            summary.get("paired/nll_diff_mean", np.nan), summary.get("paired/nll_diff_se", np.nan)
        ),
    }
    row |= {m: f"{pub[m][0]:.2f}" for m in METHODS}
    row |= {
        "cov90 mdnlab": f"{summary['mdnlab/coverage_90']:.3f}",
        "cov90 NGBoost": f"{summary.get('ngboost/coverage_90', np.nan):.3f}",
        "RMSE mdnlab": f"{summary['mdnlab/rmse_mean']:.3f}",
        "RMSE NGBoost": f"{summary.get('ngboost/rmse_mean', np.nan):.3f}",
        "wall s": f"{seconds:.0f}",
    }
    return row


def markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def figure(frame: pd.DataFrame, dataset: str, path: Path) -> None:
    """Test NLL per split: mdnlab and the peer (paired by split), MC dropout's published
    per-split values where the layout has them, the published MC dropout 2018 band and PBP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pub = published(dataset)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    splits = frame["split"].to_numpy()
    ref_mean, ref_se = pub[REFERENCE]
    ax.axhspan(
        ref_mean - ref_se, ref_mean + ref_se, color="0.85", label=f"{REFERENCE} (mean +- SE)"
    )
    ax.axhline(ref_mean, color="0.5", lw=1)
    ax.axhline(pub["PBP"][0], color="0.3", lw=1, ls="--", label="PBP (published mean)")
    if "mc_dropout_nll" in frame and frame["mc_dropout_nll"].notna().any():
        ax.plot(
            splits, frame["mc_dropout_nll"], "x", color="0.4", label="MC dropout 2018, per split"
        )
    for fit, style, name in (
        ("mdnlab", "o-", "mdnlab"),
        ("ngboost", "s--", "NGBoost (same splits)"),
    ):
        if f"{fit}_nll" in frame:
            mean = frame[f"{fit}_nll"].mean()
            ax.plot(
                splits, frame[f"{fit}_nll"], style, ms=5, lw=1, label=f"{name}: mean {mean:.3f}"
            )
    ax.set_xlabel("split (published protocol)")
    ax.set_ylabel("test NLL per row (nats, original units)")
    ax.set_title(f"UCI {dataset}: test NLL by split ({len(frame)} splits)")
    ax.set_xticks(splits)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
