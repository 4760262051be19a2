"""Size and power of White's information-matrix test by simulation.

Two truths, one model (a Gaussian MDN, hidden_sizes [4], K = 2, tanh, penalty 3, fitted as
``pipeline.estimate`` does: ``fit_members`` with one restart, Adam with early stopping on a
validation split of 20% of the simulated rows, then the L-BFGS polish to max|grad| 1e-6, then
the canonical component order):

``teacher`` (well specified): an MDN of exactly that architecture, fitted once (seeded) to a
    ``synth_heavytail`` sample and frozen; x ~ U(-1, 1) like the simulators' x, y ~ teacher(.|x).
``synth_heavytail`` (misspecified): the simulator itself (skewed, heavy-tailed noise).

Each replicate draws fresh (x, y), fits the model from a random initialisation (seed = the
replicate's index), and computes the chi-square p-value of ``im_test(debias=True)`` and the
parametric-bootstrap p-value as ``diagnostics.report.information_matrix_test`` does: B target
sets simulated from the fitted model at the training x, polished from the fitted weights
(``refit_on_targets``), T_b on each converged refit, p = (1 + #{T_b >= T}) / (1 + B').

    python -m mdnlab.studies.im_size --replicates 40 --bootstrap 19 --n-train 1000 --out DIR

writes ``DIR/im_test_study.csv`` and ``DIR/im_test_study.png`` and prints a summary table
(``--restarts R``: R fits per replicate, the best kept, as ``train.restarts``).

Measured (M = 50, B = 19, n_train = 1000, seed 0, restarts 1; 23 min on 1 thread): rejection at
5% on the teacher 0.36 +- 0.07 chi-square and 0.18 +- 0.05 bootstrap; on synth_heavytail 0.50
+- 0.07 and 0.32 +- 0.07. With one restart the fit often stops in a worse basin than other
seeds find (replicate 48: T = 78 at objective -0.0034, T = 27 at -0.0379 from another seed),
and the IM test rejects such a fit, rightly, since it is not the optimum the theory is about;
the bootstrap refits start at the fitted weights and never leave that basin, so they do not
reproduce this and the bootstrap over-rejects too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from mdnlab.data.simulators import SIMULATORS
from mdnlab.diagnostics.im_test import im_test
from mdnlab.estimation.adam import TrainerSettings
from mdnlab.estimation.fit import FitData, PolishSettings, best_member, fit_members, member_seeds
from mdnlab.estimation.ordering import order_members
from mdnlab.estimation.refit import refit_on_targets, simulate_targets
from mdnlab.module import MDNModule

TRUTHS = ("teacher", "synth_heavytail")
TRUTH_CODES = {"teacher": 1, "synth_heavytail": 2}
MODEL = dict(
    family="gaussian",
    n_components=2,
    hidden_sizes=[4],
    activation="tanh",
    identifiability="ordered",
)
PENALTY = 3.0  # train.penalty, the project's default
POLISH = PolishSettings(enabled=True, tol=1e-6, max_iter=5000, newton_max_params=300)
TRAINER = TrainerSettings(max_epochs=3000, patience=200, min_delta=0.0)  # conf/trainer/default
LR = 0.01
VAL_FRACTION = 0.2  # of the simulated rows
TEACHER_ROWS = 2000  # synth_heavytail rows the teacher is fitted to
LEVEL = 0.05


def _split(x: np.ndarray, y: np.ndarray, n_train: int) -> FitData:
    """The first n_train rows train, the rest validate (the rows are iid draws)."""
    t = [torch.as_tensor(a, dtype=torch.float64) for a in (x, y)]
    return FitData(t[0][:n_train], t[1][:n_train], t[0][n_train:], t[1][n_train:])


def fit_model(
    data: FitData,
    seed: int,
    trainer: TrainerSettings = TRAINER,
    restarts: int = 1,
    quiet: bool = True,
):
    """The pipeline's estimate (``restarts`` members from ``member_seeds(seed, restarts)``,
    the best penalized training objective): (best MemberResult, its module)."""

    def make_module(s: int) -> MDNModule:
        torch.manual_seed(s)
        module = MDNModule(in_dim=data.x_train.shape[1], event_shape=[1], lr=LR, **MODEL)
        module.x_scaler.fit(data.x_train)
        module.y_scaler.fit(data.y_train)
        return module

    sink = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    with sink:
        ensemble, members = fit_members(
            make_module,
            member_seeds(seed, restarts),
            data,
            PENALTY,
            trainer,
            LR,
            0.0,
            None,
            seed,
            POLISH,
        )
        if members[0].module.ordered:
            order_members(ensemble, members, data, POLISH)
    best = best_member(members)
    return best, best.module


def n_rows(n_train: int) -> int:
    """Simulated rows for n_train training rows and a VAL_FRACTION validation split."""
    return int(round(n_train / (1.0 - VAL_FRACTION)))


@functools.lru_cache(maxsize=4)
def teacher(seed: int, rows: int = TEACHER_ROWS, trainer: TrainerSettings = TRAINER) -> MDNModule:
    """The well-specified truth: the model fitted once to ``rows`` training rows (and a 20%
    validation split) of synth_heavytail, frozen."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    x, y = SIMULATORS["synth_heavytail"].sample(n_rows(rows), rng)
    best, module = fit_model(_split(x, y, rows), seed, trainer)
    if not best.converged:
        raise RuntimeError(f"the teacher's polish stopped at max|grad| {best.grad_max:.2e}")
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def draw(
    truth: str, n: int, rng: np.random.Generator, model: MDNModule | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """n rows of (x, y) from ``truth`` (``model``: the teacher); x ~ U(-1, 1) for both."""
    if truth == "synth_heavytail":
        return SIMULATORS["synth_heavytail"].sample(n, rng)
    if truth != "teacher":
        raise ValueError(f"truth={truth!r}; expected one of {', '.join(TRUTHS)}")
    x = rng.uniform(-1.0, 1.0, size=(n, 1))
    y_seed = int(rng.integers(2**31 - 1))
    y = simulate_targets(model, torch.as_tensor(x), 1, y_seed)[0]
    return x, y.numpy()


def bootstrap_pvalue(module, x, statistic: float, count: int, seed: int) -> tuple[float, int]:
    """(1 + #{T_b >= T}) / (1 + B') over the B' refits that converged, and B'."""
    targets = simulate_targets(module, x, count, seed)
    with contextlib.redirect_stderr(io.StringIO()):
        refits = refit_on_targets(module, x, targets, PENALTY, tol=POLISH.tol)
    used = [
        im_test(refit, x, targets[b], penalty=PENALTY, debias=True).statistic
        for b, (refit, ok) in enumerate(zip(refits.modules, refits.converged, strict=True))
        if bool(ok)
    ]
    exceed = sum(t >= statistic for t in used)
    return (1 + exceed) / (1 + len(used)), len(used)


def im_test_study(
    truth: str,
    replicates: int,
    bootstrap: int,
    n_train: int,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
    trainer: TrainerSettings = TRAINER,
    teacher_rows: int = TEACHER_ROWS,
    restarts: int = 1,
) -> pd.DataFrame:
    """One row per replicate: the observed T, df, chi-square and bootstrap p-values, the
    refits used, the fit's max|grad| and the replicate's seconds.

    ``seed`` sets the teacher and every replicate's data and bootstrap draws; replicate r's
    fit starts from the initialisation of seed r. ``trainer``: the Adam budget (default
    conf/trainer/default.yaml), for the teacher's fit too; ``teacher_rows``: its training rows.
    ``restarts``: fits per replicate (train.restarts; the teacher is always fitted with 1).
    ``threads``: torch and BLAS threads (None: leave them as they are)."""
    if truth not in TRUTHS:
        raise ValueError(f"truth={truth!r}; expected one of {', '.join(TRUTHS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    limits = threadpool_limits(threads) if threads is not None else contextlib.nullcontext()
    rows = []
    started = time.perf_counter()
    with limits:
        model = teacher(seed, teacher_rows, trainer) if truth == "teacher" else None
        for r in range(replicates):
            t0 = time.perf_counter()
            rng = np.random.default_rng(np.random.SeedSequence([seed, TRUTH_CODES[truth], r]))
            x, y = draw(truth, n_rows(n_train), rng, model)
            data = _split(x, y, n_train)
            best, module = fit_model(data, r, trainer, restarts)
            t1 = time.perf_counter()
            observed = im_test(module, data.x_train, data.y_train, penalty=PENALTY, debias=True)
            p_boot, used = bootstrap_pvalue(
                module,
                data.x_train,
                observed.statistic,
                bootstrap,
                int(rng.integers(2**31 - 1)),
            )
            seconds = time.perf_counter() - t0
            rows.append(
                {
                    "truth": truth,
                    "replicate": r,
                    "statistic": observed.statistic,
                    "df": observed.df,
                    "pvalue_asymptotic": observed.pvalue,
                    "pvalue_bootstrap": p_boot,
                    "bootstrap": bootstrap,
                    "refits_used": used,
                    "grad_norm": best.grad_max,
                    "converged": bool(best.converged),
                    "epochs": best.epochs,
                    "n_train": n_train,
                    "seconds_fit": t1 - t0,
                    "seconds": seconds,
                }
            )
            if progress:
                print(
                    f"[{truth}] replicate {r + 1}/{replicates}: T = {observed.statistic:.2f} "
                    f"(df {observed.df}), p_chi2 = {observed.pvalue:.3g}, p_boot = {p_boot:.3g} "
                    f"({used}/{bootstrap} refits), max|grad| {best.grad_max:.1e}, "
                    f"{seconds:.1f}s (fit {t1 - t0:.1f}s); elapsed "
                    f"{time.perf_counter() - started:.0f}s",
                    flush=True,
                )
    return pd.DataFrame(rows)


def rejection(p: pd.Series, level: float = LEVEL) -> tuple[float, float]:
    """Rejection rate at ``level`` (p <= level) and its binomial Monte Carlo SE."""
    rate = float((p <= level).mean())
    return rate, float(np.sqrt(rate * (1 - rate) / len(p)))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for truth, part in frame.groupby("truth", sort=False):
        asym, asym_se = rejection(part.pvalue_asymptotic)
        boot, boot_se = rejection(part.pvalue_bootstrap)
        rows.append(
            {
                "truth": truth,
                "replicates": len(part),
                "reject_asymptotic": asym,
                "se_asymptotic": asym_se,
                "reject_bootstrap": boot,
                "se_bootstrap": boot_se,
                "mean_T": part.statistic.mean(),
                "mean_df": part.df.mean(),
                "mean_refits": part.refits_used.mean(),
                "seconds_per_replicate": part.seconds.mean(),
                "seconds": part.seconds.sum(),
            }
        )
    return pd.DataFrame(rows)


def figure(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truths = list(dict.fromkeys(frame.truth))
    fig, axes = plt.subplots(1, len(truths), figsize=(5.2 * len(truths), 4.6), squeeze=False)
    for ax, truth in zip(axes[0], truths, strict=True):
        part = frame[frame.truth == truth]
        for column, name in (
            ("pvalue_asymptotic", "chi-square"),
            ("pvalue_bootstrap", "bootstrap"),
        ):
            p = np.sort(part[column].to_numpy())
            rate, se = rejection(part[column])
            steps = np.concatenate([[0.0], p, [1.0]])
            levels = np.concatenate([[0.0], np.arange(1, len(p) + 1) / len(p), [1.0]])
            ax.step(
                steps, levels, where="post", label=f"{name}: reject at 5% {rate:.2f} ± {se:.2f}"
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="uniform")
        ax.axvline(LEVEL, color="grey", linestyle=":", linewidth=1)
        b = int(part.bootstrap.iloc[0])
        ax.set_title(
            f"{truth} ({'well specified' if truth == 'teacher' else 'misspecified'}): "
            f"M = {len(part)}, B = {b}, n = {int(part.n_train.iloc[0])}",
            fontsize=10,
        )
        ax.set_xlabel("p-value")
        ax.set_ylabel("empirical CDF")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Information-matrix test (output bias, debiased), Gaussian MDN K=2 [4], λ=3")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--bootstrap", type=int, default=19)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restarts", type=int, default=1, help="fits per replicate (best kept)")
    parser.add_argument("--truths", nargs="+", default=list(TRUTHS), choices=TRUTHS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames = []
    for truth in args.truths:
        frames.append(
            im_test_study(
                truth,
                args.replicates,
                args.bootstrap,
                args.n_train,
                args.seed,
                restarts=args.restarts,
            )
        )
        pd.concat(frames).to_csv(args.out / "im_test_study.csv", index=False)  # as it goes
    frame = pd.concat(frames, ignore_index=True)
    frame.to_csv(args.out / "im_test_study.csv", index=False)
    figure(frame, args.out / "im_test_study.png")
    table = summary(frame)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"total {time.perf_counter() - started:.0f}s; wrote {args.out}/im_test_study.csv, .png")


if __name__ == "__main__":
    main()
