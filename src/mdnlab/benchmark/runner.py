"""Fit every split of a UCI dataset with mdnlab's configuration and with the peer, on the
same rows; write the per-split CSV, the summary, the figure, and one MLflow parent run per
dataset with the splits' runs as its children.

mdnlab's fits are ordinary runs (``python src/train.py data=uci data.uci_split=<i> ...``
composed in this process): one configuration, the same for every split, nothing tuned on
test rows.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mdnlab import tracking
from mdnlab.benchmark.peers import fit_ngboost
from mdnlab.benchmark.report import figure, summarize
from mdnlab.configuration import compose_train_config
from mdnlab.cores import available_cores
from mdnlab.data.uci import UciDataset, uci_dataset
from mdnlab.errors import MdnlabError
from mdnlab.interrupts import stopped_by_user
from mdnlab.progress import say
from mdnlab.sweep import ROLE_TAG, SWEEP_TAG, SweepContext, experiment_name, sweep_context

BENCHMARK_TAG = "mdnlab.benchmark"
MC_DROPOUT_FILE = "mc_dropout_test_ll.txt"


@dataclass(frozen=True)
class BenchmarkSettings:
    uci_dir: Path
    out_dir: Path  # splits.csv, summary.json, nll_by_split.png
    splits: int | None = None  # None: the protocol's count (20; 5 for protein)
    overrides: tuple[str, ...] = ()  # Hydra overrides for mdnlab's runs
    peer: bool = True
    # An earlier run's output folder (<peer_from>/<dataset>/splits.csv): the peer's columns
    # are taken from it for every split it holds on the same rows, and fitted for the rest.
    peer_from: Path | None = None
    tracking_uri: str | None = None
    jobs: int = 1  # splits fitted at once, each in a process of its own
    # Timings in splits.csv and summary.json; False for outputs that must be the same bytes
    # on every run (the DVC stages': timings stay in MLflow).
    timings: bool = True


def compose_config(spec: UciDataset, split: int, settings: BenchmarkSettings):
    overrides = [
        "experiment=uci",  # the benchmark's estimator (conf/experiment/uci.yaml)
        f"data.uci_dir={Path(settings.uci_dir).resolve()}",
        f"data.uci_name={spec.short}",
        f"data.uci_split={split}",
        f"model.hidden_sizes=[{spec.hidden}]",  # the protocol's network (100 units: protein)
        f"logger.run_name=uci_{spec.short}-split{split:02d}",
        "rerun=true",
    ]
    if settings.tracking_uri:
        overrides.append(f"logger.tracking_uri={settings.tracking_uri}")
    if settings.jobs > 1:  # each process its share of the cores (runs' own threads=... win)
        overrides.append(f"threads={max(1, available_cores() // settings.jobs)}")
    return compose_train_config(overrides + list(settings.overrides))


def split_count(spec: UciDataset, asked: int | None) -> int:
    return spec.splits if asked is None else max(1, min(int(asked), spec.splits))


def run_dataset(name: str, settings: BenchmarkSettings) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every split of one dataset; returns the per-split table and the summary."""
    spec = uci_dataset(name)
    n_splits = split_count(spec, settings.splits)
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mc_dropout = published_splits(Path(settings.uci_dir) / spec.folder / MC_DROPOUT_FILE)
    first = compose_config(spec, 0, settings)
    uri = tracking.resolve_tracking_uri(first.logger.get("tracking_uri"))
    client, experiment_id = tracking.prepare_experiment(uri, experiment_name(first))
    sweep_id = hashlib.sha1(f"{out_dir.resolve()}:{uuid.uuid4()}".encode()).hexdigest()[:16]
    parent = tracking.RunLog.start(
        client,
        experiment_id,
        f"benchmark-{spec.short}",
        {
            SWEEP_TAG: sweep_id,
            ROLE_TAG: "parent",
            BENCHMARK_TAG: spec.short,
            "benchmark.splits": str(n_splits),
            "benchmark.overrides": " ".join(settings.overrides) or "(defaults)",
            "benchmark.peer": "ngboost" if settings.peer else "none",
            "git_commit": tracking.git_commit(),
        },
    )
    context = SweepContext(sweep_id, out_dir.resolve(), uri, {experiment_id: parent.run_id})
    say(
        f"benchmark {spec.short}: {n_splits} split(s); MLflow parent run {parent.run_id} in "
        f"experiment {experiment_name(first)!r} ({uri})"
    )
    started = time.perf_counter()
    rows = []
    try:
        for split, row in enumerate(fitted_splits(spec, n_splits, settings, context)):
            row["mc_dropout_nll"] = mc_dropout[split] if split < len(mc_dropout) else np.nan
            rows.append(row)
            write_splits(pd.DataFrame(rows), out_dir, settings.timings)  # so far, if cut off
            say(progress_line(spec.short, split, n_splits, row))
        frame = pd.DataFrame(rows)
        summary = summarize(frame)
        summary["benchmark/seconds"] = time.perf_counter() - started
        write_outputs(frame, summary, spec.short, out_dir, settings.timings)
        parent.log_metrics(summary)
        parent.log_artifacts(out_dir)
    except BaseException as err:
        parent.finish("KILLED" if stopped_by_user(err) else "FAILED")
        raise
    parent.finish("FINISHED")
    return frame, summary


