"""Settings for the test suite: the production module with a throwaway secret."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "test-only-not-secret")

from hyperbench_web.settings import *  # noqa: E402,F403
from hyperbench_web.settings import HYPERBENCH_EVAL_IMAGE_DIGEST, HYPERBENCH_REPORT_IMAGE_DIGEST  # noqa: E402

# Tests that start runs without a host worker need pinned system images to build a
# spec; no engine ever sees these. Tests that run containers pin the built images'
# real ids (tests/conftest.py, fixture ``platform``).
HYPERBENCH_EVAL_IMAGE_DIGEST = HYPERBENCH_EVAL_IMAGE_DIGEST or "sha256:" + "e" * 64
HYPERBENCH_REPORT_IMAGE_DIGEST = HYPERBENCH_REPORT_IMAGE_DIGEST or "sha256:" + "f" * 64
