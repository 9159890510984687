# HyperBench: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: demo test setup images stop lint bench-containers bench-sync help

help:
	@echo "make demo   - set up, build images, start the stack and run a benchmark end to end"
	@echo "make test   - set up, build images, lint, type-check and run the test suite"
	@echo "make stop   - stop everything the demo started"
	@echo "make images - build every image (hyperbench/<name>:<version> and :latest)"
	@echo "make bench-containers - launcher vs docker-py vs docker run, OCR image vs a bare loop (bench/README.md)"
	@echo "make bench-sync - node-cache S3 sync vs s5cmd, aws s3 sync, rclone on a local SeaweedFS (quick mode)"

setup:
	@scripts/bootstrap.sh

images: setup
	@scripts/build-images.sh

demo: images
	@$(PY) -m hyperbench_web.demo

stop:
	@if [ -x $(PY) ]; then $(PY) -m hyperbench_web.devstack stop; else echo "nothing to stop (no .venv)"; fi

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy worker images scripts hyperbench_web apps
	.venv/bin/lint-imports

PG_URL := postgres://hyperbench:hyperbench@127.0.0.1:5432/hyperbench
PG_TESTS := $(addprefix tests/,test_api.py test_run_e2e.py test_leaderboard.py test_comparisons.py \
	test_s3_registration.py test_sync_progress_and_cache.py test_reconcile.py test_admin_pages.py \
	test_artifacts_e2e.py test_gpus_and_hosts.py)

test: images lint
	.venv/bin/pytest
	@echo "--- the tests that touch the DB again on PostgreSQL ($(PG_URL))"
	DATABASE_URL=$(PG_URL) .venv/bin/pytest -m "not ocr" $(PG_TESTS)

# Needs the built images (make images); see bench/README.md for how to read the figures.
bench-containers: setup
	$(PY) bench/containers.py

# A local SeaweedFS is started and stopped by the script; FULL=1 runs 7 rounds with the rclone anchor.
bench-sync: setup
	$(PY) bench/sync.py $(if $(FULL),,--quick)
