"""The penalized objective: J(theta) = mean NLL + lambda / (2 n) * |theta|^2.

theta is every weight and bias of the network, in the standardised units it sees; n is the
number of training rows. Minimising J is the MAP estimate under a N(0, 1/lambda) prior on
each weight; lambda = 0 is the plain maximum-likelihood estimate. The penalty per sample,
lambda / (2 n) |theta|^2, vanishes as n grows, so for fixed lambda the estimator converges to
the same KL projection as the MLE (White 1982).

With ``train.scale_penalty`` c > 0 the objective also holds (c / n) * mean_i s(x_i), s the
family's penalty on its component scales at x (``Family.scale_penalty``; for the Gaussian an
inverse-Wishart log-density on each component covariance): it keeps the likelihood of a
mixture bounded (no component can shrink onto an atom or a row), and it too vanishes per
sample as 1/n (docs/estimation.md).
"""

from __future__ import annotations

import torch

from mdnlab.errors import ConfigError


def check_penalty(value, key: str = "train.penalty") -> float:
    try:
        penalty = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number >= 0, got {value!r}") from None
    if not penalty >= 0 or penalty == float("inf"):
        raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")
    return penalty


def penalty_term(params, penalty: float, n: int) -> torch.Tensor:
    """lambda / (2 n) * sum of squares of ``params`` (an iterable of tensors)."""
    total = sum(p.pow(2).sum() for p in params)
    return penalty / (2.0 * n) * total


def objective(
    module, x: torch.Tensor, y: torch.Tensor, penalty: float, scale_penalty: float = 0.0
) -> torch.Tensor:
    """J for one ``MDNModule`` on (x, y), the training split: mean NLL, plus the scale
    penalty's mean over the rows' x times ``scale_penalty`` / n, plus the ridge penalty."""
    if scale_penalty:
        nll = -module.objective_log_prob(x, y, scale_penalty / x.shape[0]).mean()
    else:
        nll = module.nll(x, y)
    if penalty == 0:
        return nll
    return nll + penalty_term(module.net.parameters(), penalty, x.shape[0])
