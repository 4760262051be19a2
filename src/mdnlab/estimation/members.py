"""R copies of one MLP as a single network with a leading member dimension.

Member r's layers are slices ``weight[r]`` / ``bias[r]`` of stacked parameters, so one
forward pass (``torch.baddbmm``) evaluates every member on the same rows and the gradient of
the summed objectives with respect to member r's slice is member r's own gradient. Members
are built from (and copied back into) the plain ``nn.Sequential`` MLPs of ``nets.mlp``.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchedMLP(nn.Module):
    """x (n, in) or (R, n, in) -> (R, n, out): R independent MLPs evaluated at once."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], activation):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b.detach().clone()) for b in biases])
        self.activation = activation

    @classmethod
    def from_members(cls, nets: list[nn.Sequential]) -> BatchedMLP:
        """Stack the Linear layers of R identically shaped ``nets.mlp`` networks."""
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        activations = [m for m in nets[0] if not isinstance(m, nn.Linear)]
        weights = [
            torch.stack([layers[i].weight for layers in linears]) for i in range(len(linears[0]))
        ]
        biases = [
            torch.stack([layers[i].bias for layers in linears]) for i in range(len(linears[0]))
        ]
        activation = activations[0] if activations else nn.Identity()
        return cls(weights, biases, activation)

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Every member on x; with ``theta`` (R, P), at those flat parameters instead."""
        weights, biases = (self.weights, self.biases) if theta is None else self.unflatten(theta)
        count = self.n_members if theta is None else theta.shape[0]
        h = x.expand(count, *x.shape) if x.dim() == 2 else x
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
            if i < last:
                h = self.activation(h)
        return h

    def squared_norms(self) -> torch.Tensor:
        """(R,) sum of squares of every weight and bias of each member."""
        total = 0
        for p in [*self.weights, *self.biases]:
            total = total + p.pow(2).reshape(self.n_members, -1).sum(dim=1)
        return total

    def flat(self) -> torch.Tensor:
        """(R, P) every member's parameters in ``nn.Sequential.parameters()`` order."""
        parts = []
        for w, b in zip(self.weights, self.biases, strict=True):
            parts += [w.reshape(self.n_members, -1), b.reshape(self.n_members, -1)]
        return torch.cat(parts, dim=1)

    def unflatten(self, theta: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(R, P) -> per-layer weights and biases shaped like the stacked parameters."""
        weights, biases, offset = [], [], 0
        for w, b in zip(self.weights, self.biases, strict=True):
            for p, out in ((w, weights), (b, biases)):
                size = p[0].numel()
                out.append(theta[:, offset : offset + size].reshape(theta.shape[0], *p.shape[1:]))
                offset += size
        return weights, biases

    @torch.no_grad()
    def set_flat(self, theta: torch.Tensor) -> None:
        """Inverse of ``flat``: write (R, P) into the stacked parameters."""
        weights, biases = self.unflatten(theta)
        for p, value in zip([*self.weights, *self.biases], [*weights, *biases], strict=True):
            p.copy_(value)

    @torch.no_grad()
    def copy_member_into(self, r: int, net: nn.Sequential) -> None:
        """Write member r's weights into a plain MLP of the same shape."""
        linears = [m for m in net if isinstance(m, nn.Linear)]
        for layer, w, b in zip(linears, self.weights, self.biases, strict=True):
            layer.weight.copy_(w[r])
            layer.bias.copy_(b[r])

    def flat_views(self, r: int) -> list[torch.Tensor]:
        """Member r's slices, in the order of its ``nn.Sequential``'s ``parameters()``."""
        out = []
        for w, b in zip(self.weights, self.biases, strict=True):
            out += [w[r], b[r]]
        return out

    @torch.no_grad()
    def member_state(self, r: int) -> list[torch.Tensor]:
        return [p[r].clone() for p in [*self.weights, *self.biases]]

    @torch.no_grad()
    def load_member_state(self, r: int, state: list[torch.Tensor]) -> None:
        for p, value in zip([*self.weights, *self.biases], state, strict=True):
            p[r].copy_(value)
