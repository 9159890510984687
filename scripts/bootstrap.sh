#!/usr/bin/env bash
# Set up everything HyperBench needs on this machine, idempotently:
#   - Python 3.11+ with venv (apt-get when missing)
#   - the virtualenv .venv with the project and its test tools
#   - Redis (apt-get redis-server when missing; started when 127.0.0.1:6379 does not answer)
#   - the Docker engine (scripts/ensure-docker.sh)
#   - Chromium for the browser checks of the reports (apt-get when missing)
# Says clearly what is missing when it cannot fix it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
mkdir -p "$ROOT/var/log" "$ROOT/var/run"

say() { echo "bootstrap: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $* and apt-get is unavailable: install $* by hand"
  [ "$(id -u)" -eq 0 ] || die "missing $*: run as root (or install $* by hand)"
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed (is a Debian mirror reachable?)"
    APT_UPDATED=1
  fi
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 || die "apt-get install $* failed"
}

# --- Python -----------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$(command -v "$cand")"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  apt_install python3 python3-venv python3-dev
  PY="$(command -v python3)"
fi
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install python3-venv
fi

# --- virtualenv ---------------------------------------------------------------
stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV" || die "could not create the virtualenv with $PY"
fi
if [ ! -f "$stamp" ]; then
  say "installing the project and its test tools into .venv (pip)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || die "pip upgrade failed (is PyPI reachable?)"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[web,dev]" >&2 || die "pip install failed (is PyPI reachable?)"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# --- Redis ----------------------------------------------------------------------
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# The remote-host test makes its own CA and certificates for a TLS Redis with the openssl CLI.
command -v openssl >/dev/null 2>&1 || apt_install openssl
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p "$ROOT/var/redis"
  say "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$ROOT/var/redis" --logfile "$ROOT/var/log/redis.log" >&2 || die "redis-server failed to start"
  for _ in $(seq 1 20); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || die "redis does not answer on 127.0.0.1:6379 (see var/log/redis.log)"
fi

# --- PostgreSQL (the test suite runs its DB tests on SQLite and on PostgreSQL) ------
if [ "${HYPERBENCH_SKIP_POSTGRES:-0}" != 1 ]; then
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    cluster="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$cluster" ] || die "PostgreSQL is installed but has no cluster under /etc/postgresql"
    say "starting PostgreSQL $cluster on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$cluster" main start >&2 || die "PostgreSQL $cluster did not start"
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL does not answer on 127.0.0.1:5432"
  fi
  if ! runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='hyperbench'" 2>/dev/null | grep -q 1; then
    say "creating the PostgreSQL role hyperbench (CREATEDB, for the test databases)"
    runuser -u postgres -- psql -q -c "CREATE ROLE hyperbench LOGIN PASSWORD 'hyperbench' CREATEDB" >&2 \
      || die "could not create the PostgreSQL role hyperbench"
  fi
fi

# --- Docker, Chromium, fonts ------------------------------------------------------
"$ROOT/scripts/ensure-docker.sh"
command -v chromium >/dev/null 2>&1 || apt_install chromium
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core
say "ready"
