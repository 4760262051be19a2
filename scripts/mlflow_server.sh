#!/usr/bin/env bash
# A team MLflow server: PostgreSQL on loopback as the backend store, and `mlflow server` with
# proxied artifacts (clients upload and download through the server, which writes them under
# .mlflow-server/artifacts). `make mlflow-server` runs it in the foreground.
#   scripts/mlflow_server.sh        start PostgreSQL (initdb on first use), then mlflow server
#   scripts/mlflow_server.sh stop   stop mlflow server and PostgreSQL
# Env: PGPORT (5433), MLFLOW_PORT (5000), MLFLOW_WORKERS (mlflow's 4),
# MLFLOW_HOST (127.0.0.1; 0.0.0.0 for compute nodes, with MLFLOW_ALLOWED_HOSTS=<name>:<port>),
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false),
# MLFLOW_SERVER_DIR (<repo>/.mlflow-server: pgdata/, postgres.log, artifacts/, ...).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH=$REPO/.venv/bin:$PATH   # the project's python, mlflow and psycopg
STATE=${MLFLOW_SERVER_DIR:-$REPO/.mlflow-server}
PGDATA=$STATE/pgdata
PGLOG=$STATE/postgres.log
PWFILE=$STATE/pg.password   # the mlflow role's password (mode 600)
PIDFILE=$STATE/mlflow.pid
PGPORT=${PGPORT:-5433}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
MLFLOW_HOST=${MLFLOW_HOST:-127.0.0.1}   # PostgreSQL itself stays on loopback

die() { echo "error: $*" >&2; exit 1; }

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PGBIN/pg_ctl" ] || die "PostgreSQL is not installed: apt-get install -y postgresql"

# initdb and pg_ctl refuse to run as root: as root they run as the postgres user.
pg() {
    local cmd=$PGBIN/$1; shift
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$cmd" "$@"); else "$cmd" "$@"; fi
}
give_to_pg() { [ "$(id -u)" != 0 ] || chown postgres: "$@"; }

if [ "${1:-}" = stop ]; then
    if [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.2; done
        echo "stopped mlflow server (pid $(cat "$PIDFILE"))"
    fi
    rm -f "$PIDFILE"
    if [ -f "$PGDATA/postmaster.pid" ]; then pg pg_ctl stop -D "$PGDATA" -m fast; fi
    exit 0
fi

python -c 'import mlflow' 2>/dev/null || die "mlflow is not installed: make setup"
python -c 'import psycopg' 2>/dev/null || die "psycopg is missing: pip install -e '.[server]'"

mkdir -p "$STATE/artifacts"
if [ ! -s "$PWFILE" ]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(16))' > "$PWFILE")
fi
if [ ! -f "$PGDATA/PG_VERSION" ]; then
    (umask 077 && mkdir -p "$PGDATA")
    give_to_pg "$PGDATA" "$PWFILE"
    # The superuser is `mlflow`; every connection needs its password.
    pg initdb -D "$PGDATA" -U mlflow --pwfile="$PWFILE" --auth=scram-sha-256 >/dev/null
fi
touch "$PGLOG" && give_to_pg "$PGLOG"
if ! pg pg_ctl status -D "$PGDATA" >/dev/null; then
    # TCP on 127.0.0.1 only (-k '': no Unix socket)
    pg pg_ctl start -D "$PGDATA" -l "$PGLOG" -w -o "-h 127.0.0.1 -p $PGPORT -k ''" >/dev/null \
        || { tail -n 5 "$PGLOG" >&2; die "PostgreSQL did not start (log: $PGLOG)"; }
fi

export PGPASSWORD
PGPASSWORD=$(cat "$PWFILE")
psql=("$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U mlflow -d postgres -qtA)
if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" ]; then
    "${psql[@]}" -c "CREATE DATABASE mlflow"
fi

echo "PostgreSQL on 127.0.0.1:$PGPORT (data: $PGDATA, log: $PGLOG)"
echo "Log to this server:  export MLFLOW_TRACKING_URI=http://$MLFLOW_HOST:$MLFLOW_PORT"
echo "Stop it:             scripts/mlflow_server.sh stop   (Ctrl-C stops mlflow only)"
echo $$ > "$PIDFILE"   # exec keeps the pid: `stop` signals mlflow server itself
# The store URI travels in the environment, so that the password is not on a command line.
export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://mlflow:$PGPASSWORD@127.0.0.1:$PGPORT/mlflow"
unset PGPASSWORD
# MLflow's GenAI job runner (7 huey worker processes) is off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
exec python -m mlflow server --artifacts-destination "$STATE/artifacts" --serve-artifacts \
    --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" ${MLFLOW_ALLOWED_HOSTS:+--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"}
