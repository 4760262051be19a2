"""Predicted null dimension of A (``diagnostics/symmetries.py``) against A's measured spectrum.

How the weights and data are made, and why. The weights are planted (the structure under test
is set exactly: a dead unit, a relu kink between two x values, a duplicated component), not
fitted: an optimiser neither keeps such structure nor, for relu networks whose kinks cross data
rows, reaches the gradient the stationary-point directions need (|g| well below 1e-9 of A's
scale; relu fits tried here stalled at |g| ~ 1e-2, where the rescalings are visibly not null).
Instead the data are built so that the planted weights are an exact stationary point: x takes
N_LEVELS distinct values with PER_LEVEL rows each, and at every level the y's (started at
stratified quantiles of the model's own q(y|x)) are moved by Newton steps until the summed
gradient of the NLL in that level's raw outputs is 0 (to 1e-12). Then every coupling of the
form mean_i delta_i (x) phi(x_i) vanishes, A = sum over levels of J' Lambda J exactly, and where
A is PSD (asserted where it should be) the planted weights are a local minimum of the NLL for
these data, the setting in which the module's predictions are stated. The construction is
kinder than continuous x: it also zeroes the couplings that make dead units and duplicates
saddles there, and the gating-trade curvature of duplicates among K > 2 (the K = 3 duplicate
test shows it).

The measured count is A's eigenvalues (float64, ``hessian_mean_nll``) with |eig| <= EIG_RTOL
(1e-9) * max |eig|, compared with the prediction computed independently from the weights and x
alone; the eigenvalues either side of the threshold are checked to be far from it (structural
ones below 1e-13 relative, ~1e-16 in practice; the smallest retained above 1e-8), and the
predicted directions themselves are checked to be null (|A v| <= 1e-12 max |A|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import softplus

from mdnlab.diagnostics.symmetries import (
    CONSTANT_BIAS,
    CONSTANT_OUT,
    DEAD,
    DUPLICATE_GATING,
    DUPLICATE_SPLIT,
    INACTIVE,
    OTHER,
    RELU_GROUP,
    UNSEEN,
    ZERO_WEIGHT,
    predicted_null_dimension,
)
from mdnlab.inference.covariance import Spectrum
from mdnlab.inference.curvature import hessian_mean_nll
from mdnlab.inference.functional import FlatModel
from mdnlab.module import MDNModule

EIG_RTOL = 1e-9
N_LEVELS, PER_LEVEL = 20, 30
TANH_W, TANH_B = [2.0, -1.5, 1.0], [0.5, 0.3, -1.0]
RELU_W = [0.8, -0.7, 0.6, -0.9]
RELU_GAPS = [3, 8, 12, 16]  # kink of unit j between standardised levels g and g + 1


# --- planted models and data ---------------------------------------------------------------
def level_inputs(collinear: bool = False) -> np.ndarray:
    x = np.repeat(np.linspace(-2.0, 2.0, N_LEVELS), PER_LEVEL)[:, None]
    return np.hstack([x, 2.0 * x + 1.0]) if collinear else x


def kinks(gaps: list[int]) -> np.ndarray:
    """Midpoints between consecutive standardised levels: no training row sits on a kink."""
    levels = np.linspace(-2.0, 2.0, N_LEVELS)
    levels = (levels - levels.mean()) / levels.std()
    return np.array([(levels[g] + levels[g + 1]) / 2 for g in gaps])


def planted_mdn(activation, w_in, b_in, x, hidden=None, head_seed=0, k=2) -> MDNModule:
    """Gaussian MDN, in_dim = x.shape[1], first layer as given (rows of ``w_in``; split evenly
    over the columns of collinear x), a random head around k separated components (means from
    +1 to -1, sd ~0.55, mild gating) so that every level's likelihood is well posed."""
    w_in = np.asarray(w_in, dtype=np.float64).reshape(len(b_in), -1)
    if w_in.shape[1] != x.shape[1]:
        w_in = np.repeat(w_in, x.shape[1], axis=1) / x.shape[1]
    sizes = hidden or [len(b_in)]
    torch.manual_seed(0)
    module = MDNModule(x.shape[1], [1], "gaussian", k, sizes, activation)
    module.x_scaler.fit(torch.tensor(x))
    g = torch.Generator().manual_seed(head_seed)
    head = module.net[-1]
    spread = torch.tensor([0.4] * (k - 1) + [0.25, 0.15] * k, dtype=torch.float64)
    centre = [0.0] * (k - 1) + [v for c in range(k) for v in (1.0 - 2.0 * c / (k - 1), -0.3)]
    with torch.no_grad():
        module.net[0].weight.copy_(torch.tensor(w_in))
        module.net[0].bias.copy_(torch.tensor(b_in, dtype=torch.float64))
        noise = torch.randn(head.weight.shape, generator=g, dtype=torch.float64)
        head.weight.copy_(noise * spread[:, None])
        head.bias.copy_(torch.tensor(centre, dtype=torch.float64))
    return module


