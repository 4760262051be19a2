"""The inference step of a run: A, B, their eigen-analysis, weight and delta-method SEs.

Two paths: ``run_inference`` forms A and B (dense); ``run_inference_matrix_free`` never forms
A or B (Hessian-vector products, Lanczos solves) and gives delta-method SEs of the predicted
quantities only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mdnlab.inference.covariance import Curvature
from mdnlab.inference.curvature import hessian_mean_nll, score_outer_product
from mdnlab.inference.delta import quantity_jacobian
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.matrix_free import HessianOperator, lanczos_extremes, solve_standard_errors
from mdnlab.predictions import long_form
from mdnlab.progress import say, warn


@dataclass
class InferenceResult:
    predictions: pd.DataFrame
    parameters: pd.DataFrame
    eigenvalues: np.ndarray
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
) -> InferenceResult:
    """Dense path: forms A and B (P x P, float64) on the training split at the fitted weights."""
    started = time.perf_counter()
    flat = FlatModel(module, params)
    theta = flat.theta.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(-flat.log_prob(theta, x_train, y_train).mean(), theta)
    a = hessian_mean_nll(flat, x_train, y_train, chunk).numpy()
    b = score_outer_product(flat, x_train, y_train, chunk).numpy()
    curvature = Curvature.from_matrices(a, b, n=x_train.shape[0], eig_rtol=eig_rtol)

    identity = np.eye(flat.n_params)
    weight_h, weight_s = curvature.standard_errors(identity)
    identified = curvature.identified(identity)
    parameters = pd.DataFrame(
        {
            "name": flat.names(),
            "estimate": flat.theta.numpy(),
            "se_hessian": np.where(identified, weight_h, np.nan),
            "se_sandwich": np.where(identified, weight_s, np.nan),
            "identified": identified,
        }
    )

    predictions = predictions_with_se(flat, curvature, x_points)
    grid = None
    if x_grid is not None:
        grid = predictions_with_se(flat, curvature, x_grid)
        grid.insert(1, "x", x_grid[grid.point.to_numpy(), 0])
    metrics = {
        "inference/grad_norm": float(gradient.abs().max()),
        "inference/n_params": float(flat.n_params),
        "inference/n_null_eigs": float(curvature.n_null),
        "inference/n_negative_eigs": float(curvature.n_negative),
        "inference/condition_number": curvature.condition_number,
        "inference/seconds": time.perf_counter() - started,
    }
    return InferenceResult(predictions, parameters, curvature.eigenvalues, metrics, grid=grid)


def predictions_with_se(flat: FlatModel, curvature: Curvature, x: np.ndarray) -> pd.DataFrame:
    """Predicted quantities with both delta-method standard errors, in long form."""
    names, values, jacobian = quantity_jacobian(flat, torch.as_tensor(x, dtype=torch.float64))
    se_h, se_s = curvature.standard_errors(jacobian.numpy())
    return long_form(names, values.numpy(), se_h, se_s)


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
) -> InferenceResult:
    """Matrix-free path: delta-method SEs of the predicted quantities at the first
    ``max_points`` points (all when None) through Hessian-vector products and Lanczos solves.

    Not available here, for want of A's spectrum or P solves: weight SEs (``parameters`` has
    estimates, NaN SEs and an empty ``identified``), the eigenvalues (empty array), the null
    and negative eigenvalue counts, the condition number, and SE bands along a grid (``grid``
    is None). Quantities whose solve did not converge within ``max_iter`` products get NaN SEs
    and a warning.
    """
    started = time.perf_counter()
    flat = FlatModel(module, params)
    n = x_train.shape[0]
    operator = HessianOperator(flat, x_train, y_train, chunk, cache_graph=cache_graph)
    eig_min, eig_max = lanczos_extremes(operator, lanczos_steps)
    if eig_min < -eig_rtol * abs(eig_max):
        warn(
            f"{label}matrix-free inference: A has a negative eigenvalue (a Ritz value "
            f"{eig_min:.3g}, largest {eig_max:.3g}): the fit is not at a minimum; directions of "
            "negative curvature are discarded, as on the dense path"
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
            eig_rtol=eig_rtol,
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
    parameters = pd.DataFrame(
        {
            "name": flat.names(),
            "estimate": flat.theta.numpy(),
            "se_hessian": np.nan,  # one solve per weight would be needed: not computed
            "se_sandwich": np.nan,
            "identified": pd.Series([pd.NA] * flat.n_params, dtype="boolean"),
        }
    )
    metrics = {
        "inference/grad_norm": float(np.abs(operator.gradient).max()),
        "inference/n_params": float(flat.n_params),
        "inference/solver_iterations_max": float(iterations_max),
        "inference/solver_unconverged": float(unconverged),
        "inference/solver_seconds_per_product": operator.seconds_per_product,
        "inference/se_points": float(solved),
        "inference/seconds": time.perf_counter() - started,
    }
    if lanczos_steps > 0:  # Ritz bounds: eig_min >= A's smallest, eig_max <= A's largest
        metrics["inference/eig_min_estimate"] = eig_min
        metrics["inference/eig_max_estimate"] = eig_max
    if solved:
        metrics["inference/solver_solves"] = float(report.basis_size)
        metrics["inference/solver_seconds_per_solve"] = report.seconds_per_solve
    return InferenceResult(predictions, parameters, np.empty(0), metrics, path="matrix-free")
