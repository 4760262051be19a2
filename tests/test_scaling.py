"""The standardisation map against numpy, including columns with no spread."""

import numpy as np
import torch

from mdnlab.scaling import AffineScaler


def test_scaler_matches_numpy_and_centres_a_constant_column():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(50, 3))
    values[:, 1] = 288.0  # constant on these rows
    values[:, 2] = 0.998 + 0.0 * values[:, 2]  # constant, std ~1e-16 after rounding
    scaler = AffineScaler(3).fit(torch.from_numpy(values))
    out = scaler(torch.from_numpy(values)).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 1:], 0.0, atol=1e-12)
    expected = (values[:, 0] - values[:, 0].mean()) / values[:, 0].std()
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(scaler.inverse(torch.from_numpy(out)).numpy(), values, rtol=1e-12)
