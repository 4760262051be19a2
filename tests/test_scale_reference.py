"""The scale penalty's reference: the residual variance around the network's mixture mean,
against numpy on the components' own weights and means; its floor; old checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdnlab.module import MDNModule


def module_with_scalers(x, y, q=1, seed=0):
    torch.manual_seed(seed)
    module = MDNModule(x.shape[1], [q], n_components=3, hidden_sizes=[5])
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    return module


@pytest.mark.parametrize("q", [1, 2])
def test_the_reference_is_the_mean_squared_residual_around_the_mixture_mean(q):
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(300, 2)))
    y = torch.as_tensor(rng.normal(size=(300, q)) * [3.0, 0.5][:q] + 10)
    module = module_with_scalers(x, y, q)
    module.fit_scale_reference(x, y)
    with torch.no_grad():
        mixture = module.mixture(x)
        weights = mixture.mixture_distribution.probs.numpy()  # (n, K)
        means = mixture.component_distribution.mean.numpy()  # (n, K, q), standardised
    mean = np.einsum("nk,nkq->nq", weights, means)
    standardised = (y.numpy() - y.numpy().mean(0)) / y.numpy().std(0)
    want = np.clip(np.mean((standardised - mean) ** 2, axis=0), 1e-4, 1.0)
    np.testing.assert_allclose(module.scale_reference.numpy(), want, rtol=1e-10)


def test_a_network_that_fits_the_mean_gives_the_noise_variance():
    # one component, no hidden layer: the mean is linear in x, as the data's is
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.uniform(-1, 1, size=(5000, 1)))
    y = 2.0 * x + 0.3 * torch.as_tensor(rng.normal(size=(5000, 1)))
    module = MDNModule(1, [1], n_components=1, hidden_sizes=[])
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    slope = float(2.0 * module.x_scaler.scale[0] / module.y_scaler.scale[0])
    with torch.no_grad():
        module.net[0].weight.zero_()
        module.net[0].bias.zero_()
        module.net[0].weight[0, 0] = slope  # the mean output of the single component
    module.fit_scale_reference(x, y)
    want = 0.09 / float(y.std()) ** 2
    assert float(module.scale_reference[0]) == pytest.approx(want, rel=0.05)


def test_clipped_to_ten_times_the_scale_floor_and_to_the_marginal_variance():
    x = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
    y = torch.full((50, 1), 3.0, dtype=torch.float64)  # no spread, and a network whose
    module = module_with_scalers(x, y)  # means are all 0 there: the residuals are 0
    with torch.no_grad():
        module.net[-1].weight.zero_()
        module.net[-1].bias.zero_()
    module.fit_scale_reference(x, y)
    assert float(module.scale_reference[0]) == pytest.approx((10 * 1e-3) ** 2, rel=1e-12)
    y = torch.as_tensor(np.random.default_rng(3).normal(size=(50, 1)))
    module = module_with_scalers(x, y)
    with torch.no_grad():
        module.net[-1].bias.add_(50.0)  # means far off: residual variance far above 1
    module.fit_scale_reference(x, y)
    assert float(module.scale_reference[0]) == 1.0


def test_a_checkpoint_written_before_the_reference_loads_with_the_marginal_scale():
    module = MDNModule(1, [1], n_components=2, hidden_sizes=[3])
    module.scale_reference.fill_(0.25)
    state = module.state_dict()
    del state["scale_reference"]
    fresh = MDNModule(1, [1], n_components=2, hidden_sizes=[3])
    fresh.load_state_dict(state)  # strict: no missing-key error
    assert fresh.scale_reference.tolist() == [1.0]
