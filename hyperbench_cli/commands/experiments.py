"""``hyperbench experiments``: list, show and create experiments (a model, a dataset version, params)."""

from __future__ import annotations

from typing import Any

from hyperbench_cli.commands.common import answer, int_id, json_arg, list_resource, show_resource
from hyperbench_cli.context import Ctx
from hyperbench_cli.output import when

COLUMNS = ["id", "name", "model", "dataset", "params", "owner", "created"]


def _row(e: dict[str, Any]) -> list[Any]:
    return [
        e.get("id"),
        e.get("name"),
        e.get("model"),
        e.get("dataset"),
        e.get("params"),
        e.get("owner"),
        when(e.get("created_at")),
    ]


def cmd_list(ctx: Ctx) -> int:
    return list_resource(ctx, "/api/v1/experiments/", "experiments", COLUMNS, _row)


def cmd_show(ctx: Ctx) -> int:
    return show_resource(
        ctx,
        lambda: f"/api/v1/experiments/{int_id(ctx.args.id, 'the experiment id')}/",
        lambda e: f"experiment {e.get('id')}: {e.get('name')}",
    )


def cmd_create(ctx: Ctx) -> int:
    a = ctx.args
    body: dict[str, Any] = {"name": a.name, "model": a.model, "dataset": a.dataset}
    params = json_arg(a.params, "--params")
    if params is not None:
        body["params"] = params
    if a.prompt is not None:
        body["prompt"] = a.prompt
    return answer(
        ctx,
        ctx.api().post("/api/v1/experiments/", body),
        lambda e: (
            f"experiment {e.get('id')} created: {e.get('name')} "
            f"({e.get('model')} on dataset {e.get('dataset')})"
        ),
        lambda e: f"start a run: hyperbench runs start --experiment {e.get('id')} --follow",
    )
