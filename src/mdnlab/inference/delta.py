"""Delta method: predicted quantities and their gradients with respect to theta."""

from __future__ import annotations

import torch
from torch.func import jacrev

from mdnlab.inference.functional import FlatModel


def quantity_jacobian(
    flat: FlatModel, x: torch.Tensor
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Names, values (m, Q) and gradients (m * Q, P; row-major over point then quantity)."""
    names = list(flat.quantities(flat.theta, x[:1]))

    def stacked(theta: torch.Tensor) -> torch.Tensor:
        values = flat.quantities(theta, x)
        return torch.stack([values[name] for name in names], dim=1).reshape(-1)

    theta = flat.theta.detach()
    values = stacked(theta).reshape(x.shape[0], len(names)).detach()
    return names, values, jacrev(stacked)(theta).detach()
