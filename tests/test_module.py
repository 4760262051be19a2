"""MDNModule: NLL in original units, change of units, checkpoint round trip.

References are independent: the standardisation is recomputed with numpy, the head's raw
outputs are decoded in numpy and the density is evaluated with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy import stats
from scipy.special import logsumexp
from torch.utils.data import DataLoader

from mdnlab.errors import TrainingError
from mdnlab.module import MDNModule

torch.set_num_threads(1)


def softplus(v):
    return np.logaddexp(0.0, v)


def decode(raw, k, q, full, min_scale):
    """Numpy decoding of the Gaussian head: log weights, means, covariances (standardised units)."""
    n = raw.shape[0]
    logits = np.concatenate([raw[:, : k - 1], np.zeros((n, 1))], axis=1)
    log_w = logits - logsumexp(logits, axis=1, keepdims=True)
    n_lower = q * (q - 1) // 2 if full else 0
    comp = raw[:, k - 1 :].reshape(n, k, 2 * q + n_lower)
    chol = np.zeros((n, k, q, q))
    for i in range(q):
        chol[..., i, i] = softplus(comp[..., q + i]) + min_scale
    pos = 2 * q
    for i in range(q):
        for j in range(i if full else 0):
            chol[..., i, j] = comp[..., pos]
            pos += 1
    return log_w, comp[..., :q], chol @ np.swapaxes(chol, -1, -2)


def scipy_log_prob_original_units(module, x, y, min_scale=1e-3, full=True):
    """log q(y | x) in original units, from the raw head output and numpy standardisation."""
    q = y.shape[1]
    k = module.family.n_components
    x_s = (x - x.mean(axis=0)) / x.std(axis=0)  # population sd, as fitted on this same x
    with torch.no_grad():
        raw = module.net(torch.as_tensor(x_s)).numpy()
    log_w, means_s, covs_s = decode(raw, k, q, full and q > 1, min_scale)
    loc, scale = y.mean(axis=0), y.std(axis=0)
    s = np.diag(scale)
    out = np.empty(x.shape[0])
    for b in range(x.shape[0]):
        terms = [
            log_w[b, c]
            + stats.multivariate_normal.logpdf(
                y[b], loc + scale * means_s[b, c], s @ covs_s[b, c] @ s
            )
            for c in range(k)
        ]
        out[b] = logsumexp(terms)
    return out


def make_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = 50.0 + 10.0 * rng.standard_normal((n, 1))
    y = np.column_stack(
        [
            1000.0 + 200.0 * rng.standard_normal(n) + 3.0 * x[:, 0],
            -3.0 + 0.01 * rng.standard_normal(n),
        ]
    )
    return x, y


def fitted_module(x, y, seed=0, **kwargs):
    torch.manual_seed(seed)
    options = dict(in_dim=x.shape[1], event_shape=[y.shape[1]], n_components=2, hidden_sizes=[5])
    options.update(kwargs)
    module = MDNModule(**options)
    module.x_scaler.fit(torch.as_tensor(x))
    module.y_scaler.fit(torch.as_tensor(y))
    return module


def test_scalers_fit_mean_and_population_sd():
    x, y = make_data()
    module = fitted_module(x, y)
    np.testing.assert_allclose(module.y_scaler.loc.numpy(), y.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(module.y_scaler.scale.numpy(), y.std(axis=0, ddof=0), rtol=1e-12)
    np.testing.assert_allclose(module.x_scaler.loc.numpy(), x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(module.x_scaler.scale.numpy(), x.std(axis=0, ddof=0), rtol=1e-12)


def test_log_prob_is_in_original_units():
    x, y = make_data()
    module = fitted_module(x, y)
    with torch.no_grad():
        got = module.log_prob(torch.as_tensor(x), torch.as_tensor(y)).numpy()
        nll = float(module.nll(torch.as_tensor(x), torch.as_tensor(y)))
    want = scipy_log_prob_original_units(module, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert nll == pytest.approx(-want.mean(), rel=1e-12)


def test_log_prob_via_torch_mixture_parameters():
    """Same check, decoding the standardised mixture from the torch distribution objects."""
    x, y = make_data(seed=3)
    module = fitted_module(x, y, seed=3)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        mixture = module.mixture(xt)
        weights = mixture.mixture_distribution.probs.numpy()
        means = mixture.component_distribution.mean.numpy()
        covs = mixture.component_distribution.covariance_matrix.numpy()
        got = module.log_prob(xt, torch.as_tensor(y)).numpy()
    loc, scale = y.mean(axis=0), y.std(axis=0)
    s = np.diag(scale)
    want = [
        logsumexp(
            [
                np.log(weights[b, c])
                + stats.multivariate_normal.logpdf(
                    y[b], loc + scale * means[b, c], s @ covs[b, c] @ s
                )
                for c in range(weights.shape[1])
            ]
        )
        for b in range(x.shape[0])
    ]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c", [1e-3, 0.5, 3.7, 1234.0])
def test_change_of_units_shifts_nll_by_log_c_per_dimension(c):
    x, y = make_data(seed=1)
    module = fitted_module(x, y, seed=1)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        nll = float(module.nll(xt, torch.as_tensor(y)))
        module.y_scaler.fit(torch.as_tensor(c * y))
        nll_c = float(module.nll(xt, torch.as_tensor(c * y)))
    assert nll_c - nll == pytest.approx(y.shape[1] * math.log(c), abs=1e-9)


def test_shift_of_origin_leaves_nll_unchanged():
    x, y = make_data(seed=2)
    module = fitted_module(x, y, seed=2)
    xt = torch.as_tensor(x)
    shift = np.array([1e4, -250.0])
    with torch.no_grad():
        nll = float(module.nll(xt, torch.as_tensor(y)))
        module.y_scaler.fit(torch.as_tensor(y + shift))
        nll_shifted = float(module.nll(xt, torch.as_tensor(y + shift)))
    assert nll_shifted == pytest.approx(nll, abs=1e-9)


@pytest.mark.parametrize("q", [1, 2])
def test_single_component_is_one_gaussian(q):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 2)) * [2.0, 0.1] + [1.0, -4.0]
    y = rng.normal(size=(30, q)) * 7.0 + 2.0
    module = fitted_module(x, y, n_components=1, hidden_sizes=[4])
    # Head size: no gating logit at all for K = 1, 2q (+ q(q-1)/2) component parameters.
    assert module.net[-1].out_features == 2 * q + q * (q - 1) // 2
    assert module.net[-1].out_features == module.family.n_raw_outputs
    with torch.no_grad():
        got = module.log_prob(torch.as_tensor(x), torch.as_tensor(y)).numpy()
    want = scipy_log_prob_original_units(module, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_head_size_for_k_components():
    module = MDNModule(in_dim=3, event_shape=[3], n_components=4, hidden_sizes=[6, 5])
    assert module.net[-1].out_features == (4 - 1) + 4 * (3 + 3 + 3)
    assert module.net[0].in_features == 3


def test_non_finite_loss_raises_training_error():
    x, y = make_data()
    module = fitted_module(x, y)
    y_bad = y.copy()
    y_bad[4, 1] = np.nan
    with pytest.raises(TrainingError, match="NLL"):
        module._step((torch.as_tensor(x), torch.as_tensor(y_bad)), "train")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"covariance": "diagonal", "min_scale": 0.05, "activation": "relu", "n_components": 3},
    ],
)
def test_checkpoint_round_trip(tmp_path, options):
    x, y = make_data(seed=4)
    module = fitted_module(x, y, seed=4, **options)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
    )
    full = options.get("covariance", "full") == "full"
    min_scale = options.get("min_scale", 1e-3)
    with torch.no_grad():
        before_fit = module.log_prob(xt, yt).clone()
    want_before = scipy_log_prob_original_units(module, x, y, min_scale=min_scale, full=full)
    loader = DataLoader([(xt, yt)], batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    with torch.no_grad():
        after_fit = module.log_prob(xt, yt)
    assert not torch.equal(before_fit, after_fit)  # one Adam step moved the weights
    want_after = scipy_log_prob_original_units(module, x, y, min_scale=min_scale, full=full)
    # The epoch NLLs are in original units: train before the step, validation after it
    # (the sanity-check validation pass is not recorded).
    assert module.epoch_history["train/nll_epoch"] == [
        pytest.approx(-want_before.mean(), rel=1e-10)
    ]
    assert module.epoch_history["val/nll_epoch"] == [pytest.approx(-want_after.mean(), rel=1e-10)]
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)

    loaded = MDNModule.load_from_checkpoint(path)
    loaded.eval()
    # The scalers travel as buffers: the fitted values, not the defaults (0, 1).
    np.testing.assert_allclose(loaded.y_scaler.loc.numpy(), y.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(loaded.y_scaler.scale.numpy(), y.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(loaded.x_scaler.loc.numpy(), x.mean(axis=0), rtol=1e-13)
    assert loaded.family.covariance == options.get("covariance", "full")
    assert loaded.family.min_scale == options.get("min_scale", 1e-3)
    assert loaded.family.n_components == options.get("n_components", 2)
    with torch.no_grad():
        reloaded = loaded.log_prob(xt, yt)
    assert reloaded.dtype == torch.float64
    torch.testing.assert_close(reloaded, after_fit, rtol=0, atol=0)
    # And the loaded model is right in its own terms, not only equal to the original.
    want = scipy_log_prob_original_units(loaded, x, y, min_scale=min_scale, full=full)
    np.testing.assert_allclose(reloaded.numpy(), want, rtol=1e-10, atol=1e-10)
