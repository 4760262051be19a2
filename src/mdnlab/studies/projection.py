"""Misspecification: the KL converges to a positive constant, the KL projection.

Two cases the family cannot represent (Gaussian MDNs, hidden [8], tanh, lambda = 3):

``bimodal_K1``: a K = 1 Gaussian fitted to a bimodal truth (a two-component teacher MDN,
    ``teacher.make_teacher(n_components=2)``). Its projection at each x is close to the
    Gaussian with the true conditional mean and variance (moment matching).
``heavytail_K2``: a K = 2 Gaussian mixture fitted to ``synth_heavytail`` (skewed, heavy-tailed
    Jones-Faddy noise).

The constant is estimated independently of the sampled fits: the population cross-entropy
E_x E_{y|x}[-log q(y|x)] is computed by quadrature (Gauss-Legendre in x, a sinh grid in y,
``population.quadrature_grid``) and minimised over the family at lambda = 0 (the limit of the
penalized objective) by the batched L-BFGS from random starts and from the largest-n fits
(``population.population_fit``): KL* = the minimum population KL. Beside it, the "fitted
limit" c of a least-squares fit KL(n) = c + b / n to the mean KL over n >= ``tail_from``, and
the excess KL above KL* against Takeuchi's tr(A^-1 B) / (2n).

Outputs (``run``): ``projection.csv`` (one row per fit), ``projection_by_n.csv``,
``projection_population.csv`` (every start of the population fit), ``projection.png``;
metrics per case ``<case>/kl_projection`` (KL*), ``<case>/kl_fitted_limit`` (c),
``<case>/excess_ratio_max_n`` (measured excess / predicted at the largest n),
``<case>/excess_slope`` (log-log slope of the excess on n, n >= tail_from),
``<case>/kl_max_n`` and ``<case>/quadrature_mass_error``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mdnlab.data.simulators import SIMULATORS
from mdnlab.studies.kl_curve import Case, by_size, kl_curve, loglog_slope
from mdnlab.studies.population import population_fit, quadrature_grid
from mdnlab.studies.replicates import FitSettings, ModelSpec, module_factory
from mdnlab.studies.settings import CurveSize
from mdnlab.studies.teacher import make_teacher


def cases(seed: int) -> list[Case]:
    bimodal = make_teacher(n_components=2, hidden_sizes=(8,), seed=seed, name="teacher_K2")
    return [
        Case("bimodal_K1", bimodal, ModelSpec(n_components=1), 3, "misspecified"),
        Case(
            "heavytail_K2",
            SIMULATORS["synth_heavytail"],
            ModelSpec(n_components=2),
            4,
            "misspecified",
        ),
    ]


def project(truth, spec: ModelSpec, warm_starts: list, seeds: list[int], grid, max_iter: int):
    """The KL projection of ``truth`` onto ``spec``'s family: the population fit on ``grid``
    (``population.population_fit``, lambda = 0, max|grad| <= 1e-6) from ``seeds`` and the
    ``warm_starts`` (modules of ``spec``, whose scalers every member shares)."""
    first = warm_starts[0]
    make_module = module_factory(spec, first, first.hparams["in_dim"], first.hparams["event_shape"])
    return population_fit(grid, make_module, seeds, warm_starts, tol=1e-6, max_iter=max_iter)


def fitted_limit(n: np.ndarray, kl: np.ndarray) -> float:
    """c of the least-squares fit kl = c + b / n."""
    design = np.column_stack([np.ones_like(n, dtype=float), 1.0 / np.asarray(n, dtype=float)])
    return float(np.linalg.lstsq(design, np.asarray(kl, dtype=float), rcond=None)[0][0])


def run(
    size: CurveSize, seed: int, out: Path, log=None, fit: FitSettings | None = None
) -> dict[str, float]:
    """The study at ``size``; ``log``: a ``StudyLog`` (None: files only); ``fit``: the
    estimator's settings (default ``FitSettings.for_size(size)``)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = fit or FitSettings.for_size(size)
    frames, tables, population_rows, metrics = [], [], [], {}
    for case in cases(seed):
        fits, largest = kl_curve(
            case, size.sizes, size.replicates, seed, settings, size.eval_rows, log
        )
        grid = quadrature_grid(case.truth, x_nodes=size.x_nodes, y_nodes=size.y_nodes)
        seeds = [10_000 + seed * 100 + s for s in range(size.population_starts)]
        population = project(case.truth, case.spec, largest, seeds, grid, size.population_max_iter)
        constant = population.kl
        for i, (kl, grad) in enumerate(
            zip(population.member_kl, population.member_grad_max, strict=True)
        ):
            population_rows.append(
                {
                    "case": case.name,
                    "start": i,
                    "kl": kl,
                    "grad_max": grad,
                    "warm": i >= size.population_starts,
                    "best": kl == constant,
                }
            )
        table = by_size(fits, baseline=constant)
        table["kl_projection"] = constant
        tail = table[table.n >= size.tail_from]
        if len(tail) < 2:
            tail = table
        last = table.iloc[-1]
        metrics |= {
            f"{case.name}/kl_projection": constant,
            f"{case.name}/kl_fitted_limit": fitted_limit(
                tail.n.to_numpy(), tail.kl_quadrature.to_numpy()
            ),
            f"{case.name}/excess_ratio_max_n": float(last.ratio),
            f"{case.name}/excess_slope": loglog_slope(tail.n.to_numpy(), tail.excess.to_numpy()),
            f"{case.name}/kl_max_n": float(last.kl_quadrature),
            f"{case.name}/kl_sample_max_n": float(last.kl),
            f"{case.name}/quadrature_mass_error": float(grid.max_mass_error),
        }
        frames.append(fits)
        tables.append(table)
    fits = pd.concat(frames, ignore_index=True)
    table = pd.concat(tables, ignore_index=True)
    fits.to_csv(out / "projection.csv", index=False)
    table.to_csv(out / "projection_by_n.csv", index=False)
    pd.DataFrame(population_rows).to_csv(out / "projection_population.csv", index=False)
    figure(table, metrics, out / "projection.png")
    return metrics


def figure(table: pd.DataFrame, metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, (case, part) in enumerate(table.groupby("case", sort=False)):
        colour = f"C{i}"
        constant = float(part.kl_projection.iloc[0])
        left.errorbar(
            part.n,
            part.kl_quadrature,
            yerr=part.kl_quadrature_se,
            fmt="o-",
            color=colour,
            capsize=3,
            label=f"{case}: KL (quadrature)",
        )
        left.plot(part.n, part.kl, "x", color=colour, label=f"{case}: KL (evaluation sample)")
        left.axhline(constant, color=colour, linestyle=":", label=f"{case}: KL* = {constant:.4f}")
        left.plot(
            part.n,
            constant + part.predicted_excess,
            "--",
            color=colour,
            label=f"{case}: KL* + tr(A⁻¹B)/2n",
        )
        keep = part.excess > 0
        right.errorbar(
            part.n[keep],
            part.excess[keep],
            yerr=part.kl_quadrature_se[keep],
            fmt="o-",
            color=colour,
            capsize=3,
            label=f"{case}: KL - KL*",
        )
        right.plot(part.n, part.predicted_excess, "--", color=colour, label=f"{case}: tr(A⁻¹B)/2n")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("training rows n")
    left.set_ylabel("KL(p_true ‖ fitted), nats")
    left.set_title("KL converges to the projection KL*", fontsize=10)
    left.legend(fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("training rows n")
    right.set_ylabel("excess KL above KL*, nats")
    right.set_title("excess against Takeuchi's prediction", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
