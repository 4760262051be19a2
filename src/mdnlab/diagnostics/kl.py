"""KL divergence from the true conditional law to the fitted one, where the truth is known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdnlab.errors import DataError


@dataclass(frozen=True)
class KLEstimate:
    value: float  # mean over the evaluation sample of log p_true(y|x) - log q(y|x), nats
    se: float  # its Monte Carlo standard error
    n: int


def kl_estimate(log_p_true: np.ndarray, log_q: np.ndarray) -> KLEstimate:
    diff = np.asarray(log_p_true, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return KLEstimate(float(diff.mean()), se, diff.size)


def load_eval_sample(path: Path, x_dim: int, y_shape: tuple[int, ...]):
    """The data stage's evaluation sample: arrays x, y and log_p (the true log density)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.eval_path: no evaluation sample at {path} (run the data stage: dvc repro)"
        )
    with np.load(path) as archive:
        missing = [k for k in ("x", "y", "log_p") if k not in archive.files]
        if missing:
            raise DataError(f"{path}: array(s) {', '.join(missing)} missing; expected x, y, log_p")
        x, y, log_p = archive["x"], archive["y"], archive["log_p"]
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != x_dim:
        raise DataError(f"{path}: x has {x.shape[1]} columns; the training data has {x_dim}")
    if y.size != x.shape[0] * int(np.prod(y_shape)):
        raise DataError(
            f"{path}: y has shape {y.shape}; expected {x.shape[0]} rows of shape {tuple(y_shape)}"
        )
    if log_p.shape != (x.shape[0],):
        raise DataError(f"{path}: log_p has shape {log_p.shape}; expected ({x.shape[0]},)")
    return x, y.reshape(x.shape[0], *y_shape), log_p


@torch.no_grad()
def model_log_prob(module, x: np.ndarray, y: np.ndarray, chunk: int = 50_000) -> np.ndarray:
    out = []
    for start in range(0, x.shape[0], chunk):
        xs = torch.as_tensor(x[start : start + chunk], dtype=torch.float64)
        ys = torch.as_tensor(y[start : start + chunk], dtype=torch.float64)
        out.append(module.log_prob(xs, ys).numpy())
    return np.concatenate(out)
