"""Figures for a run (matplotlib, Agg backend): training curves and the predicted density."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402


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
    """Heat map of q(y|x) over a grid, with the data points on top (1-d x, 1-d y).

    The colour scale is a square root that stops at the grid's 99th percentile: a narrow component at the edge of
    the data (density 50 where the rest is 2) would otherwise paint every branch dark."""
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
    density = np.exp(log_q)
    cap = float(np.quantile(density, 0.99))
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=cap)  # square-root scale: faint branches show
    mesh = ax.pcolormesh(xs, ys, density, shading="auto", cmap="viridis", norm=norm)
    fig.colorbar(mesh, ax=ax, label=f"q({y_name} | {x_name}), square-root scale, capped at p99")
    ax.scatter(x[:, 0], y[:, 0], s=3, c="white", alpha=0.35, linewidths=0, label="data")
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


def eigen_spectrum(
    eigenvalues: np.ndarray,
    rtol: float,
    path: Path,
    title: str = "",
    predicted_null: int | None = None,
    effective_params: float | None = None,
) -> None:
    """|eigenvalues| of A on a log scale, negative ones marked, with the retention threshold;
    with ``predicted_null`` (lambda = 0) a line where the null directions the architecture
    predicts begin, with ``effective_params`` (lambda > 0) that count beside the weight count."""
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
    notes = [f"{values.size} weights"]
    if predicted_null is not None:
        ax.axvline(
            values.size - predicted_null + 0.5,
            color="tab:green",
            ls=":",
            label=f"predicted null: last {predicted_null} (symmetries, dead parts)",
        )
        measured = int(np.sum(np.abs(values) <= rtol * np.max(np.abs(values))))
        notes.append(f"null measured {measured}, predicted {predicted_null}")
    if effective_params is not None:
        notes.append(f"effective parameters tr(A A_lambda^-1) = {effective_params:.1f}")
    ax.text(0.02, 0.03, "\n".join(notes), transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("|eigenvalue| of A (Hessian of mean NLL)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confidence_bands(
    grid,
    panels: list[tuple[str, str]],
    x_name: str,
    path: Path,
    title: str = "",
    observed: dict[str, tuple[np.ndarray, np.ndarray, str]] | None = None,
) -> None:
    """Predicted quantities along a 1-d x with 95% delta-method bands (both SEs).

    ``panels`` lists (quantity name in ``grid``, axis label); ``observed[quantity]`` is
    (x, values, label) drawn behind the bands (the data, or binned class frequencies).
    """
    observed = observed or {}
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7, 2.3 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    for (quantity, label), ax in zip(panels, axes[:, 0], strict=True):
        rows = grid[grid.quantity == quantity].sort_values("x")
        xs, estimate = rows.x.to_numpy(), rows.estimate.to_numpy()
        if quantity in observed:
            ox, values, what = observed[quantity]
            ax.scatter(ox, values, s=5, color="grey", alpha=0.6, label=what)
        for column, color, band in (
            ("se_sandwich", "tab:orange", "95% sandwich"),
            ("se_hessian", "tab:blue", "95% inverse Hessian"),
        ):
            half = 1.96 * rows[column].to_numpy()
            ax.fill_between(
                xs, estimate - half, estimate + half, color=color, alpha=0.3, label=band
            )
        ax.plot(xs, estimate, color="black", lw=1, label="estimate")
        ax.set_ylabel(label)
    _finish_stack(fig, axes, title, x_name, path, legend_columns=2)


def class_probabilities(
    along: np.ndarray,
    probabilities: dict[str, np.ndarray],
    codes: np.ndarray,
    class_labels: list[list[str]],
    variable_names: list[str],
    path: Path,
    x_label: str,
    title: str = "",
    bins: int = 10,
) -> None:
    """Per discrete output: each row's predicted class probabilities against x (dots), and
    per quantile bin of x the observed class share (solid) and mean predicted one (dashed)."""
    fig, axes = plt.subplots(
        len(variable_names), 1, figsize=(8, 2.8 * len(variable_names) + 0.6), squeeze=False
    )
    for d, ax in enumerate(axes[:, 0]):
        for c, label in enumerate(class_labels[d]):
            color = f"C{c % 10}"
            ax.scatter(along, probabilities[f"prob[{d},{c}]"], s=4, alpha=0.35, color=color)
            centres, shares = binned_shares(along, codes[:, d] == c, bins)
            ax.plot(centres, shares, "o-", color=color, lw=1, ms=3, label=f"{label}")
            _, mean_predicted = binned_shares(along, probabilities[f"prob[{d},{c}]"], bins)
            ax.plot(centres, mean_predicted, "--", color=color, lw=1.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"P({variable_names[d]} = class)")
        ax.set_xlabel(x_label)
        ax.legend(
            fontsize=7,
            ncol=min(4, len(class_labels[d])),
            loc="upper right",
            title="dots: predicted; per bin of x: observed share (solid), mean predicted (dashed)",
            title_fontsize=6,
        )
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def binned_shares(x: np.ndarray, hit: np.ndarray, bins: int = 10):
    """Mean x and mean of ``hit`` (a share, for booleans) in (up to) ``bins`` quantile bins of x."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    used = [b for b in range(len(edges) - 1) if np.any(which == b)]
    return (
        np.array([x[which == b].mean() for b in used]),
        np.array([hit[which == b].mean() for b in used]),
    )


