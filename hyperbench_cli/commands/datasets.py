"""``hyperbench datasets``: list, show, register (a directory or S3 prefix) and upload dataset versions.

``datasets upload PATH --format F`` and ``datasets import FORMAT PATH`` (the issue's spelling)
are the same request, built by :func:`cmd_upload`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hyperbench_cli.client import clean
from hyperbench_cli.commands.common import answer, int_id, json_arg, list_resource, show_resource
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_USAGE, CliError
from hyperbench_cli.output import size

UPLOAD_FORMATS = (
    "layout",
    "vlmevalkit-tsv",
    "hf-parquet",
    "docvqa-json",
    "pubtabnet-jsonl",
    "kie-json",
    "images-txt",
    "pdf",
)
#: The formats ``datasets import`` takes: every upload format but the project's own layout.
IMPORT_FORMATS = UPLOAD_FORMATS[1:]
COLUMNS = ["id", "name", "version", "task", "samples", "size", "sources"]


def _row(d: dict[str, Any]) -> list[Any]:
    return [
        d.get("id"),
        d.get("name"),
        d.get("version"),
        d.get("task"),
        d.get("sample_count"),
        size(d.get("total_bytes")),
        " + ".join(u for u in (d.get("source_uri"), d.get("s3_uri")) if u) or "-",
    ]


def cmd_list(ctx: Ctx) -> int:
    return list_resource(ctx, "/api/v1/datasets/", "datasets", COLUMNS, _row)


def cmd_show(ctx: Ctx) -> int:
    return show_resource(
        ctx,
        lambda: f"/api/v1/datasets/{int_id(ctx.args.id, 'the dataset id')}/",
        lambda d: f"dataset {d.get('id')}: {d.get('name')}@{d.get('version')}",
    )


def cmd_register(ctx: Ctx) -> int:
    return answer(
        ctx,
        ctx.api().post("/api/v1/datasets/", {"uri": ctx.args.uri}),
        lambda d: (
            f"dataset {d.get('id')}: {d.get('name')}@{d.get('version')} ({d.get('task')}, "
            f"{d.get('sample_count')} samples) {d.get('outcome', 'registered')}"
            + (f": {clean(str(d['message']))}" if d.get("message") else "")
        ),
    )


def cmd_upload(ctx: Ctx) -> int:
    """``datasets upload`` and ``datasets import``: the file and the form fields, one multipart POST."""
    a = ctx.args
    path = Path(a.path)
    if not path.is_file():
        raise CliError(
            f"{a.path} is not a file: upload an archive (.zip, .tar, .tar.gz) or a file of an import format",
            EXIT_USAGE,
        )
    columns = json_arg(a.columns, "--columns")  # a usage error here, not a 400 there
    optional = {
        "name": a.name,
        "version": a.version,
        "task": a.task,
        "columns": json.dumps(columns) if columns is not None else None,
        "description": a.description,
    }
    fields = {"format": a.format, **{k: v for k, v in optional.items() if v is not None}}
    return answer(
        ctx,
        ctx.api().upload("/api/v1/datasets/upload/", path, fields),
        lambda d: (
            f"dataset {d.get('id')}: {d.get('name')}@{d.get('version')} ({d.get('task')}, "
            f"{d.get('sample_count')} samples, {size(d.get('total_bytes'))}) uploaded and registered"
        ),
    )
