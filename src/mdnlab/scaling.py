"""Standardisation maps fitted on the training split and stored as buffers in the model.

They are ``nn.Module``s so that a checkpoint carries them: a model loaded with
``load_from_checkpoint`` predicts in original units with nothing else at hand.
"""

from __future__ import annotations

import torch
from torch import nn


class AffineScaler(nn.Module):
    """s(v) = (v - loc) / scale per coordinate, fitted to the mean and standard deviation."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> AffineScaler:
        values = values.reshape(values.shape[0], -1).to(self.loc.dtype)
        self.loc.copy_(values.mean(dim=0))
        # Population standard deviation. Data validation rejects constant columns, but a column
        # can still be constant on one training split (or up to rounding, where std is ~1e-13 of
        # the mean): such a column is centred only, so the network sees zeros, not 0/0.
        scale = values.std(dim=0, unbiased=False)
        degenerate = scale <= 1e-10 * torch.clamp(self.loc.abs(), min=1.0)
        self.scale.copy_(torch.where(degenerate, torch.ones_like(scale), scale))
        return self

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.loc) / self.scale

    def inverse(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.scale + self.loc

    def log_abs_det_jacobian(self) -> torch.Tensor:
        """log |ds/dv| for one sample: log q(v) = log q_s(s(v)) + this."""
        return -torch.log(self.scale).sum()


class IdentityScaler(nn.Module):
    """s(v) = v: for discrete targets (class codes), which are modelled as they are."""

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> IdentityScaler:
        return self

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def inverse(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised

    def log_abs_det_jacobian(self) -> torch.Tensor:
        """0: log q(v) = log q_s(v) for a probability mass function."""
        return torch.zeros((), dtype=torch.float64)
