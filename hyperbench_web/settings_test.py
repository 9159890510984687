"""Settings for the test suite: the production module with a throwaway secret."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "test-only-not-secret")

from hyperbench_web.settings import *  # noqa: F403
from hyperbench_web.settings import HYPERBENCH_EVAL_IMAGE_DIGEST, HYPERBENCH_REPORT_IMAGE_DIGEST

# Tests that start runs without a host worker need pinned system images to build a
# spec; no engine ever sees these. Tests that run containers pin the built images'
# real ids (tests/conftest.py, fixture ``platform``).
HYPERBENCH_EVAL_IMAGE_DIGEST = HYPERBENCH_EVAL_IMAGE_DIGEST or "sha256:" + "e" * 64
HYPERBENCH_REPORT_IMAGE_DIGEST = HYPERBENCH_REPORT_IMAGE_DIGEST or "sha256:" + "f" * 64

# The suite makes many requests as the same user ids and from one address within a
# minute: the general throttles stay out of its way (tests/test_api_security.py sets
# its own rates); the token endpoint keeps its production rate, which a test exercises.
HYPERBENCH_API_THROTTLE_ANON = "100000/minute"
HYPERBENCH_API_THROTTLE_USER = "100000/minute"
