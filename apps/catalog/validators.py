"""Input checks shared by the API serializers, the registration services and the admin.

Everything here answers a sentence saying what is wrong (or None): callers turn
it into a 400 naming the field, a ``RegistrationError`` or a form error.

* ``json_problem``: a value the API would store must round-trip through every
  database and every JSON encoder: no lone UTF-16 surrogate (not encodable as
  UTF-8), no NUL (PostgreSQL refuses it in text and jsonb), no NaN/Infinity (not
  JSON), integers within 64 bits, and bounded nesting.
* ``endpoint_problem``: where an API model's container sends requests (it runs
  with host networking): http(s) only, never link-local or a cloud metadata
  address, private and loopback addresses only when allow-listed, and never the
  platform's own service ports on them.
* ``api_key_env_problem``: an API model may read only variables under a fixed
  prefix from the host worker's environment, never ``SECRET_KEY``,
  ``DATABASE_URL``, ``AWS_*``...
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

#: The deepest nesting of lists/objects the API accepts in a JSON body or field.
MAX_JSON_DEPTH = 32
_INT_MAX = 2**63 - 1
_INT_MIN = -(2**63)
#: Hostnames of cloud metadata services (their addresses are link-local and caught as such).
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})
_AWS_IMDS_V6 = ipaddress.ip_address("fd00:ec2::254")


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored and read back everywhere, or None."""
    if "\x00" in value:
        return "must not contain NUL (\\u0000) characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain lone UTF-16 surrogates (such as \\ud800): they cannot be encoded."
    return None


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a parsed JSON value cannot be stored and read back, or None (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return f"JSON is nested too deep (at most {max_depth} levels)."
            problem = _push_children(item, depth + 1, stack)
        else:
            problem = _scalar_problem(item)
        if problem:
            return problem
    return None


def _scalar_problem(item: Any) -> str | None:
    """Why a JSON leaf (text, number, true/false/null) cannot be stored and read back, or None."""
    if isinstance(item, str):
        problem = text_problem(item)
        return f"Text {problem}" if problem else None
    if isinstance(item, bool) or item is None:
        return None
    if isinstance(item, int):
        return None if _INT_MIN <= item <= _INT_MAX else "Integers must fit in 64 bits."
    if isinstance(item, float):
        return None if math.isfinite(item) else "Numbers must be finite (no NaN or Infinity)."
    # Anything else (an uploaded file...) is left to the field's own validation.
    return None


def _push_children(
    item: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int, stack: list[tuple[Any, int]]
) -> str | None:
    """Push a container's values onto ``stack`` at ``depth``; why one of its keys is refused, or None."""
    if not isinstance(item, dict):
        stack.extend((child, depth) for child in item)
        return None
    for key, child in item.items():
        if not isinstance(key, str):
            return "Object keys must be strings."
        problem = text_problem(key)
        if problem:
            return f"Object keys {problem}"
        stack.append((child, depth))
    return None


def printable(key: str) -> str:
    """A field name safe to echo back in an error (lone surrogates and NUL escaped)."""
    return key if text_problem(key) is None else ascii(key)[1:-1]


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a hostname denotes, including the forms inet_aton takes (2852039166, 0xa9.0xfe...)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[0-9a-fA-FxX.]+", host):
            return None
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def endpoint_problem(
    url: str,
    *,
    allowed_hosts: Iterable[str] | None = None,
    denied_ports: Iterable[int] | None = None,
) -> str | None:
    """Why an API model may not send requests to ``url``, or None.

    Link-local addresses (169.254.0.0/16, fe80::/10: the cloud metadata service) and
    metadata hostnames are always refused. Loopback, private and other non-public
    addresses are refused unless the host is in ``allowed_hosts``
    (``HYPERBENCH_MODEL_ENDPOINT_ALLOWED_HOSTS``), and even then not on the
    platform's own service ports (``HYPERBENCH_MODEL_ENDPOINT_DENIED_PORTS``).
    """
    if not url:
        return None
    if allowed_hosts is None:
        allowed_hosts = settings.HYPERBENCH_MODEL_ENDPOINT_ALLOWED_HOSTS
    allowed = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
    denied = set(
        denied_ports if denied_ports is not None else settings.HYPERBENCH_MODEL_ENDPOINT_DENIED_PORTS
    )
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return "Must be an http:// or https:// URL."
    if parsed.username is not None or parsed.password is not None:
        return "Must not carry credentials: the key comes from endpoint_api_key_env on the hosts."
    host = (parsed.hostname or "").lower().rstrip(".")
    if not host:
        return "Must name a host."
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return "Has an invalid port."
    ip = _ip_of(host)
    if host in METADATA_HOSTS or (ip is not None and (ip.is_link_local or ip == _AWS_IMDS_V6)):
        return "Must not point at a link-local or cloud metadata address."
    local = host == "localhost" or host.endswith(".localhost")
    if ip is not None and (ip.is_unspecified or ip.is_multicast or ip.is_reserved):
        return f"Must not point at {ip}."
    if (local or (ip is not None and not ip.is_global)) and host not in allowed:
        return (
            f"Host {host} is a loopback or private address; ask an operator to add it to "
            "HYPERBENCH_MODEL_ENDPOINT_ALLOWED_HOSTS."
        )
    if (local or (ip is not None and ip.is_loopback)) and port in denied:
        return f"Port {port} on {host} is one of the platform's own services; refused."
    return None


API_KEY_ENV_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,99}")


