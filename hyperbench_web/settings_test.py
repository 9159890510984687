"""Settings for the test suite: the production module with a throwaway secret."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "test-only-not-secret")

from hyperbench_web.settings import *  # noqa: E402,F403
