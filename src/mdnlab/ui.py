"""``make ui``: the MLflow UI on the embedded store, with the direct links a user needs.

MLflow 3's UI opens on a GenAI home page and an experiment on a traces overview (the
workflow toggle lives in the browser's local storage, mlflow#24498), so this prints, before
starting ``mlflow ui``, the URL of each experiment's runs table and of the comparison of its
latest sweep's (or study's) runs.

The runs table shows no metric column by default, and its columns come from no URL parameter
(only the search facets do: ``searchFilter``, ``orderByKey``, ...). They do come from a saved
view: an experiment tag ``mlflow.sharedViewState.<key>`` that ``?viewStateShareKey=<key>`` opens.
So each experiment gets a view "mdnlab: metrics" (its headline metrics as columns, sorted by the
first) and the printed runs-table URL opens it.

    python -m mdnlab.ui [--tracking-uri URI] [--port 5000] [--links-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from mdnlab.tracking import missing_store, resolve_tracking_uri

MAX_COMPARED = 100  # the compare page is unreadable beyond this
# The metric columns of the saved view, in this order, when logged; else the first few by name.
HEADLINE_METRICS = ("test/nll", "val/nll", "train/nll", "test/kl_to_truth", "kl", "kl_se")
MAX_METRIC_COLUMNS = 6
METRICS_VIEW_KEY = "mdnlab-metrics"
METRICS_VIEW_NAME = "mdnlab: metrics"
METRICS_VIEW_TAG = f"mlflow.sharedViewState.{METRICS_VIEW_KEY}"
# Of the MLflow UI's default columns (Source, Models, Dataset): the one that tells runs apart.
# The table draws only the columns that fit, attributes first, so fewer keep metrics in view.
ATTRIBUTE_COLUMNS = ("attributes.`Dataset`",)


@dataclass(frozen=True)
class Link:
    label: str
    url: str


def runs_table_url(base: str, experiment_id: str, view_key: str | None = None) -> str:
    url = f"{base}/#/experiments/{experiment_id}/runs"
    return f"{url}?viewStateShareKey={view_key}" if view_key else url


def metric_columns(metric_keys: Iterable[str]) -> list[str]:
    keys = set(metric_keys)
    return [k for k in HEADLINE_METRICS if k in keys] or sorted(keys)[:MAX_METRIC_COLUMNS]


def metrics_view_state(metrics: list[str]) -> dict:
    """The runs page's state for a saved view: ``metrics`` as columns, sorted by the first
    (ascending: the headline metrics are losses) when it is a headline metric."""
    columns = [f"metrics.`{key}`" for key in metrics]
    state: dict = {"selectedColumns": [*columns, *ATTRIBUTE_COLUMNS]}
    if metrics[0] in HEADLINE_METRICS:
        state.update(orderByKey=columns[0], orderByAsc=True)
    return state


def save_metrics_view(client, experiment, metric_keys: Iterable[str]) -> str | None:
    """Save (or refresh) the experiment's view "mdnlab: metrics"; its key, None without metrics.
    Written only when its columns change."""
    metrics = metric_columns(metric_keys)
    if not metrics:
        return None
    state = json.dumps(metrics_view_state(metrics), separators=(",", ":"))
    saved = _saved_view(experiment.tags.get(METRICS_VIEW_TAG))
    if saved.get("state") != state:
        now = int(time.time() * 1000)
        envelope = {
            "name": METRICS_VIEW_NAME,
            "createdAt": saved.get("createdAt", now),
            "updatedAt": now,
            "state": state,
        }
        client.set_experiment_tag(experiment.experiment_id, METRICS_VIEW_TAG, json.dumps(envelope))
    return METRICS_VIEW_KEY


def _saved_view(tag_value: str | None) -> dict:
    try:
        saved = json.loads(tag_value or "{}")
    except json.JSONDecodeError:
        return {}
    return saved if isinstance(saved, dict) else {}


def logged_metric_keys(runs) -> set[str]:
    return {key for run in runs for key in run.data.metrics}


def metrics_runs_table_url(uri: str, base: str, experiment_name: str) -> str:
    """The runs table of ``experiment_name`` opened on its metrics view (saved first)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"no experiment named {experiment_name!r} in {uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    view = save_metrics_view(client, experiment, logged_metric_keys(runs))
    return runs_table_url(base, experiment.experiment_id, view)


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"


def links(uri: str, base: str) -> list[Link]:
    """Each experiment's runs table (with its run count), opened on its metrics view (saved
    here), and the comparison of the children of its latest parent run (a sweep, a theory
    study), in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = []
    for experiment in client.search_experiments(order_by=["name"]):
        runs = client.search_runs([experiment.experiment_id], max_results=50_000)
        if not runs:
            continue
        view = save_metrics_view(client, experiment, logged_metric_keys(runs))
        out.append(
            Link(
                f"{experiment.name} ({len(runs)} runs)",
                runs_table_url(base, experiment.experiment_id, view),
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
    if error := missing_store(uri):
        print(error, file=sys.stderr)
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
