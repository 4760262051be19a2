"""The inference step of a run: the curvature of the training objective, weight and
delta-method SEs.

The training objective is J = mean NLL + lambda/(2n)|theta|^2 over the free weights theta
(``penalty`` = lambda; 0 is the plain MLE). Its curvature is H = A + (lambda/n) I, A the
Hessian of the mean NLL; the sandwich's B is the centred score covariance (``scores.py``).

Two paths: ``run_inference`` forms A (dense); ``run_inference_matrix_free`` never forms A or B
(Hessian-vector products, Lanczos solves) and gives delta-method SEs of the predicted
quantities only. The dense path takes one of two routes (metric ``inference/cholesky``):

- lambda > 0: Cholesky of H (``cholesky.py``). Where it fails (H not positive definite: the
  fit is not at a minimum of J) a warning says so and the eigen-route on H is taken instead;
- lambda = 0: the eigen-route on A (``covariance.py``), pseudo-inverse on its retained
  eigenspace (A is singular for MDNs).

Up to ``weight_se_max_params`` free weights the dense path also gives every weight's SEs and
A's spectrum. Above it (metric ``inference/weight_ses`` 0) ``parameters`` has estimates with NaN
SEs and ``identified`` NA. With lambda > 0 the route is then A, its Cholesky factor, one pair
of triangular solves per basis vector of the quantity gradients and the per-row scores along
those solutions: B is never formed, the spectrum is not computed (``eigenvalues`` empty, no
eigenvalue counts) and the effective number of parameters is Hutchinson's estimate. With
lambda = 0 the eigendecomposition is the only route (A is singular), so A's spectrum comes with
it and is kept, and B is formed for V'BV; only the weight SEs are left out.

Takeuchi's trace ``inference/tic_trace`` = tr(A_lambda^-1 B), the penalty of the TIC
(2 n NLL + 2 tr): on every dense route, exact wherever B is formed (tr(H^+ B) on the retained
eigenspace on the eigen-route, tr(A^+ B) at lambda = 0), Hutchinson's estimate with
``inference/tic_trace_se`` on the Cholesky route above ``weight_se_max_params``
(``cholesky.py``). Under correct specification at lambda = 0, B = A asymptotically (the
information-matrix equality) and the trace tends to the number of identified weights. The
matrix-free path does not give it (it would take one Lanczos solve per probe).
``inference/n_rows`` is the number of training rows the step ran on (n), on both paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
import torch

from mdnlab.inference.cholesky import CholeskyCurvature
from mdnlab.inference.covariance import Curvature, Spectrum
from mdnlab.inference.curvature import hessian_mean_nll
from mdnlab.inference.delta import quantity_jacobian
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.matrix_free import HessianOperator, lanczos_extremes, solve_standard_errors
from mdnlab.inference.scores import ScoreDirections, ScoreMatrix
from mdnlab.predictions import long_form
from mdnlab.progress import say, warn


@dataclass
class InferenceResult:
    predictions: pd.DataFrame
    parameters: pd.DataFrame
    eigenvalues: np.ndarray  # of A (not A + lambda/n I); empty where not computed
    metrics: dict[str, float] = field(default_factory=dict)
    path: str = "dense"
    grid: pd.DataFrame | None = None  # predictions with SEs along a grid of a 1-d x


def run_inference(
    module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_points: np.ndarray,
    params: str = "all",
    eig_rtol: float = 1e-8,
    chunk: int = 2048,
    x_grid: np.ndarray | None = None,
    penalty: float = 0.0,
    weight_se_max_params: int = 4000,
    basis_rtol: float = 1e-10,
    trace_probes: int = 200,
    label: str = "",
) -> InferenceResult:
    """Dense path: forms A (P x P, float64) on the training split at the fitted weights.

    ``penalty`` is the lambda of the training objective (same number, same units: the
    standardised ones the network sees). ``basis_rtol``: the Cholesky route solves through a
    basis of the quantity gradients' span (``delta.gradient_basis``). ``trace_probes``:
    Hutchinson probes for the effective number of parameters above ``weight_se_max_params``
    (below it the trace is exact).

    Metrics: ``grad_norm`` (max |gradient| of J, zero at the fitted point), ``nll_grad_norm``
    (of the mean NLL alone: lambda/n max|theta| at a penalized optimum), ``n_params``,
    ``cholesky`` (1: the Cholesky route; 0: the eigen-route), ``weight_ses`` (1: weight SEs
    computed), ``effective_params`` (tr(A H^-1) = P - (lambda/n) tr(H^-1); the number of
    retained eigenvalues at lambda = 0, tr(A H^+) on the eigen-route) with
    ``effective_params_se`` where it is Hutchinson's estimate, A's ``n_null_eigs``,
    ``n_negative_eigs`` and ``condition_number`` (of its retained part) where the spectrum is
    computed, ``tic_trace`` (tr(A_lambda^-1 B), Takeuchi's trace; tr(H^+ B) on the
    eigen-route) with ``tic_trace_se`` where it is Hutchinson's estimate (the Cholesky route
    above ``weight_se_max_params``, ``trace_probes`` probes), ``n_rows`` (n) and ``seconds``.
    """
    started = time.perf_counter()
    flat = FlatModel(module, params)
    n, p = x_train.shape[0], flat.n_params
    shift = float(penalty) / n
    nll_gradient = mean_nll_gradient(flat, x_train, y_train)
    a = hessian_mean_nll(flat, x_train, y_train, chunk).numpy()
    weights = p <= weight_se_max_params
    curvature, spectrum = dense_curvature(
        flat, x_train, y_train, a, -nll_gradient, shift, eig_rtol, weights, chunk, basis_rtol, label
    )
    cholesky = isinstance(curvature, CholeskyCurvature)

    if weights:
        identified = curvature.identified(np.eye(p))
        weight_h, weight_s = curvature.weight_standard_errors()
        parameters = parameter_table(flat, weight_h, weight_s, identified)
    else:
        say(
            f"{label}inference: {p} weights > inference.weight_se_max_params "
            f"{weight_se_max_params}: SEs of the predicted quantities only"
        )
        parameters = parameter_table(flat)

    point_sets = [x_points] if x_grid is None else [x_points, x_grid]
    predictions, *rest = predictions_with_se(flat, curvature, point_sets)
    grid = None
    if x_grid is not None:
        grid = rest[0]
        grid.insert(1, "x", x_grid[grid.point.to_numpy(), 0])

    metrics = gradient_metrics(nll_gradient, flat.theta.numpy(), shift)
    metrics |= {
        "inference/n_params": float(p),
        "inference/n_rows": float(n),
        "inference/cholesky": float(cholesky),
        "inference/weight_ses": float(weights),
    }
    if cholesky:  # exact where the weight SEs already cost P^3, else Hutchinson's estimate
        probes = None if weights else trace_probes
        effective, effective_se = curvature.effective_params(probes)
        metrics["inference/effective_params"] = effective
        tic, tic_se = curvature.tic_trace(probes)
        metrics["inference/tic_trace"] = tic
        if probes is not None:
            metrics["inference/effective_params_se"] = effective_se
            metrics["inference/tic_trace_se"] = tic_se
    else:
        metrics["inference/effective_params"] = curvature.effective_params()
        metrics["inference/tic_trace"] = curvature.tic_trace()
    if spectrum is not None:
        metrics |= {
            "inference/n_null_eigs": float(spectrum.n_null),
            "inference/n_negative_eigs": float(spectrum.n_negative),
            "inference/condition_number": spectrum.condition_number,
        }
    metrics["inference/seconds"] = time.perf_counter() - started
    eigenvalues = spectrum.eigenvalues if spectrum is not None else np.empty(0)
    return InferenceResult(predictions, parameters, eigenvalues, metrics, grid=grid)


def dense_curvature(
    flat: FlatModel,
    x: torch.Tensor,
    y: torch.Tensor,
    a: np.ndarray,
    mean_score: np.ndarray,
    shift: float,
    eig_rtol: float,
    weights: bool,
    chunk: int,
    basis_rtol: float,
    label: str = "",
) -> tuple[CholeskyCurvature | Curvature, Spectrum | None]:
    """The curvature the SEs come from, and A's spectrum (None where it is not computed).

    B is formed where the route needs it: weight SEs, or the eigen-route's V'BV."""
    n = x.shape[0]
    matrix = ScoreMatrix.build(flat, x, y, mean_score, chunk) if weights or not shift else None
    if shift > 0:
        scores = matrix if matrix is not None else ScoreDirections(flat, x, y, chunk)
        try:
            curvature = CholeskyCurvature.factor(a, shift, scores, n, basis_rtol)
        except np.linalg.LinAlgError as error:
            warn(
                f"{label}inference: A + lambda/n I (lambda = {shift * n:g}) is not positive "
                f"definite (Cholesky failed: {error}): the fit is not at a minimum of the "
                "penalized objective; standard errors from the eigen-route instead (pseudo-"
                "inverse on the eigenvectors of A + lambda/n I above inference.eig_rtol of the "
                "largest eigenvalue)"
            )
        else:
            spectrum = Spectrum.of(scipy.linalg.eigvalsh(a), eig_rtol) if weights else None
            return curvature, spectrum
        if matrix is None:
            matrix = ScoreMatrix.build(flat, x, y, mean_score, chunk)
    curvature = Curvature.from_matrices(a, matrix.matrix, n, eig_rtol, shift)
    return curvature, curvature.spectrum_of_a(eig_rtol)


def mean_nll_gradient(flat: FlatModel, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    theta = flat.theta.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(-flat.log_prob(theta, x, y).mean(), theta)
    return gradient.numpy()


def gradient_metrics(nll_gradient: np.ndarray, theta: np.ndarray, shift: float) -> dict:
    """``grad_norm``: max |gradient| of the training objective J (zero at the fitted point);
    ``nll_grad_norm``: of the mean NLL alone (lambda/n * theta at a penalized optimum)."""
    return {
        "inference/grad_norm": float(np.max(np.abs(nll_gradient + shift * theta))),
        "inference/nll_grad_norm": float(np.max(np.abs(nll_gradient))),
    }


def parameter_table(
    flat: FlatModel,
    se_hessian: np.ndarray | None = None,
    se_sandwich: np.ndarray | None = None,
    identified: np.ndarray | None = None,
) -> pd.DataFrame:
    """``parameters.csv``: every weight's estimate; SEs NaN and ``identified`` NA where not
    computed, and NaN where a weight is not identified."""
    if identified is None:
        return pd.DataFrame(
            {
                "name": flat.names(),
                "estimate": flat.theta.numpy(),
                "se_hessian": np.nan,
                "se_sandwich": np.nan,
                "identified": pd.Series([pd.NA] * flat.n_params, dtype="boolean"),
            }
        )
    return pd.DataFrame(
        {
            "name": flat.names(),
            "estimate": flat.theta.numpy(),
            "se_hessian": np.where(identified, se_hessian, np.nan),
            "se_sandwich": np.where(identified, se_sandwich, np.nan),
            "identified": identified,
        }
    )


def predictions_with_se(
    flat: FlatModel, curvature: CholeskyCurvature | Curvature, point_sets: list[np.ndarray]
) -> list[pd.DataFrame]:
    """Predicted quantities with both delta-method SEs, in long form, one frame per set of
    points; one call to ``standard_errors`` for all sets, so that the Cholesky route shares one
    basis and one pass over the data between them."""
    parts = [quantity_jacobian(flat, torch.as_tensor(x, dtype=torch.float64)) for x in point_sets]
    se_h, se_s = curvature.standard_errors(np.concatenate([jac.numpy() for *_, jac in parts]))
    frames, start = [], 0
    for names, values, jacobian in parts:
        rows = slice(start, start + jacobian.shape[0])
        frames.append(long_form(names, values.numpy(), se_h[rows], se_s[rows]))
        start = rows.stop
    return frames


def run_inference_matrix_free(
    module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_points: np.ndarray,
    params: str = "all",
    eig_rtol: float = 1e-8,
    chunk: int = 2048,
    rtol: float = 1e-8,
    max_iter: int = 3000,
    max_points: int | None = 5,
    basis_rtol: float = 1e-10,
    lanczos_steps: int = 30,
    cache_graph: bool = True,
    label: str = "",
    penalty: float = 0.0,
) -> InferenceResult:
    """Matrix-free path: delta-method SEs of the predicted quantities at the first
    ``max_points`` points (all when None) through products with H = A + (penalty/n) I and
    Lanczos solves. With ``penalty`` > 0 H is positive definite at a minimum and nothing is
    truncated (the solves keep every positive Ritz value), as on the dense Cholesky route.

    Not available here, for want of A's spectrum or P solves: weight SEs (``parameters`` has
    estimates, NaN SEs and an empty ``identified``), the eigenvalues (empty array), the null
    and negative eigenvalue counts, the condition number, the effective number of parameters,
    Takeuchi's trace (``inference/tic_trace``: a Hutchinson estimate would need one Lanczos
    solve per probe), and SE bands along a grid (``grid`` is None). Quantities whose solve did not converge
    within ``max_iter`` products get NaN SEs and a warning.
    """
    started = time.perf_counter()
    flat = FlatModel(module, params)
    n = x_train.shape[0]
    shift = float(penalty) / n
    operator = HessianOperator(flat, x_train, y_train, chunk, cache_graph=cache_graph, shift=shift)
    eig_min, eig_max = lanczos_extremes(operator, lanczos_steps)
    curvature_name = "A + lambda/n I" if shift else "A"
    if eig_min < -eig_rtol * abs(eig_max):
        warn(
            f"{label}matrix-free inference: {curvature_name} has a negative eigenvalue (a Ritz "
            f"value {eig_min:.3g}, largest {eig_max:.3g}): the fit is not at a minimum; "
            "directions of negative curvature are discarded, as on the dense path"
        )

    x = torch.as_tensor(x_points, dtype=torch.float64)
    names, values, jacobian = quantity_jacobian(flat, x)
    m, q = values.shape
    solved = m if max_points is None else min(m, max(int(max_points), 0))
    se_h = np.full(m * q, np.nan)
    se_s = np.full(m * q, np.nan)
    iterations_max, unconverged = 0, 0
    if solved:
        say(
            f"{label}inference (matrix-free, P={flat.n_params}): {solved * q} quantities at "
            f"{solved} points on {n} training rows"
        )
        h, s, report = solve_standard_errors(
            operator,
            jacobian[: solved * q].numpy(),
            x_train,
            y_train,
            eig_rtol=0.0 if shift > 0 else eig_rtol,
            rtol=rtol,
            max_iter=max_iter,
            basis_rtol=basis_rtol,
            chunk=chunk,
        )
        se_h[: solved * q], se_s[: solved * q] = h, s
        iterations_max = int(report.iterations.max()) if report.basis_size else 0
        unconverged = int(np.sum(~report.converged))
        say(
            f"{label}matrix-free: {report.basis_size} solves for {solved * q} quantities "
            f"(basis of their gradients), {report.seconds_per_solve:.2f} s per solve, "
            f"{int(np.mean(report.iterations)) if report.basis_size else 0} products of "
            f"{operator.seconds_per_product:.3f} s on average, at most {iterations_max}"
        )
        if unconverged:
            bad = np.flatnonzero(~report.converged)
            listed = ", ".join(f"{names[i % q]} at point {i // q}" for i in bad[:5])
            warn(
                f"{label}matrix-free inference: {unconverged} of {solved * q} quantities did not "
                f"converge in inference.solver_max_iter={max_iter} products (relative residual "
                f"up to {report.residual[bad].max():.1e} > inference.solver_rtol={rtol:g}); "
                f"their SEs are NaN: {listed}{', ...' if len(bad) > 5 else ''}"
            )
    if solved < m:
        warn(
            f"{label}matrix-free inference: standard errors at the first {solved} of {m} points "
            f"only (inference.max_points={max_points}); the others are NaN"
        )
    predictions = long_form(names, values.numpy(), se_h, se_s)
    metrics = gradient_metrics(operator.gradient, flat.theta.numpy(), shift)
    metrics |= {
        "inference/n_params": float(flat.n_params),
        "inference/n_rows": float(n),
        "inference/solver_iterations_max": float(iterations_max),
        "inference/solver_unconverged": float(unconverged),
        "inference/solver_seconds_per_product": operator.seconds_per_product,
        "inference/se_points": float(solved),
        "inference/seconds": time.perf_counter() - started,
    }
    if lanczos_steps > 0:  # Ritz bounds: eig_min >= H's smallest, eig_max <= H's largest
        metrics["inference/eig_min_estimate"] = eig_min
        metrics["inference/eig_max_estimate"] = eig_max
    if solved:
        metrics["inference/solver_solves"] = float(report.basis_size)
        metrics["inference/solver_seconds_per_solve"] = report.seconds_per_solve
    return InferenceResult(
        predictions, parameter_table(flat), np.empty(0), metrics, path="matrix-free"
    )
