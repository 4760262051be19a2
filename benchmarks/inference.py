"""Inference-step timings: A (Hessian), B (scores), eigendecomposition, SEs, vs a plain loop;
and the penalized objective's Cholesky route for the SEs of the predicted quantities.

    python benchmarks/inference.py                       # P in {500, 2000, 8000}, n in {1000, 10000}
    python benchmarks/inference.py --sizes 500 2000 --threads 2
    python benchmarks/inference.py --full                # also time the plain loop at P=8k, n=10k
    python benchmarks/inference.py --no-loop             # without the plain loop

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

The second table is the route ``run_inference`` takes with a penalty lambda > 0 above
``inference.weight_se_max_params`` (fresh process): A, its Cholesky factor (of A + lambda/n I),
the delta-method SEs of the same 100 points' quantities (their Jacobian, then the basis of its
span, one pair of triangular solves per basis vector and the per-row scores along the
solutions: B never formed) and the effective number of parameters (Hutchinson, ``--probes``);
``today/new`` is the first table's total over it, on the same model and data. Then what the
route adds below the threshold, for weight SEs and the spectrum: B, ``eigvalsh(A)`` and the
weight SEs (the inverse and diag(M B M)), and the exact trace (``trtri``) beside Hutchinson's
estimate. The benchmark's weights generate the data but are not a penalized optimum (fitting
P = 8k to one would take far longer than the benchmark), and there A is indefinite: lambda is
the first of 1, 10, 100, ... at which A + lambda/n I has a Cholesky factor (found before the
timed factorisation). The route's cost does not depend on lambda.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time

os.environ.setdefault("CI", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mdnlab.inference.cholesky import CholeskyCurvature  # noqa: E402
from mdnlab.inference.covariance import Curvature  # noqa: E402
from mdnlab.inference.curvature import hessian_mean_nll, score_outer_product  # noqa: E402
from mdnlab.inference.delta import gradient_basis, quantity_jacobian  # noqa: E402
from mdnlab.inference.functional import FlatModel  # noqa: E402
from mdnlab.inference.scores import ScoreDirections, ScoreMatrix  # noqa: E402
from mdnlab.module import MDNModule  # noqa: E402

K = 5
ESTIMATE_ROWS = (500, 1000)  # rows the loop is timed on when it is estimated
PENALTIES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)  # tried in turn until A + lambda/n I is PD


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


def model_and_hessian(p_target: int, n: int, threads: int):
    """Threads for torch and numpy/scipy's BLAS, the model and data, the RSS before A, A and
    its seconds."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    module, x, y = model_with_about(p_target, n)
    flat = FlatModel(module)
    before = rss_mib()
    a, t_a = timed(lambda: hessian_mean_nll(flat, x, y).numpy())
    return flat, x, y, before, a, t_a


def fast_route(p_target: int, n: int, threads: int) -> dict:
    """A, B, eigendecomposition, weight SEs and delta-method SEs at 100 points (fresh process).

    numpy/scipy's BLAS gets the same thread count as torch: on a busy 2-core machine its default
    of 2 threads made the eigendecomposition 6-80x slower than 1 thread."""
    flat, x, y, before, a, t_a = model_and_hessian(p_target, n, threads)
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


def positive_definite_penalty(a: np.ndarray, n: int) -> float:
    """The first of PENALTIES at which A + lambda/n I has a Cholesky factor."""
    for penalty in PENALTIES:
        try:
            scipy.linalg.cho_factor(a + penalty / n * np.eye(len(a)), check_finite=False)
        except np.linalg.LinAlgError:
            continue
        return penalty
    raise RuntimeError(f"A + lambda/n I is not positive definite for any lambda in {PENALTIES}")


