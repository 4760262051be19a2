"""Standard errors from A and B on the retained eigenspace of A: no silent jitter.

MDN weights are not identifiable (component permutations, hidden-unit symmetries), so A is
singular, and away from an exact optimum it can be indefinite. A is eigendecomposed; the
eigenpairs above ``eig_rtol`` times the largest eigenvalue are retained; the covariance
estimates are pseudo-inverses on that space:

    inverse Hessian  V_k L_k^-1 V_k' / n
    sandwich         V_k L_k^-1 (V_k' B V_k) L_k^-1 V_k' / n

and never formed in full: only the variances the caller asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass
class Curvature:
    eigenvalues: np.ndarray  # all of A's, ascending
    retained: np.ndarray  # boolean mask over eigenvalues
    vectors: np.ndarray  # P x k, retained eigenvectors
    inv_values: np.ndarray  # k, 1 / retained eigenvalues
    projected_b: np.ndarray  # k x k, V_k' B V_k
    n: int
    tol: float

    @classmethod
    def from_matrices(
        cls, a: np.ndarray, b: np.ndarray, n: int, eig_rtol: float = 1e-8
    ) -> Curvature:
        values, vectors = scipy.linalg.eigh(a, driver="evd")
        tol = eig_rtol * max(float(np.max(np.abs(values))), np.finfo(float).tiny)
        retained = values > tol
        v = vectors[:, retained]
        return cls(values, retained, v, 1.0 / values[retained], v.T @ b @ v, n, tol)

    @property
    def n_null(self) -> int:
        return int(np.sum(np.abs(self.eigenvalues) <= self.tol))

    @property
    def n_negative(self) -> int:
        return int(np.sum(self.eigenvalues < -self.tol))

    @property
    def condition_number(self) -> float:
        kept = self.eigenvalues[self.retained]
        return float(kept.max() / kept.min()) if kept.size else float("nan")

    def standard_errors(self, gradients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delta-method SEs (inverse Hessian, sandwich) of quantities with these gradients.

        ``gradients`` is (m, P): row j is d quantity_j / d theta at the estimate.
        """
        w = (gradients @ self.vectors) * self.inv_values  # m x k: G V_k L_k^-1
        var_hessian = np.sum(w * (gradients @ self.vectors), axis=1) / self.n
        var_sandwich = np.einsum("ij,jk,ik->i", w, self.projected_b, w) / self.n
        return np.sqrt(np.maximum(var_hessian, 0.0)), np.sqrt(np.maximum(var_sandwich, 0.0))

    def identified(self, gradients: np.ndarray, threshold: float = 1e-6) -> np.ndarray:
        """False where more than ``threshold`` of a gradient's squared norm lies in the
        discarded eigenspace: the quantity moves along directions the data do not pin down."""
        total = np.sum(gradients**2, axis=1)
        inside = np.sum((gradients @ self.vectors) ** 2, axis=1)
        return (total - inside) <= threshold * np.maximum(total, np.finfo(float).tiny)