def fitted_splits(
    spec: UciDataset, n_splits: int, settings: BenchmarkSettings, context: SweepContext
) -> Iterator[dict[str, float]]:
    """Each split's row, in split order; with ``settings.jobs`` > 1 the splits are fitted in
    that many processes (the numbers do not depend on which process fits a split)."""
    if settings.jobs <= 1:
        with sweep_context(context):
            for split in range(n_splits):
                yield fit_split(spec, split, settings)
        return
    spawn = multiprocessing.get_context("spawn")  # no torch or MLflow state inherited
    with ProcessPoolExecutor(settings.jobs, mp_context=spawn) as pool:
        futures = [
            pool.submit(_fit_split_in_child, context, spec, split, settings)
            for split in range(n_splits)
        ]
        for future in futures:
            yield future.result()


def _fit_split_in_child(context, spec, split, settings) -> dict[str, float]:
    with sweep_context(context):
        return fit_split(spec, split, settings)


def fit_split(spec: UciDataset, split: int, settings: BenchmarkSettings) -> dict[str, float]:
    """mdnlab's run on one split (a child of the active sweep's parent), then the peer on the
    same training, validation and test rows."""
    from mdnlab.pipeline import load_data, run

    cfg = compose_config(spec, split, settings)
    with tempfile.TemporaryDirectory(prefix="mdnlab-uci-") as tmp:
        metrics = run(cfg, out_dir=Path(tmp))
    table, rows = load_data(cfg)
    row = {
        "split": split,
        "n_train": rows.train.size,
        "n_val": rows.val.size,
        "n_test": rows.test.size,
        **mdnlab_columns(metrics),
    }
    if settings.peer:
        earlier = earlier_peer(settings.peer_from, spec.short, row)
        if earlier is not None:
            row |= earlier
        else:
            parts = [(table.x[r], table.y[r]) for r in (rows.train, rows.val, rows.test)]
            peer = fit_ngboost(*parts[0], *parts[1], *parts[2], int(cfg.seed))
            row |= {f"ngboost_{k}": v for k, v in vars(peer).items()}
    return row


def earlier_peer(folder: Path | None, dataset: str, row: dict) -> dict[str, float] | None:
    """The peer's columns for ``row``'s split from an earlier run's ``splits.csv``; None where
    there is no such file or split. A split whose row counts differ is refused: the earlier
    run fitted other rows."""
    if folder is None:
        return None
    path = Path(folder) / dataset / "splits.csv"
    if not path.is_file():
        return None
    try:
        earlier = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise MdnlabError(f"{path}: not a benchmark splits.csv ({err})") from err
    needed = {"split", "n_train", "n_val", "n_test", "ngboost_nll"}
    if not needed <= set(earlier.columns):
        raise MdnlabError(f"{path}: expected the columns {sorted(needed)}; it has {list(earlier)}")
    match = earlier[earlier["split"] == row["split"]]
    if match.empty or not np.isfinite(match["ngboost_nll"].iloc[0]):
        return None
    found = match.iloc[0]
    for key in ("n_train", "n_val", "n_test"):
        if int(found[key]) != int(row[key]):
            raise MdnlabError(
                f"{path}: split {row['split']} has {key} = {int(found[key])}, this run "
                f"{int(row[key])}; the earlier run fitted other rows"
            )
    columns = {k: found[k].item() for k in earlier.columns if k.startswith("ngboost_")}
    if "ngboost_rounds" in columns:
        columns["ngboost_rounds"] = int(columns["ngboost_rounds"])
    return columns


def mdnlab_columns(metrics: dict[str, float]) -> dict[str, float]:
    names = {
        "nll": "test/nll",
        "rmse": "test/rmse",
        "coverage_90": "test/coverage_90",
        "pit_ks": "test/pit_ks",
        "val_nll": "val/nll",
        "val_nll_before_polish": "val/nll_before_polish",
        "grad_norm": "train/grad_norm",
        "scale_floor_ratio": "train/scale_floor_ratio",
        "penalty": "train/penalty",
        "scale_penalty": "train/scale_penalty",
        "scale_reference": "train/scale_reference",
        "seconds": "run/seconds",
    }
    return {f"mdnlab_{k}": float(metrics.get(v, np.nan)) for k, v in names.items()}


def progress_line(dataset: str, split: int, n_splits: int, row: dict) -> str:
    text = (
        f"benchmark {dataset} split {split + 1}/{n_splits}: mdnlab test NLL "
        f"{row['mdnlab_nll']:.4f} ({row['mdnlab_seconds']:.0f} s)"
    )
    if "ngboost_nll" in row:
        text += (
            f", NGBoost {row['ngboost_nll']:.4f} ({row.get('ngboost_seconds', np.nan):.0f} s, "
            f"{row.get('ngboost_rounds')} rounds)"
        )
    return text


def published_splits(path: Path) -> list[float]:
    """MC dropout's published per-split test NLL (the file holds log-likelihoods), if there."""
    if not path.is_file():
        return []
    return [-float(line) for line in path.read_text().split()]


def is_timing(name: str) -> bool:
    return name.endswith("seconds") or "seconds_" in name


def write_splits(frame: pd.DataFrame, out_dir: Path, timings: bool = True) -> None:
    kept = frame if timings else frame[[c for c in frame if not is_timing(c)]]
    kept.to_csv(out_dir / "splits.csv", index=False)


def write_outputs(
    frame: pd.DataFrame,
    summary: dict[str, float],
    dataset: str,
    out_dir: Path,
    timings: bool = True,
) -> None:
    write_splits(frame, out_dir, timings)
    kept = {k: v for k, v in summary.items() if timings or not is_timing(k)}
    (out_dir / "summary.json").write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    figure(frame, dataset, out_dir / "nll_by_split.png")
