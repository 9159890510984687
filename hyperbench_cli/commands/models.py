"""``hyperbench models``: list and show models; register one (staff)."""

from __future__ import annotations

from typing import Any

from hyperbench_cli.commands.common import answer, json_arg, list_resource, show_resource
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_USAGE, CliError

COLUMNS = ["name", "image", "digest", "gpu", "endpoint", "description"]


def _row(m: dict[str, Any]) -> list[Any]:
    return [
        m.get("name"),
        m.get("image"),
        str(m.get("digest") or "")[:19],
        f"{m.get('gpus') or 1}" if m.get("requires_gpu") else "no",
        m.get("endpoint_base_url"),
        m.get("description"),
    ]


def cmd_list(ctx: Ctx) -> int:
    return list_resource(ctx, "/api/v1/models/", "models", COLUMNS, _row)


def cmd_show(ctx: Ctx) -> int:
    name = ctx.args.name
    if "/" in name or not name.strip():
        raise CliError(f"not a model name: {name!r}", EXIT_USAGE)
    return show_resource(ctx, lambda: f"/api/v1/models/{name}/", lambda m: f"model {m.get('name')}")


def cmd_register(ctx: Ctx) -> int:
    a = ctx.args
    body: dict[str, Any] = {"name": a.name, "image": a.image, "digest": a.digest}
    optional = {
        "requires_gpu": a.requires_gpu or None,
        "gpus": a.gpus,
        "network": a.network or None,
        "description": a.description,
        "default_params": json_arg(a.default_params, "--default-params"),
        "endpoint_base_url": a.endpoint_base_url,
        "endpoint_model": a.endpoint_model,
        "endpoint_api_key_env": a.endpoint_api_key_env,
        "endpoint_max_concurrency": a.endpoint_max_concurrency,
        "endpoint_timeout_s": a.endpoint_timeout_s,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return answer(
        ctx,
        ctx.api().post("/api/v1/models/", body),
        lambda m: f"model {m.get('name')} registered: {m.get('image')} pinned to {m.get('digest')}",
    )