def quantile_start(module, raw: torch.Tensor, jitter_seed: int | None) -> torch.Tensor:
    """Per level, quantiles of the Gaussian mixture q(y|x) at stratified probabilities (the
    midpoints, or jittered within their strata), by bisection."""
    mix = module.family.mixture(raw)
    probs = mix.mixture_distribution.probs
    loc = mix.component_distribution.base_dist.loc[..., 0]
    scale = mix.component_distribution.base_dist.scale[..., 0]
    offset = torch.full((PER_LEVEL,), 0.5, dtype=torch.float64)
    if jitter_seed is not None:
        g = torch.Generator().manual_seed(jitter_seed)
        offset = torch.rand(PER_LEVEL, generator=g, dtype=torch.float64)
    u = ((torch.arange(PER_LEVEL, dtype=torch.float64) + offset) / PER_LEVEL).repeat(N_LEVELS)
    lo, hi = torch.full_like(u, -50.0), torch.full_like(u, 50.0)
    normal = torch.distributions.Normal(0.0, 1.0)
    for _ in range(100):
        mid = (lo + hi) / 2
        below = (probs * normal.cdf((mid[:, None] - loc) / scale)).sum(1) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2)[:, None]


def level_equations(module, raw, y, extra=None, with_jacobian=False):
    """Per level, the summed equations (NLL gradient in the raw outputs, then ``extra``
    columns), (N_LEVELS, q); with their per-row derivatives in y, (N_LEVELS, PER_LEVEL, q)."""
    y = y.clone().requires_grad_(with_jacobian)
    raw = raw.detach().requires_grad_(True)
    nll = -module.family.mixture(raw).log_prob(module.y_scaler(y))
    (grad,) = torch.autograd.grad(nll.sum(), raw, create_graph=True)
    rows = torch.cat([grad] + ([extra(raw, y)] if extra else []), dim=1)
    sums = rows.detach().reshape(N_LEVELS, PER_LEVEL, -1).sum(1)
    if not with_jacobian:
        return sums
    cols = [
        torch.autograd.grad(rows[:, r].sum(), y, retain_graph=True)[0][:, 0]
        for r in range(rows.shape[1])
    ]
    return sums, torch.stack(cols, 1).reshape(N_LEVELS, PER_LEVEL, -1)


def stationary_targets(module, x, extra=None, jitter_seed=None) -> torch.Tensor:
    """y such that the planted weights are a per-level stationary point (module docstring)."""
    with torch.no_grad():
        raw = module.net(module.x_scaler(torch.tensor(x)))
    y = quantile_start(module, raw, jitter_seed)
    for _ in range(60):
        sums, jac = level_equations(module, raw, y, extra, with_jacobian=True)
        norm = sums.norm(dim=1)
        if norm.max() < 1e-13:
            break
        step = (torch.linalg.pinv(jac.transpose(1, 2), rtol=1e-10) @ sums[..., None])[..., 0]
        alpha = torch.ones(N_LEVELS, 1, dtype=torch.float64)
        for _ in range(30):  # backtrack per level on the equations' norm
            trial = (y.reshape(N_LEVELS, PER_LEVEL) - alpha * step).reshape(-1, 1)
            worse = level_equations(module, raw, trial, extra).norm(dim=1) >= norm
            if not worse.any():
                break
            alpha[worse] /= 2
        y = trial
    assert level_equations(module, raw, y, extra).abs().max() < 1e-12
    return y.detach()


def gaussian_split_moments(raw, y):
    """z^3 and z^4 - 3 of component 0's standardised residual: with the stationarity equations
    (mean and variance matched), zero skewness and zero excess kurtosis per level."""
    mean, sd = raw[:, 1:2], softplus(raw[:, 2:3]) + 1e-3
    z = (y - mean) / sd
    return torch.cat([z**3, z**4 - 3.0], dim=1)


# --- measuring and comparing -------------------------------------------------------------------
def curvature(module, x, y) -> np.ndarray:
    return hessian_mean_nll(FlatModel(module), torch.tensor(x), y).numpy()


