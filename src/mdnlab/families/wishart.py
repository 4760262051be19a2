"""Wishart mixture components for y a p x p symmetric positive definite matrix."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.distributions import Chi2, Distribution, MixtureSameFamily, Wishart
from torch.nn.functional import softplus

from mdnlab.data.table import lower_triangle_names, row_text
from mdnlab.errors import DataError
from mdnlab.families.base import Family

# The scale penalty's reference for df - (p - 1): df = p + 1, the smallest df whose inverse
# has a finite mean, a weakly informative centre on the scale of the standardised Y.
DF_EXCESS_REFERENCE = 2.0
# Relative tolerance of the symmetry check: |Y_ij - Y_ji| <= this * max |Y| of the row.
SYMMETRY_RTOL = 1e-8


def triangle_side(m: int) -> int | None:
    """p with p(p+1)/2 == m, or None when m is not a triangular number."""
    p = int(round((np.sqrt(8 * m + 1) - 1) / 2))
    return p if p >= 1 and p * (p + 1) // 2 == m else None


class CheckFreeWishart(Wishart):
    """``torch.distributions.Wishart(df, scale_tril=...)`` without data-dependent checks.

    torch's constructor tests ``df > p - 1`` and warns when ``df < p`` with ``.any()``, and
    ``torch.mvlgamma`` checks its argument with ``.item()``: both fail under ``torch.func.vmap``
    (the inference step's per-sample gradients) and the warning would fire on every training
    step with df in (p - 1, p), where the density is proper. The family guarantees df > p - 1
    by construction, so the checks are dropped and log Gamma_p is a plain sum of lgamma.
    Sampling (Bartlett, inherited) and the moments are torch's.
    """

    def __init__(self, df: torch.Tensor, scale_tril: torch.Tensor):
        batch_shape = torch.broadcast_shapes(scale_tril.shape[:-2], df.shape)
        event_shape = scale_tril.shape[-2:]
        self.df = df.expand(batch_shape)
        self.scale_tril = scale_tril.expand(batch_shape + (-1, -1))
        Distribution.__init__(self, batch_shape, event_shape, validate_args=False)
        self._batch_dims = [-(x + 1) for x in range(len(batch_shape))]
        self._unbroadcasted_scale_tril = scale_tril
        offsets = torch.arange(event_shape[-1], dtype=scale_tril.dtype, device=scale_tril.device)
        self._dist_chi2 = Chi2(df=self.df.unsqueeze(-1) - offsets, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CheckFreeWishart, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        nu = self.df
        p = self._event_shape[-1]
        half = torch.arange(p, dtype=nu.dtype, device=nu.device) / 2
        log_gamma_p = p * (p - 1) / 4 * math.log(math.pi) + torch.lgamma(
            nu.unsqueeze(-1) / 2 - half
        ).sum(-1)
        log_det_scale = self._unbroadcasted_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        trace = (
            torch.cholesky_solve(value, self._unbroadcasted_scale_tril)
            .diagonal(dim1=-2, dim2=-1)
            .sum(-1)
        )
        return (
            -nu * (p * math.log(2.0) / 2 + log_det_scale)
            - log_gamma_p
            + (nu - p - 1) / 2 * torch.linalg.slogdet(value).logabsdet
            - trace / 2
        )


class WishartScaler(nn.Module):
    """Y_s = D^-1 Y D^-1, D = diag(d), d_i = sqrt(mean over training rows of Y_ii).

    A congruence keeps matrices symmetric positive definite. ``d`` is a float64 buffer, so it
    is saved in the checkpoint. On the p(p+1)/2 free entries of a symmetric matrix the map
    Y -> A Y A' has Jacobian determinant |det A|^(p+1), so log |dY_s/dY| = -(p+1) sum log d_i.
    """

    def __init__(self, p: int):
        super().__init__()
        self.p = p
        self.register_buffer("d", torch.ones(p, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> WishartScaler:
        values = values.to(self.d.dtype)
        diag = torch.diagonal(values, dim1=-2, dim2=-1)  # (n, p)
        self.d.copy_(diag.mean(dim=0).sqrt())
        return self

    def _outer(self) -> torch.Tensor:
        return self.d[:, None] * self.d[None, :]

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values / self._outer()

    def inverse(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self._outer()

    def log_abs_det_jacobian(self) -> torch.Tensor:
        """log |dY_s/dY| on the free entries: log q(Y) = log q_s(Y_s) + this."""
        return -(self.p + 1) * torch.log(self.d).sum()


class WishartFamily(Family):
    """Component k: Wishart(df_k(x), S_k(x) = L_k(x) L_k(x)'), on p x p SPD matrices.

    Raw layout per component (1 + p + p(p-1)/2 entries):

    * 1 df entry: df = (p - 1) + ``min_df_excess`` + softplus(raw), so df > p - 1;
    * p diagonal entries of L: softplus(raw) + ``min_scale``;
    * p(p-1)/2 strictly-lower entries of L, as they are, in row-major order
      ((1,0), (2,0), (2,1), (3,0), ...).

    The mixture (K - 1 free logits) is ``Family.mixture``. Every number is in the standardised
    units of ``WishartScaler``; E[Y | x] = sum_k pi_k df_k S_k.
    """

    name = "wishart"

    def __init__(
        self,
        n_components: int,
        event_shape: tuple[int, ...],
        min_scale: float = 1e-3,
        min_df_excess: float = 1e-3,
    ):
        super().__init__(n_components, event_shape)
        if len(self.event_shape) != 2 or self.event_shape[0] != self.event_shape[1]:
            raise ValueError(
                f"the Wishart family needs an event shape (p, p); got {self.event_shape}"
            )
        if min_df_excess <= 0:
            raise ValueError(f"model.min_df_excess must be positive, got {min_df_excess}")
        self.dim = self.event_shape[0]
        self.min_scale = min_scale
        self.min_df_excess = min_df_excess
        self._tril = torch.tril_indices(self.dim, self.dim, offset=-1)

    @property
    def params_per_component(self) -> int:
        p = self.dim
        return 1 + p + p * (p - 1) // 2

    def scale_floor_ratio(self, mixture: MixtureSameFamily) -> float:
        diag = torch.diagonal(mixture.component_distribution.scale_tril, dim1=-2, dim2=-1)
        return float(diag.min() / self.min_scale)

    def component_distribution(self, raw: torch.Tensor) -> Wishart:
        p = self.dim
        df = (p - 1) + self.min_df_excess + softplus(raw[..., 0])
        diag = softplus(raw[..., 1 : 1 + p]) + self.min_scale
        lower = raw.new_zeros(*raw.shape[:-1], p, p)
        lower[..., self._tril[0], self._tril[1]] = raw[..., 1 + p :]
        scale_tril = lower + torch.diag_embed(diag)
        return CheckFreeWishart(df, scale_tril)

    def make_scaler(self) -> WishartScaler:
        return WishartScaler(self.dim)

    def scale_penalty(
        self, raw: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_k [tr(M_k^-1) + log det M_k - p] + sum_k [e_k / e0 - log(e_k / e0) - 1] at each
        row's x, M_k = df_k S_k the component's mean matrix and e_k = df_k - (p - 1) its
        degrees of freedom above the bound of a proper density, e0 = ``DF_EXCESS_REFERENCE``.
        The first sum is the Gaussian family's inverse-Wishart penalty on M_k (0 at M_k = I,
        the marginal scale of the standardised Y); the second is minus a gamma log-density on
        e_k (0 at e0). A component that concentrates on one matrix (df -> infinity) or whose
        mean shrinks to a point makes it grow without bound, so the penalized likelihood is
        bounded; it also grows as e_k -> 0, so ``model.min_df_excess`` is only a numerical
        guard."""
        k, p = self.n_components, self.dim
        components = self.component_distribution(raw[:, k - 1 :].reshape(raw.shape[0], k, -1))
        df, tril = components.df, components.scale_tril  # (b, K), (b, K, p, p)
        eye = torch.eye(p, dtype=raw.dtype, device=raw.device).expand_as(tril)
        inverse = torch.linalg.solve_triangular(tril, eye, upper=False)
        trace = inverse.pow(2).sum(dim=(-2, -1)) / df  # tr((df L L')^-1)
        log_det = p * df.log() + 2.0 * tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        excess = (df - (p - 1)) / DF_EXCESS_REFERENCE
        return (trace + log_det - p + excess - excess.log() - 1.0).sum(dim=-1)

    def quantities(
        self, mixture: MixtureSameFamily, scaler: WishartScaler
    ) -> dict[str, torch.Tensor]:
        mean = scaler.inverse(mixture_mean(mixture))
        return {f"mean[{i},{j}]": mean[:, i, j] for i in range(self.dim) for j in range(i + 1)}

    def component_quantities(
        self, mixture: MixtureSameFamily, scaler: WishartScaler
    ) -> dict[str, torch.Tensor]:
        """``component_mean[{k},i,j]``: component k's mean matrix df_k S_k, original units."""
        components = mixture.component_distribution
        scale = components.scale_tril @ components.scale_tril.transpose(-1, -2)
        means = scaler.inverse(components.df[..., None, None] * scale)  # (batch, K, p, p)
        return {
            f"component_mean[{{k}},{i},{j}]": means[..., i, j]
            for i in range(self.dim)
            for j in range(i + 1)
        }

    @classmethod
    def prepare_targets(cls, y: np.ndarray, source: str, columns: list[str]) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 2:
            y = _from_lower_triangle(y, source, columns)
        elif y.ndim != 3 or y.shape[1] != y.shape[2]:
            raise DataError(
                f"{source}: model=wishart models p x p matrices, y of shape (n, p, p) or (n, m) "
                f"with m = p(p+1)/2 lower-triangle columns; got shape {tuple(y.shape)}"
            )
        _check_spd(y, source)
        return y


def mixture_mean(mixture: MixtureSameFamily) -> torch.Tensor:
    """E[Y | x] = sum_k pi_k df_k L_k L_k', shape (batch, p, p), in the mixture's units."""
    weights = mixture.mixture_distribution.probs  # (batch, K)
    components = mixture.component_distribution
    scale_tril = components.scale_tril  # (batch, K, p, p)
    scale = scale_tril @ scale_tril.transpose(-1, -2)
    return torch.einsum("bk,bkij->bij", weights * components.df, scale)


def _from_lower_triangle(y: np.ndarray, source: str, columns: list[str]) -> np.ndarray:
    m = y.shape[1]
    p = triangle_side(m)
    if p is None:
        named = ", ".join(map(str, columns)) if columns else f"{m} columns"
        raise DataError(
            f"{source}: model=wishart models y as a p x p symmetric positive definite matrix, "
            f"given as its p(p+1)/2 lower-triangle entries in row-major order "
            f"(for p = 3: {', '.join(lower_triangle_names(3))}), so data.y_cols must name "
            f"1, 3, 6, 10, ... columns; it names {m} ({named}). For vector-valued y use "
            f"model=gaussian"
        )
    rows, cols = np.tril_indices(p)  # row-major lower triangle: (0,0), (1,0), (1,1), ...
    out = np.zeros((y.shape[0], p, p))
    out[:, rows, cols] = y
    out[:, cols, rows] = y
    return out


def _check_spd(y: np.ndarray, source: str) -> None:
    n, p = y.shape[0], y.shape[1]
    if n == 0:
        return
    size = np.abs(y).reshape(n, -1).max(axis=1)
    asym = np.abs(y - np.swapaxes(y, 1, 2)).reshape(n, -1).max(axis=1)
    bad = np.flatnonzero(asym > SYMMETRY_RTOL * size)
    if bad.size:
        row = int(bad[0])
        i, j = np.unravel_index(np.argmax(np.abs(y[row] - y[row].T)), (p, p))
        i, j = max(i, j), min(i, j)
        raise DataError(
            f"{source}: y, {row_text(row, source)}: the matrix is not symmetric "
            f"(y[{i},{j}] = {y[row, i, j]:.17g} but y[{j},{i}] = {y[row, j, i]:.17g}; "
            f"{bad.size} such row{'s' if bad.size > 1 else ''} in all); model=wishart expects "
            f"symmetric positive definite p x p matrices"
        )
    eig_min = np.linalg.eigvalsh(y)[:, 0]
    # Per-row Cholesky status (numpy's batched cholesky only says that some row failed).
    info = torch.linalg.cholesky_ex(torch.from_numpy(np.ascontiguousarray(y))).info.numpy()
    bad = np.flatnonzero(~(eig_min > 0) | (info != 0))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{source}: y, {row_text(row, source)}: the matrix is not positive definite "
            f"(smallest eigenvalue {eig_min[row]:.6g}; {bad.size} such "
            f"row{'s' if bad.size > 1 else ''} in all); model=wishart expects symmetric "
            f"positive definite p x p matrices"
        )
