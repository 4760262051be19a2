"""Lightning overhead of mdnlab's training path against a plain PyTorch loop.

Trains the same MDN (Gaussian family, 1-d x and y, K=5, hidden [36, 36], float64, full
batch) for the same number of Adam steps two ways, in one process:

* ``lightning``: ``fit_adam(MemberEnsemble(...one member...), batch_loader(x, y), None,
  TrainerSettings(...))``, the path the pipeline takes (one restart, penalty 0); the time
  includes building the ``pl.Trainer`` and all of ``fit``.
* ``plain``: ``torch.optim.Adam`` and ``zero_grad / module.nll(x, y) / backward / step``.

Both start from the same weights (a deep copy taken before either run) and must end at the
same loss (the same maths). Each path runs ``--repeats`` times, alternating which goes first;
the table reports medians and the ratio of the Lightning time to the plain-loop time.

Run it with ``python benchmarks/train_overhead.py`` (options: ``--n --steps --repeats
--threads``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ["CI"] = "1"  # silence mdnlab's progress lines; must precede the mdnlab imports

import torch  # noqa: E402

from mdnlab.data.loaders import batch_loader  # noqa: E402
from mdnlab.estimation.adam import TrainerSettings, fit_adam  # noqa: E402
from mdnlab.estimation.ensemble import MemberEnsemble  # noqa: E402
from mdnlab.estimation.members import BatchedMLP  # noqa: E402
from mdnlab.module import MDNModule  # noqa: E402

LR = 1e-3


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x) + (0.1 + 0.2 * x.abs()) * torch.randn(n, 1, generator=g, dtype=x.dtype)
    return x, y


def make_module(x: torch.Tensor, y: torch.Tensor) -> MDNModule:
    torch.manual_seed(0)
    module = MDNModule(1, [1], "gaussian", n_components=5, hidden_sizes=[36, 36], lr=LR)
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    return module


def run_lightning(module: MDNModule, x, y, steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    members = BatchedMLP.from_members([module.net])
    ensemble = MemberEnsemble(module, members, x.shape[0], 0.0, LR)
    fit_adam(ensemble, batch_loader(x, y), None, TrainerSettings(max_epochs=steps), "")
    members.copy_member_into(0, module.net)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        return seconds, float(module.nll(x, y))


def run_plain(module: MDNModule, x, y, steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.nll(x, y)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        return seconds, float(module.nll(x, y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="rows (one full batch)")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (= epochs)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    x, y = make_data(args.n)
    initial = make_module(x, y)
    n_params = sum(p.numel() for p in initial.parameters())
    print(
        f"n={args.n} steps={args.steps} repeats={args.repeats} threads={torch.get_num_threads()}"
        f" P={n_params} dtype={next(initial.parameters()).dtype}"
    )

    paths = {"lightning": run_lightning, "plain": run_plain}
    for run in paths.values():  # untimed warm-up: first-call costs of either path
        run(copy.deepcopy(initial), x, y, 2)

    times: dict[str, list[float]] = {name: [] for name in paths}
    losses: dict[str, float] = {}
    for r in range(args.repeats):
        order = list(paths) if r % 2 == 0 else list(paths)[::-1]
        for name in order:
            seconds, losses[name] = paths[name](copy.deepcopy(initial), x, y, args.steps)
            times[name].append(seconds)

    rel = abs(losses["lightning"] - losses["plain"]) / abs(losses["plain"])
    verdict = "OK" if rel <= 1e-8 else "MISMATCH"
    print(
        f"final NLL: lightning {losses['lightning']:.12f}  plain {losses['plain']:.12f}"
        f"  rel diff {rel:.1e}  {verdict} (<= 1e-8)"
    )

    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'path':<10} | {'seconds (median)':>16} | {'per step ms':>11} | {'ratio vs plain':>14}")
    for name, seconds in medians.items():
        per_step = 1e3 * seconds / args.steps
        ratio = seconds / medians["plain"]
        print(f"{name:<10} | {seconds:>16.3f} | {per_step:>11.3f} | {ratio:>14.2f}")
    print(f"ratio lightning/plain = {medians['lightning'] / medians['plain']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
