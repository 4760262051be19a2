"""``python -m mdnlab.doctor``: RUNNING runs whose process is gone, and marking them KILLED.

A run killed by SIGKILL (or by a lost machine) cannot end itself, so MLflow shows it RUNNING
forever. Each training run records its host and pid (tags ``mdnlab.host``, ``mdnlab.pid``); a
RUNNING run is stale when its host is this machine and no process has its pid any more, or
(``--older-than H``) when it started more than H hours ago, on any host.

    python -m mdnlab.doctor [--tracking-uri URI]              # list stale runs
    python -m mdnlab.doctor --mark-killed                     # ... and end them KILLED
    python -m mdnlab.doctor --older-than 24 --mark-killed     # also other hosts' runs
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass

from mdnlab.tracking import missing_store, resolve_tracking_uri

MS_PER_HOUR = 3_600_000


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    experiment: str
    name: str
    why: str


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_reason(run, host: str, now_ms: int, older_than_h: float | None) -> str | None:
    tags = run.data.tags
    pid = tags.get("mdnlab.pid")
    if tags.get("mdnlab.host") == host and pid and pid.isdigit() and not pid_alive(int(pid)):
        return f"its process {pid} on {host} is gone"
    if older_than_h is not None:
        age_h = (now_ms - (run.info.start_time or 0)) / MS_PER_HOUR
        if age_h > older_than_h:
            return f"started {age_h:.1f} h ago (> {older_than_h:g})"
    return None


def find_stale_runs(uri: str, older_than_h: float | None = None) -> list[StaleRun]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    host, now_ms = socket.gethostname(), int(time.time() * 1000)
    stale = []
    for experiment in client.search_experiments():
        running = client.search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=50_000
        )
        for run in running:
            why = stale_reason(run, host, now_ms, older_than_h)
            if why:
                stale.append(StaleRun(run.info.run_id, experiment.name, run.info.run_name, why))
    return stale


def mark_killed(uri: str, runs: list[StaleRun]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for run in runs:
        client.set_tag(run.run_id, "mdnlab.doctor", "marked KILLED: " + run.why)
        client.set_terminated(run.run_id, status="KILLED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mdnlab.doctor", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    parser.add_argument("--mark-killed", action="store_true", help="end the stale runs as KILLED")
    parser.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="HOURS",
        help="also stale: RUNNING runs of any host started over HOURS ago",
    )
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    if error := missing_store(uri):
        print(error, file=sys.stderr)
        return 2
    stale = find_stale_runs(uri, args.older_than)
    for run in stale:
        print(f"{run.run_id}  {run.experiment}/{run.name}: RUNNING, but {run.why}")
    if not stale:
        print(f"no stale RUNNING runs in {uri}")
    elif args.mark_killed:
        mark_killed(uri, stale)
        print(f"marked {len(stale)} run(s) KILLED")
    else:
        print(f"{len(stale)} stale run(s); --mark-killed ends them KILLED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
