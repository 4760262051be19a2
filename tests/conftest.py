"""Shared fixtures: the repository, tiny datasets, and the real CLI run in a temp directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

# Small, fast settings for end-to-end runs of the real CLI.
TINY = [
    "model.n_components=2",
    "model.hidden_sizes=[3]",
    "trainer.max_epochs=40",
    "train.polish_max_iter=40",
]


# The longest tests, queued first in this order (measured on 2 cores: 290, 150, 116 s).
LONGEST = ("test_pipeline.py", "test_model_selection.py", "test_cli.py")


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first, the longest of them at the head, so that the xdist
    workers (`make test`: --dist load --maxschedchunk 1 hands each free worker the next one) end
    together."""

    def rank(item) -> tuple[int, int]:
        name = item.path.name
        longest = LONGEST.index(name) if name in LONGEST else len(LONGEST)
        return (item.get_closest_marker("slow") is None, longest)

    items.sort(key=rank)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_tiny_csv(tmp_path)


def write_tiny_csv(folder: Path) -> Path:
    """120 rows of a two-branch conditional law: y = +-(1 + x) + noise."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, 120)
    branch = rng.choice([-1.0, 1.0], 120)
    y = branch * (1 + x) + 0.2 * rng.standard_normal(120)
    path = folder / "tiny.csv"
    pd.DataFrame({"x": x, "y": y}).to_csv(path, index=False)
    return path


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        CI="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PYTHONUNBUFFERED="1"
    )
    return env


def run_cli(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python src/train.py ARGS`` from ``tmp_path`` with a temp MLflow store."""
    return subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def saturated_gaussian_fit():
    """x with 3 levels (60, 90, 120 rows of shifted, scaled t_5 noise), an MDN with K = 1 and
    one tanh hidden layer (14 weights, 6 identified), polished to the MLE.

    Returns levels, x, y (numpy, (n, 1)) and the fitted module."""
    import torch

    from mdnlab.module import MDNModule
    from mdnlab.polish import lbfgs_polish

    rng = np.random.default_rng(3)
    levels, counts = np.array([-1.0, 0.0, 1.0]), np.array([60, 90, 120])
    x = np.repeat(levels, counts)[:, None]
    y = np.concatenate(
        [
            rng.standard_t(5, size=c) * s + m
            for c, s, m in zip(counts, [0.5, 1.0, 2.0], [1.0, -1.0, 3.0], strict=True)
        ]
    )[:, None]
    torch.manual_seed(0)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=1, hidden_sizes=[3])
    xt, yt = torch.tensor(x), torch.tensor(y)
    module.x_scaler.fit(xt)
    module.y_scaler.fit(yt)
    result = lbfgs_polish(lambda: module.nll(xt, yt), list(module.parameters()), 1e-8, 5000)
    assert result.converged
    return levels, x, y, module


def textbook_standard_errors(group: np.ndarray) -> tuple[list[float], list[float]]:
    """SEs of a group's sample mean and (1/n) variance: [mean, variance] under the Gaussian
    model (inverse Hessian) and from the sample's own moments (sandwich)."""
    n, mean, var = len(group), group.mean(), group.var()
    m4 = np.mean((group - mean) ** 4)
    hessian = [np.sqrt(var / n), np.sqrt(2 * var**2 / n)]
    sandwich = [np.sqrt(var / n), np.sqrt((m4 - var**2) / n)]
    return hessian, sandwich
