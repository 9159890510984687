"""``hyperbench leaderboard``: models ranked per dataset version by a metric, with 95% CIs."""

from __future__ import annotations

from typing import Any

from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_OK
from hyperbench_cli.output import ci95, number4


def _entry_row(e: dict[str, Any]) -> list[Any]:
    return [
        e.get("rank"),
        e.get("model"),
        e.get("experiment"),
        e.get("run"),
        number4(e.get("value")),
        ci95(e.get("ci95")),
        e.get("samples"),
        e.get("samples_per_s"),
        e.get("gpu_seconds"),
    ]


def _show_board(ctx: Ctx, b: dict[str, Any]) -> None:
    d = b.get("dataset") or {}
    direction = "lower is better" if b.get("lower_is_better") else "higher is better"
    ctx.table(
        f"{d.get('name')}@{d.get('version')} (dataset {d.get('id')}, {d.get('task')}): "
        f"{b.get('metric')}, {direction}",
        ["#", "model", "experiment", "run", str(b.get("metric")), "95% CI", "samples", "samples/s", "GPU-s"],
        [_entry_row(e) for e in b.get("entries", [])],
    )


def cmd_leaderboard(ctx: Ctx) -> int:
    a = ctx.args
    params = {k: v for k, v in (("dataset", a.dataset), ("task", a.task), ("metric", a.metric)) if v}
    body = ctx.api().get("/api/v1/leaderboard/", params)
    boards = body.get("results", []) if isinstance(body, dict) else []
    if ctx.json:
        ctx.emit(body)
        return EXIT_OK
    if not boards:
        ctx.out.print("no leaderboard entries yet (a board shows succeeded runs you may see)")
    for b in boards:
        _show_board(ctx, b)
    return EXIT_OK
