"""API throttles (DRF), with rates read from Django settings at each request.

* ``AnonThrottle``: unauthenticated requests, per client address
  (``HYPERBENCH_API_THROTTLE_ANON``).
* ``UserThrottle``: authenticated requests, per user (``HYPERBENCH_API_THROTTLE_USER``).
* ``TokenThrottle``: ``POST /api/v1/auth/token/``, per client address, whatever the
  outcome (``HYPERBENCH_API_THROTTLE_TOKEN``): password guessing gets a 429.

A rate is DRF's ``<n>/<second|minute|hour|day>``; an empty one turns that throttle
off. Counters live in Django's default cache (``CACHE_URL``); a throttled request
answers 429 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class _SettingsRateThrottle(SimpleRateThrottle):
    setting = ""

    def get_rate(self) -> str | None:
        return str(getattr(settings, self.setting, "") or "") or None


class AnonThrottle(_SettingsRateThrottle):
    scope = "anon"
    setting = "HYPERBENCH_API_THROTTLE_ANON"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if request.user and request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class UserThrottle(_SettingsRateThrottle):
    scope = "user"
    setting = "HYPERBENCH_API_THROTTLE_USER"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if not (request.user and request.user.is_authenticated):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class TokenThrottle(_SettingsRateThrottle):
    scope = "token"
    setting = "HYPERBENCH_API_THROTTLE_TOKEN"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
