"""Coverage of nominal 95% intervals from the inverse Hessian, the sandwich and the bootstrap.

M replicate datasets of n rows from a known truth are fitted (``replicates.fit_replicates``,
the penalized estimator at lambda = 3); at fixed x points each replicate gives, for each
identifiable quantity, three intervals estimate +- z SE:

- ``hessian``: SE from (A + lambda/n I)^-1 / n (``run_inference``'s ``se_hessian``);
- ``sandwich``: SE from H^-1 B H^-1 / n (``se_sandwich``);
- ``bootstrap``: SE = the standard deviation of the quantity over B nonparametric bootstrap
  refits (multinomial row weights, ``bootstrap.bootstrap_refits``).

Settings (``SETTINGS``), one quantity set per family, each against a target the intervals
should cover:

``gaussian_well``: a bimodal truth (a two-component teacher MDN) fitted with K = 2 (the family
    holds it); target: the true conditional mean ``mean[0]`` and variance ``cov[0,0]``.
``gaussian_mis``: the same truth fitted with K = 1; target: the KL projection's mean and
    variance (the population fit on a quadrature grid, lambda = 0, ``population``), which for
    a flexible network is close to the true conditional mean and variance (moment matching).
``categorical_well``: ``synth_latent_class`` (two class-coded outputs from a two-class latent
    regression) fitted with K = 2 and a linear head, exactly the truth's parameterisation;
    target: the true marginal class probabilities ``prob[0,0]`` and ``prob[1,0]``.
``categorical_mis``: the same truth fitted with K = 1 and a linear head (y1 and y2
    independent given x, linear logits: neither holds); target: the projection's
    probabilities, from the population fit on every class cell at Gauss-Legendre x nodes
    (``population.enumeration_grid``: exact in y).
``wishart_mis``: ``synth_wishart`` (a two-component Wishart mixture of 3 x 3 matrices) fitted
    with K = 1 (one tanh layer of 4, as its default experiment); target: the true mean matrix
    ``mean[0,0]``, ``mean[1,0]``. That is the projection's own mean matrix up to the network's
    approximation error: the Wishart log density is linear in Y through -tr(S^-1 Y) / 2, so at
    each x the projection's df S equals E[Y | x] (moment matching), whatever its df. A
    population fit on sampled rows (no quadrature covers 6-dimensional SPD matrices) was no
    alternative here: on 20,000 rows it still had max|grad| 0.05 after 550 L-BFGS steps and
    350 s (docs/studies.md).

The penalized estimator at n targets the minimiser of E[NLL] + lambda/(2n)|theta|^2, whose
limit is the KL projection: its bias is O(lambda/n) against SEs of O(n^-1/2). ``bias`` and
``bias_se`` (mean estimate - target over replicates) say how much of it shows at each n.

Outputs (``run``): ``coverage.csv`` (per setting, n, replicate, point, quantity: the estimate,
the target and the three SEs), ``coverage_summary.csv`` (per setting, n, quantity, estimator:
coverage with its binomial Monte Carlo SE over replicates, mean width, bias), ``coverage.png``
(coverage with MC error bars), ``coverage_qq.png`` (standardised errors against N(0, 1));
metrics ``<setting>/n<n>/<quantity>/<estimator>/coverage``, ``.../width``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from mdnlab.data.simulators import SIMULATORS
from mdnlab.inference.step import run_inference
from mdnlab.pipeline import configure_threads
from mdnlab.progress import say
from mdnlab.studies.bootstrap import bootstrap_refits
from mdnlab.studies.population import enumeration_grid, quadrature_grid
from mdnlab.studies.projection import project
from mdnlab.studies.replicates import FitSettings, ModelSpec, fit_replicates, reference_scalers
from mdnlab.studies.settings import CoverageSize
from mdnlab.studies.teacher import make_teacher

ESTIMATORS = ("hessian", "sandwich", "bootstrap")


@dataclass(frozen=True)
class Setting:
    name: str
    truth_name: str
    spec: ModelSpec
    quantities: tuple[str, ...]
    code: int
    relation: str  # "well specified" | "misspecified"
    target: str  # "truth" | "quadrature" | "enumeration" (see targets)
    cost: float = 1.0  # seconds a replicate at n = 2000 (B = 30, R = 2), for scheduling only


LATENT_CLASSES = (3, 2)
SETTINGS = (
    Setting(
        "gaussian_well",
        "teacher_K2",
        ModelSpec(n_components=2),
        ("mean[0]", "cov[0,0]"),
        11,
        "well specified",
        "truth",
        cost=20.0,
    ),
    Setting(
        "gaussian_mis",
        "teacher_K2",
        ModelSpec(n_components=1),
        ("mean[0]", "cov[0,0]"),
        12,
        "misspecified",
        "quadrature",
        cost=18.0,
    ),
    Setting(
        "categorical_well",
        "synth_latent_class",
        ModelSpec("categorical", 2, (), n_classes=LATENT_CLASSES),
        ("prob[0,0]", "prob[1,0]"),
        13,
        "well specified",
        "truth",
        cost=21.0,
    ),
    Setting(
        "categorical_mis",
        "synth_latent_class",
        ModelSpec("categorical", 1, (), n_classes=LATENT_CLASSES),
        ("prob[0,0]", "prob[1,0]"),
        14,
        "misspecified",
        "enumeration",
        cost=5.0,
    ),
    Setting(
        "wishart_mis",
        "synth_wishart",
        ModelSpec("wishart", 1, (4,)),
        ("mean[0,0]", "mean[1,0]"),
        15,
        "misspecified",
        "truth",
        cost=75.0,
    ),
)


def truth_of(setting: Setting, seed: int):
    if setting.truth_name == "teacher_K2":
        return make_teacher(n_components=2, hidden_sizes=(8,), seed=seed, name="teacher_K2")
    if setting.truth_name in SIMULATORS:
        return SIMULATORS[setting.truth_name]
    raise ValueError(f"unknown truth {setting.truth_name!r}")


def projection_grid(setting: Setting, truth):
    """The rows the population fit of a projection target minimises its objective over."""
    if setting.target == "quadrature":
        return quadrature_grid(truth, x_nodes=24, y_nodes=401)  # 48 x 1601 agrees to 1e-11
    if setting.target == "enumeration":
        return enumeration_grid(truth, setting.spec.n_classes, x_nodes=48)
    raise ValueError(f"setting {setting.name}: unknown target {setting.target!r}")


def targets(
    setting: Setting, truth, points: np.ndarray, seed: int, warm_starts: list
) -> tuple[dict, dict]:
    """The quantities the intervals aim at, at ``points``: the truth's own where the family
    holds it or matches its moments, else the KL projection's (population fit, warm-started
    from the replicate fits);
    and metrics of the projection fit (none for the truth)."""
    if setting.target == "truth":
        values = truth.quantities(points)
        return {q: np.asarray(values[q], dtype=float) for q in setting.quantities}, {}
    grid = projection_grid(setting, truth)
    fit = project(truth, setting.spec, warm_starts, [20_000 + seed], grid, max_iter=5000)
    with torch.no_grad():
        values = fit.module.quantities(torch.as_tensor(points, dtype=torch.float64))
    say(
        f"[{setting.name}] target: the projection ({setting.target}, {len(grid)} rows), KL* "
        f"{fit.kl:.5f}, max|grad| {fit.grad_max:.1e}"
    )
    info = {"target_kl": fit.kl, "target_grad_max": fit.grad_max}
    return {q: values[q].numpy() for q in setting.quantities}, info


def replicate_rows(setting, fit, points, size: CoverageSize, seed: int) -> list[dict]:
    """Estimates and the three SEs of ``setting.quantities`` at ``points`` for one fit."""
    inference = run_inference(
        fit.module, fit.x_train, fit.y_train, points, penalty=setting.spec.penalty
    )
    table = inference.predictions
    boot_seed = int(
        np.random.SeedSequence([seed, setting.code, fit.n, fit.replicate, 3]).generate_state(1)[0]
    )
    refits = bootstrap_refits(
        fit.module, fit.x_train, fit.y_train, setting.spec.penalty, size.bootstrap, boot_seed
    )
    x = torch.as_tensor(points, dtype=torch.float64)
    with torch.no_grad():
        draws = {
            q: np.stack(
                [
                    m.quantities(x)[q].numpy()
                    for m, ok in zip(refits.modules, refits.converged, strict=True)
                    if ok
                ]
            )
            for q in setting.quantities
        }
    rows = []
    for q in setting.quantities:
        part = table[table.quantity == q].sort_values("point")
        boot_se = draws[q].std(axis=0, ddof=1)
        for i, (_, r) in enumerate(part.iterrows()):
            rows.append(
                {
                    "setting": setting.name,
                    "relation": setting.relation,
                    "n": fit.n,
                    "replicate": fit.replicate,
                    "point": int(r.point),
                    "x": float(points[i, 0]),
                    "quantity": q,
                    "estimate": float(r.estimate),
                    "se_hessian": float(r.se_hessian),
                    "se_sandwich": float(r.se_sandwich),
                    "se_bootstrap": float(boot_se[i]),
                    "bootstrap_used": int(refits.converged.sum()),
                    "converged": fit.converged,
                    "grad_max": fit.grad_max,
                }
            )
    return rows


def metric_name(quantity: str) -> str:
    """``mean[0]`` -> ``mean_0``, ``cov[0,0]`` -> ``cov_0_0``: MLflow refuses brackets."""
    return quantity.replace("[", "_").replace("]", "").replace(",", "_")


def summarise(frame: pd.DataFrame, level: float) -> pd.DataFrame:
    """Coverage per setting, n, quantity and estimator, pooled over points, with the binomial
    Monte Carlo SE over replicates (each replicate's covered fraction over the points is one
    draw), mean interval width, and the bias of the estimate with its SE."""
    z = stats.norm.ppf(0.5 + level / 2)
    out = []
    for (setting, n, quantity), part in frame.groupby(["setting", "n", "quantity"], sort=False):
        error = part.estimate - part.target
        error_by_point = error.groupby(part.point)
        m = part.replicate.nunique()
        for estimator in ESTIMATORS:
            se = part[f"se_{estimator}"]
            covered = (error.abs() <= z * se).astype(float)
            per_replicate = covered.groupby(part.replicate).mean()
            rate = float(covered.mean())
            out.append(
                {
                    "setting": setting,
                    "relation": part.relation.iloc[0],
                    "n": int(n),
                    "quantity": quantity,
                    "estimator": estimator,
                    "replicates": m,
                    "coverage": rate,
                    "coverage_se": float(per_replicate.std(ddof=1) / np.sqrt(m))
                    if m > 1
                    else float("nan"),
                    "coverage_se_binomial": float(np.sqrt(rate * (1 - rate) / len(part))),
                    "width": float((2 * z * se).mean()),
                    "bias": float(error.mean()),
                    "bias_se": float(error.groupby(part.replicate).mean().std(ddof=1) / np.sqrt(m)),
                    "sd_estimate": float(error_by_point.std(ddof=1).mean()),
                    "mean_se": float(se.mean()),
                }
            )
    return pd.DataFrame(out)


@dataclass
class Unit:
    """One (setting, n) of the study: its replicate rows (targets not yet attached) and the
    first replicates' fitted modules (warm starts of a projection target)."""

    setting: str
    n: int
    frame: pd.DataFrame
    warm_starts: list


