"""KL(p_true || fitted) by training-set size, beside Takeuchi's prediction of it.

For one truth and one fitted model (a ``Case``), M replicate fits at each n of a grid
(``replicates.fit_replicates``); each fit gets

- ``kl``: mean over one large evaluation sample from the truth (drawn once per case, shared
  by every fit, so that differences between fits are not evaluation noise) of
  log p_true(y|x) - log q(y|x), with its Monte Carlo SE ``kl_se``;
- ``kl_quadrature``: the same KL computed on a quadrature grid of (x, y) (``population.
  quadrature_grid``, 24 x 401 nodes: agrees with 48 x 1601 to 1e-11), free of Monte Carlo
  error. The evaluation sample's SE is about sd(log p - log q) / sqrt(rows): small when q is
  close to p, but 3e-3 nats at 50,000 rows for a K = 1 fit to a bimodal truth, more than the
  excess KL it would have to resolve. The tables' ``excess`` and ``ratio`` use it;
- ``tic_trace`` = tr(A_lambda^-1 B) from the fit's own A (Hessian of the mean NLL, plus
  lambda/n I) and B (centred score covariance) on its training rows (``run_inference``), and
  ``predicted_excess`` = tic_trace / (2n). Takeuchi (1976): the expected KL of the fitted model
  is KL(p || q*) + tr(A^-1 B) / (2n) + o(1/n), q* the KL projection; when the family contains
  the truth, B = A and the trace is the number of identified weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mdnlab.diagnostics.kl import kl_estimate, model_log_prob
from mdnlab.inference.step import run_inference
from mdnlab.progress import say
from mdnlab.studies.population import quadrature_grid
from mdnlab.studies.replicates import (
    FitSettings,
    ModelSpec,
    fit_replicates,
    reference_scalers,
)

CHILD_METRICS = (
    "kl",
    "kl_se",
    "kl_quadrature",
    "tic_trace",
    "predicted_excess",
    "effective_params",
    "grad_max",
)


@dataclass(frozen=True)
class Case:
    """One truth and the model fitted to it. ``code`` keys the truth's random draws;
    ``relation``: ``contained`` (the family holds the truth exactly), ``almost`` (a smooth
    truth the family approximates closely) or ``misspecified``."""

    name: str
    truth: object
    spec: ModelSpec
    code: int
    relation: str


def evaluation_sample(case: Case, rows: int, seed: int):
    """(x, y, log p_true(y|x)): ``rows`` fresh draws, independent of every training set."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, case.code, 104_729]))
    x, y = case.truth.sample(rows, rng)
    return x, y, case.truth.log_prob(x, y)


def kl_curve(
    case: Case,
    sizes: list[int],
    replicates: int,
    seed: int,
    settings: FitSettings,
    eval_rows: int,
    log=None,
) -> tuple[pd.DataFrame, list]:
    """One row per fit (``case``, ``n``, ``replicate``, ``kl``, ``kl_se``, ``kl_quadrature``,
    ``tic_trace``, ``predicted_excess``, ``effective_params``, ``objective``, ``nll``,
    ``grad_max``, ``converged``, ``epochs``), and the fitted modules at the
    largest n (warm starts for a population fit). ``log``: a ``StudyLog`` that gets one child
    run per fit with ``CHILD_METRICS`` and the fit's ``seconds``."""
    x_eval, y_eval, log_p = evaluation_sample(case, eval_rows, seed)
    grid = quadrature_grid(case.truth, x_nodes=24, y_nodes=401)
    scalers = reference_scalers(case.truth, case.spec, settings.reference_rows, seed)
    rows = []
    started = time.perf_counter()
    for n in sizes:
        t0 = time.perf_counter()
        fits = fit_replicates(
            case.truth, case.spec, n, list(range(replicates)), seed, case.code, settings, scalers
        )
        fit_seconds = (time.perf_counter() - t0) / len(fits)
        for fit in fits:
            t1 = time.perf_counter()
            kl = kl_estimate(log_p, model_log_prob(fit.module, x_eval, y_eval))
            inference = run_inference(
                fit.module, fit.x_train, fit.y_train, x_eval[:1], penalty=case.spec.penalty
            )
            trace = inference.metrics["inference/tic_trace"]
            row = {
                "case": case.name,
                "relation": case.relation,
                "model": case.spec.label,
                "n": n,
                "replicate": fit.replicate,
                "kl": kl.value,
                "kl_se": kl.se,
                "kl_quadrature": grid.kl(model_log_prob(fit.module, grid.x, grid.y)),
                "tic_trace": trace,
                "predicted_excess": trace / (2.0 * n),
                "effective_params": inference.metrics["inference/effective_params"],
                "n_params": inference.metrics["inference/n_params"],
                "objective": fit.objective,
                "nll": fit.nll,
                "grad_max": fit.grad_max,
                "converged": fit.converged,
                "epochs": fit.epochs,
            }
            rows.append(row)
            if log is not None:  # wall time in MLflow only: the DVC outputs stay reproducible
                seconds = fit_seconds + time.perf_counter() - t1
                log.child(
                    f"{case.name}-n{n}-r{fit.replicate}",
                    {"case": case.name, "n": n, "replicate": fit.replicate},
                    {k: row[k] for k in CHILD_METRICS} | {"seconds": seconds},
                )
        part = by_size(pd.DataFrame(rows[-len(fits) :])).iloc[0]
        say(
            f"[{case.name}] n = {n}: KL {part.kl_quadrature:.5f} ± {part.kl_quadrature_se:.5f} "
            f"(predicted excess {part.predicted_excess:.5f}), "
            f"{part.converged:.0%} converged; "
            f"{time.perf_counter() - t0:.0f}s, elapsed {time.perf_counter() - started:.0f}s"
        )
    return pd.DataFrame(rows), [fit.module for fit in fits]


def by_size(frame: pd.DataFrame, baseline: float = 0.0) -> pd.DataFrame:
    """Per case and n: mean KL (evaluation sample, and quadrature) with SEs over replicates,
    the mean predicted excess, the excess KL (quadrature) above ``baseline`` (the projection
    constant; 0 when the family holds the truth) and the ratio measured excess / predicted."""
    out = []
    for (case, n), part in frame.groupby(["case", "n"], sort=False):
        m = len(part)
        excess = part.kl_quadrature - baseline
        out.append(
            {
                "case": case,
                "n": int(n),
                "replicates": m,
                "kl": part.kl.mean(),
                "kl_se": part.kl.std(ddof=1) / np.sqrt(m) if m > 1 else float("nan"),
                "kl_quadrature": part.kl_quadrature.mean(),
                "kl_quadrature_se": part.kl_quadrature.std(ddof=1) / np.sqrt(m)
                if m > 1
                else float("nan"),
                "predicted_excess": part.predicted_excess.mean(),
                "excess": excess.mean(),
                "ratio": excess.mean() / part.predicted_excess.mean(),
                "tic_trace": part.tic_trace.mean(),
                "converged": part.converged.mean(),
            }
        )
    return pd.DataFrame(out)


def loglog_slope(n: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of log(values) on log(n) over the positive values (NaN if < 2)."""
    keep = np.asarray(values) > 0
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(n)[keep]), np.log(np.asarray(values)[keep]), 1)[0])
