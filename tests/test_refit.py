"""Parametric-bootstrap refits: B copies polished at once on their own simulated targets."""

from __future__ import annotations

import torch

from mdnlab.estimation.objective import objective
from mdnlab.estimation.refit import refit_on_targets, simulate_targets
from mdnlab.module import MDNModule
from mdnlab.polish import newton_polish


def fitted_module() -> tuple[MDNModule, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 150, dtype=torch.float64)[:, None]
    y = torch.sin(2 * x) + 0.3 * torch.randn(150, 1, dtype=torch.float64)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[3])
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    newton_polish(lambda: objective(module, x, y, 1.0), list(module.net.parameters()), 1e-9)
    return module, x


def test_simulated_targets_follow_the_model_and_the_seed():
    module, x = fitted_module()
    a, b = simulate_targets(module, x, 400, seed=1), simulate_targets(module, x, 400, seed=1)
    assert torch.equal(a, b) and a.shape == (400, 150, 1)
    mean = module.quantities(x)["mean[0]"].detach()
    # the draws' mean at each x against the model's mean, within 5 Monte Carlo SEs
    se = a.std(dim=0)[:, 0] / 20
    assert bool(((a.mean(dim=0)[:, 0] - mean).abs() < 5 * se).all())


def test_batched_refits_are_optima_on_their_own_targets_and_match_single_refits():
    module, x = fitted_module()
    targets = simulate_targets(module, x, 3, seed=2)
    refits = refit_on_targets(module, x, targets, penalty=1.0, tol=1e-9)
    assert bool(refits.converged.all())
    for b in range(3):
        fitted = refits.modules[b]
        # the gradient of J on its own targets, through the single-model objective
        params = list(fitted.net.parameters())
        grads = torch.autograd.grad(objective(fitted, x, targets[b], 1.0), params)
        assert max(float(g.abs().max()) for g in grads) < 1e-8
        alone = refit_on_targets(module, x, targets[b : b + 1], penalty=1.0, tol=1e-9)
        for p, q in zip(params, alone.modules[0].net.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)  # batching changes nothing
        pairs = zip(params, module.net.parameters(), strict=True)
        moved = max(float((p - q).abs().max()) for p, q in pairs)
        assert moved > 1e-3  # a refit is not the original fit
