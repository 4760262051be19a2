"""The eigen-route: standard errors on the retained eigenspace of the curvature, no jitter.

MDN weights are not identifiable (component permutations, hidden-unit symmetries), so A (the
Hessian of the mean NLL) is singular, and away from an exact optimum it can be indefinite. The
curvature H (A itself for the plain MLE; A + (lambda/n) I for the penalized objective where its
Cholesky factorisation fails, ``cholesky.py``) is eigendecomposed; the eigenpairs above
``eig_rtol`` times the largest |eigenvalue| are retained; the covariance estimates are
pseudo-inverses on that space:

    inverse Hessian  V_k L_k^-1 V_k' / n
    sandwich         V_k L_k^-1 (V_k' B V_k) L_k^-1 V_k' / n       (B centred, ``scores.py``)

and never formed in full: only the variances the caller asks for. Takeuchi's trace
tr(H^+ B) = tr(L_k^-1 V_k' B V_k) (``tic_trace``) comes from the same projected B; at lambda = 0
it is tr(A^+ B) on A's retained eigenspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from mdnlab.inference.delta import standard_errors_of


@dataclass(frozen=True)
class Spectrum:
    """A matrix's eigenvalues (ascending) against ``tol`` = eig_rtol * max |eigenvalue|."""

    eigenvalues: np.ndarray
    tol: float

    @classmethod
    def of(cls, eigenvalues: np.ndarray, eig_rtol: float) -> Spectrum:
        scale = max(float(np.max(np.abs(eigenvalues), initial=0.0)), np.finfo(float).tiny)
        return cls(np.asarray(eigenvalues), eig_rtol * scale)

    @property
    def retained(self) -> np.ndarray:
        return self.eigenvalues > self.tol

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


@dataclass
class Curvature:
    spectrum: Spectrum  # of H = A + shift I, the matrix decomposed
    vectors: np.ndarray  # P x k, retained eigenvectors
    inv_values: np.ndarray  # k, 1 / retained eigenvalues
    projected_b: np.ndarray  # k x k, V_k' B V_k
    n: int
    shift: float = 0.0  # lambda / n

    @classmethod
    def from_matrices(
        cls, a: np.ndarray, b: np.ndarray, n: int, eig_rtol: float = 1e-8, shift: float = 0.0
    ) -> Curvature:
        """Eigen-route on H = ``a`` + ``shift`` I with the score covariance ``b``."""
        h = a + shift * np.eye(a.shape[0]) if shift else a
        values, vectors = scipy.linalg.eigh(h, driver="evd")
        spectrum = Spectrum.of(values, eig_rtol)
        v = vectors[:, spectrum.retained]
        return cls(spectrum, v, 1.0 / values[spectrum.retained], v.T @ b @ v, n, shift)

    def spectrum_of_a(self, eig_rtol: float) -> Spectrum:
        """A's eigenvalues: H's less the shift (exactly, to rounding)."""
        return Spectrum.of(self.spectrum.eigenvalues - self.shift, eig_rtol)

    def standard_errors(self, gradients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delta-method SEs (inverse Hessian, sandwich) of quantities with these gradients.

        ``gradients`` is (m, P): row j is d quantity_j / d theta at the estimate.
        """
        w = (gradients @ self.vectors) * self.inv_values  # m x k: G V_k L_k^-1
        var_hessian = np.sum(w * (gradients @ self.vectors), axis=1) / self.n
        var_sandwich = np.einsum("ij,jk,ik->i", w, self.projected_b, w) / self.n
        return standard_errors_of(var_hessian), standard_errors_of(var_sandwich)

    def weight_standard_errors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.standard_errors(np.eye(self.vectors.shape[0]))

    def identified(self, gradients: np.ndarray, threshold: float = 1e-6) -> np.ndarray:
        """False where more than ``threshold`` of a gradient's squared norm lies in the
        discarded eigenspace: the quantity moves along directions the data do not pin down."""
        total = np.sum(gradients**2, axis=1)
        inside = np.sum((gradients @ self.vectors) ** 2, axis=1)
        return (total - inside) <= threshold * np.maximum(total, np.finfo(float).tiny)

    def effective_params(self) -> float:
        """tr(A H^+): the sum over the retained eigenvalues h of H of (h - shift) / h; at
        shift 0 the number of retained eigenvalues (tr(A A^+))."""
        return float(self.inv_values.size - self.shift * np.sum(self.inv_values))

    def tic_trace(self) -> float:
        """tr(H^+ B) = sum_j (V_k' B V_k)_jj / h_j over the retained eigenpairs (h_j, v_j) of H:
        Takeuchi's trace on the retained eigenspace (tr(A^+ B) at shift 0)."""
        return float(np.sum(self.inv_values * np.diag(self.projected_b)))
