"""``hyperbench artifacts``: list a run's artifacts and download one or all of them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from rich.text import Text

from hyperbench_cli.client import Api
from hyperbench_cli.commands.common import int_id
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_API, EXIT_OK, CliError
from hyperbench_cli.output import size

#: Artifact names the API gives without a suffix, and the file name suffix of each.
SUFFIXES = {"predictions": ".jsonl", "metrics": ".json", "per_sample": ".jsonl", "report": ".html"}
CONTENT_SUFFIXES = {
    "application/json": ".json",
    "text/html": ".html",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "text/plain": ".txt",
}


def run_artifacts(ctx: Ctx, run_id: int) -> dict[str, str]:
    """A run's artifacts: name -> the URL to fetch it from."""
    body = ctx.api().get(f"/api/v1/runs/{run_id}/artifacts/")
    found = body.get("artifacts") if isinstance(body, dict) else None
    return {str(k): str(v) for k, v in (found or {}).items()}


def artifact_filename(name: str, content_type: str = "") -> PurePosixPath:
    """Where an artifact goes under the output folder: its name as a relative path, with a suffix
    (``metrics`` -> ``metrics.json``, ``shards/0/predictions`` -> ``shards/0/predictions.jsonl``)."""
    path = PurePosixPath(name)
    if path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")):
        raise CliError(f"refusing the artifact name {name!r} (not a plain relative path)", EXIT_API)
    if not path.suffix:
        suffix = SUFFIXES.get(path.name) or CONTENT_SUFFIXES.get(
            content_type.split(";")[0].strip().lower(), ""
        )
        path = path.with_name(path.name + suffix)
    return path


def cmd_list(ctx: Ctx) -> int:
    run_id = int_id(ctx.args.run, "the run id")
    found = run_artifacts(ctx, run_id)
    if ctx.json:
        ctx.emit({"run": run_id, "artifacts": found})
    else:
        ctx.table(
            f"run {run_id}: artifacts", ["name", "file"], [[k, str(artifact_filename(k))] for k in found]
        )
    return EXIT_OK


def _chosen(run_id: int, found: dict[str, str], name: str | None) -> list[str]:
    """The artifacts to download: the one named (by its name or its file name), or all."""
    if not name:
        return list(found)
    key = name if name in found else next((k for k in found if str(artifact_filename(k)) == name), None)
    if key is None:
        raise CliError(
            f"run {run_id} has no artifact {name!r} (it has: {', '.join(found) or 'none yet'})",
            EXIT_API,
        )
    return [key]


def _download(api: Api, url: str, name: str, out: Path) -> dict[str, Any]:
    """One artifact streamed to a temporary file beside its place, then moved there."""
    r = api.request("GET", url, stream=True, accept="*/*")
    rel = artifact_filename(name, r.headers.get("Content-Type", ""))
    dest = out.joinpath(*rel.parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in r.iter_content(1 << 16):
                f.write(chunk)
                written += len(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        r.close()
    return {"name": name, "path": str(dest), "bytes": written}


def cmd_download(ctx: Ctx) -> int:
    a = ctx.args
    run_id = int_id(a.run, "the run id")
    found = run_artifacts(ctx, run_id)
    names = _chosen(run_id, found, a.name)
    out = Path(a.output)
    api = ctx.api()
    written = []
    for name in names:
        written.append(_download(api, found[name], name, out))
        if not ctx.json:
            ctx.out.print(Text(f"{written[-1]['path']}  ({size(written[-1]['bytes'])})"))
    if ctx.json:
        ctx.emit({"run": run_id, "files": written})
    return EXIT_OK
