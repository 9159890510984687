#!/usr/bin/env bash
# Make sure a Docker engine is installed and answering `docker info`.
#
# Idempotent: does nothing when the engine already answers. On a fresh Debian
# machine it installs docker.io and starts dockerd without a bridge network
# (containers use --network none, or host for API models) and without iptables.
# Exits non-zero with a message saying what is missing when it cannot fix it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="$ROOT/var/log"
LOG_FILE="$LOG_DIR/dockerd.log"
WAIT_S="${HB_DOCKERD_WAIT_S:-60}"

say() { echo "ensure-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root (or passwordless sudo) to run: $*"; fi
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "dockerd/docker missing and apt-get unavailable: install Docker Engine by hand"
  say "docker engine missing: installing docker.io with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || die "apt-get update failed (is a Debian mirror reachable?)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io \
    || die "apt-get install docker.io failed"
  command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd not on PATH"
fi

if docker info >/dev/null 2>&1; then
  say "docker engine is running"
  exit 0
fi

if pgrep -x dockerd >/dev/null 2>&1; then
  say "dockerd process exists but does not answer yet; waiting"
else
  mkdir -p "$LOG_DIR"
  say "starting dockerd --bridge=none --iptables=false (log: $LOG_FILE)"
  # setsid+nohup: the daemon must outlive this script and its process group.
  as_root setsid nohup dockerd --bridge=none --iptables=false >>"$LOG_FILE" 2>&1 < /dev/null &
fi

for _ in $(seq 1 "$WAIT_S"); do
  if docker info >/dev/null 2>&1; then
    say "docker engine is running"
    exit 0
  fi
  sleep 1
done

say "last lines of $LOG_FILE:"
tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
die "docker info still failing after ${WAIT_S}s; see $LOG_FILE"
