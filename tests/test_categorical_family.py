"""The categorical (latent-class) family against independent references.

The raw head layout is decoded here in numpy (gating: K - 1 free logits and a fixed 0 logit;
per component, for each variable d in turn, C_d - 1 free logits and a fixed 0 logit for the
last class) and the mixture pmf, marginal class probabilities and metrics are computed with
numpy / scipy / sklearn, never with the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import accuracy_score, brier_score_loss

from mdnlab.data.simulators import LATENT_CLASS_N_CLASSES, SIMULATORS
from mdnlab.data.table import read_table
from mdnlab.errors import ConfigError, DataError
from mdnlab.families import build_family, family_class
from mdnlab.families.categorical import CategoricalFamily
from mdnlab.inference.curvature import per_sample_scores
from mdnlab.inference.functional import FlatModel
from mdnlab.module import MDNModule
from mdnlab.scaling import IdentityScaler

torch.set_num_threads(1)

CASES = [([2], 1), ([4], 3), ([3, 2], 2), ([2, 5, 3], 3), ([3, 2], 1)]


def log_softmax(v: np.ndarray) -> np.ndarray:
    return v - logsumexp(v, axis=-1, keepdims=True)


def decode(raw: np.ndarray, k: int, n_classes: list[int]):
    """Numpy decoding: log weights (n, K) and, per variable d, log probs (n, K, C_d)."""
    n = raw.shape[0]
    log_w = log_softmax(np.concatenate([raw[:, : k - 1], np.zeros((n, 1))], axis=1))
    comp = raw[:, k - 1 :].reshape(n, k, sum(c - 1 for c in n_classes))
    log_p, pos = [], 0
    for c in n_classes:
        free = comp[..., pos : pos + c - 1]
        log_p.append(log_softmax(np.concatenate([free, np.zeros((n, k, 1))], axis=2)))
        pos += c - 1
    assert pos == comp.shape[-1]
    return log_w, log_p


def random_case(rng, n_classes, k, n=25):
    family = CategoricalFamily(k, (len(n_classes),), n_classes=n_classes)
    raw = rng.normal(scale=1.5, size=(n, family.n_raw_outputs))
    y = np.column_stack([rng.integers(0, c, size=n) for c in n_classes]).astype(np.float64)
    return family, raw, y


@pytest.mark.parametrize(("n_classes", "k"), CASES)
def test_n_raw_outputs_matches_layout(n_classes, k):
    family = CategoricalFamily(k, (len(n_classes),), n_classes=n_classes)
    assert family.n_raw_outputs == (k - 1) + k * sum(c - 1 for c in n_classes)
    assert family_class("categorical") is CategoricalFamily
    assert CategoricalFamily.text_targets


@pytest.mark.parametrize(("n_classes", "k"), CASES)
def test_mixture_log_pmf_matches_numpy(n_classes, k):
    rng = np.random.default_rng(sum(n_classes) * 10 + k)
    family, raw, y = random_case(rng, n_classes, k)
    mixture = family.mixture(torch.as_tensor(raw))
    log_w, log_p = decode(raw, k, n_classes)
    rows = np.arange(len(y))
    log_comp = sum(lp[rows, :, y[:, d].astype(int)] for d, lp in enumerate(log_p))
    want = logsumexp(log_w + log_comp, axis=1)
    for codes in (torch.as_tensor(y), torch.as_tensor(y).long()):  # float or integer codes
        got = mixture.log_prob(codes).numpy()
        assert got.shape == (len(y),)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        mixture.mixture_distribution.probs.numpy(), np.exp(log_w), rtol=1e-12
    )
    # the pmf sums to 1 over every combination of codes
    x_row = torch.as_tensor(raw[:1])
    combos = torch.as_tensor(
        list(itertools.product(*[range(c) for c in n_classes])), dtype=torch.float64
    )
    total = family.mixture(x_row.expand(len(combos), -1)).log_prob(combos).exp().sum()
    np.testing.assert_allclose(float(total), 1.0, rtol=1e-12)


@pytest.mark.parametrize(("n_classes", "k"), CASES)
def test_quantities_are_marginal_class_probabilities(n_classes, k):
    rng = np.random.default_rng(7 + k)
    family, raw, _ = random_case(rng, n_classes, k, n=9)
    out = family.quantities(family.mixture(torch.as_tensor(raw)), IdentityScaler())
    names = [f"prob[{d},{c}]" for d, n_c in enumerate(n_classes) for c in range(n_c)]
    assert list(out) == names
    log_w, log_p = decode(raw, k, n_classes)
    for d, lp in enumerate(log_p):
        want = np.einsum("bk,bkc->bc", np.exp(log_w), np.exp(lp))
        got = np.column_stack([out[f"prob[{d},{c}]"].numpy() for c in range(n_classes[d])])
        assert got.shape == (9, n_classes[d])
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)


def test_one_variable_collapses_to_a_single_categorical():
    rng = np.random.default_rng(3)
    family, raw, y = random_case(rng, [4], 3, n=12)
    mixture = family.mixture(torch.as_tensor(raw))
    out = family.quantities(mixture, IdentityScaler())
    probs = np.column_stack([out[f"prob[0,{c}]"].numpy() for c in range(4)])
    # the same probabilities as a K = 1 model whose free logits are log(p_c / p_last)
    single = CategoricalFamily(1, (1,), n_classes=[4])
    raw1 = np.log(probs[:, :3] / probs[:, 3:])
    out1 = single.quantities(single.mixture(torch.as_tensor(raw1)), IdentityScaler())
    for c in range(4):
        np.testing.assert_allclose(out1[f"prob[0,{c}]"].numpy(), probs[:, c], rtol=1e-10)
    # and the mixture's log pmf is the log of those probabilities
    want = np.log(probs[np.arange(12), y[:, 0].astype(int)])
    np.testing.assert_allclose(mixture.log_prob(torch.as_tensor(y)).numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("n_classes", [[3], [2], [3, 2]])
def test_metrics_match_sklearn(n_classes):
    rng = np.random.default_rng(len(n_classes) + n_classes[0])
    family, raw, y = random_case(rng, n_classes, 2, n=200)
    mixture = family.mixture(torch.as_tensor(raw))
    metrics = family.evaluation_metrics(mixture, torch.as_tensor(y), None)
    out = family.quantities(mixture, IdentityScaler())
    suffix = (lambda d: "") if len(n_classes) == 1 else (lambda d: f"_{d}")
    assert sorted(metrics) == sorted(
        f"{m}{suffix(d)}" for m in ("accuracy", "brier") for d in range(len(n_classes))
    )
    for d, c in enumerate(n_classes):
        probs = np.column_stack([out[f"prob[{d},{j}]"].numpy() for j in range(c)])
        codes = y[:, d].astype(int)
        assert metrics[f"accuracy{suffix(d)}"] == pytest.approx(
            accuracy_score(codes, probs.argmax(axis=1)), abs=1e-12
        )
        onehot = np.eye(c)[codes]
        want_brier = ((probs - onehot) ** 2).sum(axis=1).mean()
        assert metrics[f"brier{suffix(d)}"] == pytest.approx(want_brier, rel=1e-10)
        # sklearn's Brier score, unhalved: the multi-class sum of squares against one-hot
        sk = brier_score_loss(codes, probs, labels=list(range(c)), scale_by_half=False)
        assert metrics[f"brier{suffix(d)}"] == pytest.approx(sk, rel=1e-10)


def test_identity_scaler():
    scaler = IdentityScaler()
    values = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    assert scaler.fit(values) is scaler
    assert torch.equal(scaler(values), values) and torch.equal(scaler.inverse(values), values)
    ladj = scaler.log_abs_det_jacobian()
    assert ladj.dtype == torch.float64 and float(ladj) == 0.0
    assert isinstance(CategoricalFamily(2, (1,), n_classes=[2]).make_scaler(), IdentityScaler)


# --- data hooks ----------------------------------------------------------------------------------


def test_prepare_targets_accepts_codes():
    y = np.array([[0, 1], [2, 0], [1, 1]], dtype=np.float32)
    out = CategoricalFamily.prepare_targets(y, "d.csv", ["a", "b"])
    assert out.dtype == np.float64 and out.shape == (3, 2)
    np.testing.assert_array_equal(out, y)


def test_prepare_targets_rejects_real_valued_y_naming_column_row_line_and_value():
    y = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.5], [1.0, 1.25]])
    with pytest.raises(DataError) as info:
        CategoricalFamily.prepare_targets(y, "data/real.csv", ["a", "b"])
    msg = str(info.value)
    for part in (
        "data/real.csv",
        "'b'",
        "row 2 (line 4)",
        "0.5",
        "integer class codes 0..C-1",
        "text labels",
    ):
        assert part in msg, (part, msg)
    with pytest.raises(DataError, match="row 2:") as info:  # no line numbers for .npz
        CategoricalFamily.prepare_targets(y, "data/real.npz", ["a", "b"])


def test_prepare_targets_rejects_negative_codes_and_matrices():
    y = np.array([[0.0], [1.0], [-1.0], [1.0]])
    with pytest.raises(DataError, match="negative") as info:
        CategoricalFamily.prepare_targets(y, "d.csv", ["cls"])
    assert "'cls'" in str(info.value) and "row 2 (line 4)" in str(info.value)
    assert "-1.0" in str(info.value)
    with pytest.raises(DataError, match=r"\(5, 2, 2\)") as info:
        CategoricalFamily.prepare_targets(np.zeros((5, 2, 2)), "data/spd.npz", ["a", "b", "c"])
    assert "data/spd.npz" in str(info.value)


def test_options_from_data_from_max_code_and_text_levels(tmp_path):
    codes = np.array([[0, 1], [1, 0], [2, 1], [0, 0], [1, 1], [2, 0]], dtype=np.float64)
    assert CategoricalFamily.options_from_data(codes, ["a", "b"], {}, "d.npz") == {
        "n_classes": [3, 2]
    }
    # through read_table: a text column's levels (sorted) and an integer-coded column
    path = tmp_path / "d.csv"
    pd.DataFrame(
        {
            "x": np.arange(12.0),
            "colour": ["red", "blue", "green", "red"] * 3,
            "n": [0, 1, 2, 3] * 3,
        }
    ).to_csv(path, index=False)
    table = read_table(path, ["x"], ["colour", "n"], text_y=True)
    y = CategoricalFamily.prepare_targets(table.y, table.source, table.y_names)
    assert table.y_levels == {"colour": ["blue", "green", "red"]}
    np.testing.assert_array_equal(y[:4, 0], [2, 0, 1, 2])
    options = CategoricalFamily.options_from_data(y, table.y_names, table.y_levels, table.source)
    assert options == {"n_classes": [3, 4]}
    assert all(type(c) is int for c in options["n_classes"])  # plain ints for checkpoints


def test_rare_class_is_a_data_error_naming_the_label_and_count():
    y = np.array([[0.0], [0.0], [1.0], [2.0], [2.0], [1.0], [0.0]])
    levels = {"colour": ["blue", "green", "red"]}
    ok = CategoricalFamily.options_from_data(y, ["colour"], levels, "d.csv")
    assert ok == {"n_classes": [3]}
    y[5, 0] = 0.0  # 'green' now has a single row
    with pytest.raises(DataError) as info:
        CategoricalFamily.options_from_data(y, ["colour"], levels, "d.csv")
    msg = str(info.value)
    for part in ("d.csv", "'colour'", "'green'", "1 row", "at least 2 rows", "training"):
        assert part in msg, (part, msg)
    # a gap in integer codes: class 1 has 0 rows
    gap = np.array([[0.0], [0.0], [2.0], [2.0]])
    with pytest.raises(DataError, match=r"class 1 has 0 rows"):
        CategoricalFamily.options_from_data(gap, ["k"], {}, "d.csv")
    with pytest.raises(DataError, match="single class"):
        CategoricalFamily.options_from_data(np.zeros((4, 1)), ["k"], {}, "d.csv")


def test_codes_beyond_user_set_n_classes_are_named():
    y = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 1.0], [2.0, 0.0]])
    CategoricalFamily.check_codes(y, [4, 2], ["a", "b"], "d.csv")  # fine
    with pytest.raises(DataError) as info:
        CategoricalFamily.check_codes(y, [3, 2], ["a", "b"], "d.csv")
    msg = str(info.value)
    for part in ("d.csv", "'a'", "row 2 (line 4)", "class 3", "model.n_classes[0] = 3"):
        assert part in msg, (part, msg)
    with pytest.raises(DataError, match="'dog'"):
        CategoricalFamily.check_options(
            y[:, :1], ["pet"], {"pet": ["ant", "bee", "cat", "dog"]}, "d.csv", {"n_classes": [3]}
        )
    CategoricalFamily.check_options(y, ["a", "b"], {}, "d.csv", {"n_classes": None})
    with pytest.raises(ConfigError, match="n_classes"):
        CategoricalFamily.check_codes(y, [4], ["a", "b"], "d.csv")


def test_bad_constructor_options():
    with pytest.raises(ConfigError, match="n_classes is required"):
        build_family("categorical", 2, (2,))
    with pytest.raises(ConfigError, match="2 y columns"):
        build_family("categorical", 2, (2,), n_classes=[3])
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_family("categorical", 2, (2,), n_classes=[3, 1])
    with pytest.raises(ConfigError, match="event shape"):
        build_family("categorical", 2, (2, 2), n_classes=[2, 2])


def test_strata_are_the_joint_combination_of_codes():
    y = np.array([[0, 1], [1, 0], [0, 1], [2, 1], [1, 0], [0, 0]], dtype=np.float64)
    s = CategoricalFamily.strata(y)
    assert s.shape == (6,) and np.issubdtype(s.dtype, np.integer)
    for i, j in itertools.combinations(range(6), 2):
        assert (s[i] == s[j]) == bool(np.all(y[i] == y[j]))


# --- differentiation through the module, as the inference step does it --------------------------


def test_per_sample_scores_match_finite_differences():
    torch.manual_seed(0)
    module = MDNModule(
        in_dim=1,
        event_shape=[2],
        family="categorical",
        n_components=2,
        hidden_sizes=[3],
        n_classes=[3, 2],
    )
    x = torch.tensor([[0.3], [-0.7], [1.1]], dtype=torch.float64)
    y = torch.tensor([[2.0, 1.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    flat = FlatModel(module)
    scores = per_sample_scores(flat, x, y)
    assert scores.shape == (3, flat.n_params)
    i, h = 1, 1e-6
    theta = flat.theta.detach()
    fd = torch.empty(flat.n_params, dtype=torch.float64)
    for j in range(flat.n_params):
        step = torch.zeros_like(theta)
        step[j] = h
        up = flat.log_prob(theta + step, x[i : i + 1], y[i : i + 1])[0]
        down = flat.log_prob(theta - step, x[i : i + 1], y[i : i + 1])[0]
        fd[j] = (up - down) / (2 * h)
    np.testing.assert_allclose(scores[i].numpy(), fd.numpy(), rtol=1e-6, atol=1e-8)
    # the per-sample scores sum to the gradient of the total log-likelihood
    total = torch.func.grad(lambda t: flat.log_prob(t, x, y).sum())(theta)
    np.testing.assert_allclose(scores.sum(0).numpy(), total.numpy(), rtol=1e-10, atol=1e-12)


# --- the simulator with known truth ----------------------------------------------------------------

SIM = SIMULATORS["synth_latent_class"]
COMBOS = np.array(
    list(itertools.product(*[range(c) for c in LATENT_CLASS_N_CLASSES])), dtype=np.float64
)


@pytest.mark.parametrize("x0", [-1.0, -0.4, 0.0, 0.55, 1.0])
def test_simulator_pmf_normalises_and_matches_sample_frequencies(x0):
    assert SIM.y_cols == ["y1", "y2"]
    pmf = np.exp(SIM.log_prob(np.full((len(COMBOS), 1), x0), COMBOS))
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    n = 40_000
    y = SIM.sample_y(np.full((n, 1), x0), np.random.default_rng(int(1000 * (x0 + 2))))
    assert y.dtype == np.float64 and np.all(y == np.round(y))
    counts = np.array([np.sum(np.all(y == c, axis=1)) for c in COMBOS])
    assert counts.sum() == n
    se = np.sqrt(pmf * (1 - pmf) / n)
    assert np.all(np.abs(counts / n - pmf) < 5 * se), (counts / n, pmf)


def test_simulator_is_exactly_a_linear_head_categorical_mdn():
    """Decoding hand-set linear-head raw outputs with the family gives the simulator's pmf."""
    x = np.linspace(-1, 1, 7)[:, None]
    one = np.ones_like(x)
    # gating: 1 free logit; component 1: y1 (2 logits), y2 (1); component 2 likewise
    raw = np.hstack(
        [
            0.2 + 1.2 * x,
            1.5 + x,
            0.5 - x,
            1.5 + 0.5 * x,
            -1.5 + 0.5 * x,
            -0.5 + 1.5 * x,
            -1.5 * one - x,
        ]
    )
    family = CategoricalFamily(2, (2,), n_classes=list(LATENT_CLASS_N_CLASSES))
    for combo in COMBOS:
        y = np.tile(combo, (len(x), 1))
        got = family.mixture(torch.as_tensor(raw)).log_prob(torch.as_tensor(y)).numpy()
        np.testing.assert_allclose(got, SIM.log_prob(x, y), rtol=1e-12)
