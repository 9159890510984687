#!/usr/bin/env bash
# Build the HyperBench images: hyperbench/<name>:<version> and :latest.
#
#   scripts/build-images.sh                 # ocr-rapidocr table-rapidtable doc-rapid eval report testkit probe ocr-tesseract vlm-openai template web
#   scripts/build-images.sh vlm-vllm        # GPU hosts only (CUDA + vLLM; not in the default set, see images/vlm-vllm/README.md)
#   scripts/build-images.sh eval report     # only these
#   HB_NO_CACHE=1 scripts/build-images.sh   # ignore the layer cache
#   HB_IMAGE_PREFIX=myreg/hb ...            # tag <prefix>/<name> instead of hyperbench/<name>
#
# - Makes sure the Docker engine runs (ensure-docker.sh) and picks the base
#   image (build-base.sh: python:3.11-slim if local, else hyperbench/base:bookworm).
# - The build context is images/ (so every image can COPY the sdk) plus
#   _hb_ca/extra-ca.crt: the CA bundle pip trusts inside the build, from
#   EXTRA_CA_FILE (default: the host bundle /etc/ssl/certs/ca-certificates.crt).
#   It is appended to the base image's bundle in a build stage only; the final
#   images do not contain it. (BuildKit secrets would be nicer, but the
#   docker.io engine + a CLI without buildx only offer the legacy builder.)
# - Builds run with --network host (PyPI is reachable from the host only).
#   Re-runs reuse the layer cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_IMAGES=(ocr-rapidocr table-rapidtable doc-rapid eval report testkit probe ocr-tesseract vlm-openai template web)
# web is the control plane's image (docker/web/Dockerfile, built from the repository, not images/).
CA_FILE="${EXTRA_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
PREFIX="${HB_IMAGE_PREFIX:-hyperbench}"
CACHE_ARGS=()
if [ "${HB_NO_CACHE:-0}" = "1" ]; then CACHE_ARGS=(--no-cache); fi

say() { echo "build-images: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

"$ROOT/scripts/ensure-docker.sh" || die "docker engine unavailable"
BASE="$("$ROOT/scripts/build-base.sh" | tail -1)"
[ -n "$BASE" ] || die "build-base.sh chose no base image"
VERSION="$(tr -d '[:space:]' < "$ROOT/images/VERSION")"
[ -n "$VERSION" ] || die "images/VERSION is empty"
[ -r "$CA_FILE" ] || die "CA file $CA_FILE not readable (set EXTRA_CA_FILE to a PEM bundle)"

if [ "$#" -gt 0 ]; then NAMES=("$@"); else NAMES=("${ALL_IMAGES[@]}"); fi
dockerfile_of() { if [ "$1" = web ]; then echo "$ROOT/docker/web/Dockerfile"; else echo "$ROOT/images/$1/Dockerfile"; fi; }
for name in "${NAMES[@]}"; do
  [ -f "$(dockerfile_of "$name")" ] || die "unknown image '$name' (no $(dockerfile_of "$name"))"
done

# A CA staging dir whose file keeps the source's content and mtime: the layer cache stays valid.
CA_DIR="$ROOT/var/build/ca"
mkdir -p "$CA_DIR/_hb_ca"
if ! cmp -s "$CA_FILE" "$CA_DIR/_hb_ca/extra-ca.crt" 2>/dev/null; then
  cp -p "$CA_FILE" "$CA_DIR/_hb_ca/extra-ca.crt"
fi

say "base image: $BASE, version: $VERSION, CA: $CA_FILE"
for name in "${NAMES[@]}"; do
  tag="$PREFIX/$name"
  say "building $tag:$VERSION"
  start=$(date +%s)
  # Context streamed as a tar: images/ (or, for web, the project's Python packages) + _hb_ca/.
  if [ "$name" = web ]; then
    context=(-C "$ROOT" pyproject.toml README.md manage.py hyperbench_web apps worker docker/web/Dockerfile docker/web/hyperbench_flower.py)
    dockerfile=docker/web/Dockerfile
  else
    context=(-C "$ROOT/images" .)
    dockerfile="$name/Dockerfile"
  fi
  tar --owner=0 --group=0 --numeric-owner --exclude='__pycache__' --exclude='*.pyc' \
      -c "${context[@]}" -C "$CA_DIR" _hb_ca \
    | DOCKER_BUILDKIT=0 docker build \
        --network host \
        ${CACHE_ARGS[@]+"${CACHE_ARGS[@]}"} \
        --build-arg "BASE_IMAGE=$BASE" \
        --label "io.hyperbench.version=$VERSION" \
        --label "io.hyperbench.base=$BASE" \
        -f "$dockerfile" \
        -t "$tag:$VERSION" -t "$tag:latest" \
        - >&2 \
    || die "docker build of $tag failed"
  say "built $tag:$VERSION ($(docker image inspect -f '{{.Id}}' "$tag:$VERSION")) in $(( $(date +%s) - start ))s"
done
for name in "${NAMES[@]}"; do echo "$PREFIX/$name:$VERSION"; done
