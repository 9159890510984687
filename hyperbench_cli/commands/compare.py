"""``hyperbench compare``: a comparison of 2-8 runs (paired bootstrap), waited for, its report opened."""

from __future__ import annotations

import os
import tempfile
import time
import webbrowser
from pathlib import Path
from typing import Any

from rich.text import Text

from hyperbench_cli.client import Api, clean
from hyperbench_cli.commands.common import int_id
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_API, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, CliError


def _wait(api: Api, cmp: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while cmp.get("state") == "queued":
        if time.monotonic() > deadline:
            raise CliError(f"comparison {cmp.get('id')} is still queued after {timeout_s:.0f} s", EXIT_API)
        time.sleep(1.0)
        cmp = api.get(f"/api/v1/comparisons/{cmp['id']}/")
    return cmp


def _open_report(api: Api, cmp: dict[str, Any]) -> Path:
    html = api.request("GET", cmp["report_url"], accept="text/html").content
    fd, name = tempfile.mkstemp(prefix=f"hyperbench-comparison-{cmp['id']}-", suffix=".html")
    with os.fdopen(fd, "wb") as f:
        f.write(html)
    path = Path(name)
    webbrowser.open(path.as_uri())
    return path


def cmd_compare(ctx: Ctx) -> int:
    a = ctx.args
    ids = [int_id(r, "a run id") for r in a.runs]
    if not 2 <= len(ids) <= 8:
        raise CliError("compare takes 2 to 8 run ids", EXIT_USAGE)
    api = ctx.api()
    cmp = api.post("/api/v1/comparisons/", {"runs": ids})
    if not a.no_wait:
        cmp = _wait(api, cmp, a.timeout)
    path = None
    if a.open and cmp.get("state") == "succeeded" and cmp.get("report_url"):
        path = _open_report(api, cmp)
    if ctx.json:
        ctx.emit({**cmp, **({"report_file": str(path)} if path else {})})
    else:
        ctx.out.print(
            Text(f"comparison {cmp.get('id')} of runs {', '.join(map(str, ids))}: {cmp.get('state')}")
        )
        if cmp.get("error_reason"):
            ctx.out.print(Text(f"reason: {clean(str(cmp['error_reason']))}"))
        if cmp.get("report_url"):
            ctx.out.print(Text(f"report: {cmp['report_url']}"))
        if path:
            ctx.out.print(Text(f"opened {path}"))
    return EXIT_RUN_FAILED if cmp.get("state") == "failed" else EXIT_OK
