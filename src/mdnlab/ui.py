"""``make ui``: the MLflow UI on the embedded store, with the direct links a user needs.

MLflow 3's UI opens on a GenAI home page and an experiment on a traces overview (the
workflow toggle lives in the browser's local storage, mlflow#24498), so this prints, before
starting ``mlflow ui``, the URL of each experiment's runs table and of the comparison of its
latest sweep's (or study's) runs.

    python -m mdnlab.ui [--tracking-uri URI] [--port 5000] [--links-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from urllib.parse import quote

from mdnlab.tracking import resolve_tracking_uri, sqlite_path

MAX_COMPARED = 100  # the compare page is unreadable beyond this


@dataclass(frozen=True)
class Link:
    label: str
    url: str


def runs_table_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"


def links(uri: str, base: str) -> list[Link]:
    """Each experiment's runs table (with its run count) and the comparison of the children
    of its latest parent run (a sweep, a theory study), in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = []
    for experiment in client.search_experiments(order_by=["name"]):
        runs = client.search_runs([experiment.experiment_id], max_results=50_000)
        if not runs:
            continue
        out.append(
            Link(
                f"{experiment.name} ({len(runs)} runs)",
                runs_table_url(base, experiment.experiment_id),
            )
        )
        children: dict[str, list[str]] = {}
        for run in runs:
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent:
                children.setdefault(parent, []).append(run.info.run_id)
        # runs come newest first: the latest parent with at least two children
        latest = next((r for r in runs if len(children.get(r.info.run_id, [])) >= 2), None)
        if latest is not None:
            ids = sorted(children[latest.info.run_id])[:MAX_COMPARED]
            out.append(
                Link(
                    f"  compare the runs of {latest.info.run_name} (the latest parent run"
                    f"{f', first {MAX_COMPARED}' if len(ids) == MAX_COMPARED else ''})",
                    compare_url(base, experiment.experiment_id, ids),
                )
            )
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///mlflow.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--links-only", action="store_true", help="print the links, start nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        print(
            f"error: no MLflow store at {db}: run `make pipeline` (or a training run) first",
            file=sys.stderr,
        )
        return 2
    base = f"http://{args.host}:{args.port}"
    found = links(uri, base)
    print(f"MLflow store {uri}: {sum(not k.label.startswith(' ') for k in found)} experiments")
    for link in found:
        print(f"{link.label}\n    {link.url}")
    if args.links_only:
        return 0
    print(f"starting the MLflow UI on {base} (Ctrl-C stops it)", flush=True)
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", args.host]
    os.execvp(command[0], [*command, "--port", str(args.port)])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
