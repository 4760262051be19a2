"""Mixture labels: relabelling, the canonical order, alignment, redundancy, restart agreement."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mdnlab.diagnostics.components import component_report
from mdnlab.diagnostics.labels import (
    align,
    canonical_order,
    head_layer,
    identified_flags,
    relabel,
    summary_arrays,
)
from mdnlab.diagnostics.restarts import restart_report
from mdnlab.module import MDNModule

FAMILIES = {
    "gaussian": dict(event_shape=[2], family="gaussian"),
    "categorical": dict(event_shape=[2], family="categorical", n_classes=[3, 2]),
    "wishart": dict(event_shape=[2, 2], family="wishart"),
}


def make_module(kind: str, k: int = 3, seed: int = 0) -> MDNModule:
    torch.manual_seed(seed)
    module = MDNModule(in_dim=1, n_components=k, hidden_sizes=[4], **FAMILIES[kind])
    with torch.no_grad():  # spread the gating so that the weights differ clearly
        head_layer(module.net).bias[: k - 1] += torch.linspace(
            -1.0, 1.0, k - 1, dtype=torch.float64
        )
    return module


def x_rows(n: int = 60) -> torch.Tensor:
    return torch.linspace(-2, 2, n, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_relabel_is_the_same_mixture_with_components_permuted(kind):
    module, x = make_module(kind), x_rows()
    before = summary_arrays(module, x)
    y = module.y_scaler.inverse(module.mixture(x).sample())
    log_p = module.log_prob(x, y).detach()
    order = np.array([2, 0, 1])
    relabel(module.net, module.family, order)
    after = summary_arrays(module, x)
    np.testing.assert_allclose(module.log_prob(x, y).detach(), log_p, rtol=0, atol=1e-12)
    for name in before:  # new component j is old component order[j]
        np.testing.assert_allclose(after[name], before[name][:, order], rtol=1e-12, atol=1e-14)


def test_canonical_order_sorts_by_mean_weight_and_breaks_ties_by_the_summary():
    weights = np.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]])
    means = np.array([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    summaries = {"weight[{k}]": weights, "component_mean[{k},0]": means}
    assert canonical_order(summaries).tolist() == [1, 2, 0]
    tied = {"weight[{k}]": np.full((2, 3), 1 / 3), "component_mean[{k},0]": means}
    assert canonical_order(tied).tolist() == [2, 1, 0]  # by increasing component mean


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_order_is_the_same_whatever_labels_a_restart_came_with(kind):
    x = x_rows()
    original = make_module(kind)
    relabel(original.net, original.family, canonical_order(summary_arrays(original, x)))
    reference = summary_arrays(original, x)
    for permutation in ([1, 0, 2], [2, 1, 0], [1, 2, 0]):
        restart = copy.deepcopy(original)
        relabel(restart.net, restart.family, permutation)
        relabel(restart.net, restart.family, canonical_order(summary_arrays(restart, x)))
        for name, values in summary_arrays(restart, x).items():
            np.testing.assert_allclose(values, reference[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_alignment_recovers_a_known_permutation(kind):
    x = x_rows()
    rng = np.random.default_rng(3)
    module = make_module(kind, k=4)
    for _ in range(3):
        permutation = rng.permutation(4)
        other = copy.deepcopy(module)
        relabel(other.net, other.family, permutation)
        found = align(summary_arrays(module, x), summary_arrays(other, x))
        # other's component found[j] is module's component j: permutation[found[j]] = j
        assert permutation[found].tolist() == [0, 1, 2, 3]


def test_redundancy_flags_a_duplicate_and_a_zero_weight_component():
    module, x = make_module("gaussian", k=4), x_rows(200)
    head = head_layer(module.net)
    k, c = 4, module.family.params_per_component
    with torch.no_grad():
        head.weight[0].zero_()
        head.bias[0] = -60.0  # component 0's logit: weight ~ e^-60 everywhere
        block = lambda j: slice(k - 1 + j * c, k - 1 + (j + 1) * c)  # noqa: E731
        head.weight[block(2)] = head.weight[block(1)]
        head.bias[block(2)] = head.bias[block(1)]
        # equal logits for components 1 and 2 (also a duplicate's weight may differ: only the
        # component distributions must agree)
        head.weight[2] = head.weight[1] + 0.3
    report = component_report(module, x)
    assert report.negligible == [0]
    assert report.duplicates == [(1, 2)]
    assert report.effective == 2  # {1, 2} and 3
    assert report.table.duplicate_of.tolist() == [-1, -1, 1, -1]


def test_distinct_components_are_not_flagged():
    report = component_report(make_module("gaussian", k=3), x_rows(200))
    assert report.effective == 3 and not report.negligible and not report.duplicates


def test_categorical_on_one_variable_says_k_is_not_identified():
    one = MDNModule(in_dim=1, event_shape=[1], family="categorical", n_classes=[3], n_components=2)
    two = MDNModule(
        in_dim=1, event_shape=[2], family="categorical", n_classes=[3, 2], n_components=2
    )
    assert "not identified" in one.family.identifiability_notes()[0]
    assert two.family.identifiability_notes() == []


def test_identified_flags_from_separation_in_standard_errors():
    rows = [  # point 0: weights 0.7 vs 0.3 with SE 0.01; point 1: 0.51 vs 0.49 with SE 0.05
        (0, "mean[0]", 1.0, 0.1),
        (0, "weight[0]", 0.7, 0.01),
        (0, "weight[1]", 0.3, 0.01),
        (0, "component_mean[0,0]", 0.0, 1.0),
        (0, "component_mean[1,0]", 0.1, 1.0),
        (1, "weight[0]", 0.51, 0.05),
        (1, "weight[1]", 0.49, 0.05),
        (1, "component_mean[0,0]", 0.0, 0.1),
        (1, "component_mean[1,0]", 0.2, 0.1),
        (2, "weight[0]", 0.9, np.nan),
        (2, "weight[1]", 0.1, np.nan),
    ]
    frame = pd.DataFrame(rows, columns=["point", "quantity", "estimate", "se_sandwich"])
    flags = identified_flags(frame).tolist()
    # 0.4 > 3 sqrt(2) 0.01; at point 1 neither 0.02 nor 0.2 exceeds 3 sqrt(2) x SE
    assert flags[:5] == [True] * 5
    assert flags[5:9] == [False] * 4
    assert all(pd.isna(f) for f in flags[9:])
    # without inference the SE column holds no numbers at all (object dtype): NA, no crash
    no_inference = frame.assign(se_sandwich=pd.Series([None] * len(frame), dtype=object))
    assert all(pd.isna(f) for f in identified_flags(no_inference).tolist()[1:])


def test_restart_report_on_a_relabelled_copy():
    x = x_rows(100)
    best = make_module("gaussian", k=3)
    switched = copy.deepcopy(best)
    relabel(switched.net, switched.family, [1, 2, 0])
    other = make_module("gaussian", k=3, seed=5)

    def member(index, module, objective):
        return SimpleNamespace(
            index=index, module=module, objective=objective, val_nll=objective, alive=True
        )

    report = restart_report(
        [member(0, best, 1.0), member(1, switched, 1.0), member(2, other, 1.5)], 0, x
    )
    rows = report.restarts.set_index("restart")
    assert bool(rows.loc[1, "permuted"])
    assert rows.loc[1, "param_distance_raw"] > 0.1
    assert rows.loc[1, "param_distance_aligned"] < 1e-12
    pairs = report.pairs.set_index(["restart_a", "restart_b"])
    assert abs(pairs.loc[(0, 1), "predictive_skl"]) < 1e-10  # the same predictive law
    assert pairs.loc[(0, 2), "predictive_skl"] > 0.01
    assert report.metrics["diagnostics/restarts_objective_spread"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_component_quantities_average_to_the_mixture_quantities(kind):
    """E[y|x] = sum_k pi_k E_k[y|x] (and class probabilities likewise), in original units."""
    module, x = make_module(kind), x_rows()
    module.y_scaler.fit(module.y_scaler.inverse(module.mixture(x).sample()) * 3.0 + 1.0)
    values = {k: v.detach().numpy() for k, v in module.quantities(x).items()}
    prefix = {"gaussian": "mean", "categorical": "prob", "wishart": "mean"}[kind]
    component = {
        "gaussian": "component_mean",
        "categorical": "component_prob",
        "wishart": "component_mean",
    }[kind]
    mixture_names = [n for n in values if n.startswith(prefix + "[")]
    assert mixture_names
    for name in mixture_names:
        index = name[len(prefix) + 1 : -1]
        total = sum(values[f"weight[{k}]"] * values[f"{component}[{k},{index}]"] for k in range(3))
        np.testing.assert_allclose(total, values[name], rtol=1e-10, atol=1e-12)


def test_unordered_models_report_no_component_quantities():
    module = MDNModule(in_dim=1, event_shape=[1], n_components=3, identifiability="none")
    assert not [n for n in module.quantities(x_rows()) if "weight" in n or "component" in n]
    with pytest.raises(Exception, match="identifiability"):
        MDNModule(in_dim=1, event_shape=[1], identifiability="sorted")
