"""Seeded draws from a distribution, leaving the global random state as it was."""

from __future__ import annotations

import warnings

import torch


def seeded_sample(distribution, draws: int, seed: int) -> torch.Tensor:
    """``draws`` samples, the same for the same seed. (torch's Wishart sampler warns of
    singular draws at df near p - 1; callers drop their non-finite log densities.)"""
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Singular sample detected")
        torch.manual_seed(seed)
        return distribution.sample((draws,))
