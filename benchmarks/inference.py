"""Inference-step timings: A (Hessian), B (scores), eigendecomposition, SEs, vs a plain loop.

    python benchmarks/inference.py                       # P in {500, 2000, 8000}, n in {1000, 10000}
    python benchmarks/inference.py --sizes 500 2000 --threads 2
    python benchmarks/inference.py --full                # also time the plain loop at P=8k, n=10k

A is ``hessian_mean_nll`` (block matmuls for the MLP, ``mlp_hessian``). The baseline, on the
same model and data, is the plain loop the issue names: one gradient with create_graph over all
n rows, then one double-backward per row of A, run with 1 or 2 torch threads, whichever a short
probe (the first rows of A under each) finds faster. At P=8k, n=10k it takes ~12 minutes, so
by default it is estimated: timed on the first 500 and 1,000 rows and extrapolated linearly in
n (its cost is a per-row overhead plus work proportional to n); the table marks it ``~``.

Each measurement runs in a fresh process, so that ``ru_maxrss`` (peak resident set size) is
that measurement's own: the memory columns are peak RSS minus the RSS before A, after A and
after the whole fast route (A, B, eigendecomposition, SEs), and minus the RSS before the loop
(for an estimated loop: the 1,000-row one), in MiB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time

os.environ.setdefault("CI", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mdnlab.inference.covariance import Curvature  # noqa: E402
from mdnlab.inference.curvature import hessian_mean_nll, score_outer_product  # noqa: E402
from mdnlab.inference.delta import quantity_jacobian  # noqa: E402
from mdnlab.inference.functional import FlatModel  # noqa: E402
from mdnlab.module import MDNModule  # noqa: E402

K = 5
ESTIMATE_ROWS = (500, 1000)  # rows the loop is timed on when it is estimated


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


def plain_loop(flat: FlatModel, x, y, rows: int | None = None) -> torch.Tensor:
    """The first ``rows`` rows (all by default) of A by one double-backward each."""
    theta = flat.theta.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(-flat.log_prob(theta, x, y).mean(), theta, create_graph=True)
    count = theta.numel() if rows is None else rows
    out = [torch.autograd.grad(gradient[i], theta, retain_graph=True)[0] for i in range(count)]
    return torch.stack(out)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fast_route(p_target: int, n: int, threads: int) -> dict:
    """A, B, eigendecomposition, weight SEs and delta-method SEs at 100 points (fresh process).

    numpy/scipy's BLAS gets the same thread count as torch: on a busy 2-core machine its default
    of 2 threads made the eigendecomposition 6-80x slower than 1 thread."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    module, x, y = model_with_about(p_target, n)
    flat = FlatModel(module)
    before = rss_mib()
    a, t_a = timed(lambda: hessian_mean_nll(flat, x, y).numpy())
    mib_a = peak_mib() - before
    b, t_b = timed(lambda: score_outer_product(flat, x, y).numpy())
    curvature, t_eig = timed(lambda: Curvature.from_matrices(a, b, n))
    _, t_wse = timed(lambda: curvature.standard_errors(np.eye(flat.n_params)))

    def delta_ses():
        _, _, jac = quantity_jacobian(flat, x[:100])
        return curvature.standard_errors(jac.numpy())

    _, t_dse = timed(delta_ses)
    return {
        "P": flat.n_params,
        "A": t_a,
        "B": t_b,
        "eig": t_eig,
        "wSE": t_wse,
        "dSE": t_dse,
        "mib_a": mib_a,
        "mib": peak_mib() - before,
    }


def loop_threads(flat: FlatModel, x, y) -> int:
    """1 or 2 torch threads, whichever runs the first rows of the loop faster."""
    probe_rows = min(flat.n_params, 24)
    n_probe = min(x.shape[0], 2000)
    seconds = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        theta = flat.theta.detach().requires_grad_(True)
        nll = -flat.log_prob(theta, x[:n_probe], y[:n_probe]).mean()
        (gradient,) = torch.autograd.grad(nll, theta, create_graph=True)
        start = time.perf_counter()
        for i in range(probe_rows):
            torch.autograd.grad(gradient[i], theta, retain_graph=True)
        seconds[threads] = time.perf_counter() - start
    return min(seconds, key=seconds.get)


