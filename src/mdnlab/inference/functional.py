"""The fitted model as a function of one flat parameter vector theta (float64).

Everything the inference step differentiates (per-sample log-likelihoods, predicted
quantities) goes through here, so it works for every family through ``MDNModule.objective_log_prob``
and ``MDNModule.quantities`` alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

PARAM_SETS = ("all", "head")


class _Call(nn.Module):
    """Routes functional_call to a named method of the wrapped module."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


class FlatModel:
    """theta <-> the module's parameters; ``all`` weights or only the output layer (``head``)."""

    def __init__(self, module, params: str = "all"):
        if params not in PARAM_SETS:
            raise ValueError(f"inference.params must be one of {PARAM_SETS}, got {params!r}")
        named = dict(module.named_parameters())
        if params == "head":
            head = [n for n in named if n.startswith("net.")][-2:]  # last Linear: weight, bias
            self.free = head
        else:
            self.free = list(named)
        self.module = module
        self.fixed = {f"module.{n}": p.detach() for n, p in named.items() if n not in self.free} | {
            f"module.{n}": b for n, b in module.named_buffers()
        }
        self.shapes = [named[n].shape for n in self.free]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in self.free]).clone()

    @property
    def n_params(self) -> int:
        return self.theta.numel()

    def names(self) -> list[str]:
        """One name per entry of theta: ``net.0.weight[3,0]``."""
        out = []
        for name, shape in zip(self.free, self.shapes, strict=True):
            out += [f"{name}[{','.join(map(str, index))}]" for index in np.ndindex(*shape)]
        return out

    def _state(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        state, start = dict(self.fixed), 0
        for name, shape in zip(self.free, self.shapes, strict=True):
            size = shape.numel()
            state[f"module.{name}"] = theta[start : start + size].reshape(shape)
            start += size
        return state

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log q(y_i | x_i; theta), shape (n,), less row i's share of the scale penalty when the
        module has one (``MDNModule.objective_log_prob``): minus the per-row terms of the
        training objective, whose curvature and scores the inference needs."""
        return functional_call(_Call(self.module, "objective_log_prob"), self._state(theta), (x, y))

    def quantities(self, theta: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return functional_call(_Call(self.module, "quantities"), self._state(theta), (x,))
