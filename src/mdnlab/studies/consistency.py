"""Consistency: KL(p_true || fitted) -> 0 at the rate Takeuchi's trace predicts.

Two cases, both a Gaussian MDN with hidden [8] (tanh), K = 3, lambda = 3 (train.penalty):

``teacher_K3`` (contained): the truth is a fixed random MDN of exactly that architecture
    (``teacher.make_teacher``), x ~ U(-1, 1). The expected KL is tr(A^-1 B) / (2n) + o(1/n)
    with B = A, i.e. about P_eff / (2n): the measured KL over that prediction should approach
    1 and the log-log slope -1.
``synth_mixture`` (almost contained): three Gaussians whose weights, means and sds are smooth
    functions of x that a tanh network of this size approximates closely but not exactly; the
    KL levels off at a small constant once the estimation error drops below it.

Outputs (``run``): ``consistency.csv`` (one row per fit), ``consistency_by_n.csv`` (means by
case and n), ``consistency.png``, and metrics per case: ``<case>/slope`` (log-log slope of
the mean KL on n, all n), ``<case>/slope_tail`` (n >= ``tail_from``), ``<case>/ratio_max_n``
(measured / predicted at the largest n), ``<case>/kl_max_n`` (quadrature KL) and
``<case>/kl_sample_max_n`` (on the evaluation sample). Slopes and ratios use the quadrature
KL (``kl_curve``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mdnlab.data.simulators import SIMULATORS
from mdnlab.studies.kl_curve import Case, by_size, kl_curve, loglog_slope
from mdnlab.studies.replicates import FitSettings, ModelSpec
from mdnlab.studies.settings import CurveSize
from mdnlab.studies.teacher import make_teacher

MODEL = ModelSpec(family="gaussian", n_components=3, hidden_sizes=(8,), penalty=3.0)


def cases(seed: int) -> list[Case]:
    teacher = make_teacher(n_components=3, hidden_sizes=(8,), seed=seed, name="teacher_K3")
    return [
        Case("teacher_K3", teacher, MODEL, 1, "contained"),
        Case("synth_mixture", SIMULATORS["synth_mixture"], MODEL, 2, "almost"),
    ]


def run(
    size: CurveSize, seed: int, out: Path, log=None, fit: FitSettings | None = None
) -> dict[str, float]:
    """The study at ``size``; ``log``: a ``StudyLog`` (None: files only); ``fit``: the
    estimator's settings (default ``FitSettings.for_size(size)``)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = fit or FitSettings.for_size(size)
    frames = [
        kl_curve(case, size.sizes, size.replicates, seed, settings, size.eval_rows, log)[0]
        for case in cases(seed)
    ]
    fits = pd.concat(frames, ignore_index=True)
    table = by_size(fits)
    fits.to_csv(out / "consistency.csv", index=False)
    table.to_csv(out / "consistency_by_n.csv", index=False)
    figure(table, out / "consistency.png")
    return summary_metrics(table, size.tail_from)


def summary_metrics(table: pd.DataFrame, tail_from: int) -> dict[str, float]:
    metrics = {}
    for case, part in table.groupby("case", sort=False):
        tail = part[part.n >= tail_from]
        last = part.iloc[-1]
        metrics |= {
            f"{case}/slope": loglog_slope(part.n.to_numpy(), part.kl_quadrature.to_numpy()),
            f"{case}/slope_tail": loglog_slope(tail.n.to_numpy(), tail.kl_quadrature.to_numpy()),
            f"{case}/ratio_max_n": float(last.ratio),
            f"{case}/kl_max_n": float(last.kl_quadrature),
            f"{case}/kl_sample_max_n": float(last.kl),
            f"{case}/predicted_max_n": float(last.predicted_excess),
        }
    return metrics


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, (case, part) in enumerate(table.groupby("case", sort=False)):
        colour = f"C{i}"
        left.errorbar(
            part.n,
            part.kl_quadrature,
            yerr=part.kl_quadrature_se,
            fmt="o-",
            color=colour,
            capsize=3,
            label=f"{case}: measured KL",
        )
        left.plot(
            part.n,
            part.predicted_excess,
            "--",
            color=colour,
            label=f"{case}: tr(A⁻¹B)/2n",
        )
        right.plot(part.n, part.ratio, "o-", color=colour, label=case)
    reference = np.array([table.n.min(), table.n.max()], dtype=float)
    level = table.groupby("n").predicted_excess.mean().iloc[0]
    left.plot(reference, level * reference[0] / reference, ":", color="grey", label="slope -1")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("training rows n")
    left.set_ylabel("KL(p_true ‖ fitted), nats")
    left.legend(fontsize=7)
    left.set_title("KL to the truth by n (mean ± SE over replicates)", fontsize=10)
    right.axhline(1.0, color="grey", linestyle=":")
    right.set_xscale("log")
    right.set_xlabel("training rows n")
    right.set_ylabel("measured KL / predicted")
    right.set_title("measured over Takeuchi's prediction", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