def calibration(
    probabilities: dict[str, np.ndarray],
    codes: np.ndarray,
    variable_names: list[str],
    path: Path,
    title: str = "",
    bins: int = 10,
) -> None:
    """Reliability diagram per discrete output: observed frequency against predicted
    probability, pooled over classes, in equal-width bins (marker size ~ rows in the bin)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for d, name in enumerate(variable_names):
        keys = sorted(k for k in probabilities if k.startswith(f"prob[{d},"))
        predicted = np.concatenate([probabilities[k] for k in keys])
        hit = np.concatenate(
            [codes[:, d] == int(k.split(",")[1].rstrip("]")) for k in keys]
        ).astype(float)
        which = np.clip(np.digitize(predicted, edges) - 1, 0, bins - 1)
        used = [b for b in range(bins) if np.any(which == b)]
        mean_p = [predicted[which == b].mean() for b in used]
        mean_hit = [hit[which == b].mean() for b in used]
        sizes = [10 + 90 * np.mean(which == b) for b in used]
        ax.plot(mean_p, mean_hit, "-", lw=1, color=f"C{d}")
        ax.scatter(mean_p, mean_hit, s=sizes, color=f"C{d}", label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def realized_vs_predicted(
    along: np.ndarray,
    realized: np.ndarray,
    predicted: np.ndarray,
    names: list[str],
    path: Path,
    x_label: str,
    title: str = "",
    highlight: np.ndarray | None = None,
) -> None:
    """Matrix outputs: realized against predicted variances (diagonal) and correlations
    (off-diagonal) of E[Y|x], along x or time; ``highlight`` marks held-out rows."""
    p = realized.shape[1]
    panels = [(i, i) for i in range(p)] + [(i, j) for i in range(p) for j in range(i)]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 1.9 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    order = np.argsort(along, kind="stable")
    t = along[order]

    def corr(m, i, j):
        return m[:, i, j] / np.sqrt(m[:, i, i] * m[:, j, j])

    for (i, j), ax in zip(panels, axes[:, 0], strict=True):
        if i == j:
            real, pred, label = realized[:, i, i], predicted[:, i, i], f"var {names[i]}"
        else:
            real, pred = corr(realized, i, j), corr(predicted, i, j)
            label = f"corr {names[i]},{names[j]}"
        ax.plot(t, real[order], color="grey", lw=0.8, marker=".", ms=2, label="realized")
        ax.plot(t, pred[order], color="tab:blue", lw=1.2, label="predicted (E[Y|x])")
        if highlight is not None and highlight.any():
            ax.axvspan(
                along[highlight].min(),
                along[highlight].max(),
                color="tab:orange",
                alpha=0.12,
                label="test rows",
            )
        ax.set_ylabel(label, fontsize=8)
    _finish_stack(fig, axes, title, x_label, path, legend_columns=3)


def _finish_stack(fig, axes, title: str, x_label: str, path: Path, legend_columns: int) -> None:
    """Title and legend on the top panel, x label on the bottom one; save and close."""
    axes[0, 0].set_title(title)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=legend_columns)
    axes[-1, 0].set_xlabel(x_label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def criteria_against_k(
    ks: np.ndarray,
    curves: dict[str, np.ndarray],
    picks: dict[str, np.ndarray],
    path: Path,
    title: str = "",
) -> None:
    """Model-selection criteria per sample against the number of components K, one colour per
    criterion. ``curves[label]`` is (groups, len(ks)) (NaN: no run); ``picks[label]`` the K each
    group picks (NaN: none). One group: a line with a star at its pick. Several (seeds, say):
    a faint line per group, the mean over groups with +-1 sd error bars, and a star on the mean
    at the modal pick (ties to the smaller K)."""
    import warnings

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, (label, rows) in enumerate(curves.items()):
        color = f"C{c % 10}"
        chosen = picks[label]
        if rows.shape[0] == 1:
            line = rows[0]
            ax.plot(ks, line, "o-", color=color, ms=4, lw=1.5, label=label)
        else:
            for row in rows:
                ax.plot(ks, row, "-", color=color, lw=0.8, alpha=0.25)
            with warnings.catch_warnings():  # a K no group has: NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                line = np.nanmean(rows, axis=0)
                spread = np.nanstd(rows, axis=0)
            ax.errorbar(
                ks,
                line,
                yerr=spread,
                fmt="o-",
                color=color,
                ms=4,
                lw=1.5,
                capsize=3,
                label=f"{label} (mean +- sd over {rows.shape[0]})",
            )
        finite = chosen[np.isfinite(chosen)]
        if finite.size:
            values, counts = np.unique(finite, return_counts=True)
            modal = values[counts == counts.max()].min()
            at = int(np.searchsorted(ks, modal))
            ax.plot(ks[at], line[at], "*", color=color, ms=14, mec="black", mew=0.6, zorder=5)
    ax.plot([], [], "*", color="grey", ms=12, mec="black", mew=0.6, label="pick")
    ax.set_xticks(ks)
    ax.set_xlabel("K (model.n_components)")
    ax.set_ylabel("nats per sample")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predictive_calibration(calibration, path, title: str) -> None:
    """PIT histogram (scalar y) beside the reliability plot: nominal against empirical
    coverage, with the band a calibrated model stays in (+- 2 binomial SEs)."""
    panels = 2 if calibration.pit is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.0), squeeze=False)
    axes = axes[0]
    if calibration.pit is not None:
        ax = axes[0]
        bins = max(5, min(20, calibration.rows // 10))
        ax.hist(calibration.pit, bins=bins, range=(0, 1), density=True, color="C0", alpha=0.7)
        band = 2 * np.sqrt(bins / calibration.rows)  # +- 2 SE of a bin's density near 1
        ax.axhspan(1 - band, 1 + band, color="grey", alpha=0.2, label="± 2 SE of uniform")
        ax.axhline(1.0, color="grey", linestyle=":")
        ax.set_xlabel("PIT u = F(y | x) on the test rows")
        ax.set_ylabel("density")
        ax.set_title(f"PIT (KS distance {calibration.pit_ks:.3f})", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-1]
    nominal = np.array(sorted(calibration.coverage))
    empirical = np.array([calibration.coverage[lv] for lv in nominal])
    grid = np.linspace(0.3, 1.0, 71)
    se = np.sqrt(grid * (1 - grid) / calibration.rows)
    ax.fill_between(grid, grid - 2 * se, grid + 2 * se, color="grey", alpha=0.2)
    ax.plot(grid, grid, color="grey", linestyle=":")
    ax.plot(nominal, empirical, "o-", color="C1")
    ax.set_xlabel(f"nominal probability of the {calibration.region}")
    ax.set_ylabel(f"fraction of the {calibration.rows} test rows inside")
    ax.set_title("reliability (grey: ± 2 binomial SE)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def penalty_path(frame, path: Path, title: str = "", val_before_polish: float | None = None):
    """Validation NLL (+- 1 SE) and training NLL along a ridge-penalty path (one pair of lines
    per scale-penalty strength walked), the chosen point marked; the early-stopped weights'
    validation NLL as a reference line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = list(frame.groupby("scale_penalty", sort=True))
    for j, (strength, part) in enumerate(groups):
        lam = part["penalty"].to_numpy()
        val, se = part["val_nll"].to_numpy(), part["val_nll_se"].to_numpy()
        tag = f" (c = {strength:g})" if len(groups) > 1 else ""
        color = f"C{(2 * j + 1) % 10}"
        ax.plot(lam, val, "o-", color=color, label=f"validation NLL{tag}")
        ax.fill_between(lam, val - se, val + se, color=color, alpha=0.2, lw=0)
        ax.plot(
            lam,
            part["train_nll"].to_numpy(),
            "s--",
            color=color,
            alpha=0.6,
            ms=3,
            label=f"training NLL{tag}",
        )
    if val_before_polish is not None and np.isfinite(val_before_polish):
        ax.axhline(val_before_polish, color="0.4", ls=":", label="validation, early-stopped")
    chosen = frame.loc[frame["chosen"]]
    if len(chosen):
        ax.plot(chosen["penalty"], chosen["val_nll"], "k*", ms=14, label="chosen")
    ax.set_xscale("log")
    ax.invert_xaxis()  # from strong to weak
    ax.set_xlabel("ridge penalty lambda (strong to weak)")
    ax.set_ylabel("NLL (nats per sample, original units)")
    values = np.concatenate([frame["val_nll"].to_numpy(), frame["train_nll"].to_numpy()])
    values = values[np.isfinite(values)]
    if values.size:
        low, high = values.min(), np.quantile(values, 0.9)
        pad = 0.1 * (high - low + 1e-12)
        ax.set_ylim(low - pad, high + 3 * pad)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
