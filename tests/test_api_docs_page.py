"""The API's docs page, opened in headless Chromium as a person would: Swagger UI renders the
operations from the project's own OpenAPI schema, with every file served by the app (no CDN:
these machines, like many GPU hosts, reach no CDN)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.test_report import _chromium


def test_the_api_docs_page_renders_every_endpoint_without_a_cdn(live_server: Any, tmp_path: Path) -> None:
    proc = _chromium(
        ["--virtual-time-budget=20000", "--dump-dom", f"{live_server.url}/api/docs/"], tmp_path / "profile"
    )

    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "swagger-ui" in dom
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    wanted = ["/api/v1/runs/", "/api/v1/datasets/", "/api/v1/leaderboard/", "/api/v1/runs/{id}/artifacts/"]
    assert set(wanted) <= paths, sorted(paths)
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', dom)
    assert scripts, scripts
    assert all(s.startswith(("/", live_server.url)) for s in scripts), scripts
