"""Full-batch L-BFGS polish of a fitted network: the point estimate that standard errors need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

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
