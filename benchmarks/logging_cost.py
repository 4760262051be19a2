"""What MLflow logging costs a training run, against the run's own work.

Runs ``mdnlab.pipeline.run`` on the mcycle-like tiny dataset and on ``synth_mixture`` (when
the pipeline has made it), each into a fresh SQLite store, with every logging call timed:
params, metrics and curves (``RunLog``: batched ``log_batch`` calls, at most 1,000 metrics a
call), the dataset input, the artifact upload, the pyfunc model and the tags. The table
reports each against the run's work (``run/seconds``: data, training, inference,
diagnostics, less the logging calls made before training), in the same process.

    python benchmarks/logging_cost.py
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ["CI"] = "1"  # silence mdnlab's progress lines; must precede the mdnlab imports

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from mdnlab import pipeline, tracking  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMED = {
    tracking.RunLog: (
        "log_params",
        "log_metrics",
        "log_curve",
        "log_artifacts",
        "log_dataset",
        "set_tags",
    ),
}


def timed(spent: dict, name: str, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapper


def instrument(spent: dict) -> None:
    for owner, names in TIMED.items():
        for name in names:
            setattr(owner, name, timed(spent, name, getattr(owner, name)))
    pipeline.log_pyfunc = timed(spent, "log_pyfunc", pipeline.log_pyfunc)
    pipeline.tracking.prepare_experiment = timed(
        spent, "prepare_experiment", pipeline.tracking.prepare_experiment
    )


def tiny_csv(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, 400)
    y = rng.choice([-1.0, 1.0], 400) * (1 + x) + 0.2 * rng.standard_normal(400)
    path = folder / "tiny.csv"
    pd.DataFrame({"x": x, "y": y}).to_csv(path, index=False)
    return path


def cases(folder: Path) -> dict[str, list[str]]:
    out = {
        "tiny (400 rows, K 2, [4])": [
            "data=file",
            f"data.path={tiny_csv(folder)}",
            "data.x_cols=[x]",
            "data.y_cols=[y]",
            "model.n_components=2",
        ]
    }
    if (REPO / "data" / "synthetic" / "synth_mixture" / "data.csv").is_file():
        out["synth_mixture (experiment)"] = ["experiment=synth_mixture"]
    return out


def main() -> None:
    spent: dict[str, float] = defaultdict(float)
    instrument(spent)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in cases(Path(tmp)).items():
            spent.clear()
            store = Path(tmp) / f"{len(rows)}.db"
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose(
                    "train", overrides=[*overrides, f"logger.tracking_uri=sqlite:///{store}"]
                )
            cwd = os.getcwd()
            os.chdir(REPO)  # the experiments' data paths are relative to the repository
            try:
                started = time.perf_counter()
                metrics = pipeline.run(cfg)
                total = time.perf_counter() - started
            finally:
                os.chdir(cwd)
            # run/seconds ends before the figures are logged; it includes the calls made
            # before training (store, params, dataset), which are taken out of the work here.
            early = sum(spent[k] for k in ("prepare_experiment", "log_params", "log_dataset"))
            rows.append((label, total, metrics["run/seconds"] - early, dict(spent)))
    for label, total, work, parts in rows:
        logging = sum(v for k, v in parts.items())
        print(f"\n{label}: total {total:.2f} s, the run's work {work:.2f} s")
        print(f"{'logging call':<22}{'seconds':>10}{'/ work':>10}")
        for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"{name:<22}{seconds:>10.3f}{seconds / work:>10.3f}")
        print(f"{'all logging':<22}{logging:>10.3f}{logging / work:>10.3f}")


if __name__ == "__main__":
    main()
