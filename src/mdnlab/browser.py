"""Headless Chromium (Debian's ``chromium``) on the MLflow UI: a page's DOM or a screenshot
after its scripts ran, and ``mlflow ui`` served for it in its own process group.

    python -m mdnlab.browser --screenshot docs/figures/mlflow_runs_table.png \\
        [--tracking-uri URI] [--experiment mcycle] [--size 1600x900]

The CLI serves the store, opens the experiment's runs table on its metrics view
(``mdnlab.ui.metrics_runs_table_url``), saves the screenshot and stops the server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")
INSTALL_HINT = "apt-get install -y chromium"
DEFAULT_SIZE = (1920, 1000)
# Virtual time: Chromium fast-forwards timers while no request is in flight, so this is an
# upper bound on the page's own waiting, not wall time.
DEFAULT_WAIT_MS = 20_000
CHROMIUM_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 90


class ChromiumMissing(RuntimeError):
    pass


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing(f"headless Chromium not found on PATH: install it with `{INSTALL_HINT}`")


def _run_headless(url: str, args: list[str], size: tuple[int, int], wait_ms: int) -> str:
    """Chromium's stdout for ``url`` in a fresh profile, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mdnlab-chromium-") as profile:
        command = [
            chromium_binary(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # as root, and in containers without user namespaces
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={wait_ms}",
            *args,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium exited with {done.returncode} on {url}: {last}")
    return done.stdout


def dump_dom(url: str, wait_ms: int = DEFAULT_WAIT_MS, size: tuple[int, int] = DEFAULT_SIZE) -> str:
    """The page's DOM, serialised, after its scripts ran (``size`` matters: the runs table
    renders only the columns that fit)."""
    return _run_headless(url, ["--dump-dom"], size, wait_ms)


def screenshot(
    url: str, path: Path, size: tuple[int, int] = DEFAULT_SIZE, wait_ms: int = DEFAULT_WAIT_MS
) -> Path:
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    _run_headless(url, [f"--screenshot={path}"], size, wait_ms)
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    base: str
    log: Path


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_until_answering(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers(f"{server.base}/health"):
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"mlflow ui exited with {server.process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow ui did not answer on {server.base} in {timeout_s:.0f} s")
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM to the process group led by ``process``, SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout_s)
    except ProcessLookupError:
        pass


@contextmanager
def mlflow_ui(uri: str, host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    """``mlflow ui`` on ``uri`` in its own session (one worker, no job runner: a page or two
    for a browser), answering when entered, its whole process group stopped on exit."""
    port = port or free_port(host)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    with tempfile.TemporaryDirectory(prefix="mdnlab-mlflow-ui-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = Server(process, f"http://{host}:{port}", log)
        try:
            _wait_until_answering(server, SERVER_START_TIMEOUT_S)
            yield server
        finally:
            stop_process_group(process)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG to write")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="mcycle")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="WIDTHxHEIGHT")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from mdnlab.tracking import missing_store, resolve_tracking_uri
    from mdnlab.ui import metrics_runs_table_url

    args = parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    if error := missing_store(uri):
        print(error, file=sys.stderr)
        return 2
    try:
        chromium_binary()
        with mlflow_ui(uri) as server:
            url = metrics_runs_table_url(uri, server.base, args.experiment)
            path = screenshot(url, args.screenshot, args.size)
    except (ChromiumMissing, ValueError, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{url}\n  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
