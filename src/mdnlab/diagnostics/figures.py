"""Figures of the diagnostics (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def restart_agreement(pairs: pd.DataFrame, path: Path, title: str = "") -> None:
    """Each pair of restarts: distance between their weights (raw and after aligning labels)
    against the symmetric KL between their predictive distributions."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    skl = np.maximum(pairs.predictive_skl.to_numpy(), 1e-8)
    ax.scatter(
        pairs.param_distance_raw,
        skl,
        marker="o",
        facecolors="none",
        edgecolors="grey",
        label="weights as fitted",
    )
    ax.scatter(
        pairs.param_distance_aligned,
        skl,
        marker="o",
        color="tab:blue",
        label="weights after aligning labels",
    )
    for row, value in zip(pairs.itertuples(), skl, strict=True):
        ax.annotate(
            f"{row.restart_a}-{row.restart_b}",
            (row.param_distance_aligned, value),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_yscale("log")
    ax.set_xlabel("|theta_a - theta_b| / |theta_best|")
    ax.set_ylabel("predictive symmetric KL (nats, mean over x)")
    ax.set_title(title or "restarts: agreement in prediction vs in weights")
    ax.text(
        0.02,
        0.02,
        "low KL with large distance: the weights are not identified",
        transform=ax.transAxes,
        fontsize=8,
        color="dimgrey",
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def component_weights(
    weights: np.ndarray,
    x: np.ndarray | None,
    path: Path,
    title: str = "",
    x_label: str = "reference row",
) -> None:
    """Mixing weight of each component over the reference x (1-d x: against x)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    along = x if x is not None else np.arange(weights.shape[0])
    order = np.argsort(along)
    for k in range(weights.shape[1]):
        ax.plot(along[order], weights[order, k], label=f"component {k}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(x_label)
    ax.set_ylabel("mixing weight")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
