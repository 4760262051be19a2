"""The KL projection of a truth onto an MDN family, computed by quadrature instead of sampling.

For 1-d x ~ U(-1, 1) and scalar y, the population cross-entropy of a model q is
E_x E_{y|x}[-log q(y|x)] and KL(p || q) = E[log p - log q]. Both are sums over a fixed
quadrature grid of (x, y) rows with weights w ~ p(x, y) dx dy (``quadrature_grid``), so that a
model's population objective is a weighted mean NLL over the grid: exactly the objective
``MemberEnsemble`` minimises with row weights. ``population_fit`` minimises it with the batched
L-BFGS at penalty 0: the limit of the penalized objective as n -> inf, whose minimiser is the
KL projection q* and whose KL, KL* = KL(p || q*), is how far the family is from the truth.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mdnlab.diagnostics.kl import model_log_prob
from mdnlab.estimation.ensemble import MemberEnsemble
from mdnlab.estimation.lbfgs import lbfgs_members
from mdnlab.estimation.members import BatchedMLP

PILOT_ROWS = 4000
PILOT_SEED = 0
# Rows whose weight is below this fraction of the largest are dropped: they hold < 1e-14 of
# the mass on a 48 x 1601 grid and would only slow every objective evaluation.
PRUNE = 1e-20
_LOG_2PI_E = float(np.log(2 * np.pi * np.e))


def pilot_sample(truth, n: int = PILOT_ROWS, seed: int = PILOT_SEED):
    """(x, y) from ``truth.sample(n, default_rng(seed))``: the grid's y centre and spread, and
    the scalers of the modules fitted to it (``fit_scalers``), come from this sample."""
    return truth.sample(n, np.random.default_rng(seed))


def fit_scalers(module, truth):
    """Fit ``module``'s x and y scalers on ``pilot_sample(truth)``, as a training split would
    (the same sample for every seed, so that members and warm starts share them)."""
    x, y = pilot_sample(truth)
    module.x_scaler.fit(torch.as_tensor(x))
    module.y_scaler.fit(torch.as_tensor(y))
    return module


@dataclass(frozen=True)
class QuadratureGrid:
    """Rows (x, y) with weights w summing to 1, so that E f(x, y) ~ sum w f.

    x: Gauss-Legendre nodes on [-1, 1] (weight / 2: the density of U(-1, 1)); y at each node:
    y = centre + spread * sinh(s) on a uniform grid of s in [-s_max, s_max] (trapezoid weights
    times dy/ds), times p(y|x). The weights are renormalised per x node (each node's y weights
    sum to its x weight); ``mass`` holds the per-node sum of p dy before that, so
    ``max_mass_error`` is the quadrature error of the y integral. Rows whose weight is below
    ``PRUNE`` times the largest are dropped (``log_p`` is finite on every kept row).
    """

    x: np.ndarray  # (m, 1)
    y: np.ndarray  # (m, 1)
    weights: np.ndarray  # (m,)
    log_p: np.ndarray  # (m,) log p(y|x), nats
    node: np.ndarray  # (m,) index into x_nodes of each row's x
    x_nodes: np.ndarray  # (x_nodes,)
    x_weights: np.ndarray  # (x_nodes,) summing to 1
    mass: np.ndarray  # (x_nodes,) sum over y of p(y|x) dy at each node, before renormalising
    centre: float
    spread: float

    def __len__(self) -> int:
        return self.weights.shape[0]

    @property
    def max_mass_error(self) -> float:
        return float(np.abs(self.mass - 1.0).max())

    @property
    def negative_entropy(self) -> float:
        """E[log p(y|x)]: the cross-entropy of the truth itself, with the sign flipped."""
        return float(self.weights @ self.log_p)

    def cross_entropy(self, log_q: np.ndarray) -> float:
        """E[-log q(y|x)] for log q at the grid's rows."""
        return float(-(self.weights @ log_q))

    def kl(self, log_q: np.ndarray) -> float:
        """KL(p || q) = E[log p - log q], nats."""
        return float(self.weights @ (self.log_p - log_q))

    def node_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """E[y | x] and Var[y | x] at each x node, (x_nodes,) each, from the grid's weights."""
        share = self.weights / self.x_weights[self.node]
        mean = np.bincount(self.node, share * self.y[:, 0], minlength=len(self.x_nodes))
        centred = self.y[:, 0] - mean[self.node]
        var = np.bincount(self.node, share * centred**2, minlength=len(self.x_nodes))
        return mean, var

    def gaussian_projection_kl(self) -> float:
        """min over every conditional Gaussian N(m(x), v(x)) of KL(p || q): at each x the
        best one matches the mean and variance, so the minimum is
        E[log p] + E_x[0.5 log(2 pi e Var[y|x])]. Any K = 1 Gaussian MDN has KL >= this."""
        _, var = self.node_moments()
        return self.negative_entropy + float(self.x_weights @ (0.5 * (_LOG_2PI_E + np.log(var))))


