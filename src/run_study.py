"""Run one of the theory studies at the size params.yaml selects (a DVC stage calls this).

    python src/run_study.py consistency --size smoke --out plots/study_consistency \\
        --metrics metrics/study_consistency.json

Sizes and seeds come from params.yaml (``studies:``); ``--size full`` (or ``studies.size: full``
in params.yaml) runs the full-size study. Every run is an MLflow parent run (experiment
``study_<name>``) with one child per fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

STUDIES = ("consistency", "projection", "coverage")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=STUDIES)
    parser.add_argument("--size", default=None, help="smoke or full (default: studies.size)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="tables and figures")
    parser.add_argument("--metrics", type=Path, required=True, help="summary metrics (JSON)")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="write files only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mdnlab.errors import MdnlabError
    from mdnlab.interrupts import Interrupted, signals_as_interrupted
    from mdnlab.studies.runner import run_study

    try:
        params = yaml.safe_load(args.params.read_text()) if args.params.is_file() else None
        if not isinstance(params, dict):
            print(
                f"error: {args.params}: no studies: block (expected a YAML mapping)",
                file=sys.stderr,
            )
            return 2
        started = time.perf_counter()
        with signals_as_interrupted():
            metrics = run_study(
                args.study,
                params,
                args.size,
                args.out,
                None if args.no_mlflow else args.tracking_uri,
                mlflow=not args.no_mlflow,
            )
    except MdnlabError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as interrupt:
        print(f"interrupted by {interrupt}: the study run is marked KILLED", file=sys.stderr)
        return interrupt.exit_code
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    # the wall time varies run to run: MLflow keeps it, the DVC metrics file does not
    stable = {k: v for k, v in metrics.items() if k != "seconds"}
    args.metrics.write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    print(
        f"{args.study}: done in {time.perf_counter() - started:.0f}s; wrote {args.out} and {args.metrics}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
