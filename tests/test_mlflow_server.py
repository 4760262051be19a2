"""The team server end to end: scripts/mlflow_server.sh starts a real PostgreSQL on loopback and
`mlflow server` on it with proxied artifacts; a 4-job parallel sweep logs to it over HTTP."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import REPO, TINY, cli_env
from mlflow.tracking import MlflowClient

SCRIPT = REPO / "scripts" / "mlflow_server.sh"
PG_ROOT = Path("/usr/lib/postgresql")
AS_ROOT = os.geteuid() == 0


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def pg_bin() -> Path | None:
    found = sorted(PG_ROOT.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def install_postgres() -> str | None:
    """Debian's postgresql when it is not there; the reason it cannot be installed, else None."""
    if pg_bin() is not None:
        return None
    if not AS_ROOT or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and apt-get is not available as root to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update", "-qq"], ["install", "-y", "-qq", "postgresql"]):
        try:
            done = subprocess.run(
                ["apt-get", *args], env=env, capture_output=True, text=True, timeout=900
            )
        except subprocess.TimeoutExpired:
            return f"apt-get {args[0]} postgresql timed out"
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["?"]
            return f"apt-get {' '.join(args)} failed: {lines[-1]}"
    return None if pg_bin() is not None else "apt-get installed postgresql but no pg_ctl found"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if AS_ROOT else cmd


@dataclass
class Server:
    uri: str
    env: dict[str, str]  # what the script was started with (`stop` needs the same)
    proc: subprocess.Popen  # the script, which execs `mlflow server`: the same pid
    state: Path  # MLFLOW_SERVER_DIR: pgdata/, artifacts/, pg.password, mlflow.pid
    pgport: int
    started_s: float = 0.0

    @property
    def pgdata(self) -> Path:
        return self.state / "pgdata"


def wait_healthy(proc: subprocess.Popen, uri: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow_server.sh exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.read().strip() == b"OK":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no answer from {uri}/health after {timeout:.0f} s:\n{log.read_text()}")


def stop(server: Server) -> None:
    """Whatever is still running, by pid: mlflow server and its workers, then PostgreSQL."""
    try:
        workers = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=15)
    for worker in alive:
        worker.kill()
    if (server.pgdata / "postmaster.pid").exists():
        pg_ctl = str(pg_bin() / "pg_ctl")
        subprocess.run(
            as_postgres([pg_ctl, "stop", "-D", str(server.pgdata), "-m", "fast"]),
            cwd="/",
            capture_output=True,
            timeout=60,
        )


@pytest.fixture
def mlflow_server(tmp_path):
    reason = install_postgres()
    if reason:
        pytest.skip(reason)
    # As root PostgreSQL runs as the postgres user, which cannot enter pytest's 0700 temp root:
    # the server's folder is then a temp folder of its own (removed after).
    base = Path(tempfile.mkdtemp(prefix="mdnlab-server-")) if AS_ROOT else tmp_path
    base.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env.update(
        MLFLOW_SERVER_DIR=str(base / "server"),
        PGPORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        MLFLOW_WORKERS="2",
    )
    log = tmp_path / "server.log"
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    server = Server(
        f"http://127.0.0.1:{env['MLFLOW_PORT']}", env, proc, base / "server", int(env["PGPORT"])
    )
    try:
        wait_healthy(proc, server.uri, log)
        server.started_s = time.monotonic() - start
        yield server
    finally:
        stop(server)
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def run_counts(server: Server) -> dict[str, int]:
    """Runs per status, read from PostgreSQL itself."""
    import psycopg

    password = (server.state / "pg.password").read_text().strip()
    with psycopg.connect(
        host="127.0.0.1", port=server.pgport, user="mlflow", password=password, dbname="mlflow"
    ) as connection:
        rows = connection.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    return dict(rows)


@pytest.mark.slow
def test_parallel_sweep_lands_on_the_postgres_server(mlflow_server, tmp_path, tiny_csv):
    server = mlflow_server
    sweep = [
        "-m",
        "data=file",
        f"data.path={tiny_csv}",
        "data.x_cols=[x]",
        "data.y_cols=[y]",
        *TINY,
        "diagnostics.enabled=false",
        "seed=0,1,2,3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = {**cli_env(tmp_path), "MLFLOW_TRACKING_URI": server.uri}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), *sweep],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    sweep_s = time.monotonic() - start
    assert result.returncode == 0, result.stderr

    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("file")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mdnlab.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in children) == [f"file-gaussian-K2-s{s}" for s in range(4)]
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert run_counts(server) == {"FINISHED": 5}

    # Artifacts went through the server (mlflow-artifacts:/) into --artifacts-destination.
    destination = server.state / "artifacts"
    for child in children:
        assert child.info.status == "FINISHED"
        assert math.isfinite(child.data.metrics["test/nll"])
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/"), child.info.artifact_uri
        listed = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "model", "plots"} <= listed, listed
        on_disk = destination / experiment.experiment_id / child.info.run_id / "artifacts"
        assert (on_disk / "model" / "model.ckpt").is_file()
        assert (on_disk / "config.yaml").is_file()
        assert any((on_disk / "plots").glob("*.png"))
    local = [p for p in tmp_path.rglob("*") if p.name in ("mlruns", "mlartifacts", "mlflow.db")]
    assert local == []

    # The script's own `stop`: mlflow server (and every worker it started), then PostgreSQL.
    workers = psutil.Process(server.proc.pid).children(recursive=True)
    stopped = subprocess.run(
        ["bash", str(SCRIPT), "stop"], env=server.env, capture_output=True, text=True, timeout=120
    )
    assert stopped.returncode == 0, stopped.stderr
    assert server.proc.wait(timeout=30) is not None
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == []
    assert not (server.pgdata / "postmaster.pid").exists()
    print(
        f"\nserver up in {server.started_s:.1f} s; sweep {sweep_s:.1f} s; "
        f"4 jobs launched, {len(children)} children + 1 parent landed, 0 RUNNING"
    )