def quadrature_grid(
    truth,
    x_nodes: int = 48,
    y_nodes: int = 1601,
    centre: float | None = None,
    spread: float | None = None,
    s_max: float = 6.0,
) -> QuadratureGrid:
    """The grid for ``truth`` (anything with numpy ``log_prob(x, y) -> (n,)``, x ~ U(-1, 1)).

    ``centre`` and ``spread`` default to the median and half the interquartile range of y in
    ``pilot_sample(truth)``; the y grid then reaches centre +- spread * sinh(s_max) (+- 202
    spreads at s_max = 6), with nodes densest at the centre and thinning out geometrically.
    An odd ``y_nodes`` refined to 2 y_nodes - 1 keeps every node.
    """
    if centre is None or spread is None:
        _, y_pilot = pilot_sample(truth)
        q25, q50, q75 = np.quantile(y_pilot[:, 0], [0.25, 0.5, 0.75])
        centre = float(q50) if centre is None else centre
        spread = float(q75 - q25) / 2 if spread is None else spread
    t, wt = np.polynomial.legendre.leggauss(x_nodes)
    s = np.linspace(-s_max, s_max, y_nodes)
    trapezoid = np.full(y_nodes, s[1] - s[0])
    trapezoid[[0, -1]] /= 2
    y_line = centre + spread * np.sinh(s)
    dy = trapezoid * spread * np.cosh(s)
    x = np.repeat(t, y_nodes)[:, None]
    y = np.tile(y_line, x_nodes)[:, None]
    log_p = np.asarray(truth.log_prob(x, y), dtype=np.float64).reshape(x_nodes, y_nodes)
    p_dy = np.exp(log_p) * dy
    mass = p_dy.sum(axis=1)
    x_weights = wt / 2
    weights = (x_weights[:, None] * p_dy / mass[:, None]).ravel()
    keep = weights > PRUNE * weights.max()
    node = np.repeat(np.arange(x_nodes), y_nodes)
    return QuadratureGrid(
        x=x[keep],
        y=y[keep],
        weights=weights[keep],
        log_p=log_p.ravel()[keep],
        node=node[keep],
        x_nodes=t,
        x_weights=x_weights,
        mass=mass,
        centre=float(centre),
        spread=float(spread),
    )


def enumeration_grid(truth, n_classes: Sequence[int], x_nodes: int = 48) -> QuadratureGrid:
    """The grid for discrete y (class codes, one column per entry of ``n_classes``): at each
    Gauss-Legendre x node every cell of the product of classes, weighted by p(y|x). The y sum
    is exact, so ``mass`` is 1 up to rounding and only the x integral is a quadrature."""
    t, wt = np.polynomial.legendre.leggauss(x_nodes)
    cells = np.stack(np.meshgrid(*[np.arange(c) for c in n_classes], indexing="ij"), axis=-1)
    cells = cells.reshape(-1, len(n_classes)).astype(np.float64)
    x = np.repeat(t, len(cells))[:, None]
    y = np.tile(cells, (x_nodes, 1))
    log_p = np.asarray(truth.log_prob(x, y), dtype=np.float64).reshape(x_nodes, len(cells))
    p = np.exp(log_p)
    mass = p.sum(axis=1)
    x_weights = wt / 2
    return QuadratureGrid(
        x=x,
        y=y,
        weights=(x_weights[:, None] * p / mass[:, None]).ravel(),
        log_p=log_p.ravel(),
        node=np.repeat(np.arange(x_nodes), len(cells)),
        x_nodes=t,
        x_weights=x_weights,
        mass=mass,
        centre=0.0,
        spread=1.0,
    )


def population_kl(grid: QuadratureGrid, module) -> float:
    """KL(p || q) of an ``MDNModule`` q by the grid's quadrature."""
    return grid.kl(model_log_prob(module, grid.x, grid.y))