def baseline(p_target: int, n: int, estimate: bool) -> dict:
    """The plain loop (fresh process), timed in full or estimated; checks A against it."""
    threadpool_limits(limits=1, user_api="blas")
    module, x, y = model_with_about(p_target, n)
    flat = FlatModel(module)
    threads = loop_threads(flat, x, y)
    torch.set_num_threads(threads)
    before = rss_mib()
    if estimate:
        times = []
        for rows in ESTIMATE_ROWS:
            loop, t = timed(lambda rows=rows: plain_loop(flat, x[:rows], y[:rows]))
            times.append(t)
        slope = (times[1] - times[0]) / (ESTIMATE_ROWS[1] - ESTIMATE_ROWS[0])
        t_plain = times[1] + slope * (n - ESTIMATE_ROWS[1])
        x_check, y_check = x[: ESTIMATE_ROWS[1]], y[: ESTIMATE_ROWS[1]]
    else:
        loop, t_plain = timed(lambda: plain_loop(flat, x, y))
        x_check, y_check = x, y
    mib = peak_mib() - before
    torch.set_num_threads(1)
    a = hessian_mean_nll(flat, x_check, y_check).numpy()
    error = float(np.abs(a - loop.numpy()).max() / np.abs(loop.numpy()).max())
    return {"plain": t_plain, "threads": threads, "loop_mib": mib, "error": error}


def in_fresh_process(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def measure(p_target: int, n: int, threads: int, full: bool) -> str:
    fast = in_fresh_process(fast_route, p_target, n, threads)
    estimate = p_target >= 8000 and n > ESTIMATE_ROWS[1] and not full
    base = in_fresh_process(baseline, p_target, n, estimate)
    assert base["error"] < 1e-10, base["error"]
    total = fast["A"] + fast["B"] + fast["eig"] + fast["wSE"] + fast["dSE"]
    mark = "~" if estimate else " "
    return (
        f"{fast['P']:5d} {n:6d} | {fast['A']:6.2f} {fast['B']:6.2f} {fast['eig']:6.2f} "
        f"{fast['wSE']:6.2f} {fast['dSE']:5.2f} {total:7.2f} | {mark}{base['plain']:7.1f} "
        f"{base['threads']:2d} | {base['plain'] / fast['A']:7.1f} {base['plain'] / total:6.2f} | "
        f"{fast['mib_a']:6.0f} {fast['mib']:6.0f} {base['loop_mib']:6.0f} | {base['error']:.0e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fast route")
    parser.add_argument(
        "--full", action="store_true", help="time the plain loop at P=8k, n=10k (~12 min)"
    )
    args = parser.parse_args()
    print(
        f"threads={args.threads} (fast route)  float64  Gaussian MDN, K={K}, "
        f"two tanh hidden layers; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    header = (
        "    P      n |      A      B    eig    wSE   dSE   total |    plain th |"
        " plain/A  /total |  MiB A    all   loop | max|diff|"
    )
    print(header)
    print("-" * len(header))
    for p_target in args.sizes:
        for n in args.rows:
            print(measure(p_target, n, args.threads, args.full), flush=True)
    print(
        "wSE: SEs of all weights; dSE: delta-method SEs at 100 points; plain: the loop for A "
        "alone,\nth: its threads (1 or 2, the faster on a probe); ~: estimated from 500 and 1,000 "
        "rows;\nMiB: peak RSS growth (ru_maxrss, fresh process each) over A alone, the whole "
        "fast route, the loop;\nmax|diff|: A vs the loop, relative to max|A|;\n"
        "target: plain/A >= 2.5 and A <= 15 s at P=2k, n=10k; "
        f"load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
