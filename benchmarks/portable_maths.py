"""What CPU-independent data cost: mdnlab.data.portable against numpy's dispatched ufuncs.

Times each portable function against its numpy counterpart on the same 300,000 values, and
the writing of every synthetic data set of params.yaml (the data stages' work) once, in the
same process. Ratios are portable / numpy.

    python benchmarks/portable_maths.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.special import logsumexp

from mdnlab.data import portable
from mdnlab.data.simulators import write_dataset

REPO = Path(__file__).resolve().parents[1]
N = 300_000


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 3.0, N)
    positive = np.abs(x) + 0.1
    stacked = rng.normal(size=(N // 9, 3, 3))
    rows = rng.normal(size=(N // 3, 3))
    cases = [
        ("exp", lambda: portable.exp(x), lambda: np.exp(x)),
        ("log", lambda: portable.log(positive), lambda: np.log(positive)),
        ("sin", lambda: portable.sin(x), lambda: np.sin(x)),
        ("tanh", lambda: portable.tanh(x), lambda: np.tanh(x)),
        ("logsumexp (n, 3)", lambda: portable.logsumexp(rows, 1), lambda: logsumexp(rows, 1)),
        ("matmul (n, 3, 3)", lambda: portable.matmul(stacked, stacked), lambda: stacked @ stacked),
    ]
    print(f"{'function':<20}{'portable ms':>13}{'numpy ms':>11}{'ratio':>8}")
    for name, ours, theirs in cases:
        a, b = best_of(ours), best_of(theirs)
        print(f"{name:<20}{a * 1e3:>13.2f}{b * 1e3:>11.2f}{a / b:>8.1f}")

    params = yaml.safe_load((REPO / "params.yaml").read_text())["synthetic"]
    with tempfile.TemporaryDirectory() as out:
        print(f"\n{'data set':<20}{'rows':>8}{'eval rows':>11}{'seconds':>9}")
        for name, p in params.items():
            start = time.perf_counter()
            write_dataset(name, Path(out) / name, p["n"], p["seed"], p["eval_n"], p["eval_seed"])
            seconds = time.perf_counter() - start
            print(f"{name:<20}{p['n']:>8}{p['eval_n']:>11}{seconds:>9.2f}")


if __name__ == "__main__":
    main()
