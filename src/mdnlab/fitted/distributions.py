"""The module's mixture over standardised y, mapped back to the original units of y, with
optional tempering of the component spread and of the mixing weights.

Each family's targets are standardised by a map that the family's components are closed
under, so the back-mapped mixture is again a mixture of the same family and is exact:

- Gaussian, y = loc + s * y_s: N(mu, L L') -> N(loc + s mu, (S L)(S L)'), S = diag(s);
- categorical: codes are not rescaled (identity);
- Wishart, Y = D Y_s D: W(df, L L') -> W(df, (D L)(D L)'), D = diag(d).

Temperature T scales each component's spread and keeps its centre:

- Gaussian: covariance times T^2 (every sd times T), mean fixed;
- categorical: each variable's logits divided by T (T -> 0: the component's most probable
  class; T -> inf: uniform);
- Wishart: df / T^2 and scale matrix times T^2, so the mean df S is fixed and the sd of every
  entry (Var Y_ij = df (S_ij^2 + S_ii S_jj)) is times T. It needs df / T^2 > p - 1, which
  bounds T above by sqrt(min df / (p - 1)) for p > 1.

Weight temperature T_w: pi_k^(1 / T_w), renormalised (logits divided by T_w). Either at 1 (or
None for T_w) leaves that part exactly as it was, so the draws equal the plain sampler's.
"""

from __future__ import annotations

import torch
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from mdnlab.errors import FittedModelError
from mdnlab.families.categorical import ProductCategorical
from mdnlab.families.wishart import CheckFreeWishart


def check_temperature(value, name: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise FittedModelError(f"{name} must be a positive finite number, got {value!r}")
    return value


def original_units(
    module,
    mixture: MixtureSameFamily,
    temperature: float = 1.0,
    weight_temperature: float | None = None,
) -> MixtureSameFamily:
    """q(y | x) in original units (tempered where asked) from q(y_s | x)."""
    temperature = check_temperature(temperature, "temperature")
    weight_temperature = check_temperature(weight_temperature, "weight_temperature")
    t = None if temperature == 1.0 else temperature
    components = _COMPONENTS[module.family.name](mixture.component_distribution, module.y_scaler, t)
    gate = mixture.mixture_distribution
    if weight_temperature is not None and weight_temperature != 1.0:
        gate = Categorical(logits=gate.logits / weight_temperature, validate_args=False)
    return MixtureSameFamily(gate, components, validate_args=False)


def _gaussian(components, scaler, t: float | None):
    s, loc = scaler.scale, scaler.loc
    factor = s if t is None else s * t
    if isinstance(components, MultivariateNormal):
        return MultivariateNormal(
            components.loc * s + loc,
            scale_tril=components.scale_tril * factor[:, None],
            validate_args=False,
        )
    base = components.base_dist
    normal = Normal(base.loc * s + loc, base.scale * factor, validate_args=False)
    return Independent(normal, 1, validate_args=False)


def _categorical(components: ProductCategorical, scaler, t: float | None):
    if t is None:
        return components
    return ProductCategorical([logits / t for logits in components.logits])


def _wishart(components: CheckFreeWishart, scaler, t: float | None):
    df, scale_tril = components.df, components.scale_tril * scaler.d[:, None]
    if t is not None:
        p = scale_tril.shape[-1]
        df = df / t**2
        if p > 1 and not bool((df > p - 1).all()):
            limit = float((components.df.amin() / (p - 1)).sqrt())
            raise FittedModelError(
                f"temperature {t:g} would take a Wishart component's df to "
                f"{float(df.amin()):.4g} <= p - 1 = {p - 1} (df / T^2 keeps the mean fixed); "
                f"at these x the temperature must be below {limit:.4g}"
            )
        scale_tril = scale_tril * t
    return CheckFreeWishart(df, scale_tril)


_COMPONENTS = {"gaussian": _gaussian, "categorical": _categorical, "wishart": _wishart}


def wishart_moments(mixture: MixtureSameFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (n, p, p) and Cov(Y_ij, Y_kl) (n, p, p, p, p) of a Wishart mixture.

    A component W(df, S) has Cov(Y_ij, Y_kl) = df (S_ik S_jl + S_il S_jk); the mixture's
    follows by the law of total covariance.
    """
    w = mixture.mixture_distribution.probs  # (n, K)
    components = mixture.component_distribution
    scale = components.scale_tril @ components.scale_tril.transpose(-1, -2)
    df = components.df[..., None, None]
    means = df * scale  # (n, K, p, p)
    within = components.df[..., None, None, None, None] * (
        torch.einsum("nkac,nkbd->nkabcd", scale, scale)
        + torch.einsum("nkad,nkbc->nkabcd", scale, scale)
    )
    mean = torch.einsum("nk,nkab->nab", w, means)
    second = within + torch.einsum("nkab,nkcd->nkabcd", means, means)
    cov = torch.einsum("nk,nkabcd->nabcd", w, second) - torch.einsum("nab,ncd->nabcd", mean, mean)
    return mean, cov
