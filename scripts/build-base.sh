#!/usr/bin/env bash
# Choose (and, when needed, build) the base image of the HyperBench images.
#
# - If a local `python:3.11-slim` exists, use it.
# - Otherwise build `hyperbench/base:bookworm` once with debootstrap (minbase
#   Debian bookworm + python3/venv/pip + CA certificates + the shared libraries
#   that opencv-python-headless and onnxruntime need) and `docker import` it.
#   An existing hyperbench/base:bookworm is reused (HB_REBUILD_BASE=1 forces a rebuild).
#
# All progress goes to stderr; the LAST stdout line is the chosen image name:
#     BASE=$(scripts/build-base.sh | tail -1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UPSTREAM="${HB_UPSTREAM_BASE:-python:3.11-slim}"
LOCAL_BASE="${HB_LOCAL_BASE:-hyperbench/base:bookworm}"
SUITE=bookworm
# Shared libraries: opencv-python-headless needs libglib2.0-0 (no libGL because
# the images install the headless build only); onnxruntime needs libgomp1.
PACKAGES="python3,python3-venv,python3-pip,ca-certificates,libglib2.0-0,libgomp1"

say() { echo "build-base: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

"$ROOT/scripts/ensure-docker.sh" >&2 || die "docker engine unavailable"

if docker image inspect "$UPSTREAM" >/dev/null 2>&1; then
  say "using local $UPSTREAM"
  echo "$UPSTREAM"
  exit 0
fi

if [ "${HB_REBUILD_BASE:-0}" != "1" ] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
  say "$UPSTREAM not present; reusing existing $LOCAL_BASE"
  echo "$LOCAL_BASE"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "building $LOCAL_BASE needs root (debootstrap); run as root"

if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "debootstrap missing and apt-get unavailable"
  say "debootstrap missing: installing it with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 || die "apt-get install debootstrap failed"
fi

# Mirror: the first URIs line of the deb822 source that carries the suite,
# else the classic sources.list, else deb.debian.org.
MIRROR="${HB_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  MIRROR="$(awk '
    /^[[:space:]]*$/ { if (uri != "" && suite ~ /(^| )'"$SUITE"'( |$)/) { print uri; exit } uri=""; suite=""; next }
    /^URIs:/   { uri=$2 }
    /^Suites:/ { $1=""; suite=$0 }
    END { if (uri != "" && suite ~ /(^| )'"$SUITE"'( |$)/) print uri }' /etc/apt/sources.list.d/debian.sources | head -1)"
fi
if [ -z "$MIRROR" ] && [ -f /etc/apt/sources.list ]; then
  MIRROR="$(awk '$1=="deb" && $3 ~ /^'"$SUITE"'$/ {print $2; exit}' /etc/apt/sources.list)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

mkdir -p "$ROOT/var/build"
WORK="$(mktemp -d "$ROOT/var/build/base.XXXXXX")"
ROOTFS="$WORK/rootfs"

cleanup() {
  # debootstrap mounts proc/sys inside the target: never rm -rf through a mount.
  for m in dev/pts dev proc sys; do
    if mountpoint -q "$ROOTFS/$m" 2>/dev/null; then umount -l "$ROOTFS/$m" || true; fi
  done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

say "building $LOCAL_BASE: debootstrap --variant=minbase $SUITE from $MIRROR (about a minute)"
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2 \
  || { tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2 2>/dev/null || true; die "debootstrap failed (mirror $MIRROR reachable?)"; }

# Trim: apt caches and lists, docs, man pages (images apt-get update if they need more).
chroot "$ROOTFS" apt-get clean >&2 || true
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* 2>/dev/null || true
chroot "$ROOTFS" python3 -c 'import venv, ensurepip, ssl' >&2 || die "python3 in the rootfs is incomplete"

say "importing rootfs as $LOCAL_BASE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "hyperbench debootstrap $SUITE minbase ($PACKAGES)" \
  - "$LOCAL_BASE" >&2 || die "docker import failed"
say "built $LOCAL_BASE in $(( $(date +%s) - start ))s"
echo "$LOCAL_BASE"
