"""Restarts: R members trained as one batched network against R sequential fits, same seeds.

    python benchmarks/restarts.py                 # R = 8, the default synth_mixture network
    python benchmarks/restarts.py --members 4 --hidden 8 8 --penalty 1

Both routes run the same code (``mdnlab.estimation.fit.fit_members``): batched with all R
seeds at once, sequential with one seed at a time; Adam with per-member early stopping on
the validation split, then the L-BFGS polish of the penalized objective. Prints each route's
wall time, the ratio against one fit, and the largest weight difference between the routes.
Needs the synth_mixture dataset (``dvc repro synthesize@synth_mixture``).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("CI", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mdnlab.data.splits import split_rows  # noqa: E402
from mdnlab.estimation.adam import TrainerSettings  # noqa: E402
from mdnlab.estimation.fit import FitData, PolishSettings, fit_members, member_seeds  # noqa: E402
from mdnlab.module import MDNModule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic/synth_mixture/data.csv")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--hidden", type=int, nargs="*", default=[8, 8])
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--penalty", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    frame = pd.read_csv(args.data)
    x = torch.tensor(frame[["x"]].to_numpy(), dtype=torch.float64)
    y = torch.tensor(frame[["y"]].to_numpy(), dtype=torch.float64)
    splits = split_rows(len(frame), 0.15, 0.15, "random", 0, args.data)
    data = FitData(x[splits.train], y[splits.train], x[splits.val], y[splits.val])

    def make_module(seed: int) -> MDNModule:
        torch.manual_seed(seed)
        module = MDNModule(1, [1], n_components=args.components, hidden_sizes=args.hidden)
        module.x_scaler.fit(data.x_train)
        module.y_scaler.fit(data.y_train)
        return module

    def fit(seeds):
        start = time.perf_counter()
        _, results = fit_members(
            make_module,
            seeds,
            data,
            args.penalty,
            TrainerSettings(3000, 200),
            0.01,
            polish=PolishSettings(True, 1e-6, 5000, 300),
        )
        return results, time.perf_counter() - start

    seeds = member_seeds(0, args.members)
    batched, t_batched = fit(seeds)
    sequential, times = [], []
    for seed in seeds:
        results, seconds = fit([seed])
        sequential += results
        times.append(seconds)
    t_sequential = sum(times)
    t_one = sum(times) / len(times)
    diff = max(
        max(
            float((p.detach() - q.detach()).abs().max())
            for p, q in zip(b.module.net.parameters(), s.module.net.parameters(), strict=True)
        )
        for b, s in zip(batched, sequential, strict=True)
    )
    p = sum(v.numel() for v in batched[0].module.net.parameters())
    print(
        f"R = {args.members} members, hidden {args.hidden}, K = {args.components}, P = {p}, "
        f"penalty {args.penalty:g}, {data.x_train.shape[0]} training rows, {args.threads} thread(s)"
    )
    print(f"{'route':<22}{'seconds':>9}{'/ one fit':>11}")
    print(f"{'one fit (mean of R)':<22}{t_one:>9.2f}{1.0:>11.2f}")
    print(f"{'sequential, R fits':<22}{t_sequential:>9.2f}{t_sequential / t_one:>11.2f}")
    print(f"{'batched, R members':<22}{t_batched:>9.2f}{t_batched / t_one:>11.2f}")
    print(
        f"sequential / batched: {t_sequential / t_batched:.2f}x; "
        f"max |weight difference| between the routes: {diff:.1e}"
    )
    print(f"{'member':<8}{'epochs':>8}{'polish it.':>12}{'objective':>12}{'max|grad|':>11}")
    for b in batched:
        print(
            f"{b.index:<8}{b.epochs:>8}{b.polish_iterations:>12}{b.objective:>12.6f}{b.grad_max:>11.1e}"
        )


if __name__ == "__main__":
    main()
