"""Matrix-free inference timings: Hessian-vector products and Lanczos solves, vs the dense path.

    python benchmarks/matrix_free.py                          # P in {2000, 8000}, n = 10000
    python benchmarks/matrix_free.py --sizes 2000 8000 20000 --points 5

The model is a Gaussian MDN (1-d x, 1-d y, K = 5, two equal tanh hidden layers) at the weights
that generated the data (not polished: A may be indefinite). Per P: the one-off build of the
per-chunk gradient graphs, one product A v, the solves for the quantities at ``--points``
points (mean[0], cov[0,0]), and the basis size that 100 points would need (the default
prediction set). Where P <= ``--dense-max`` the dense path (A, B, eigh, SEs) runs on the same
model and its SEs are compared.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("CI", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from inference import K, model_with_about, timed  # noqa: E402

from mdnlab.inference.covariance import Curvature  # noqa: E402
from mdnlab.inference.curvature import hessian_mean_nll  # noqa: E402
from mdnlab.inference.delta import gradient_basis, quantity_jacobian  # noqa: E402
from mdnlab.inference.functional import FlatModel  # noqa: E402
from mdnlab.inference.matrix_free import HessianOperator, solve_standard_errors  # noqa: E402
from mdnlab.inference.scores import ScoreMatrix  # noqa: E402


def measure(p_target: int, n: int, points: int, dense_max: int, rtol: float, max_iter: int):
    module, x, y = model_with_about(p_target, n)
    flat = FlatModel(module)
    op, t_build = timed(lambda: HessianOperator(flat, x, y))
    v = np.random.default_rng(0).standard_normal(flat.n_params)
    op.matvec(v)
    _, t_hvp = timed(lambda: [op.matvec(v) for _ in range(3)])
    t_hvp /= 3
    _, _, jac100 = quantity_jacobian(flat, x[:100])
    basis100 = gradient_basis(jac100.numpy(), 1e-10)[0].shape[1]
    gradients = jac100.numpy()[: 2 * points]
    (se_h, se_s, report), t_solve = timed(
        lambda: solve_standard_errors(op, gradients, x, y, rtol=rtol, max_iter=max_iter)
    )
    row = {
        "P": flat.n_params,
        "n": n,
        "build": t_build,
        "hvp": t_hvp,
        "solves": report.basis_size,
        "iters": float(np.mean(report.iterations)),
        "iters_max": int(np.max(report.iterations)),
        "per_solve": report.seconds_per_solve,
        "total": t_build + t_solve,
        "unconverged": int(np.sum(~report.converged)),
        "basis100": basis100,
    }
    if flat.n_params <= dense_max:
        started = time.perf_counter()
        a = hessian_mean_nll(flat, x, y).numpy()
        b = ScoreMatrix.build(flat, x, y, -op.gradient).matrix  # centred, as the sandwich's
        curvature = Curvature.from_matrices(a, b, n)
        dense_h, dense_s = curvature.standard_errors(gradients)
        row["dense"] = time.perf_counter() - started
        row["agree"] = float(
            max(np.nanmax(np.abs(se_h / dense_h - 1)), np.nanmax(np.abs(se_s / dense_s - 1)))
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--dense-max", type=int, default=2500)
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"threads={args.threads}  float64  Gaussian MDN K={K}, two tanh layers; "
        f"{args.points} points x 2 quantities; rtol={args.rtol:g}"
    )
    header = (
        "    P       n | build    A v | solves  iters  max  s/solve  total | basis@100 "
        "| dense  dense/mf  max|rel diff|"
    )
    print(header)
    print("-" * len(header))
    for p_target in args.sizes:
        r = measure(p_target, args.rows, args.points, args.dense_max, args.rtol, args.max_iter)
        line = (
            f"{r['P']:5d} {r['n']:7d} | {r['build']:5.2f} {r['hvp']:6.3f} | {r['solves']:6d} "
            f"{r['iters']:6.0f} {r['iters_max']:4d} {r['per_solve']:8.2f} {r['total']:6.1f} | "
            f"{r['basis100']:9d} |"
        )
        if "dense" in r:
            line += f" {r['dense']:5.1f}  {r['dense'] / r['total']:8.2f}  {r['agree']:.1e}"
        else:
            line += "     -         -  -"
        if r["unconverged"]:
            line += f"  ({r['unconverged']} quantities unconverged)"
        print(line, flush=True)
    print(
        "build: per-chunk gradient graphs, once; A v: one product; s/solve: one Lanczos solve "
        "incl. the sandwich; basis@100: solves that 100 points x 2 quantities need"
    )


if __name__ == "__main__":
    main()
