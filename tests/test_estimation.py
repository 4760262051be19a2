"""Penalized estimation: the objective against finite differences, batched restarts against
sequential fits, the batched L-BFGS against closed forms, and the Laplace evidence against
2-d numerical quadrature of the marginal likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, logsumexp

from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.ensemble import MemberEnsemble
from mdnlab.estimation.evidence import laplace_evidence
from mdnlab.estimation.fit import FitData, PolishSettings, best_member, fit_members, member_seeds
from mdnlab.estimation.lbfgs import lbfgs_members
from mdnlab.estimation.members import BatchedMLP
from mdnlab.estimation.objective import objective
from mdnlab.estimation.selection import evidence_at, select_penalty
from mdnlab.module import MDNModule
from mdnlab.polish import lbfgs_polish

torch.set_num_threads(1)


def two_branch_data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 1))
    y = rng.choice([-1.0, 1.0], (n, 1)) * (1 + x) + 0.3 * rng.standard_normal((n, 1))
    return torch.tensor(x), torch.tensor(y)


def gaussian_maker(x, y, hidden=(4,), k=2):
    def make(seed):
        torch.manual_seed(seed)
        module = MDNModule(1, [1], n_components=k, hidden_sizes=list(hidden))
        module.x_scaler.fit(x)
        module.y_scaler.fit(y)
        return module

    return make


def test_member_objective_gradient_matches_finite_differences():
    x, y = two_branch_data(80)
    make = gaussian_maker(x, y, hidden=(3,))
    modules = [make(s) for s in (0, 1)]
    ensemble = MemberEnsemble(
        modules[0], BatchedMLP.from_members([m.net for m in modules]), 80, 2.5
    )
    theta = ensemble.members.flat().detach()

    def f(t):
        return ensemble.objective(x, y, theta=t)

    point = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(point).sum(), point)
    h = 1e-6
    for r in range(2):
        for j in range(0, theta.shape[1], 5):
            e = torch.zeros_like(theta)
            e[r, j] = h
            numeric = (f(theta + e)[r] - f(theta - e)[r]) / (2 * h)
            assert float(grad[r, j]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-8)
    # Member r's objective is the plain module's mean NLL + lambda/(2n)|theta_r|^2.
    for r, module in enumerate(modules):
        squares = sum(float(p.detach().pow(2).sum()) for p in module.net.parameters())
        want = float(module.nll(x, y).detach()) + 2.5 / (2 * 80) * squares
        assert float(f(theta)[r]) == pytest.approx(want, rel=1e-12)
        assert float(objective(module, x, y, 2.5).detach()) == pytest.approx(want, rel=1e-12)


def test_row_weights_count_rows_like_a_resampled_dataset():
    """A bootstrap member is a member whose rows carry multinomial counts: its objective must
    equal the plain objective on the dataset with each row repeated that many times."""
    x, y = two_branch_data(50)
    make = gaussian_maker(x, y, hidden=(3,))
    modules = [make(s) for s in (0, 1)]
    counts = torch.tensor(
        np.random.default_rng(2).multinomial(50, [1 / 50] * 50, size=2), dtype=torch.float64
    )
    members = BatchedMLP.from_members([m.net for m in modules])
    ensemble = MemberEnsemble(modules[0], members, 50, 1.5, row_weights=counts)
    got = ensemble.objective(x, y).detach()
    for r, module in enumerate(modules):
        rows = torch.repeat_interleave(torch.arange(50), counts[r].long())
        want = objective(module, x[rows], y[rows], 1.5).detach()
        assert float(got[r]) == pytest.approx(float(want), rel=1e-12)
    only_second = ensemble.objective(x, y, theta=members.flat()[[1]], members=torch.tensor([1]))
    assert float(only_second[0].detach()) == pytest.approx(float(got[1]), rel=1e-14)


def test_batched_restarts_equal_sequential_fits():
    x, y = two_branch_data(240)
    data = FitData(x[:160], y[:160], x[160:200], y[160:200])
    make = gaussian_maker(x[:160], y[:160])
    seeds = member_seeds(3, 3)
    settings = TrainerSettings(max_epochs=150, patience=30)
    # Polished to max|grad| 1e-11 with lambda/n = 0.03 the smallest curvature, each fit lies
    # within ~3e-10 of its optimum: both routes must land on the same one.
    polish = PolishSettings(True, 1e-11, 3000, 0)
    _, batched = fit_members(make, seeds, data, 5.0, settings, 0.02, polish=polish)
    sequential = [
        fit_members(make, [s], data, 5.0, settings, 0.02, polish=polish)[1][0] for s in seeds
    ]
    for b, s in zip(batched, sequential, strict=True):
        assert b.seed == s.seed and b.epochs == s.epochs and b.best_epoch == s.best_epoch
        assert b.converged and s.converged
        for name, value in b.before_polish.items():  # Adam: the same path, member by member
            np.testing.assert_allclose(value.numpy(), s.before_polish[name].numpy(), atol=1e-12)
        for p, q in zip(b.module.net.parameters(), s.module.net.parameters(), strict=True):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=0, atol=1e-8)
        assert b.objective == pytest.approx(s.objective, abs=1e-12)
    # The members start from different weights, and the best is the lowest objective.
    first = [m.before_polish["2.bias"] for m in batched]
    assert float((first[0] - first[1]).abs().max()) > 1e-3
    assert best_member(batched).objective == min(m.objective for m in batched)
    assert seeds[0] == 3  # member 0 is the run's own seed


def test_batched_lbfgs_solves_independent_quadratics():
    rng = np.random.default_rng(0)
    r, p = 3, 6
    mats = []
    for _ in range(r):
        q = rng.normal(size=(p, p))
        mats.append(q @ q.T + np.diag(np.geomspace(1e-2, 10, p)))
    a = torch.tensor(np.stack(mats))
    b = torch.tensor(rng.normal(size=(r, p)))

    def fn(theta, members=None):
        aa, bb = (a, b) if members is None else (a[members], b[members])
        return 0.5 * torch.einsum("rp,rpq,rq->r", theta, aa, theta) - (bb * theta).sum(dim=1)

    out = lbfgs_members(fn, torch.zeros(r, p, dtype=torch.float64), tol=1e-11, max_iter=500)
    assert bool(out.converged.all())
    for i in range(r):
        np.testing.assert_allclose(
            out.theta[i].numpy(), np.linalg.solve(mats[i], b[i].numpy()), atol=1e-9
        )


def test_penalized_polish_matches_lbfgs_on_the_same_objective():
    x, y = two_branch_data(160)
    data = FitData(x, y)
    make = gaussian_maker(x, y, hidden=(3,))
    _, (result,) = fit_members(
        make,
        [0],
        data,
        3.0,
        TrainerSettings(max_epochs=30),
        0.02,
        polish=PolishSettings(True, 1e-9, 3000, 0),
    )
    assert result.converged and result.grad_max <= 1e-9
    # torch's own strong-Wolfe L-BFGS from the same Adam weights reaches the same optimum.
    reference = make(0)
    reference.net.load_state_dict(result.before_polish)
    torch_fit = lbfgs_polish(
        lambda: objective(reference, x, y, 3.0), list(reference.net.parameters()), 1e-8, 3000
    )
    assert torch_fit.grad_max <= 1e-7
    assert result.objective == pytest.approx(torch_fit.loss, abs=1e-10)
    for p, q in zip(result.module.net.parameters(), reference.net.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), atol=2e-4)


def logistic_data(n=2000, seed=11):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1)) * 2 + 1
    p0 = expit(0.4 + 0.3 * (x[:, 0] - 1) / 2)
    y = (rng.uniform(size=n) >= p0).astype(np.float64)[:, None]  # code 0 with probability p0
    return x, y


def logistic_module(x, y, seed=0):
    torch.manual_seed(seed)  # the same start every run
    module = MDNModule(1, [1], family="categorical", n_components=1, hidden_sizes=[], n_classes=[2])
    module.x_scaler.fit(torch.tensor(x))
    module.y_scaler.fit(torch.tensor(y))
    return module


def quadrature_log_evidence(x, y, penalty, centre, half_width, points=101):
    """log of the integral over (w, b) of prod_i p(y_i | x_i) * N(w; 0, 1/lambda) N(b; 0, 1/lambda),
    p(code 0 | x) = sigmoid(w * x_std + b), on a grid (numpy only)."""
    xs = (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
    w = np.linspace(centre[0] - half_width[0], centre[0] + half_width[0], points)
    b = np.linspace(centre[1] - half_width[1], centre[1] + half_width[1], points)
    ww, bb = np.meshgrid(w, b, indexing="ij")
    z = ww[..., None] * xs + bb[..., None]  # (points, points, n)
    is0 = y[:, 0] == 0
    log_lik = np.where(is0, -np.logaddexp(0, -z), -np.logaddexp(0, z)).sum(axis=-1)
    log_prior = np.log(penalty / (2 * np.pi)) - 0.5 * penalty * (ww**2 + bb**2)
    cell = (w[1] - w[0]) * (b[1] - b[0])
    return float(logsumexp(log_lik + log_prior) + np.log(cell))


def test_laplace_evidence_matches_quadrature_for_a_two_weight_logistic_model():
    x, y = logistic_data()
    xt, yt = torch.tensor(x), torch.tensor(y)
    for penalty in (1.0, 50.0):
        module = logistic_module(x, y)
        fit = lbfgs_polish(
            lambda module=module, penalty=penalty: objective(module, xt, yt, penalty),
            list(module.net.parameters()),
            1e-10,
            500,
        )
        # a two-weight convex problem: L-BFGS's line search can stall a hair above 1e-10
        assert fit.grad_max < 1e-8
        terms, _ = evidence_at(module, xt, yt, penalty)
        w = float(module.net[0].weight[0, 0].detach())
        b = float(module.net[0].bias[0].detach())
        want = quadrature_log_evidence(x, y, penalty, (w, b), (0.5, 0.5))
        assert terms.log_evidence == pytest.approx(want, abs=0.02)
        # gamma from the logistic model's own Hessian: mean p(1-p) [x_std, 1][x_std, 1]'.
        xs = (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
        p0 = expit(w * xs + b)
        design = np.column_stack([xs, np.ones_like(xs)])
        a = (design * (p0 * (1 - p0))[:, None]).T @ design / len(xs)
        eig = np.linalg.eigvalsh(a)
        gamma = np.sum(len(xs) * eig / (len(xs) * eig + penalty))
        assert terms.effective_params == pytest.approx(gamma, rel=1e-8)


def test_evidence_fixed_point_maximises_the_quadrature_evidence():
    x, y = logistic_data(n=300, seed=5)
    xt, yt = torch.tensor(x), torch.tensor(y)
    data = FitData(xt, yt)
    ensemble, members = fit_members(
        lambda seed: logistic_module(x, y),
        [0],
        data,
        1.0,
        TrainerSettings(max_epochs=5),
        0.05,
        polish=PolishSettings(True, 1e-10, 2000, 0),
    )
    choice = select_penalty(ensemble, members, data, PolishSettings(True, 1e-10, 2000, 0))
    grid = np.geomspace(choice.penalty / 8, choice.penalty * 8, 13)
    centre = [float(p.detach()) for p in members[0].module.net.parameters()]
    exact = [quadrature_log_evidence(x, y, lam, (centre[0], centre[1]), (1.0, 1.0)) for lam in grid]
    best = grid[int(np.argmax(exact))]
    # The Laplace fixed point picks the lambda the exact evidence prefers (within the grid's
    # factor-of-1.41 spacing, allowing for the Laplace error at n = 300).
    assert abs(np.log(best / choice.penalty)) <= np.log(2.0)
    assert choice.log_evidence == pytest.approx(max(exact), abs=0.1)
    # the estimate is the visited lambda with the highest evidence
    assert choice.log_evidence == max(ev for _, ev in choice.path)


def test_evidence_that_runs_past_its_bound_stops_there_and_keeps_the_best_visited(
    monkeypatch, capsys
):
    import mdnlab.estimation.selection as selection

    x, y = logistic_data(n=300, seed=5)
    xt, yt = torch.tensor(x), torch.tensor(y)
    data = FitData(xt, yt)
    settings = PolishSettings(True, 1e-10, 2000, 0)

    def fitted(start):
        return fit_members(
            lambda seed: logistic_module(x, y),
            [0],
            data,
            start,
            TrainerSettings(max_epochs=5),
            0.05,
            polish=settings,
        )

    free = select_penalty(*fitted(1.0), data, settings)
    # a range whose lower end lies above the evidence's maximum: the fixed point walks down to
    # it, asks for less, and stops there with a warning instead of running on
    bound = 3.0 * free.penalty
    monkeypatch.setattr(selection, "PENALTY_RANGE", (bound, 1e6))
    capsys.readouterr()
    choice = select_penalty(*fitted(40.0 * free.penalty), data, settings)
    assert "runs past the bound" in capsys.readouterr().err
    visited = [lam for lam, _ in choice.path]
    assert min(visited) >= bound and choice.penalty in visited
    assert choice.log_evidence == max(ev for _, ev in choice.path)
    assert choice.log_evidence < free.log_evidence  # the unconstrained maximum is below the bound


def test_laplace_evidence_rejects_a_non_minimum():
    with pytest.raises(ValueError, match="not positive definite"):
        laplace_evidence(1.0, 1.0, np.array([-1.0, 2.0]), n=10, penalty=1.0)


def test_a_diverged_member_is_frozen_and_all_diverged_is_an_error():
    from mdnlab.errors import TrainingError

    x, y = two_branch_data(60)
    make = gaussian_maker(x, y, hidden=(3,))
    modules = [make(s) for s in (0, 1, 2)]
    members = BatchedMLP.from_members([m.net for m in modules])
    ensemble = MemberEnsemble(modules[0], members, 60, 1.0)
    with torch.no_grad():
        members.biases[-1][1].fill_(float("nan"))
    loss = ensemble.training_step((x, y), 0)
    assert torch.isfinite(loss)
    assert ensemble.alive.tolist() == [True, False, True]
    assert ensemble.training_mask.tolist() == [True, False, True]
    # From then on the loss is the other two members' objectives; member 1 gets no gradient.
    want = ensemble.objective(x, y)[[0, 2]].sum()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    again = ensemble.training_step((x, y), 0)
    assert float(again.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    (grad,) = torch.autograd.grad(again, [members.weights[0]])
    assert float(grad[1].abs().max()) == 0.0
    assert bool(torch.isfinite(grad).all()) and float(grad[0].abs().max()) > 0
    with torch.no_grad():
        for b in members.biases:
            b.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"member\(s\) \[0, 2\]"):
        ensemble.training_step((x, y), 0)


def test_evidence_selection_away_from_a_minimum_warns_and_keeps_lambda(capsys):
    x, y = two_branch_data(120)
    data = FitData(x, y)
    ensemble, members = fit_members(
        gaussian_maker(x, y, hidden=(6,), k=3),
        [0],
        data,
        2.0,
        TrainerSettings(max_epochs=2),
        0.02,
        polish=PolishSettings(False),
    )
    choice = select_penalty(ensemble, members, data, PolishSettings(False))
    assert choice.penalty == 2.0 and choice.iterations == 0
    assert np.isnan(choice.log_evidence)
    assert "not positive definite" in capsys.readouterr().err