def measured_spectrum(module, x, y) -> Spectrum:
    return Spectrum.of(np.linalg.eigvalsh(curvature(module, x, y)), EIG_RTOL)


def assert_directions_null(prediction, a: np.ndarray) -> None:
    """The predicted directions themselves (not only their number) are null in A."""
    if prediction.total:
        leak = np.linalg.norm(a @ prediction.basis, axis=0).max() / np.abs(a).max()
        assert leak < 1e-12, f"{prediction.describe()}: |A v| / max |A| = {leak:.1e}"


def check(module, x, y, expected: int, local_minimum: bool = True):
    """Prediction (from weights and x) == ``expected`` == A's measured null count, with a clear
    gap on both sides of the threshold, the predicted directions null in A, and A PSD where the
    point should be a local minimum."""
    prediction = predicted_null_dimension(module, x)
    a = curvature(module, x, y)
    spectrum = Spectrum.of(np.linalg.eigvalsh(a), EIG_RTOL)
    magnitudes = np.sort(np.abs(spectrum.eigenvalues)) / np.abs(spectrum.eigenvalues).max()
    detail = f"{prediction.describe()}; |eig|/max ascending: {magnitudes[: expected + 3]}"
    assert prediction.total == expected, detail
    assert spectrum.n_null == expected, detail
    if expected:
        assert magnitudes[expected - 1] < 1e-13, detail  # structural: far below the threshold
    assert magnitudes[expected] > 1e-8, detail  # the first retained: far above it
    if local_minimum:
        assert spectrum.n_negative == 0, detail
    assert_directions_null(prediction, a)
    return prediction, spectrum


def counts(prediction) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in prediction.breakdown:
        out[entry.reason] = out.get(entry.reason, 0) + entry.count
    return out


# --- the cases -----------------------------------------------------------------------------
def test_generic_tanh_network_has_no_structural_null_direction():
    x = level_inputs()
    module = planted_mdn("tanh", TANH_W, TANH_B, x)
    prediction, _ = check(module, x, stationary_targets(module, x), expected=0)
    assert prediction.breakdown == [] and "none structural" in prediction.describe()


def test_relu_network_one_rescaling_per_unit():
    x = level_inputs()
    w = np.array(RELU_W)
    module = planted_mdn("relu", w, -w * kinks(RELU_GAPS), x)
    with torch.no_grad():
        active = module.net[0](module.x_scaler(torch.tensor(x))) > 0
    assert bool(active.any(0).all()) and not bool(active.all(0).any())  # every unit partial
    prediction, _ = check(module, x, stationary_targets(module, x), expected=4)
    assert counts(prediction) == {RELU_GROUP: 4}


def test_tanh_dead_unit_loses_its_incoming_weights_and_bias():
    x = level_inputs()
    module = planted_mdn("tanh", TANH_W + [0.8], TANH_B + [0.2], x)
    with torch.no_grad():
        module.net[-1].weight[:, 3] = 0.0  # outgoing weights of unit 3
    prediction, _ = check(module, x, stationary_targets(module, x), expected=2)  # fan_in + 1
    assert counts(prediction) == {DEAD: 2}


def test_tanh_unit_with_zero_incoming_weights_is_a_bias():
    """Constant unit c = tanh(b): its 5 outgoing weights and its own bias b only move the
    head's bias (w_k - c b_k, and b - tanh'(b) sum_k w_k b_k): fan_out + 1."""
    x = level_inputs()
    module = planted_mdn("tanh", TANH_W + [0.0], TANH_B + [0.4], x)
    prediction, _ = check(module, x, stationary_targets(module, x), expected=6)
    assert counts(prediction) == {CONSTANT_OUT: 5, CONSTANT_BIAS: 1}


def test_relu_never_active_unit():
    """Unit 3 never active: incoming weight and bias (2) and outgoing weights (5) drop out; its
    rescaling is inside those; the other three units keep one rescaling each: 2 + 5 + 3."""
    x = level_inputs()
    w = np.array(RELU_W[:3] + [0.5])
    b = np.append(-w[:3] * kinks(RELU_GAPS[:3]), -3.0)
    module = planted_mdn("relu", w, b, x)
    prediction, _ = check(module, x, stationary_targets(module, x), expected=10)
    assert counts(prediction) == {INACTIVE: 2, CONSTANT_OUT: 5, RELU_GROUP: 3}