@dataclass
class PopulationFit:
    """The KL projection over the members tried; member r is ``sources[r]``."""

    module: object  # the best member's MDNModule at its final weights
    cross_entropy: float  # E[-log q*], nats
    kl: float  # KL* = E[log p - log q*]
    converged: bool  # the best member's max|grad| <= tol
    grad_max: float  # the best member's
    best: int  # index of the best member
    sources: list[str]  # "seed S" or "warm start J", per member
    member_kl: np.ndarray  # (R,) every member's final KL
    member_grad_max: np.ndarray  # (R,)
    member_converged: np.ndarray  # (R,) bool
    iterations: np.ndarray  # (R,) L-BFGS steps
    seconds: float

    def at_optimum(self, atol: float = 1e-6) -> int:
        """How many members ended within ``atol`` nats of the best KL."""
        return int((self.member_kl <= self.kl + atol).sum())


# Hyperparameters that do not change the model q(y|x) a set of weights stands for.
_TRAINING_ONLY = ("lr", "weight_decay", "identifiability")


def _check_same_model(modules: Sequence) -> None:
    """Every member is the same family and network (family options included) under the same
    scalers, so that the members share one ensemble and their weights mean the same thing."""

    def architecture(module) -> dict:
        return {k: v for k, v in module.hparams.items() if k not in _TRAINING_ONLY}

    first = modules[0]
    for j, module in enumerate(modules[1:], start=1):
        if architecture(module) != architecture(first):
            raise ValueError(
                f"member {j} has another architecture than member 0: "
                f"{architecture(module)} vs {architecture(first)}"
            )
        for name in ("x_scaler", "y_scaler"):
            a = getattr(first, name).state_dict()
            b = getattr(module, name).state_dict()
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                raise ValueError(
                    f"member {j}'s {name} differs from member 0's: the weights of members "
                    "are only comparable under the same scalers (fit them on one sample)"
                )


def population_fit(
    grid: QuadratureGrid,
    make_module: Callable[[int], object],
    seeds: Sequence[int],
    warm_starts: Sequence = (),
    tol: float = 1e-7,
    max_iter: int = 20000,
) -> PopulationFit:
    """Minimise the population cross-entropy over one MDN architecture at penalty 0.

    Members: ``make_module(seed)`` for each seed (random initialisations) and copies of the
    ``warm_starts`` (modules of the same architecture, e.g. fits to large samples, or the
    truth's own weights when the truth is an MDN); all of them are polished at once by the
    batched L-BFGS to max|grad| <= ``tol`` (or ``max_iter`` steps, or a stall), and the one
    with the lowest cross-entropy is returned. The scalers are those of the members, which must
    all be the same: ``make_module`` sets them (``fit_scalers``: on ``pilot_sample(truth)``;
    or leave the identity, as a teacher's own weights need) and they are not refitted here.
    """
    started = time.perf_counter()
    modules = [make_module(int(s)) for s in seeds] + [copy.deepcopy(m) for m in warm_starts]
    sources = [f"seed {int(s)}" for s in seeds] + [
        f"warm start {j}" for j in range(len(warm_starts))
    ]
    if not modules:
        raise ValueError("population_fit needs at least one seed or warm start")
    _check_same_model(modules)
    count = len(modules)
    members = BatchedMLP.from_members([m.net for m in modules])
    rows = torch.as_tensor(grid.weights)
    ensemble = MemberEnsemble(
        modules[0], members, n_train=len(grid), penalty=0.0, row_weights=rows.expand(count, -1)
    )
    x, y = torch.as_tensor(grid.x), torch.as_tensor(grid.y)

    def fn(theta: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return ensemble.objective(x, y, theta=theta, members=index)

    outcome = lbfgs_members(fn, members.flat(), tol, max_iter, label="population ")
    members.set_flat(outcome.theta)
    with torch.no_grad():
        log_q = ensemble.log_prob(x, y).numpy()  # (R, m)
    member_kl = (grid.log_p - log_q) @ grid.weights
    best = int(np.nanargmin(member_kl))
    module = copy.deepcopy(modules[best])
    members.copy_member_into(best, module.net)
    module.requires_grad_(True)
    grad_max = outcome.grad_max.numpy()
    return PopulationFit(
        module=module,
        cross_entropy=grid.cross_entropy(log_q[best]),
        kl=float(member_kl[best]),
        converged=bool(outcome.converged[best]),
        grad_max=float(grad_max[best]),
        best=best,
        sources=sources,
        member_kl=member_kl,
        member_grad_max=grad_max,
        member_converged=outcome.converged.numpy(),
        iterations=outcome.iterations.numpy(),
        seconds=time.perf_counter() - started,
    )
