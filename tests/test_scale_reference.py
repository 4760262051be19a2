"""The scale penalty's reference: nearest-neighbour noise variance against sklearn's neighbours
and numpy, and against the known noise of simulated data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from mdnlab.estimation.scale_reference import nearest_other_rows, neighbour_noise_variance
from mdnlab.module import MDNModule


def test_nearest_other_rows_match_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1300, 3))  # more rows than one chunk
    got = nearest_other_rows(torch.as_tensor(x), chunk=500).numpy()
    _, idx = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    np.testing.assert_array_equal(got, idx[:, 1])


def test_the_variance_is_half_the_mean_squared_neighbour_difference_per_coordinate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 2))
    y = np.column_stack([np.sin(2 * x[:, 0]), x[:, 1] ** 2]) + rng.normal(size=(400, 2)) * [
        0.1,
        0.3,
    ]
    _, idx = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    want = 0.5 * np.mean((y - y[idx[:, 1]]) ** 2, axis=0)
    got = neighbour_noise_variance(torch.as_tensor(x), torch.as_tensor(y), floor=1e-8).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_it_recovers_the_noise_variance_of_a_smooth_regression():
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, size=(4000, 1))
    y = np.sin(2 * x) + 0.1 * rng.normal(size=(4000, 1))
    got = float(neighbour_noise_variance(torch.as_tensor(x), torch.as_tensor(y), floor=1e-8)[0])
    assert got == pytest.approx(0.01, rel=0.08)  # SE of the estimate about 3%


def test_clipped_to_its_floor_and_ceiling():
    x = torch.arange(10.0, dtype=torch.float64)[:, None]
    same = torch.ones(10, 1, dtype=torch.float64)  # no noise at all
    assert float(neighbour_noise_variance(x, same, floor=1e-4)[0]) == 1e-4
    alternating = torch.tensor([[-3.0], [3.0]] * 5, dtype=torch.float64)  # neighbours differ by 6
    assert float(neighbour_noise_variance(x, alternating, floor=1e-4)[0]) == 1.0
    assert float(neighbour_noise_variance(x[:1], same[:1], floor=1e-4)[0]) == 1.0  # one row


def test_the_module_standardises_before_it_estimates_and_keeps_the_floor():
    rng = np.random.default_rng(3)
    x = torch.as_tensor(rng.uniform(0, 100, size=(3000, 1)))
    y = torch.as_tensor(50 + 20 * np.sin(x.numpy() / 20) + 2 * rng.normal(size=(3000, 1)))
    module = MDNModule(1, [1], n_components=2, hidden_sizes=[3])
    assert module.scale_reference.tolist() == [1.0]  # before: the marginal scale
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    module.fit_scale_reference(x, y)
    want = 4.0 / float(y.std()) ** 2  # the noise variance in standardised units
    assert float(module.scale_reference[0]) == pytest.approx(want, rel=0.1)
    module.fit_scale_reference(x, torch.full_like(y, 7.0))
    assert float(module.scale_reference[0]) == pytest.approx((10 * 1e-3) ** 2, rel=1e-12)


def test_a_checkpoint_written_before_the_reference_loads_with_the_marginal_scale():
    module = MDNModule(1, [1], n_components=2, hidden_sizes=[3])
    module.scale_reference.fill_(0.25)
    state = module.state_dict()
    del state["scale_reference"]
    fresh = MDNModule(1, [1], n_components=2, hidden_sizes=[3])
    fresh.load_state_dict(state)  # strict: no missing-key error
    assert fresh.scale_reference.tolist() == [1.0]
