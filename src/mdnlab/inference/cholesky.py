"""The Cholesky route: standard errors through the factor of A + (lambda/n) I.

For the penalized objective J = mean NLL + lambda/(2n)|theta|^2 (lambda > 0) the curvature of
J is A_lambda = A + (lambda/n) I, and at a strict minimum of J it is positive definite (A itself
need not be: the fit in ``tests/test_inference_penalized.py`` leaves A two small negative
eigenvalues that the penalty outweighs): nothing is discarded, and it is factored
A_lambda = L L' (P^3/3 flops; the full eigendecomposition took 78-100 s of the dense step's
165 s at P = 8k). Covariances:

    inverse Hessian  A_lambda^-1 / n
    sandwich         A_lambda^-1 B A_lambda^-1 / n          (B centred, ``scores.py``)

Quantity SEs: the m x P gradients are reduced to an orthonormal basis Q of their span
(G ~= C Q', ``delta.gradient_basis``); one pair of triangular solves per basis vector gives
U = A_lambda^-1 Q, and

    se_hessian^2  = c' (Q'U) c / n,     se_sandwich^2 = c' (U'BU) c / n

with U'BU from the per-row scores along U's columns (``ScoreDirections``: B never formed) or
from B itself (``ScoreMatrix``). Weight SEs need the whole inverse (P^3) and all of B.

Takeuchi's trace tr(A_lambda^-1 B) (the TIC's penalty, ``inference/tic_trace``): exact from the
inverse the weight SEs already computed, where B is formed; else Hutchinson's estimator in its
symmetric form tr(L^-1 B L^-T) = E (L^-T z)' B (L^-T z) over Rademacher z: one triangular solve
per probe and the per-row scores along u = L^-T z (``ScoreDirections.variances``, B never
formed), so one score direction per probe and every sample u'Bu >= 0; per probe the variance
is 2 sum_{i != j} C_ij^2 for C = L^-1 B L^-T (at most 2 |C|_F^2), and the estimate comes with
its sample standard error.

The effective number of parameters, tr(A A_lambda^-1) = P - (lambda/n) tr(A_lambda^-1) (the
gamma of MacKay's evidence): exact from L^-1 (another P^3/3 flops, 7-8 s at P = 8k), or by
Hutchinson's estimator tr(A_lambda^-1) = E |L^-1 z|^2 over Rademacher z (one triangular solve
per probe). Its variance per probe is 2 sum_{i != j} M_ij^2 for M = A_lambda^-1, at most
2 |M|_F^2, so with N probes the effective-parameter error is at most
(lambda/n) sqrt(2 |M|_F^2 / N), which is at most sqrt(2 (P - effective) / N) where A is
positive semi-definite (the eigenvalues of (lambda/n) M then lie in (0, 1]); the estimate
comes with its sample standard error.

A matrix that is not positive definite (the fit is not at a minimum) makes ``factor`` raise
``numpy.linalg.LinAlgError``: the caller warns and takes the eigen-route, never adds jitter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from mdnlab.inference.delta import gradient_basis, quadratic_forms, standard_errors_of
from mdnlab.inference.scores import ScoreDirections, ScoreMatrix


@dataclass
class CholeskyCurvature:
    lower: np.ndarray  # L (P x P): A + shift I = L L'; only its lower triangle is read
    scores: ScoreMatrix | ScoreDirections
    n: int
    shift: float  # lambda / n
    basis_rtol: float = 1e-10  # gradients are solved through a basis of their span
    _inverse: np.ndarray | None = field(default=None, init=False, repr=False)

    @classmethod
    def factor(
        cls,
        a: np.ndarray,
        shift: float,
        scores: ScoreMatrix | ScoreDirections,
        n: int,
        basis_rtol: float = 1e-10,
    ) -> CholeskyCurvature:
        """Factor A + shift I; ``numpy.linalg.LinAlgError`` when it is not positive definite."""
        penalized = a.copy()
        penalized[np.diag_indices_from(penalized)] += shift
        # A symmetric C-ordered array's transpose is the same matrix in LAPACK's (Fortran)
        # order: factored in place, without another P x P copy.
        lower, _ = scipy.linalg.cho_factor(
            penalized.T, lower=True, overwrite_a=True, check_finite=False
        )
        return cls(lower, scores, n, shift, basis_rtol)

    @property
    def n_params(self) -> int:
        return self.lower.shape[0]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """(A + shift I)^-1 rhs: two triangular solves per column."""
        return scipy.linalg.cho_solve((self.lower, True), rhs, check_finite=False)

    def standard_errors(self, gradients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delta-method SEs (inverse Hessian, sandwich) of quantities with these gradients.

        ``gradients`` is (m, P): row j is d quantity_j / d theta at the estimate."""
        basis, coefficients = gradient_basis(gradients, self.basis_rtol)
        solved = self.solve(basis)
        var_hessian = quadratic_forms(coefficients, basis.T @ solved) / self.n
        var_sandwich = quadratic_forms(coefficients, self.scores.project(solved)) / self.n
        return standard_errors_of(var_hessian), standard_errors_of(var_sandwich)

    def weight_standard_errors(self) -> tuple[np.ndarray, np.ndarray]:
        """SEs of every weight: the diagonals of both covariances (the inverse by LAPACK's
        potri, ~2P^3/3 flops, then diag(M B M), another 2P^3 with B formed)."""
        inverse = self.inverse()
        var_hessian = np.diag(inverse) / self.n
        var_sandwich = self.scores.variances(inverse) / self.n
        return standard_errors_of(var_hessian), standard_errors_of(var_sandwich)

    def inverse(self) -> np.ndarray:
        """(A + shift I)^-1 in full (LAPACK's potri, ~2P^3/3 flops), kept for the TIC trace."""
        if self._inverse is None:
            inverse_lower, info = scipy.linalg.lapack.dpotri(self.lower, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"potri failed (info={info})")
            inverse = np.tril(inverse_lower)
            inverse += np.tril(inverse, -1).T
            self._inverse = inverse
        return self._inverse

    def tic_trace(self, probes: int | None = None, seed: int = 0) -> tuple[float, float]:
        """(tr((A + shift I)^-1 B), its standard error): exact (error 0) when ``probes`` is None
        (B must be formed: ``ScoreMatrix``), else Hutchinson's estimate from that many
        Rademacher probes on tr(L^-1 B L^-T), through the per-row scores along L^-T z."""
        if probes is None:
            if not isinstance(self.scores, ScoreMatrix):
                raise ValueError("the exact TIC trace needs B formed (ScoreMatrix)")
            return float(np.sum(self.inverse() * self.scores.matrix)), 0.0
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(self.n_params, int(probes)))
        directions = scipy.linalg.solve_triangular(
            self.lower, signs, lower=True, trans="T", check_finite=False
        )
        samples = self.scores.variances(directions)  # (L^-T z)' B (L^-T z) per probe
        return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(samples.size))

    def identified(self, gradients: np.ndarray) -> np.ndarray:
        """Every quantity: A + shift I is positive definite, so nothing is discarded."""
        return np.ones(gradients.shape[0], dtype=bool)

    def effective_params(self, probes: int | None = None, seed: int = 0) -> tuple[float, float]:
        """(tr(A (A + shift I)^-1), its standard error): exact (error 0) when ``probes`` is
        None, else Hutchinson's estimate from that many Rademacher probes."""
        if probes is None:
            inverse_lower, info = scipy.linalg.lapack.dtrtri(self.lower, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"trtri failed (info={info})")
            trace, trace_se = float(np.sum(np.tril(inverse_lower) ** 2)), 0.0
        else:
            rng = np.random.default_rng(seed)
            signs = rng.choice([-1.0, 1.0], size=(self.n_params, int(probes)))
            solved = scipy.linalg.solve_triangular(
                self.lower, signs, lower=True, check_finite=False
            )
            samples = np.sum(solved**2, axis=0)  # z' A_lambda^-1 z per probe
            trace = float(samples.mean())
            trace_se = float(samples.std(ddof=1) / np.sqrt(samples.size))
        return self.n_params - self.shift * trace, self.shift * trace_se
