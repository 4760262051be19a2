"""Backbone networks: plain ``nn.Module``s that the LightningModule wraps."""

from __future__ import annotations

from torch import nn

from mdnlab.errors import ConfigError

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


def mlp(
    in_dim: int, hidden_sizes: list[int], out_dim: int, activation: str = "tanh"
) -> nn.Sequential:
    """Linear -> activation blocks, then a linear head. ``hidden_sizes=[]`` is a linear model."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"model.activation={activation!r} is not known; choose one of {', '.join(ACTIVATIONS)}"
        )
    bad = [h for h in hidden_sizes if int(h) < 1]
    if bad:
        raise ConfigError(f"model.hidden_sizes must be positive integers, got {list(hidden_sizes)}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        width = int(h)
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
