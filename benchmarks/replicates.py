"""Study replicates: M datasets fitted as one stacked network against M fits one at a time.

    python benchmarks/replicates.py                      # M = 8, n = 1000, teacher_K3's model
    python benchmarks/replicates.py --replicates 4 --n 4000 --restarts 2

Both routes run ``mdnlab.studies.replicates.fit_replicates`` (the consistency study's fits:
Gaussian K = 3, hidden [8], lambda = 3, Adam with early stopping, then the L-BFGS polish):
stacked with all M replicates (x R restarts) at once, sequential with one replicate per call.
Prints each route's wall time, its ratio against one replicate's fit, and the largest
difference between the routes' final objectives (the same seeds give the same fits).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("CI", "1")

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mdnlab.studies.replicates import FitSettings, fit_replicates, reference_scalers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    from mdnlab.studies.consistency import MODEL, cases

    case = cases(0)[0]
    settings = FitSettings(restarts=args.restarts)
    scalers = reference_scalers(case.truth, MODEL, settings.reference_rows, 0)

    def fit(indices):
        start = time.perf_counter()
        fits = fit_replicates(case.truth, MODEL, args.n, indices, 0, case.code, settings, scalers)
        return time.perf_counter() - start, fits

    one, _ = fit([0])
    sequential_s, sequential = 0.0, []
    for m in range(args.replicates):
        seconds, fits = fit([m])
        sequential_s += seconds
        sequential += fits
    stacked_s, stacked = fit(list(range(args.replicates)))
    gap = max(abs(a.objective - b.objective) for a, b in zip(stacked, sequential, strict=True))

    print(
        f"{args.replicates} replicates x {args.restarts} restart(s), n = {args.n}, "
        f"{MODEL.label}, {args.threads} thread(s)"
    )
    print(f"{'route':<34}{'seconds':>10}{'x one fit':>12}")
    for name, seconds in (
        ("one replicate", one),
        (f"{args.replicates} replicates, one at a time", sequential_s),
        (f"{args.replicates} replicates, stacked", stacked_s),
    ):
        print(f"{name:<34}{seconds:>10.1f}{seconds / one:>12.2f}")
    print(f"stacked is {sequential_s / stacked_s:.2f}x faster than one at a time")
    print(f"largest objective difference between the routes: {gap:.2e}")


if __name__ == "__main__":
    main()
