"""The broker connection of a host that joins over an untrusted network: TLS and a password.

A remote host (a rented GPU pod) reaches Redis over the internet, so its broker URL is
``rediss://user:password@host:port/db``: TLS with the server's certificate verified against
``HYPERBENCH_BROKER_CA_FILE`` and an ACL user of its own (docs/operations.md, "Joining a remote
host"). kombu turns a bare ``rediss://`` into ``ssl_cert_reqs=CERT_NONE`` with only a warning;
this module never lets that happen: a ``rediss://`` URL always gets ``CERT_REQUIRED``, and a
setting that would weaken it is refused with a message naming the setting to fix.

Standard library and redis-py only: the web side (hyperbench_web/settings.py and
hyperbench_web/celery.py) uses it too, so both ends of the broker check the same way.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

URL_SETTING = "CELERY_BROKER_URL"
CA_SETTING = "HYPERBENCH_BROKER_CA_FILE"
CERT_SETTING = "HYPERBENCH_BROKER_CERT_FILE"
KEY_SETTING = "HYPERBENCH_BROKER_KEY_FILE"
#: ``HYPERBENCH_BROKER_CA_FILE=system`` trusts the system's CA store (a broker with a public certificate).
SYSTEM_CA = "system"


class BrokerConfigError(ValueError):
    """The broker settings are unsafe or wrong; the message names the setting to fix."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def _readable(setting: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise BrokerConfigError(f"{setting}={value} is not a file")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise BrokerConfigError(f"{setting}={value} cannot be read: {e.strerror or e}") from e
    return str(path.resolve())


def ssl_options(
    url: str, *, ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for ``url``: None for plain ``redis://``, else verified TLS.

    Raises:
        BrokerConfigError: a ``rediss://`` URL without a CA (or ``system``) or without a
            password, a URL that asks for less verification, half a client certificate,
            unreadable files, or TLS files set for a clear-text URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme != "rediss":
        if ca_file or cert_file or key_file:
            set_ = ", ".join(
                n for n, v in ((CA_SETTING, ca_file), (CERT_SETTING, cert_file), (KEY_SETTING, key_file)) if v
            )
            raise BrokerConfigError(
                f"{set_} is set but {URL_SETTING} is {scheme}:// (clear text); "
                f"use rediss://user:password@host:port/db for a broker over TLS"
            )
        return None
    query = {k.lower(): v for k, v in parse_qs(parts.query).items()}
    for key in ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in query:
            raise BrokerConfigError(
                f"{URL_SETTING} carries {key}=...; remove it: TLS is set by {CA_SETTING}, "
                f"{CERT_SETTING} and {KEY_SETTING}, and certificates are always verified"
            )
    if not parts.password:
        raise BrokerConfigError(
            f"{URL_SETTING} ({redact(url)}) has no password; a broker over TLS needs this host's "
            f"ACL user and password: rediss://user:password@host:port/db"
        )
    if not ca_file:
        raise BrokerConfigError(
            f"{URL_SETTING} is rediss:// but {CA_SETTING} is not set; point it at the CA bundle that "
            f"signed the broker's certificate (or set {CA_SETTING}={SYSTEM_CA} to trust the system store)"
        )
    if bool(cert_file) != bool(key_file):
        raise BrokerConfigError(f"a client certificate needs both {CERT_SETTING} and {KEY_SETTING}")
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if ca_file != SYSTEM_CA:
        options["ssl_ca_certs"] = _readable(CA_SETTING, ca_file)
    if cert_file:
        options["ssl_certfile"] = _readable(CERT_SETTING, cert_file)
        options["ssl_keyfile"] = _readable(KEY_SETTING, key_file)
    return options


def ssl_options_from_env(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    env = os.environ if environ is None else environ
    return ssl_options(
        url,
        ca_file=env.get(CA_SETTING, "").strip(),
        cert_file=env.get(CERT_SETTING, "").strip(),
        key_file=env.get(KEY_SETTING, "").strip(),
    )


def check(url: str, options: dict[str, Any] | None, *, timeout_s: float = 10.0) -> None:
    """Connect to the broker once and authenticate; raise BrokerConfigError on a setting to fix.

    A certificate that does not verify, a server that does not speak TLS and a refused
    user or password are errors of configuration: retrying them forever only hides them.
    A broker that cannot be reached (refused, timed out) is not: the caller goes on and
    Celery retries as usual.
    """
    import redis
    from redis import exceptions as rexc

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, **(options or {})
    )
    where = redact(url)
    try:
        client.ping()
    except rexc.AuthenticationError as e:
        raise BrokerConfigError(
            f"the broker at {where} refused this host's user or password ({e}); "
            f"fix the user:password in {URL_SETTING}"
        ) from e
    except rexc.ResponseError as e:
        text = str(e)
        if text.startswith(("NOAUTH", "WRONGPASS")):
            raise BrokerConfigError(
                f"the broker at {where} refused this host's user or password ({text}); "
                f"fix the user:password in {URL_SETTING}"
            ) from e
        if text.startswith("NOPERM"):
            raise BrokerConfigError(
                f"the broker at {where} accepted the user but denies it PING ({text}); "
                f"fix the user's ACL rules (docs/operations.md, 'Joining a remote host')"
            ) from e
        raise
    except (rexc.ConnectionError, rexc.TimeoutError, OSError) as e:
        text = str(e)
        low = text.lower()
        if "certificate" in low or "hostname mismatch" in low:
            raise BrokerConfigError(
                f"the broker's TLS certificate at {where} does not verify ({text}); "
                f"{CA_SETTING} must name the CA that signed it, and the URL's host must be a name "
                f"(or address) the certificate is for"
            ) from e
        if "ssl" in low or "tls" in low or "wrong version number" in low or "record layer" in low:
            raise BrokerConfigError(
                f"no TLS handshake with the broker at {where} ({text}); check the port in {URL_SETTING} "
                f"is the broker's TLS port, and {CERT_SETTING}/{KEY_SETTING} if it asks for a client "
                f"certificate"
            ) from e
        if "authentication" in low or "noauth" in low or "wrongpass" in low:
            raise BrokerConfigError(
                f"the broker at {where} refused this host's user or password ({text}); "
                f"fix the user:password in {URL_SETTING}"
            ) from e
        return  # unreachable for now: Celery's own retry takes over
    finally:
        client.close()