def fit_unit(setting: Setting, n: int, size: CoverageSize, seed: int, fit: FitSettings) -> Unit:
    """Fit the M replicates of ``setting`` at ``n`` and their bootstrap refits (one process,
    one thread: units run in parallel processes when ``size.jobs`` > 1)."""
    configure_threads(1)
    started = time.perf_counter()
    truth = truth_of(setting, seed)
    scalers = reference_scalers(truth, setting.spec, fit.reference_rows, seed)
    fits = fit_replicates(
        truth, setting.spec, n, list(range(size.replicates)), seed, setting.code, fit, scalers
    )
    rows = [row for f in fits for row in replicate_rows(setting, f, points_of(size), size, seed)]
    seconds = time.perf_counter() - started
    say(f"[{setting.name}] n = {n}: {len(fits)} replicates fitted and bootstrapped, {seconds:.0f}s")
    return Unit(setting.name, n, pd.DataFrame(rows), [f.module for f in fits[:4]])


def points_of(size: CoverageSize) -> np.ndarray:
    """The x points the intervals are computed at."""
    return np.linspace(-0.8, 0.8, size.points)[:, None]


def fit_units(size: CoverageSize, seed: int, fit: FitSettings) -> list[Unit]:
    """Every (setting, n), in ``size.jobs`` processes; the numbers do not depend on ``jobs``
    (each unit draws from its own seeds)."""
    work = sorted(
        ((setting, n) for setting in SETTINGS for n in size.sizes),
        key=lambda unit: -unit[0].cost * unit[1],  # longest first: the two processes end together
    )
    if size.jobs == 1:
        return [fit_unit(setting, n, size, seed, fit) for setting, n in work]
    from joblib import Parallel, delayed

    say(f"coverage: {len(work)} (setting, n) units in {size.jobs} processes")
    return Parallel(n_jobs=size.jobs, backend="loky")(
        delayed(fit_unit)(setting, n, size, seed, fit) for setting, n in work
    )