def test_relu_units_active_on_every_row_form_a_linear_group():
    """Two units active on every row act as one affine map from x (in_dim 1) to the 5 raw
    outputs: their 2 (1 + 1 + 5) = 14 weights and the 5 head biases reach only a rank-1 slope
    (5) and an offset (5): 19 - 10 = 9 null (rescalings, GL(2) mixing, biases against the head
    bias, rank deficiency); + 1 rescaling for each of the 2 partly active units."""
    x = level_inputs()
    w = np.array([0.8, -0.7, 0.3, -0.3])
    b = -w * np.append(kinks(RELU_GAPS[:2]), [-2.5, 2.5])
    module = planted_mdn("relu", w, b, x)
    prediction, _ = check(module, x, stationary_targets(module, x), expected=11)
    assert counts(prediction) == {RELU_GROUP: 11}
    assert any(e.where == "layer 0 units [2, 3]" and e.count == 9 for e in prediction.breakdown)


def test_collinear_inputs_leave_one_unseen_direction_per_first_layer_unit():
    x = level_inputs(collinear=True)  # x2 = 2 x1 + 1: identical once standardised
    module = planted_mdn("tanh", TANH_W, TANH_B, x)
    prediction, _ = check(module, x, stationary_targets(module, x), expected=3)
    assert counts(prediction) == {UNSEEN: 3}


@pytest.mark.parametrize("dead, logit_bias", [(0, -50.0), (1, 50.0)])
def test_zero_weight_component(dead, logit_bias):
    """Component ``dead`` gets weight exp(-50) ~ 2e-22 on every row (the free logit row of
    component 0 set to 0 weights and bias -+50; for component 1 the fixed logit loses to +50).
    Not exactly zero, but its curvature is of that order: the measured null eigenvalues are at
    rounding level (~1e-17 relative), far below 1e-9. Null: its 2 parameter head rows and the
    gating row, 3 x (3 + 1) = 12."""
    x = level_inputs()
    module = planted_mdn("tanh", TANH_W, TANH_B, x)
    with torch.no_grad():
        module.net[-1].weight[0] = 0.0
        module.net[-1].bias[0] = logit_bias
    prediction, _ = check(module, x, stationary_targets(module, x), expected=12)
    assert prediction.breakdown == [(ZERO_WEIGHT, f"component {dead}", 12)]


def test_zero_weight_fixed_logit_component_frees_the_common_shift():
    """K = 3, component 2 (logit fixed at 0) loses to free logits 50 and 50.5: its 2 parameter
    rows and the common shift of both free logit rows (which moves only its weight): 12."""
    x = level_inputs()
    module = planted_mdn("tanh", TANH_W, TANH_B, x, k=3)
    with torch.no_grad():
        module.net[-1].weight[0:2] = 0.0
        module.net[-1].bias[0:2] = torch.tensor([50.0, 50.5])
    prediction, _ = check(module, x, stationary_targets(module, x), expected=12)
    assert prediction.breakdown == [(ZERO_WEIGHT, "component 2", 12)]


def test_duplicate_pair_among_three_keeps_one_bias_trade():
    """K = 3, components 0 and 1 duplicated, their gating rows equal but for the bias (constant
    share): exactly null is the one bias trade keeping their summed weight. Conditional: 8
    splits and 3 gating-weight trades. This construction (zero summed gradient at every x)
    also zeroes the gating trades' curvature t_a t_b mean_i dNLL_i/ds_i (c.h_i)^2, so A shows
    1 + 3 here; at a generic minimum only the 1 is structural. The split curvature is
    indefinite: a saddle."""
    x = level_inputs()
    module = planted_mdn("tanh", TANH_W, TANH_B, x, k=3)
    head = module.net[-1]
    with torch.no_grad():
        head.weight[4:6], head.bias[4:6] = head.weight[2:4], head.bias[2:4]
        head.weight[1], head.bias[1] = head.weight[0], head.bias[0] + 0.3
    y = stationary_targets(module, x, jitter_seed=0)
    prediction = predicted_null_dimension(module, x)
    assert prediction.breakdown == [(DUPLICATE_GATING, "components [0, 1]", 1)]
    assert prediction.conditional == [(DUPLICATE_SPLIT, "components [0, 1]", 11)]
    a = curvature(module, x, y)
    spectrum = Spectrum.of(np.linalg.eigvalsh(a), EIG_RTOL)
    assert spectrum.n_null == 1 + 3 and spectrum.n_negative > 0
    assert_directions_null(prediction, a)


