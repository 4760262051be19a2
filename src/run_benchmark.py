"""DVC stage: the UCI benchmark on one dataset (mdnlab.benchmark; docs/benchmark.md).

    python src/run_benchmark.py boston --uci-dir data/uci --splits 3 \
        --out plots/benchmark_boston --metrics metrics/benchmark_boston.json
"""

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    from mdnlab.benchmark.runner import BenchmarkSettings, is_timing, run_dataset
    from mdnlab.errors import MdnlabError

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("--uci-dir", type=Path, default=Path("data/uci"))
    parser.add_argument("--splits", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="splits fitted at once (processes)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for mdnlab's runs")
    args = parser.parse_intermixed_args()
    try:
        _, summary = run_dataset(
            args.name,
            BenchmarkSettings(
                args.uci_dir,
                args.out,
                args.splits,
                tuple(args.overrides),
                jobs=args.jobs,
                timings=False,  # DVC outputs: the same bytes on every run
            ),
        )
    except MdnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stable = {k: v for k, v in summary.items() if not is_timing(k)}
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
