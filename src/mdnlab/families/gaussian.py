"""Gaussian mixture components for y in R^q: full (Cholesky) or diagonal covariance."""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Independent, MixtureSameFamily, MultivariateNormal, Normal
from torch.nn.functional import softplus

from mdnlab.data.table import check_not_constant
from mdnlab.errors import DataError
from mdnlab.families.base import Family
from mdnlab.scaling import AffineScaler

COVARIANCES = ("full", "diagonal")


class GaussianFamily(Family):
    """Component k: N(mu_k(x), L_k(x) L_k(x)'), L_k lower triangular with a floored diagonal.

    Raw layout per component: q means, q diagonal entries (softplus + ``min_scale``), then for
    ``covariance="full"`` the q(q-1)/2 strictly-lower entries of L in row-major order.
    """

    name = "gaussian"

    def __init__(
        self,
        n_components: int,
        event_shape: tuple[int, ...],
        covariance: str = "full",
        min_scale: float = 1e-3,
    ):
        super().__init__(n_components, event_shape)
        if covariance not in COVARIANCES:
            raise ValueError(f"model.covariance must be one of {COVARIANCES}, got {covariance!r}")
        self.dim = event_shape[0]
        self.covariance = covariance
        self.min_scale = min_scale
        self.full = covariance == "full" and self.dim > 1
        self._tril = torch.tril_indices(self.dim, self.dim, offset=-1)

    @property
    def params_per_component(self) -> int:
        q = self.dim
        return 2 * q + (q * (q - 1) // 2 if self.full else 0)

    def component_distribution(self, raw: torch.Tensor):
        loc, diag, scale_tril = self._scales(raw)
        if scale_tril is None:
            return Independent(Normal(loc, diag, validate_args=False), 1, validate_args=False)
        return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)

    def _scales(self, raw: torch.Tensor):
        """(loc, diagonal of L, L or None for diagonal covariances) of raw (..., K, params)."""
        q = self.dim
        diag = softplus(raw[..., q : 2 * q]) + self.min_scale
        if not self.full:
            return raw[..., :q], diag, None
        lower = raw.new_zeros(*raw.shape[:-1], q, q)
        lower[..., self._tril[0], self._tril[1]] = raw[..., 2 * q :]
        return raw[..., :q], diag, lower + torch.diag_embed(diag)

    @property
    def reference_size(self) -> int:
        return self.dim

    def scale_penalty(
        self, raw: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_k [tr(R Sigma_k^-1) + log det Sigma_k - log det R - q] at each row's x: minus the
        log of an inverse-Wishart density on each component covariance with scale matrix R,
        up to a constant (Chen, Tan & Zhang 2008; mclust's conjugate prior). R = diag(reference)
        in standardised units (None: the identity, the marginal scale there). It grows without
        bound as any Sigma_k(x) shrinks to a point, which bounds the penalized likelihood
        below; it is 0 at Sigma_k = R."""
        k = self.n_components
        components = raw[:, k - 1 :].reshape(raw.shape[0], k, -1)
        _, diag, scale_tril = self._scales(components)
        log_det = 2.0 * diag.log().sum(dim=-1)
        if reference is None:
            reference = raw.new_ones(self.dim)
        if scale_tril is None:
            trace = (reference / diag.pow(2)).sum(dim=-1)
        else:
            root = torch.diag_embed(reference.sqrt()).expand_as(scale_tril)
            inverse = torch.linalg.solve_triangular(scale_tril, root, upper=False)
            trace = inverse.pow(2).sum(dim=(-2, -1))  # tr(R Sigma^-1) = |L^-1 R^1/2|_F^2
        return (trace + log_det - reference.log().sum() - self.dim).sum(dim=-1)

    def scale_floor_ratio(self, mixture: MixtureSameFamily) -> float:
        components = mixture.component_distribution
        if isinstance(components, MultivariateNormal):
            diag = torch.diagonal(components.scale_tril, dim1=-2, dim2=-1)
        else:
            diag = components.base_dist.scale
        return float(diag.min() / self.min_scale)

    def make_scaler(self) -> AffineScaler:
        return AffineScaler(self.dim)

    def quantities(
        self, mixture: MixtureSameFamily, scaler: AffineScaler
    ) -> dict[str, torch.Tensor]:
        mean_s, cov_s = mixture_mean_and_covariance(mixture)
        mean = scaler.inverse(mean_s)
        cov = cov_s * scaler.scale[:, None] * scaler.scale[None, :]
        out = {f"mean[{j}]": mean[:, j] for j in range(self.dim)}
        for i in range(self.dim):
            for j in range(i + 1):
                out[f"cov[{i},{j}]"] = cov[:, i, j]
        return out

    def evaluation_metrics(
        self, mixture: MixtureSameFamily, y_standardised: torch.Tensor, scaler: AffineScaler
    ) -> dict[str, float]:
        """``rmse``: the root mean squared error of the mixture mean, original units (with
        q > 1 outputs one per column, ``rmse_j``; MLflow metric names allow no brackets)."""
        with torch.no_grad():
            error = (mixture.mean - y_standardised) * scaler.scale  # the shift cancels
            rmse = error.pow(2).mean(dim=0).sqrt()
        if self.dim == 1:
            return {"rmse": float(rmse[0])}
        return {f"rmse_{j}": float(v) for j, v in enumerate(rmse)}

    def component_quantities(
        self, mixture: MixtureSameFamily, scaler: AffineScaler
    ) -> dict[str, torch.Tensor]:
        """``component_mean[{k},j]``: component k's mean of y_j, original units."""
        means = scaler.inverse(mixture.component_distribution.mean)
        return {f"component_mean[{{k}},{j}]": means[..., j] for j in range(self.dim)}

    @classmethod
    def prepare_targets(cls, y: np.ndarray, source: str, columns: list[str]) -> np.ndarray:
        if y.ndim != 2:
            raise DataError(
                f"{source}: the Gaussian family models vector targets y of shape (n, q); "
                f"got an array of shape {tuple(y.shape)} (matrix targets need model=wishart)"
            )
        check_not_constant(y, columns, source, "y")
        return np.asarray(y, dtype=np.float64)


def component_covariance(components) -> torch.Tensor:
    """(batch, K, q, q) covariance of each Gaussian component."""
    if isinstance(components, MultivariateNormal):
        return components.covariance_matrix
    return torch.diag_embed(components.base_dist.scale**2)


def mixture_mean_and_covariance(mixture: MixtureSameFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (batch, q) and covariance (batch, q, q) of a Gaussian mixture (law of total variance)."""
    weights = mixture.mixture_distribution.probs  # (batch, K)
    means = mixture.component_distribution.mean  # (batch, K, q)
    mean = torch.einsum("bk,bkq->bq", weights, means)
    second_moment = (
        component_covariance(mixture.component_distribution)
        + means[..., :, None] * means[..., None, :]
    )
    cov = torch.einsum("bk,bkij->bij", weights, second_moment) - mean[:, :, None] * mean[:, None, :]
    return mean, cov
