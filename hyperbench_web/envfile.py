"""The one-machine stack's settings file: ``<var>/hyperbench.env``.

Every process the devstack starts (web, control worker, host workers, Flower)
and every ``manage.py`` the demo runs reads it, so a setting added there (S3,
say) survives ``make stop`` / ``make start`` / ``make demo``. It is created on
the first start with what the stack cannot run without: a secret key, the
admin's password and Flower's login; ``make demo`` adds the image pins.
Variables already in the environment win over the file (twelve-factor), and
the host workers never get the web side's secrets (see ``devstack``).

Format: ``NAME=value`` lines, ``#`` comments; no quoting, no expansion. Stdlib
only: the devstack must not import Django.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
HEADER = """\
# HyperBench one-machine settings: read by every process `make demo`, `make start` and
# `python -m hyperbench_web.devstack start` run (docs/operations.md, "One machine").
# NAME=value, one a line; variables set in the environment win over this file.
"""


def read(path: Path) -> dict[str, str]:
    """The settings in ``path`` ({} when it does not exist).

    Raises:
        ValueError: a line that is not ``NAME=value`` (the message names the line).
    """
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"{path}:{lineno}: expected NAME=value, got {raw!r}")
        out[name] = value.strip()
    return out


def update(path: Path, values: dict[str, str]) -> None:
    """Set ``values`` in the file (replacing a line of the same name, else appending), mode 0600."""
    for name, value in values.items():
        if not _NAME.fullmatch(name) or "\n" in value:
            raise ValueError(f"not a setting: {name}={value!r}")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else HEADER.splitlines()
    todo = dict(values)
    for i, raw in enumerate(lines):
        name = raw.partition("=")[0].strip()
        if not raw.lstrip().startswith("#") and name in todo:
            lines[i] = f"{name}={todo.pop(name)}"
    lines += [f"{k}={v}" for k, v in todo.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    os.replace(tmp, path)


def ensure(path: Path, legacy_dir: Path | None = None) -> dict[str, str]:
    """Create what is missing (secret key, admin password, Flower login); return every setting.

    ``legacy_dir``: where earlier versions kept ``secret_key`` and ``admin_password``
    files; their values are carried over so a running setup keeps its logins.
    """
    have = read(path)
    missing: dict[str, str] = {}

    def old(name: str) -> str:
        f = legacy_dir / name if legacy_dir is not None else None
        return f.read_text().strip() if f is not None and f.is_file() else ""

    if "SECRET_KEY" not in have:
        missing["SECRET_KEY"] = old("secret_key") or secrets.token_urlsafe(32)
    if "HYPERBENCH_ADMIN_PASSWORD" not in have:
        missing["HYPERBENCH_ADMIN_PASSWORD"] = old("admin_password") or secrets.token_urlsafe(18)
    if "FLOWER_BASIC_AUTH" not in have:
        password = have.get("HYPERBENCH_ADMIN_PASSWORD") or missing["HYPERBENCH_ADMIN_PASSWORD"]
        missing["FLOWER_BASIC_AUTH"] = f"admin:{password}"
    if missing:
        update(path, missing)
    return read(path)
