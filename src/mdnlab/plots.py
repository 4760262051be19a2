"""Figures for a run (matplotlib, Agg backend): training curves and the predicted density."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def training_curves(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in history.items():
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, label=name.replace("_epoch", ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per sample, original units)")
    ax.set_title(title)
    ax.legend()
    _bounded_ylim(ax, history)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bounded_ylim(ax, history) -> None:
    """Keep the first epochs' large losses from flattening the rest of the curve."""
    values = np.concatenate([np.asarray(v) for v in history.values() if v] or [np.zeros(1)])
    if values.size > 10:
        low, high = np.min(values), np.quantile(values, 0.95)
        pad = 0.05 * (high - low + 1e-12)
        ax.set_ylim(low - pad, high + pad)


@torch.no_grad()
def conditional_density(
    module,
    x: np.ndarray,
    y: np.ndarray,
    path: Path,
    x_name: str,
    y_name: str,
    title: str = "",
    grid: int = 200,
) -> None:
    """Heat map of q(y|x) over a grid, with the data points on top (1-d x, 1-d y)."""
    x_lo, x_hi = _padded_range(x[:, 0])
    y_lo, y_hi = _padded_range(y[:, 0])
    xs, ys = np.linspace(x_lo, x_hi, grid), np.linspace(y_lo, y_hi, grid)
    gx, gy = np.meshgrid(xs, ys)
    log_q = (
        module.log_prob(torch.as_tensor(gx.reshape(-1, 1)), torch.as_tensor(gy.reshape(-1, 1)))
        .numpy()
        .reshape(grid, grid)
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mesh = ax.pcolormesh(xs, ys, np.exp(log_q), shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=f"q({y_name} | {x_name})")
    ax.scatter(x[:, 0], y[:, 0], s=6, c="white", edgecolors="black", linewidths=0.3, label="data")
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _padded_range(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    low, high = float(np.min(values)), float(np.max(values))
    span = high - low
    return low - pad * span, high + pad * span


def prediction_bands(
    quantities: dict[str, np.ndarray],
    y: np.ndarray,
    y_names: list[str],
    path: Path,
    title: str = "",
    along: np.ndarray | None = None,
    x_label: str = "row of the split (data order)",
) -> None:
    """Per output: observed y, predicted mean and mean +- 2 predicted sd, along x or row order."""
    q = len(y_names)
    fig, axes = plt.subplots(q, 1, figsize=(8, 2.2 * q + 0.6), sharex=True, squeeze=False)
    order = np.argsort(along, kind="stable") if along is not None else np.arange(y.shape[0])
    rows = along[order] if along is not None else order
    y = y[order]
    for j, ax in enumerate(axes[:, 0]):
        mean = quantities[f"mean[{j}]"][order]
        sd = np.sqrt(np.maximum(quantities[f"cov[{j},{j}]"][order], 0.0))
        ax.fill_between(
            rows, mean - 2 * sd, mean + 2 * sd, color="tab:blue", alpha=0.25, label="mean +- 2 sd"
        )
        ax.plot(rows, mean, color="tab:blue", lw=1, label="predicted mean")
        ax.scatter(rows, y[:, j], s=4, color="black", label="observed")
        ax.set_ylabel(y_names[j])
    _finish_stack(fig, axes, title, x_label, path, legend_columns=3)


def eigen_spectrum(eigenvalues: np.ndarray, rtol: float, path: Path, title: str = "") -> None:
    """|eigenvalues| of A on a log scale, negative ones marked, with the retention threshold."""
    values = np.sort(eigenvalues)[::-1]
    index = np.arange(1, values.size + 1)
    floor = 1e-20 * max(
        float(np.max(np.abs(values))), np.finfo(float).tiny
    )  # exact zeros drawn here
    fig, ax = plt.subplots(figsize=(6, 4))
    positive = values > 0
    ax.semilogy(index[positive], np.maximum(values[positive], floor), ".", label="positive")
    ax.semilogy(
        index[~positive],
        np.maximum(-values[~positive], floor),
        "x",
        color="tab:red",
        label="negative (|value|)",
    )
    ax.axhline(
        rtol * np.max(np.abs(values)),
        color="grey",
        ls="--",
        label=f"retained above {rtol:g} x largest",
    )
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("|eigenvalue| of A (Hessian of mean NLL)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confidence_bands(
    grid, x: np.ndarray, y: np.ndarray, x_name: str, y_names: list[str], path: Path, title: str = ""
) -> None:
    """Predicted mean of each output along a 1-d x with 95% delta-method bands (both SEs)."""
    q = len(y_names)
    fig, axes = plt.subplots(q, 1, figsize=(7, 2.6 * q + 0.6), sharex=True, squeeze=False)
    for j, ax in enumerate(axes[:, 0]):
        rows = grid[grid.quantity == f"mean[{j}]"].sort_values("x")
        xs, mean = rows.x.to_numpy(), rows.estimate.to_numpy()
        ax.scatter(x[:, 0], y[:, j], s=4, color="lightgrey", label="training data")
        for column, color, label in (
            ("se_sandwich", "tab:orange", "95% sandwich"),
            ("se_hessian", "tab:blue", "95% inverse Hessian"),
        ):
            half = 1.96 * rows[column].to_numpy()
            ax.fill_between(xs, mean - half, mean + half, color=color, alpha=0.3, label=label)
        ax.plot(xs, mean, color="black", lw=1, label="predicted mean")
        ax.set_ylabel(y_names[j])
    _finish_stack(fig, axes, title, x_name, path, legend_columns=2)


def _finish_stack(fig, axes, title: str, x_label: str, path: Path, legend_columns: int) -> None:
    """Title and legend on the top panel, x label on the bottom one; save and close."""
    axes[0, 0].set_title(title)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=legend_columns)
    axes[-1, 0].set_xlabel(x_label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
