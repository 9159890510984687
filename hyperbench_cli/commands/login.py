"""``hyperbench login``: a token for a username and password, saved with the URL in the config file."""

from __future__ import annotations

import getpass
import sys

from hyperbench_cli.client import Api
from hyperbench_cli.config import normalize_url, resolve, save_config
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_API, EXIT_AUTH, EXIT_OK, EXIT_USAGE, CliError


def _credentials(ctx: Ctx) -> tuple[str, str]:
    a = ctx.args
    username = a.username
    if not username:
        if not sys.stdin.isatty():
            raise CliError("give --username (and --password-stdin) when stdin is not a terminal", EXIT_USAGE)
        username = input("Username: ").strip()
    if a.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("give the password with --password-stdin when stdin is not a terminal", EXIT_USAGE)
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise CliError("a username and a password are needed", EXIT_USAGE)
    return username, password


def cmd_login(ctx: Ctx) -> int:
    target = resolve(getattr(ctx.args, "url", None), None)
    url = normalize_url(target.url)
    username, password = _credentials(ctx)
    api = Api(url, None)
    try:
        body = api.post("/api/v1/auth/token/", {"username": username, "password": password})
    except CliError as e:
        if e.status == 400:  # DRF's answer to wrong credentials
            raise CliError(f"login failed: {e.message.split(': ', 1)[-1]}", EXIT_AUTH, status=400) from e
        raise
    token = (body or {}).get("token") if isinstance(body, dict) else None
    if not token:
        raise CliError(f"the server at {url} answered no token (is it a HyperBench server?)", EXIT_API)
    path = save_config({"url": url, "username": username, "token": token})
    if ctx.json:
        ctx.emit({"url": url, "username": username, "config": str(path)})
    else:
        ctx.out.print(f"Logged in to {url} as {username}; token saved in {path} (mode 0600).")
    return EXIT_OK
