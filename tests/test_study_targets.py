"""The coverage study's targets for the categorical and Wishart settings: the simulators' true
quantities against independent evaluations, the enumeration grid's projection against
scikit-learn's logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression

from mdnlab.data.simulators import SIMULATORS, latent_class_params, wishart_params
from mdnlab.studies.coverage import LATENT_CLASSES
from mdnlab.studies.population import enumeration_grid, population_fit
from mdnlab.studies.replicates import ModelSpec, build_module

X_PROBE = np.linspace(-0.9, 0.9, 7)[:, None]


def test_latent_class_quantities_are_the_marginals_of_its_joint_pmf():
    truth = SIMULATORS["synth_latent_class"]
    q = truth.quantities(X_PROBE)
    joint = np.stack(
        [
            np.exp(truth.log_prob(X_PROBE, np.column_stack([np.full(7, a), np.full(7, b)])))
            for a in range(3)
            for b in range(2)
        ],
        axis=1,
    ).reshape(7, 3, 2)
    np.testing.assert_allclose(joint.sum(axis=(1, 2)), 1.0, atol=1e-12)
    for c in range(3):
        np.testing.assert_allclose(q[f"prob[0,{c}]"], joint[:, c, :].sum(axis=1), atol=1e-12)
    for c in range(2):
        np.testing.assert_allclose(q[f"prob[1,{c}]"], joint[:, :, c].sum(axis=1), atol=1e-12)


def test_wishart_mixture_mean_matrix_against_scipy():
    truth = SIMULATORS["synth_wishart"]
    q = truth.quantities(X_PROBE)
    w, df, chol = wishart_params(X_PROBE)
    for row in range(len(X_PROBE)):
        expected = sum(
            w[row, k] * stats.wishart(df[row, k], chol[row, k] @ chol[row, k].T).mean()
            for k in range(2)
        )
        for i in range(3):
            for j in range(i + 1):
                assert q[f"mean[{i},{j}]"][row] == pytest.approx(expected[i, j], rel=1e-12)


def test_enumeration_grid_is_the_exact_joint_pmf():
    truth = SIMULATORS["synth_latent_class"]
    grid = enumeration_grid(truth, LATENT_CLASSES, x_nodes=6)
    assert len(grid) == 6 * 6
    assert grid.max_mass_error < 1e-12
    assert grid.weights.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(grid.log_p, truth.log_prob(grid.x, grid.y), atol=0)
    # every node's y weights are the pmf at that node times its x weight
    node0 = grid.node == 0
    np.testing.assert_allclose(
        grid.weights[node0] / grid.x_weights[0], np.exp(grid.log_p[node0]), atol=1e-12
    )


def categorical_maker(k: int, hidden=()):
    spec = ModelSpec("categorical", k, tuple(hidden), n_classes=LATENT_CLASSES)

    def make(seed):
        torch.manual_seed(seed)
        return build_module(spec, 1, [2])

    return make


def test_k1_linear_projection_is_two_weighted_logistic_regressions():
    """A K = 1 categorical MDN with a linear head is one multinomial logistic regression per
    output (they share no parameters), so its projection onto the grid is what scikit-learn's
    unpenalized logistic regression fits to the grid's rows with the grid's weights."""
    truth = SIMULATORS["synth_latent_class"]
    grid = enumeration_grid(truth, LATENT_CLASSES, x_nodes=24)
    fit = population_fit(grid, categorical_maker(1), seeds=[0], tol=1e-9, max_iter=2000)
    assert fit.converged
    with torch.no_grad():
        ours = fit.module.quantities(torch.as_tensor(X_PROBE))
    for d, classes in enumerate(LATENT_CLASSES):
        reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000)
        reference.fit(grid.x, grid.y[:, d].astype(int), sample_weight=grid.weights * len(grid))
        expected = reference.predict_proba(X_PROBE)
        for c in range(classes):
            np.testing.assert_allclose(ours[f"prob[{d},{c}]"].numpy(), expected[:, c], atol=1e-5)
    # and the projection is not the truth: the marginals are not linear-logit in x
    truth_q = truth.quantities(X_PROBE)
    assert np.abs(ours["prob[0,0]"].numpy() - truth_q["prob[0,0]"]).max() > 1e-3
    assert fit.kl > 1e-3


def test_contained_categorical_family_reaches_zero_kl():
    """K = 2 with a linear head holds synth_latent_class exactly: started at the truth's own
    parameters, the population fit stays at KL = 0; from random starts one reaches it."""
    truth = SIMULATORS["synth_latent_class"]
    grid = enumeration_grid(truth, LATENT_CLASSES, x_nodes=24)
    fit = population_fit(grid, categorical_maker(2), seeds=[0, 1, 2], tol=1e-7, max_iter=3000)
    assert fit.kl < 1e-6, fit.member_kl
    with torch.no_grad():
        ours = fit.module.quantities(torch.as_tensor(X_PROBE))
    truth_q = truth.quantities(X_PROBE)
    for name in ("prob[0,0]", "prob[0,1]", "prob[1,0]"):
        np.testing.assert_allclose(ours[name].numpy(), truth_q[name], atol=2e-3)
    w, _ = latent_class_params(X_PROBE)
    assert w.min() > 0.1  # both latent classes matter over the probe points
