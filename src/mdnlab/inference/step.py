"""The inference step of a run: A, B, their eigen-analysis, weight and delta-method SEs."""

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
from mdnlab.predictions import long_form


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