def api_key_env_problem(name: str, *, prefixes: Iterable[str] | None = None) -> str | None:
    """Why an API model may not read its key from the host worker's variable ``name``, or None."""
    if not name:
        return None
    allowed = [
        p for p in (prefixes if prefixes is not None else settings.HYPERBENCH_MODEL_KEY_ENV_PREFIXES) if p
    ]
    if not API_KEY_ENV_PATTERN.fullmatch(name):
        return "Must be an environment variable name: capital letters, digits and '_' (at most 100)."
    if not any(name.startswith(p) and len(name) > len(p) for p in allowed):
        return (
            f"Must start with one of {', '.join(allowed)} (HYPERBENCH_MODEL_KEY_ENV_PREFIXES): an API model "
            "may not read other variables of the host worker's environment."
        )
    return None


#: Documented bounds of the numeric model fields: (low, high).
MODEL_BOUNDS: dict[str, tuple[int, int]] = {
    "gpus": (0, 16),
    "endpoint_max_concurrency": (1, 256),
    "endpoint_timeout_s": (1, 3600),
}
#: The largest default_params / experiment params, in characters of JSON.
MAX_PARAMS_JSON = 16_000


def params_problem(value: Any) -> str | None:
    """Why a params object (experiment params, a model's default_params) is refused, or None."""
    import json

    if not isinstance(value, dict):
        return "Must be a JSON object."
    problem = json_problem(value)
    if problem:
        return problem
    if len(json.dumps(value)) > MAX_PARAMS_JSON:
        return f"Must be under {MAX_PARAMS_JSON // 1000} kB of JSON."
    return None


def model_problems(fields: dict[str, Any]) -> dict[str, str]:
    """Field -> why, for the staff-set fields of a model image (used by the service, API and admin)."""
    out: dict[str, str] = {}
    for name, (low, high) in MODEL_BOUNDS.items():
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            out[name] = f"Must be an integer from {low} to {high}."
    if "default_params" in fields and fields["default_params"] is not None:
        problem = params_problem(fields["default_params"])
        if problem:
            out["default_params"] = problem
    url_problem = endpoint_problem(str(fields.get("endpoint_base_url") or ""))
    if url_problem:
        out["endpoint_base_url"] = url_problem
    key_problem = api_key_env_problem(str(fields.get("endpoint_api_key_env") or ""))
    if key_problem:
        out["endpoint_api_key_env"] = key_problem
    for name, value in fields.items():
        if name not in out and isinstance(value, str):
            problem = text_problem(value)
            if problem:
                out[name] = f"Text {problem}"
    return out
