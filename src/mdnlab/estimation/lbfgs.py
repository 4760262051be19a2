"""L-BFGS for R independent problems at once: the polish of batched members.

L-BFGS on the *sum* of R objectives would couple the members through one curvature history
and one line search. Here each member has its own history, its own step length (backtracking
to the Armijo condition) and its own stopping rule; only the objective evaluations are
shared: one batched forward and backward pass over the members still moving. Every per-member
operation works on that member's own tensors, so a member's iterates are bitwise those it
takes alone (the batched network's rows do not depend on which other members are present),
which the restart tests check against sequential runs.

The direction uses the compact representation of the L-BFGS matrix (Byrd, Nocedal and
Schnabel 1994; Nocedal and Wright eq. 7.24), with S'Y and Y'Y updated by one row and column
per step: a handful of matrix-vector products and two small triangular solves per iteration
whatever the history length, instead of the two-loop recursion's 4m small operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mdnlab.progress import Ticker, say

ARMIJO_C1 = 1e-4
MAX_BACKTRACKS = 60


@dataclass
class BatchedPolishResult:
    theta: torch.Tensor  # (R, P)
    objective: torch.Tensor  # (R,)
    grad_max: torch.Tensor  # (R,) largest |gradient entry| at theta
    iterations: torch.Tensor  # (R,) accepted steps
    converged: torch.Tensor  # (R,) bool


def value_and_grad(fn: Callable[..., torch.Tensor], theta: torch.Tensor, members=None):
    """fn(theta, members): (M, P) -> (M,); the values and the (M, P) per-member gradients."""
    with torch.enable_grad():
        point = theta.detach().requires_grad_(True)
        values = fn(point, members)
        (gradient,) = torch.autograd.grad(values.sum(), point)
    return values.detach(), gradient.detach()


class History:
    """One member's curvature pairs (oldest first) with S'Y and Y'Y kept up to date."""

    def __init__(self, size: int, p: int, dtype: torch.dtype):
        self.size = size
        self.s = torch.zeros(0, p, dtype=dtype)
        self.y = torch.zeros(0, p, dtype=dtype)
        self.sy = torch.zeros(0, 0, dtype=dtype)  # sy[i, j] = s_i'y_j
        self.yy = torch.zeros(0, 0, dtype=dtype)
        self.gamma = 1.0

    def clear(self) -> None:
        self.__init__(self.size, self.s.shape[1], self.s.dtype)

    def push(self, s: torch.Tensor, y: torch.Tensor) -> None:
        keep = slice(1, None) if self.s.shape[0] == self.size else slice(None)
        self.s = torch.cat([self.s[keep], s[None]])
        self.y = torch.cat([self.y[keep], y[None]])
        sy_col, ys_row, yy_col = self.s @ y, self.y @ s, self.y @ y  # newest entries last
        sy = torch.zeros(self.s.shape[0], self.s.shape[0], dtype=s.dtype)
        sy[:-1, :-1] = self.sy[keep, keep]
        sy[:, -1], sy[-1, :] = sy_col, ys_row
        yy = torch.zeros_like(sy)
        yy[:-1, :-1] = self.yy[keep, keep]
        yy[:, -1], yy[-1, :] = yy_col, yy_col
        self.sy, self.yy = sy, yy
        self.gamma = float(sy[-1, -1] / yy[-1, -1])

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H g."""
        if self.s.shape[0] == 0:
            return -g
        gamma = self.gamma
        upper = torch.triu(self.sy)
        t = torch.linalg.solve_triangular(upper, (self.s @ g)[:, None], upper=True)
        inner = (torch.diag(torch.diagonal(self.sy)) + gamma * self.yy) @ t - gamma * (self.y @ g)[
            :, None
        ]
        p1 = torch.linalg.solve_triangular(upper.T, inner, upper=False)[:, 0]
        return -(gamma * g + self.s.T @ p1 - gamma * (self.y.T @ t[:, 0]))


def lbfgs_members(
    fn: Callable[..., torch.Tensor],
    theta0: torch.Tensor,
    tol: float = 1e-6,
    max_iter: int = 5000,
    history: int = 150,
    label: str = "",
) -> BatchedPolishResult:
    """Minimise each member's objective until its max |gradient| <= ``tol``, it stalls (no
    step of the line search lowers it, at working precision), or ``max_iter`` steps.

    ``fn(theta, members)`` returns the objectives (M,) of the members listed in ``members``
    (a LongTensor, or None for all) at their rows ``theta`` (M, P).
    """
    theta = theta0.detach().clone()
    n_members, p = theta.shape
    eps = torch.finfo(theta.dtype).eps
    f, g = value_and_grad(fn, theta)
    histories = [History(history, p, theta.dtype) for _ in range(n_members)]
    iterations = torch.zeros(n_members, dtype=torch.long)
    active = [float(g[r].abs().max()) > tol for r in range(n_members)]
    ticker = Ticker(every_s=5.0)
    while any(active) and int(iterations.max()) < max_iter:
        moving = [r for r in range(n_members) if active[r]]
        direction, slope, step = {}, {}, {}
        for r in moving:
            d = histories[r].direction(g[r])
            s = float(d @ g[r])
            if s >= 0:  # lost curvature information: restart from steepest descent
                histories[r].clear()
                d = -g[r]
                s = float(d @ g[r])
            direction[r], slope[r] = d, s
            fresh = histories[r].s.shape[0] == 0
            step[r] = min(1.0, 1.0 / float(g[r].abs().sum())) if fresh else 1.0
        pending = list(moving)
        accepted: dict[int, tuple[torch.Tensor, float, torch.Tensor]] = {}
        for _ in range(MAX_BACKTRACKS):
            index = torch.tensor(pending, dtype=torch.long)
            trial = torch.stack([theta[r] + step[r] * direction[r] for r in pending])
            f_trial, g_trial = value_and_grad(fn, trial, index)
            still = []
            for i, r in enumerate(pending):
                value = float(f_trial[i])
                armijo = value <= float(f[r]) + ARMIJO_C1 * step[r] * slope[r]
                # At working precision a true descent step may not lower f visibly; accept it
                # when f does not rise beyond rounding and the gradient shrinks.
                flat = abs(value - float(f[r])) <= 4 * eps * max(abs(float(f[r])), 1.0)
                shrinks = float(g_trial[i].abs().max()) < float(g[r].abs().max())
                if value == value and (armijo or (flat and shrinks)):
                    accepted[r] = (trial[i], value, g_trial[i])
                else:
                    step[r] /= 2
                    still.append(r)
            pending = still
            if not pending:
                break
        for r in pending:  # the line search failed: this member has stalled
            active[r] = False
        for r, (new_theta, value, new_g) in accepted.items():
            s, y = new_theta - theta[r], new_g - g[r]
            sy = float(s @ y)
            if sy > 1e-10 * float(s.norm()) * float(y.norm()):
                histories[r].push(s, y)
            theta[r], f[r], g[r] = new_theta, value, new_g
            iterations[r] += 1
            active[r] = float(new_g.abs().max()) > tol
        if ticker.due():
            worst = float(g.abs().amax(dim=1).max())
            say(
                f"{label}polish: iteration {int(iterations.max())}, objective "
                f"{float(f.min()):.6f}, max|grad| {worst:.2e}, {sum(active)} member(s) active"
            )
    grad_max = g.abs().amax(dim=1)
    return BatchedPolishResult(theta, f, grad_max, iterations, grad_max <= tol)
