"""MacKay's evidence for the ridge penalty: the Laplace approximation of the log marginal
likelihood of the training data under a N(0, I / lambda) prior on the P weights.

With theta* the penalized optimum, a_i the eigenvalues of A (the Hessian of the mean NLL at
theta*) and n training rows, the Hessian of the total negative log posterior is
n A + lambda I, and

    log p(D | lambda) ~ -n NLL(theta*) - lambda/2 |theta*|^2 + P/2 log lambda
                        - 1/2 sum_i log(n a_i + lambda)

(the (2 pi)^(P/2) of the prior and of the Gaussian integral cancel). Setting its derivative
in lambda to zero gives the fixed point lambda = gamma / |theta*|^2 with
gamma = sum_i n a_i / (n a_i + lambda), the effective number of parameters that the data
determine (MacKay 1992).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvidenceTerms:
    log_evidence: float
    effective_params: float  # gamma


def laplace_evidence(
    nll_mean: float, squared_norm: float, eigenvalues: np.ndarray, n: int, penalty: float
) -> EvidenceTerms:
    """Log evidence and gamma at a penalized optimum (``nll_mean`` per row, original units)."""
    if penalty <= 0:
        raise ValueError("the evidence needs a proper prior: train.penalty > 0")
    curvature = n * np.asarray(eigenvalues, dtype=np.float64) + penalty
    if np.any(curvature <= 0):
        raise ValueError(
            f"n A + lambda I is not positive definite (smallest eigenvalue {curvature.min():.3g}): "
            "the fit is not at a minimum of the penalized objective"
        )
    p = curvature.size
    log_z = (
        -n * nll_mean
        - 0.5 * penalty * squared_norm
        + 0.5 * p * np.log(penalty)
        - 0.5 * np.sum(np.log(curvature))
    )
    gamma = float(np.sum((curvature - penalty) / curvature))
    return EvidenceTerms(float(log_z), gamma)


def fixed_point_penalty(effective_params: float, squared_norm: float) -> float:
    """MacKay's update lambda = gamma / |theta|^2."""
    return effective_params / max(squared_norm, np.finfo(float).tiny)
