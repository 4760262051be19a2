"""Replicate fits stacked into one batched network (each member on its own rows) against
the same fits run one dataset at a time."""

import numpy as np
import pytest
import torch

from mdnlab.data.simulators import SIMULATORS
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.fit import FitData, PolishSettings, fit_members
from mdnlab.module import MDNModule

TRAINER = TrainerSettings(max_epochs=150, patience=20)
POLISH = PolishSettings(tol=1e-8, max_iter=3000)


def datasets(count: int, n: int) -> list[FitData]:
    out = []
    for r in range(count):
        rng = np.random.default_rng(r)
        x, y = SIMULATORS["synth_mixture"].sample(n + n // 4, rng)
        t = [torch.as_tensor(a) for a in (x, y)]
        out.append(FitData(t[0][:n], t[1][:n], t[0][n:], t[1][n:]))
    return out


def make_module(seed: int) -> MDNModule:
    torch.manual_seed(seed)
    module = MDNModule(1, [1], n_components=2, hidden_sizes=[5], identifiability="none")
    module.x_scaler.loc.fill_(0.1)  # fixed scalers, shared by every replicate
    module.y_scaler.scale.fill_(1.3)
    return module


def stack(parts: list[FitData]) -> FitData:
    fields = ("x_train", "y_train", "x_val", "y_val")
    return FitData(*(torch.stack([getattr(p, f) for p in parts]) for f in fields))


@pytest.mark.parametrize("batch_size", [None, 50])
def test_stacked_members_match_fits_one_dataset_at_a_time(batch_size):
    torch.set_num_threads(1)
    parts = datasets(3, 120)
    seeds = [11, 12, 13]
    options = dict(batch_size=batch_size, loader_seed=4, polish=POLISH)
    _, stacked = fit_members(make_module, seeds, stack(parts), 2.0, TRAINER, 0.02, **options)
    for part, seed, result in zip(parts, seeds, stacked, strict=True):
        _, (alone,) = fit_members(make_module, [seed], part, 2.0, TRAINER, 0.02, **options)
        assert result.epochs == alone.epochs
        assert abs(result.objective - alone.objective) < 1e-9
        assert abs(result.val_nll - alone.val_nll) < 1e-7
        for p, q in zip(result.module.parameters(), alone.module.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-5)
    # each member really saw its own rows: the objectives differ between the replicates
    assert len({round(r.objective, 6) for r in stacked}) == 3
