"""The scale penalty's reference scale: the variance of y around the early-stopped network's
conditional mean, per coordinate of y, in standardised units.

The penalty pulls each component covariance towards this reference (docs/estimation.md). Adam
with early stopping runs without the penalty; its weights' residuals on the training rows then
measure the noise the data show around a mean the network can fit, so the penalty's strength c
means the same on a dataset with little noise (Yacht) as on one with much (Wine). For a
multimodal law the residual variance is the conditional variance, larger than a component's:
the penalty never pulls a component below the spread the data show.
"""

from __future__ import annotations

import math

import torch


def residual_variance(module, x: torch.Tensor, y: torch.Tensor, floor: float) -> torch.Tensor:
    """(q,) mean squared difference between the standardised y and the mixture mean at x, per
    coordinate, clipped to [floor, 1] (1: the marginal variance in standardised units)."""
    with torch.no_grad():
        mean = module.mixture(x).mean
        residuals = module.y_scaler(y).reshape(mean.shape) - mean
    return residuals.pow(2).mean(dim=0).double().clamp(float(floor), 1.0)


def set_residual_reference(ensemble, members, data) -> torch.Tensor:
    """The reference from the early-stopped member with the best val NLL (the first alive member
    without validation rows), given to the ensemble and every member; returned."""
    alive = [m for m in members if m.alive] or members
    scored = [m for m in alive if math.isfinite(m.val_nll_before_polish)]
    source = min(scored, key=lambda m: m.val_nll_before_polish) if scored else alive[0]
    source.module.fit_scale_reference(data.x_train, data.y_train)
    reference = source.module.scale_reference.clone()
    ensemble.scale_reference.copy_(reference)
    for member in members:
        member.module.scale_reference.copy_(reference)
    return reference
