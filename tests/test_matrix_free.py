"""Matrix-free inference against independent references: dense A, the dense path, closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY, saturated_gaussian_fit, textbook_standard_errors
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from mdnlab.inference.covariance import Curvature
from mdnlab.inference.curvature import hessian_mean_nll, score_outer_product
from mdnlab.inference.delta import gradient_basis, quantity_jacobian
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.matrix_free import HessianOperator, lanczos_extremes, solve_standard_errors
from mdnlab.inference.scores import directional_scores
from mdnlab.inference.step import run_inference, run_inference_matrix_free
from mdnlab.module import MDNModule
from mdnlab.pipeline import run
from mdnlab.polish import polish

torch.set_num_threads(1)


def random_model(seed=0, q=2, hidden=(3,), k=2, n=40):
    """Unfitted weights: A is indefinite."""
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=1, event_shape=[q], n_components=k, hidden_sizes=list(hidden), identifiability="none"
    )
    x = torch.randn(n, 1, dtype=torch.float64)
    y = torch.randn(n, q, dtype=torch.float64) * 2 + 1
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    return module, x, y


@pytest.fixture(scope="module")
def fitted():
    """K = 2, one hidden layer of 4 (33 weights), data from an MDN of that architecture; Adam
    then the polish. A is singular here: 6 eigenvalues below 1e-8 of the largest, condition
    number of the retained part ~1e8, so the pseudo-inverse must truncate as the dense path."""
    torch.manual_seed(1)
    n = 3000
    truth = MDNModule(in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[4])
    x = torch.rand(n, 1, dtype=torch.float64) * 4 - 2
    with torch.no_grad():
        y = truth.mixture(x).sample()
    module = MDNModule(
        in_dim=1, event_shape=[1], n_components=2, hidden_sizes=[4], identifiability="none"
    )
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-2)
    for _ in range(300):
        optimizer.zero_grad()
        module.nll(x, y).backward()
        optimizer.step()
    polish(lambda: module.nll(x, y), list(module.parameters()), tol=1e-9, max_iter=2000)
    return module, x, y


@pytest.mark.parametrize("params,cache", [("all", True), ("all", False), ("head", True)])
def test_hessian_vector_products_match_the_dense_hessian(params, cache):
    module, x, y = random_model(q=2, hidden=(3, 2))
    flat = FlatModel(module, params)
    a = hessian_mean_nll(flat, x, y).numpy()
    operator = HessianOperator(flat, x, y, chunk=13, cache_graph=cache)
    rng = np.random.default_rng(0)
    for _ in range(3):  # repeated products reuse the cached graphs
        v = rng.standard_normal(flat.n_params)
        np.testing.assert_allclose(operator.matvec(v), a @ v, rtol=1e-12, atol=1e-12)
    theta = flat.theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(-flat.log_prob(theta, x, y).mean(), theta)
    np.testing.assert_allclose(operator.gradient, gradient.numpy(), rtol=1e-12, atol=1e-14)


def test_directional_scores_are_per_sample_scores_times_directions():
    from mdnlab.inference.curvature import per_sample_scores

    module, x, y = random_model(seed=1)
    flat = FlatModel(module)
    directions = np.random.default_rng(1).standard_normal((flat.n_params, 3))
    scores = per_sample_scores(flat, x, y).numpy()
    np.testing.assert_allclose(
        directional_scores(flat, x, y, directions, chunk=7), scores @ directions, rtol=1e-12
    )


def test_gradient_basis_spans_the_gradients():
    module, x, _ = random_model(seed=2)
    _, _, jac = quantity_jacobian(FlatModel(module), x[:30])
    g = jac.numpy()
    g[3] = 0.0
    g[7] = g[5]
    q, c = gradient_basis(g, 1e-12)
    assert q.shape[1] < len(g)  # smooth in x: far fewer directions than quantities
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)
    np.testing.assert_allclose(c @ q.T, g, atol=1e-10 * np.abs(g).max())
    distinct, pick = gradient_basis(g, 0.0)
    assert distinct.shape[1] == len(g) - 2  # one zero row, one repeated row
    np.testing.assert_array_equal(pick @ distinct.T, g)


def test_lanczos_bounds_the_extreme_eigenvalues():
    module, x, y = random_model(seed=3)
    flat = FlatModel(module)
    values = np.linalg.eigvalsh(hessian_mean_nll(flat, x, y).numpy())
    assert values[0] < 0  # unfitted: indefinite
    operator = HessianOperator(flat, x, y)
    low, high = lanczos_extremes(operator, steps=8)
    scale = np.abs(values).max()
    assert values[0] - 1e-12 * scale <= low and high <= values[-1] + 1e-12 * scale
    low, high = lanczos_extremes(operator, steps=flat.n_params)  # the whole space: exact
    np.testing.assert_allclose([low, high], [values[0], values[-1]], rtol=1e-8, atol=1e-12 * scale)


def dense_standard_errors(flat, x, y, gradients, eig_rtol=1e-8):
    a = hessian_mean_nll(flat, x, y).numpy()
    b = score_outer_product(flat, x, y).numpy()
    return Curvature.from_matrices(a, b, n=len(x), eig_rtol=eig_rtol).standard_errors(gradients)


@pytest.mark.parametrize("basis_rtol", [1e-10, 0.0])
def test_matrix_free_matches_the_dense_path_on_a_singular_hessian(fitted, basis_rtol):
    module, x, y = fitted
    flat = FlatModel(module)
    a = hessian_mean_nll(flat, x, y).numpy()
    values = np.linalg.eigvalsh(a)
    assert np.sum(values <= 1e-8 * values.max()) >= 3  # singular at the dense path's threshold
    points = torch.linspace(-1.5, 1.5, 5)[:, None].double()
    names, _, jac = quantity_jacobian(flat, points)
    assert names == ["mean[0]", "cov[0,0]"]
    dense_h, dense_s = dense_standard_errors(flat, x, y, jac.numpy())
    operator = HessianOperator(flat, x, y, chunk=512)
    se_h, se_s, report = solve_standard_errors(
        operator, jac.numpy(), x, y, rtol=1e-8, basis_rtol=basis_rtol, chunk=512
    )
    assert report.converged.all() and report.iterations.max() <= flat.n_params + 5
    np.testing.assert_allclose(se_h, dense_h, rtol=1e-5)
    np.testing.assert_allclose(se_s, dense_s, rtol=1e-5)


def test_matrix_free_gives_the_closed_form_standard_errors_of_a_saturated_design():
    """As tests/test_inference_core.py: 3 x levels, K = 1, 14 weights of which 6 identified
    (8 exact null directions of A): the textbook SEs of level means and (1/n) variances."""
    levels, x, y, module = saturated_gaussian_fit()
    xt, yt = torch.tensor(x), torch.tensor(y)
    result = run_inference_matrix_free(module, xt, yt, levels[:, None], rtol=1e-10)
    assert result.path == "matrix-free" and result.eigenvalues.size == 0
    assert result.metrics["inference/solver_unconverged"] == 0
    frame = result.predictions
    for i, level in enumerate(levels):
        want_h, want_s = textbook_standard_errors(y[x[:, 0] == level, 0])
        rows = frame[frame.point == i].set_index("quantity")
        np.testing.assert_allclose(rows.se_hessian, want_h, rtol=1e-4)
        np.testing.assert_allclose(rows.se_sandwich, want_s, rtol=1e-4)


def test_step_matches_dense_step_caps_points_and_leaves_weight_ses_out(fitted):
    module, x, y = fitted
    points = np.linspace(-1.5, 1.5, 4)[:, None]
    dense = run_inference(module, x, y, points)
    free = run_inference_matrix_free(module, x, y, points, max_points=3, chunk=700)
    assert free.path == "matrix-free" and free.grid is None and free.eigenvalues.size == 0
    solved = free.predictions.point < 3
    for column in ["estimate", "se_hessian", "se_sandwich"]:
        np.testing.assert_allclose(
            free.predictions.loc[solved, column], dense.predictions.loc[solved, column], rtol=1e-5
        )
    assert free.predictions.loc[~solved, ["se_hessian", "se_sandwich"]].isna().all().all()
    np.testing.assert_allclose(free.predictions.estimate, dense.predictions.estimate, rtol=1e-14)
    assert list(free.parameters.columns) == list(dense.parameters.columns)
    np.testing.assert_array_equal(free.parameters.estimate, dense.parameters.estimate)
    assert free.parameters[["se_hessian", "se_sandwich", "identified"]].isna().all().all()
    m = free.metrics
    assert m["inference/grad_norm"] == pytest.approx(dense.metrics["inference/grad_norm"], rel=1e-6)
    assert m["inference/n_params"] == 33 and m["inference/se_points"] == 3
    assert 0 < m["inference/solver_iterations_max"] <= 40 and m["inference/solver_unconverged"] == 0
    assert m["inference/eig_max_estimate"] == pytest.approx(dense.eigenvalues.max(), rel=1e-6)
    assert m["inference/eig_min_estimate"] >= dense.eigenvalues.min() - 1e-12


def test_unconverged_solves_give_nan_and_a_warning(fitted, capsys):
    module, x, y = fitted
    result = run_inference_matrix_free(module, x, y, np.array([[0.0], [0.5]]), max_iter=3)
    assert result.predictions[["se_hessian", "se_sandwich"]].isna().all().all()
    assert result.metrics["inference/solver_unconverged"] == 4
    assert result.metrics["inference/solver_iterations_max"] == 3
    err = capsys.readouterr().err
    assert "did not converge" in err and "solver_max_iter=3" in err


def test_pipeline_switches_to_the_matrix_free_path_above_dense_max_params(tmp_path, tiny_csv):
    def config(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(
                "train",
                overrides=[
                    "data=file",
                    f"data.path={tiny_csv}",
                    "data.x_cols=[x]",
                    "data.y_cols=[y]",
                    f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                    *TINY,
                    "seed=3",
                    *overrides,
                ],
            )

    dense_metrics = run(config())
    free_metrics = run(config("inference.dense_max_params=10", "inference.max_points=5"))
    assert "inference/n_null_eigs" in dense_metrics and "inference/n_null_eigs" not in free_metrics
    assert free_metrics["inference/n_params"] == dense_metrics["inference/n_params"] > 10
    assert free_metrics["inference/solver_unconverged"] == 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("file").experiment_id], order_by=["attributes.start_time"]
    )
    by_path = {r.data.tags["inference.path"]: r for r in runs}
    assert set(by_path) == {"dense", "matrix-free"}

    def artifact(path_tag, name):
        folder = tmp_path / path_tag
        folder.mkdir(exist_ok=True)
        run_id = by_path[path_tag].info.run_id
        return pd.read_csv(client.download_artifacts(run_id, f"inference/{name}", str(folder)))

    dense, free = artifact("dense", "predictions.csv"), artifact("matrix-free", "predictions.csv")
    solved = free.point < 5
    per_point = 2 + 2 * 2  # mean, cov; weight and component mean of 2 ordered components
    assert solved.sum() == 5 * per_point and free.loc[~solved, "se_hessian"].isna().all()
    # Same seed, same fit: the two paths agree where both give SEs.
    np.testing.assert_allclose(
        free.loc[solved, ["se_hessian", "se_sandwich"]],
        dense.loc[solved, ["se_hessian", "se_sandwich"]],
        rtol=1e-5,
    )
    parameters = artifact("matrix-free", "parameters.csv")
    assert parameters[["se_hessian", "se_sandwich", "identified"]].isna().all().all()
    plots = {a.path for a in client.list_artifacts(by_path["matrix-free"].info.run_id, "plots")}
    assert "plots/training_curves.png" in plots and "plots/hessian_spectrum.png" not in plots
    dense_plots = {a.path for a in client.list_artifacts(by_path["dense"].info.run_id, "plots")}
    assert "plots/hessian_spectrum.png" in dense_plots