def duplicated(module, constant_share: bool) -> MDNModule:
    """Component 1's head rows := component 0's; the gating row either varies with x strongly
    (weight ratio t(x) not constant) or keeps only its bias (t constant)."""
    head = module.net[-1]
    with torch.no_grad():
        head.weight[3:5] = head.weight[1:3]
        head.bias[3:5] = head.bias[1:3]
        head.weight[0] *= 0.0 if constant_share else 5.0
        head.bias[0] = 0.4
    return module


def test_duplicate_components_gating_is_free():
    """K = 2 duplicates are the whole mixture: the gating row (hidden + 1 = 4) is free; with t
    varying in x no split is available to the head (conditional count 0). Jittered samples:
    the split curvature is indefinite, a saddle (symmetric ones would give a minimum but leave
    the mean splits, which t(x) only nearly blocks, at a weak 3e-8)."""
    x = level_inputs()
    module = duplicated(planted_mdn("tanh", TANH_W, TANH_B, x), constant_share=False)
    y = stationary_targets(module, x, jitter_seed=0)
    prediction, spectrum = check(module, x, y, expected=4, local_minimum=False)
    assert spectrum.n_negative > 0
    assert prediction.breakdown == [(DUPLICATE_GATING, "components [0, 1]", 4)]
    assert prediction.conditional_total == 0


def test_duplicate_split_is_null_only_when_its_moments_vanish():
    """Constant share t: 8 split directions theta_0 + (1 - t) c, theta_1 - t c (2 raw params x
    4 head weights) are first-order null (``conditional``). Their curvature is t (1 - t) sum
    over levels of c' M c with M ~ [[0, skew], [skew, excess kurtosis]] in (mean, sd):

    * jittered samples: skewness and kurtosis nonzero: M indefinite, a saddle, 4 null;
    * midpoint quantiles: symmetric, skewness 0: the mean split (4) is null, 8;
    * skewness and excess kurtosis set to 0 per level: all 8, 12 = total + conditional."""
    x = level_inputs()
    module = duplicated(planted_mdn("tanh", TANH_W, TANH_B, x), constant_share=True)
    prediction = predicted_null_dimension(module, x)
    assert prediction.total == 4
    assert prediction.conditional == [(DUPLICATE_SPLIT, "components [0, 1]", 8)]
    cases = [
        (stationary_targets(module, x, jitter_seed=0), 4),
        (stationary_targets(module, x), 8),
        (stationary_targets(module, x, extra=gaussian_split_moments), 12),
    ]
    measured = [measured_spectrum(module, x, y) for y, _ in cases]
    assert [s.n_null for s in measured] == [expected for _, expected in cases]
    assert measured[0].n_negative > 0  # the split curvature is indefinite: a saddle
    assert measured[2].n_negative == 0
    assert_directions_null(prediction, curvature(module, x, cases[0][0]))


def test_two_relu_layers_need_the_jacobian_catch_all():
    """Second-layer unit 2 never active. The per-layer rules find 15; the first-layer units
    vary on rows where the second layer is partly inactive, which hides 2 more directions that
    only the raw-output Jacobian finds (``jacobian=False`` leaves them out)."""
    x = level_inputs()
    w = np.array(RELU_W[:3])
    module = planted_mdn("relu", w, [0.2, 0.3, -0.3], x, hidden=[3, 3])
    with torch.no_grad():
        module.net[2].weight.copy_(
            torch.tensor([[1.0, -0.8, 0.5], [-0.6, 0.9, 0.7], [0.4, 0.5, -1.0]])
        )
        module.net[2].bias.copy_(torch.tensor([0.1, -0.1, -5.0]))
    prediction, _ = check(module, x, stationary_targets(module, x), expected=17)
    assert counts(prediction)[OTHER] == 2
    assert predicted_null_dimension(module, x, jacobian=False).total == 15


def test_describe_is_one_line_and_breakdown_sums_to_total():
    x = level_inputs()
    w = np.array(RELU_W[:3] + [0.5])
    module = planted_mdn("relu", w, np.append(-w[:3] * kinks(RELU_GAPS[:3]), -3.0), x)
    prediction = predicted_null_dimension(module, x)
    assert sum(e.count for e in prediction.breakdown) == prediction.total == 10
    assert prediction.n_params == sum(p.numel() for p in module.parameters())
    text = prediction.describe()
    assert "\n" not in text and text.startswith("predicted null dimension 10 of 33")
    assert "inactive unit layer 0 unit 3: 2" in text
