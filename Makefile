# HyperBench: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: demo test setup images start stop lint bench-containers bench-sync bench-recovery bench-control bench-reuse help

help:
	@echo "make demo   - set up, build images, start the stack and run a benchmark end to end"
	@echo "              (make demo HOSTS=3 SHARDS=3: 3 shards over 3 host workers;"
	@echo "               make demo TASK=table|page: table recognition (TEDS) or page parsing instead of OCR;"
	@echo "               TASK=kie: a VLM endpoint, HB_OPENAI_*)"
	@echo "make test   - set up, build images, lint, type-check and run the test suite"
	@echo "make start  - start the stack again with the settings in var/hyperbench.env"
	@echo "make stop   - stop everything the demo started"
	@echo "make images - build every image (hyperbench/<name>:<version> and :latest)"
	@echo "make bench-containers - launcher vs docker-py vs docker run, OCR image vs a bare loop (bench/README.md)"
	@echo "make bench-sync - node-cache S3 sync vs s5cmd, aws s3 sync, rclone on a local SeaweedFS (quick mode)"
	@echo "make bench-recovery - 3 host workers: undisturbed run, host killed and restarted, cancel (medians)"
	@echo "make bench-control - 1,000 simulated shards against the control worker, Redis and PostgreSQL"
	@echo "make bench-reuse - the demo's experiment cold then warm (cache), rescore, eval of 100,000 samples"

setup:
	@scripts/bootstrap.sh

images: setup
	@scripts/build-images.sh

# make demo HOSTS=3 SHARDS=3: the same run as 3 shards over 3 host workers on this machine.
# make demo TASK=table|page|kie: the benchmark of another task (hyperbench_web/demo.py, DEMOS);
# TASK=kie needs a VLM endpoint (HB_OPENAI_BASE_URL, HB_OPENAI_MODEL).
HOSTS ?= 1
SHARDS ?= 1
TASK ?= ocr

demo: images
	@$(PY) -m hyperbench_web.demo --hosts $(HOSTS) --shards $(SHARDS) --task $(TASK)

# Start the stack again (after make demo set it up), with what var/hyperbench.env says.
start: images
	@$(PY) -m hyperbench_web.devstack --hosts $(HOSTS) start

stop:
	@if [ -x $(PY) ]; then $(PY) -m hyperbench_web.devstack stop; else echo "nothing to stop (no .venv)"; fi

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy worker images scripts hyperbench_web apps hyperbench_cli tests bench
	.venv/bin/lint-imports

PG_URL := postgres://hyperbench:hyperbench@127.0.0.1:5432/hyperbench
test: images lint
	.venv/bin/pytest
	@echo "--- every test that touches the DB, again on PostgreSQL ($(PG_URL))"
	DATABASE_URL=$(PG_URL) .venv/bin/pytest -m "uses_db and not ocr"

# Needs the built images (make images); see bench/README.md for how to read the figures.
bench-containers: setup
	$(PY) bench/containers.py

# A local SeaweedFS is started and stopped by the script; FULL=1 runs 7 rounds with the rclone anchor.
bench-sync: setup
	$(PY) bench/sync.py $(if $(FULL),,--quick)

# Needs the built images (make images); a stack of its own with three host workers (bench/README.md).
bench-recovery: images
	$(PY) bench/recovery.py

# Needs the built images (make images); a stack of its own with one host worker (bench/README.md).
bench-reuse: images
	$(PY) bench/reuse.py

# No images: simulated hosts (the real event path) against the real control worker on PostgreSQL.
bench-control: setup
	$(PY) bench/control.py
