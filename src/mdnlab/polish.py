"""Full-batch L-BFGS polish of a fitted network: the point estimate that standard errors need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mdnlab.inference.curvature import hessian_from_gradient
from mdnlab.progress import Ticker, say


@dataclass(frozen=True)
class PolishResult:
    loss: float
    grad_max: float  # largest absolute entry of the gradient of the mean NLL
    iterations: int
    converged: bool


def max_abs_grad(
    loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]
) -> tuple[float, float]:
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), max(float(g.abs().max()) for g in grads)


def lbfgs_polish(
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.nn.Parameter],
    tol: float = 1e-6,
    max_iter: int = 5000,
    label: str = "",
) -> PolishResult:
    """Minimise ``loss_fn`` until max |gradient| <= ``tol`` or ``max_iter`` iterations.

    L-BFGS with a strong-Wolfe line search, restarted in rounds so that progress can be shown
    and a round that stalls (no change in the loss) ends the polish instead of looping.
    """
    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=200,
        history_size=50,
        tolerance_grad=tol,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn()
        loss.backward()
        return loss

    ticker = Ticker(every_s=5.0)
    loss, grad_max = max_abs_grad(loss_fn, params)
    iterations = 0
    while grad_max > tol and iterations < max_iter:
        before = loss
        optimizer.param_groups[0]["max_iter"] = min(200, max_iter - iterations)
        optimizer.step(closure)
        iterations = optimizer.state[optimizer._params[0]]["n_iter"]
        loss, grad_max = max_abs_grad(loss_fn, params)
        if ticker.due():
            say(f"{label}polish: iteration {iterations}, NLL {loss:.6f}, max|grad| {grad_max:.2e}")
        if loss >= before and grad_max > tol:
            break  # the line search can make no more progress at this precision
    optimizer.zero_grad(set_to_none=True)
    state = "converged" if grad_max <= tol else "stopped"
    say(f"{label}polish {state}: {iterations} iterations, NLL {loss:.6f}, max|grad| {grad_max:.2e}")
    return PolishResult(loss, grad_max, iterations, grad_max <= tol)


def dense_hessian(loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]):
    """Gradient (P,) and Hessian (P, P) of ``loss_fn`` over the flattened ``params``."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hessian = hessian_from_gradient(flat, params).detach()
    return flat.detach(), (hessian + hessian.T) / 2


def newton_polish(
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.nn.Parameter],
    tol: float = 1e-6,
    max_iter: int = 50,
    eig_rtol: float = 1e-10,
    label: str = "",
) -> PolishResult:
    """Newton steps on the well-curved eigenspace of the Hessian, with backtracking.

    For the last digits, where L-BFGS crawls on ill-conditioned problems: each step solves on
    the eigenpairs with |eigenvalue| above ``eig_rtol`` of the largest (|.| turns saddle
    directions downhill), and is halved until the loss decreases.
    """
    loss, grad_max = max_abs_grad(loss_fn, params)
    iterations = 0
    while grad_max > tol and iterations < max_iter:
        iterations += 1
        gradient, hessian = dense_hessian(loss_fn, params)
        values, vectors = torch.linalg.eigh(hessian)
        keep = values.abs() > eig_rtol * values.abs().max()
        v = vectors[:, keep]
        step = -(v @ ((v.T @ gradient) / values[keep].abs()))
        start = [p.detach().clone() for p in params]
        scale, improved = 1.0, False
        for _ in range(40):
            _assign(params, start, step, scale)
            with torch.no_grad():
                trial = float(loss_fn())
            if trial <= loss:
                improved = True
                break
            scale /= 2
        if not improved:
            _assign(params, start, step, 0.0)
            break
        loss, grad_max = max_abs_grad(loss_fn, params)
    say(f"{label}newton: {iterations} steps, NLL {loss:.6f}, max|grad| {grad_max:.2e}")
    return PolishResult(loss, grad_max, iterations, grad_max <= tol)


@torch.no_grad()
def _assign(params, start, step, scale: float) -> None:
    offset = 0
    for p, p0 in zip(params, start, strict=True):
        size = p.numel()
        p.copy_(p0 + scale * step[offset : offset + size].reshape(p.shape))
        offset += size


def polish(
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.nn.Parameter],
    tol: float = 1e-6,
    max_iter: int = 5000,
    newton_max_params: int = 2000,
    label: str = "",
) -> PolishResult:
    """L-BFGS, then (for at most ``newton_max_params`` weights) Newton steps to finish."""
    result = lbfgs_polish(loss_fn, params, tol, max_iter, label)
    n_params = sum(p.numel() for p in params)
    if result.converged or n_params > newton_max_params:
        return result
    finish = newton_polish(loss_fn, params, tol, label=label)
    return PolishResult(
        finish.loss, finish.grad_max, result.iterations + finish.iterations, finish.converged
    )
