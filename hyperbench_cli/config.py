"""Where the CLI finds its server and token: flags, then the environment, then the config file.

The config file (``$XDG_CONFIG_HOME/hyperbench/config.json``, by default
``~/.config/hyperbench/config.json``) is written by ``hyperbench login``, mode 0600
in a 0700 directory. Its token is only sent to the server it was issued by: with
``--url``/``HYPERBENCH_URL`` naming another server, it is not used.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperbench_cli.errors import EXIT_USAGE, CliError

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "hyperbench" / "config.json"


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"the server URL must start with http:// or https:// (got {url!r})", EXIT_USAGE)
    return url


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CliError(f"cannot read the config file {path}: {e.strerror}", EXIT_USAGE) from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CliError(
            f"the config file {path} is not valid JSON ({e}); run `hyperbench login` again", EXIT_USAGE
        ) from e
    if not isinstance(data, dict):
        raise CliError(
            f"the config file {path} must hold a JSON object; run `hyperbench login` again", EXIT_USAGE
        )
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0
    if mode & 0o077:
        print(
            f"hyperbench: warning: {path} holds a token and is readable by others (chmod 600 {path})",
            file=sys.stderr,
        )
    return data


def save_config(data: dict[str, Any]) -> Path:
    """Write the config atomically, mode 0600 from the start (never briefly world-readable)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    token_source: str  # "--token", "HYPERBENCH_TOKEN", the config file's path, or ""


def resolve(flag_url: str | None, flag_token: str | None) -> Target:
    """The server and token to use: ``--url``/``--token``, then HYPERBENCH_URL/HYPERBENCH_TOKEN, then
    the config file; the config's token only for the config's own server."""
    cfg = load_config()
    cfg_url = normalize_url(str(cfg["url"])) if cfg.get("url") else None
    raw_url = flag_url or os.environ.get("HYPERBENCH_URL") or cfg_url or DEFAULT_URL
    url = normalize_url(raw_url)
    if flag_token:
        return Target(url, flag_token, "--token")
    if os.environ.get("HYPERBENCH_TOKEN"):
        return Target(url, os.environ["HYPERBENCH_TOKEN"], "HYPERBENCH_TOKEN")
    if cfg.get("token") and cfg_url == url:
        return Target(url, str(cfg["token"]), str(config_path()))
    return Target(url, None, "")
