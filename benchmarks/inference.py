"""Inference-step timings: A (Hessian), B (scores), eigendecomposition, SEs, vs a plain loop.

    python benchmarks/inference.py                       # P in {500, 2000}, n in {1000, 10000}
    python benchmarks/inference.py --sizes 500 2000 8000 --threads 2

The baseline, run in the same process on the same model and data, is the plain loop the
issue names: one gradient with create_graph over all n rows, then one double-backward per
row of A. Peak memory is the process's peak resident set size after each row (it only grows).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("CI", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mdnlab.inference.covariance import Curvature  # noqa: E402
from mdnlab.inference.curvature import hessian_mean_nll, score_outer_product  # noqa: E402
from mdnlab.inference.delta import quantity_jacobian  # noqa: E402
from mdnlab.inference.functional import FlatModel  # noqa: E402
from mdnlab.module import MDNModule  # noqa: E402

K = 5


def model_with_about(p_target: int, n: int, seed: int = 0):
    """A Gaussian MDN (1-d x, 1-d y, K=5, two equal hidden layers) with about p_target weights."""
    out = (K - 1) + 2 * K
    # P(h) = (1*h + h) + (h*h + h) + (h*out + out); solve h^2 + (3 + out) h + out = p_target
    h = int(round((-(3 + out) + np.sqrt((3 + out) ** 2 - 4 * (out - p_target))) / 2))
    torch.manual_seed(seed)
    module = MDNModule(in_dim=1, event_shape=[1], n_components=K, hidden_sizes=[h, h])
    x = torch.rand(n, 1, dtype=torch.float64) * 4 - 2
    with torch.no_grad():
        y = module.mixture(x).sample()
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    return module, x, y


def plain_loop(flat: FlatModel, x, y) -> torch.Tensor:
    theta = flat.theta.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(-flat.log_prob(theta, x, y).mean(), theta, create_graph=True)
    rows = [
        torch.autograd.grad(gradient[i], theta, retain_graph=True)[0] for i in range(theta.numel())
    ]
    return torch.stack(rows)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(p_target: int, n: int) -> str:
    module, x, y = model_with_about(p_target, n)
    flat = FlatModel(module)
    a, t_a = timed(lambda: hessian_mean_nll(flat, x, y).numpy())
    b, t_b = timed(lambda: score_outer_product(flat, x, y).numpy())
    curvature, t_eig = timed(lambda: Curvature.from_matrices(a, b, n))

    def all_ses():
        curvature.standard_errors(np.eye(flat.n_params))
        _, _, jac = quantity_jacobian(flat, x[:100])
        return curvature.standard_errors(jac.numpy())

    _, t_se = timed(all_ses)
    baseline, t_plain = timed(lambda: plain_loop(flat, x, y))
    assert np.allclose(baseline.numpy(), a, rtol=1e-8, atol=1e-10 * np.abs(a).max())
    total = t_a + t_b + t_eig + t_se
    return (
        f"{flat.n_params:5d} {n:7d} | {t_a:6.2f} {t_b:6.2f} {t_eig:6.2f} {t_se:6.2f} "
        f"{total:6.2f} | {t_plain:7.2f} | {t_plain / total:5.2f} | {peak_mib():8.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  float64  Gaussian MDN, K={K}, two tanh hidden layers")
    header = "    P       n |      A      B    eig    SEs  total | plain A | ratio | peak MiB"
    print(header)
    print("-" * len(header))
    for p_target in args.sizes:
        for n in args.rows:
            print(measure(p_target, n), flush=True)
    print(
        "ratio = plain loop for A alone / everything (A, B, eig, SEs); target >= 2.5 at P=2k, n=10k"
    )


if __name__ == "__main__":
    main()
