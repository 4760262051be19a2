"""The UCI regression benchmark on any of the nine datasets in the standard layout.

    python benchmarks/uci.py ../shared/uci                         # all nine, full size
    python benchmarks/uci.py ../shared/uci boston concrete --splits 3
    python benchmarks/uci.py ../shared/uci boston --set model.hidden_sizes=[50] --set model.n_components=2
    python benchmarks/uci.py ../shared/uci --report-only            # the table from earlier runs
    python benchmarks/uci.py ../shared/uci kin8nm --peer-from benchmark-results/uci  # NGBoost reused

Each dataset: every split of the published protocol (20; 5 for protein) fitted with mdnlab's
benchmark configuration (conf/experiment/uci.yaml with the protocol's hidden layer, then any
--set overrides; the same for every split) and with NGBoost on the same train / validation /
test rows. Writes <out>/<dataset>/{splits.csv, summary.json,
nll_by_split.png}, then <out>/table.csv and <out>/table.md, and prints the table: mdnlab, the
peer, their paired difference (mean +- SE over splits), the published columns, 90% interval
coverage, RMSE and wall time. Runs land in MLflow (one parent run per dataset).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from mdnlab.benchmark.report import markdown, table_row
from mdnlab.benchmark.runner import BenchmarkSettings, run_dataset
from mdnlab.data.uci import UCI_DATASETS, uci_dataset
from mdnlab.errors import MdnlabError


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "uci_dir", type=Path, help="folder with <dataset>/data.txt (standard layout)"
    )
    parser.add_argument(
        "names", nargs="*", help=f"datasets (default: all): {', '.join(UCI_DATASETS)}"
    )
    parser.add_argument(
        "--splits", type=int, default=None, help="splits per dataset (default: the protocol's)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/uci"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for mdnlab's runs (repeatable)",
    )
    parser.add_argument("--no-peer", action="store_true", help="fit mdnlab only")
    parser.add_argument(
        "--peer-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="reuse the peer's per-split results from an earlier run's --out folder "
        "(<DIR>/<dataset>/splits.csv, same rows and seed); splits it lacks are fitted",
    )
    parser.add_argument("--jobs", type=int, default=1, help="splits fitted at once (processes)")
    parser.add_argument(
        "--report-only", action="store_true", help="print the table of earlier runs in --out"
    )
    args = parser.parse_args()
    try:
        names = [uci_dataset(n).short for n in (args.names or UCI_DATASETS)]
        if not args.report_only:
            for name in names:
                settings = BenchmarkSettings(
                    args.uci_dir,
                    args.out / name,
                    args.splits,
                    tuple(args.overrides),
                    not args.no_peer,
                    peer_from=args.peer_from,
                    jobs=args.jobs,
                )
                run_dataset(name, settings)
    except MdnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        summary_file = args.out / name / "summary.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            rows.append(table_row(name, summary, summary.get("benchmark/seconds", float("nan"))))
    if not rows:
        print(f"error: no results under {args.out}", file=sys.stderr)
        return 2
    pd.DataFrame(rows).to_csv(args.out / "table.csv", index=False)
    text = markdown(rows)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