def cholesky_route(p_target: int, n: int, threads: int, probes: int) -> dict:
    """The penalized route for quantity SEs, then what weight SEs and the spectrum add, and
    the exact trace (fresh process)."""
    flat, x, y, before, a, t_a = model_and_hessian(p_target, n, threads)
    penalty = positive_definite_penalty(a, n)
    directions = ScoreDirections(flat, x, y)
    route, t_chol = timed(lambda: CholeskyCurvature.factor(a, penalty / n, directions, n))
    (_, _, jac), t_jac = timed(lambda: quantity_jacobian(flat, x[:100]))
    gradients = jac.numpy()
    (se_h, se_s), t_dse = timed(lambda: route.standard_errors(gradients))
    (effective, effective_se), t_eff = timed(lambda: route.effective_params(probes))
    mib = peak_mib() - before
    basis, _ = gradient_basis(gradients, route.basis_rtol)
    solved = route.solve(basis)
    _, t_scores = timed(lambda: directions.project(solved))  # the part of dSE on the data

    theta = flat.theta.clone().requires_grad_(True)
    (mean_score,) = torch.autograd.grad(flat.log_prob(theta, x, y).mean(), theta)
    matrix, t_b = timed(lambda: ScoreMatrix.build(flat, x, y, mean_score.numpy()))
    _, t_eigvals = timed(lambda: scipy.linalg.eigvalsh(a))
    with_b = CholeskyCurvature(route.lower, matrix, n, route.shift, route.basis_rtol)
    _, t_wse = timed(with_b.weight_standard_errors)
    (exact, _), t_exact = timed(with_b.effective_params)
    formed_h, formed_s = with_b.standard_errors(gradients)
    return {
        "penalty": penalty,
        "A": t_a,
        "chol": t_chol,
        "jac": t_jac,
        "dSE": t_dse,
        "scores": t_scores,
        "eff": t_eff,
        "basis": basis.shape[1],
        "mib": mib,
        "B": t_b,
        "eigvals": t_eigvals,
        "wSE": t_wse,
        "exact": t_exact,
        "effective": effective,
        "effective_se": effective_se,
        "effective_error": effective - exact,
        "agree": float(
            max(np.max(np.abs(se_h / formed_h - 1)), np.max(np.abs(se_s / formed_s - 1)))
        ),
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


def measure(p_target: int, n: int, threads: int, full: bool, loop: bool, probes: int):
    """One line of each table."""
    fast = in_fresh_process(fast_route, p_target, n, threads)
    total = fast["A"] + fast["B"] + fast["eig"] + fast["wSE"] + fast["dSE"]
    line = (
        f"{fast['P']:5d} {n:6d} | {fast['A']:6.2f} {fast['B']:6.2f} {fast['eig']:6.2f} "
        f"{fast['wSE']:6.2f} {fast['dSE']:5.2f} {total:7.2f} | "
    )
    if loop:
        estimate = p_target >= 8000 and n > ESTIMATE_ROWS[1] and not full
        base = in_fresh_process(baseline, p_target, n, estimate)
        assert base["error"] < 1e-10, base["error"]
        mark = "~" if estimate else " "
        line += (
            f"{mark}{base['plain']:7.1f} {base['threads']:2d} | {base['plain'] / fast['A']:7.1f} "
            f"{base['plain'] / total:6.2f} | {fast['mib_a']:6.0f} {fast['mib']:6.0f} "
            f"{base['loop_mib']:6.0f} | {base['error']:.0e}"
        )
    else:
        line += f"       -  - |       -      - | {fast['mib_a']:6.0f} {fast['mib']:6.0f}      - |"
    new = in_fresh_process(cholesky_route, p_target, n, threads, probes)
    new_total = new["A"] + new["chol"] + new["jac"] + new["dSE"] + new["eff"]
    weights = new["B"] + new["eigvals"] + new["wSE"]
    penalized = (
        f"{fast['P']:5d} {n:6d} {new['penalty']:6g} | {new['A']:6.2f} {new['chol']:5.2f} "
        f"{new['jac']:5.2f} {new['dSE']:5.2f} {new['scores']:6.2f} {new['eff']:5.2f} "
        f"{new_total:6.2f} {new['basis']:3d} {new['mib']:6.0f} | {total / new_total:6.2f} | "
        f"{new['B']:6.2f} {new['eigvals']:6.2f} {new['wSE']:6.2f} {new_total + weights:7.2f} | "
        f"{new['effective']:7.1f} {new['effective_se']:5.1f} {new['effective_error']:6.1f} "
        f"{new['exact']:5.2f} | {new['agree']:.0e}"
    )
    return line, penalized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fast route")
    parser.add_argument(
        "--full", action="store_true", help="time the plain loop at P=8k, n=10k (~12 min)"
    )
    parser.add_argument("--no-loop", action="store_true", help="leave the plain loop out")
    parser.add_argument("--probes", type=int, default=200, help="Hutchinson probes")
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
    penalized = []
    for p_target in args.sizes:
        for n in args.rows:
            line, new = measure(p_target, n, args.threads, args.full, not args.no_loop, args.probes)
            print(line, flush=True)
            print(f"penalized: {new}", file=sys.stderr, flush=True)
            penalized.append(new)
    print(
        "wSE: SEs of all weights; dSE: delta-method SEs at 100 points; plain: the loop for A "
        "alone,\nth: its threads (1 or 2, the faster on a probe); ~: estimated from 500 and 1,000 "
        "rows;\nMiB: peak RSS growth (ru_maxrss, fresh process each) over A alone, the whole "
        "fast route, the loop;\nmax|diff|: A vs the loop, relative to max|A|;\n"
        "target: plain/A >= 2.5 and A <= 15 s at P=2k, n=10k; "
        f"load average now {os.getloadavg()[0]:.2f}"
    )
    print(
        f"\nPenalized objective, Cholesky route for the SEs of 100 points' quantities "
        f"(B never formed; Hutchinson with {args.probes} probes):"
    )
    header = (
        "    P      n lambda |      A  chol   jac   dSE scores   eff  total   r    MiB |"
        " today/ |      B eigvals    wSE  +total |  eff.  +-se  error exact | max|diff|"
    )
    print(header)
    print("-" * len(header))
    print("\n".join(penalized))
    print(
        "lambda: the first of 1, 10, 100, ... with A + lambda/n I positive definite at these "
        "(unfitted) weights;\nchol: its factorisation; jac: the quantities' Jacobian; dSE: basis, "
        "solves and per-row scores along the\nsolutions (of which scores); eff: Hutchinson's "
        "effective number of parameters; total: the route;\nr: basis vectors (solves); MiB: peak "
        "RSS growth over the route; today/: the first table's total over\nthis one; B, eigvals, "
        "wSE: what weight SEs and the spectrum add below the threshold, +total with\nthem; eff. "
        "+-se: the estimate and its standard error, error: against the exact trace, exact: its\n"
        "seconds (trtri); max|diff|: the route's SEs against the same route with B formed "
        f"(relative); load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