def run(
    size: CoverageSize, seed: int, out: Path, log=None, fit: FitSettings | None = None
) -> dict[str, float]:
    """The study at ``size``; ``log``: a ``StudyLog`` (None: files only); ``fit``: the
    estimator's settings (default ``FitSettings.for_size(size)``)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = fit or FitSettings.for_size(size)
    units = {(u.setting, u.n): u for u in fit_units(size, seed, settings)}
    frames, metrics = [], {}
    for setting in SETTINGS:
        largest = units[(setting.name, size.sizes[-1])]
        truth = truth_of(setting, seed)
        target, target_info = targets(setting, truth, points_of(size), seed, largest.warm_starts)
        metrics |= {f"{setting.name}/{k}": v for k, v in target_info.items()}
        for n in size.sizes:
            frame = units[(setting.name, n)].frame
            frame["target"] = [
                float(target[q][p]) for q, p in zip(frame.quantity, frame.point, strict=True)
            ]
            frames.append(frame)
            if log is not None:
                log_replicates(log, frame, size)
            for r in summarise(frame, size.level).itertuples():
                say(
                    f"[{setting.name}] n = {n} {r.quantity} {r.estimator}: coverage "
                    f"{r.coverage:.3f} ± {r.coverage_se:.3f}, width {r.width:.4f}, bias "
                    f"{r.bias:+.4f} ± {r.bias_se:.4f}"
                )
    frame = pd.concat(frames, ignore_index=True)
    table = summarise(frame, size.level)
    frame.to_csv(out / "coverage.csv", index=False)
    table.to_csv(out / "coverage_summary.csv", index=False)
    figure(table, size.level, out / "coverage.png")
    qq_figure(frame, out / "coverage_qq.png")
    for r in table.itertuples():
        key = f"{r.setting}/n{r.n}/{metric_name(r.quantity)}/{r.estimator}"
        metrics[f"{key}/coverage"] = r.coverage
        metrics[f"{key}/coverage_se"] = r.coverage_se
        metrics[f"{key}/width"] = r.width
        metrics[f"{r.setting}/n{r.n}/{metric_name(r.quantity)}/bias"] = r.bias
        metrics[f"{r.setting}/n{r.n}/{metric_name(r.quantity)}/bias_se"] = r.bias_se
    return metrics


def log_replicates(log, frame: pd.DataFrame, size: CoverageSize) -> None:
    """One MLflow child per replicate: its fit and B bootstrap refits, with the fraction of
    its intervals that covered, per quantity and estimator."""
    for (setting, n, replicate), part in frame.groupby(["setting", "n", "replicate"], sort=False):
        covered = summarise(part, size.level)
        log.child(
            f"{setting}-n{n}-r{replicate}",
            {"setting": setting, "n": n, "replicate": replicate, "bootstrap": size.bootstrap},
            {
                f"{metric_name(r.quantity)}/{r.estimator}/covered_fraction": r.coverage
                for r in covered.itertuples()
            }
            | {
                "grad_max": float(part.grad_max.iloc[0]),
                "bootstrap_used": int(part.bootstrap_used.iloc[0]),
            },
        )


def figure(table: pd.DataFrame, level: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(table.setting))
    sizes = sorted(set(table.n))
    fig, axes = plt.subplots(
        len(sizes), len(settings), figsize=(4.2 * len(settings), 3.8 * len(sizes)), squeeze=False
    )
    for (setting, n), part in table.groupby(["setting", "n"], sort=False):
        ax = axes[sizes.index(n), settings.index(setting)]
        quantities = list(dict.fromkeys(part.quantity))
        width = 0.8 / len(ESTIMATORS)
        for j, estimator in enumerate(ESTIMATORS):
            rows = part[part.estimator == estimator].set_index("quantity").loc[quantities]
            ax.errorbar(
                np.arange(len(quantities)) + (j - 1) * width,
                rows.coverage,
                yerr=2 * rows.coverage_se,
                fmt="o",
                capsize=3,
                label=estimator,
            )
        ax.axhline(level, color="grey", linestyle=":")
        ax.set_xticks(np.arange(len(quantities)), quantities)
        ax.set_ylim(max(0.0, min(0.5, float(part.coverage.min()) - 0.1)), 1.01)
        ax.set_ylabel(f"coverage of nominal {level:.0%} intervals (± 2 MC SE)")
        ax.set_title(
            f"{setting} ({part.relation.iloc[0]}), n = {n}, M = {int(part.replicates.iloc[0])}",
            fontsize=9,
        )
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _quantity_slot(frame: pd.DataFrame) -> dict[str, int]:
    """Each quantity's position within its setting's list (the column of the QQ grid)."""
    slot = {}
    for _, part in frame.groupby("setting", sort=False):
        for i, q in enumerate(dict.fromkeys(part.quantity)):
            slot.setdefault(q, i)
    return slot


def qq_figure(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(frame.setting))
    slot = _quantity_slot(frame)
    columns = list(dict.fromkeys(zip(frame.n, frame.quantity.map(slot), strict=True)))
    fig, axes = plt.subplots(
        len(settings),
        len(columns),
        figsize=(3.4 * len(columns), 3.3 * len(settings)),
        squeeze=False,
    )
    for (setting, n, quantity), part in frame.groupby(["setting", "n", "quantity"], sort=False):
        ax = axes[settings.index(setting), columns.index((n, slot[quantity]))]
        error = (part.estimate - part.target).to_numpy()
        for estimator in ESTIMATORS:
            z = np.sort(error / part[f"se_{estimator}"].to_numpy())
            normal = stats.norm.ppf((np.arange(1, len(z) + 1) - 0.5) / len(z))
            ax.plot(normal, z, ".", markersize=3, label=estimator)
        lim = 3.5
        ax.plot([-lim, lim], [-lim, lim], color="grey", linewidth=1)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-2 * lim, 2 * lim)
        ax.set_xlabel("N(0, 1) quantile")
        ax.set_ylabel("(estimate - target) / SE")
        ax.set_title(f"{setting}, n={n}: {quantity}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
