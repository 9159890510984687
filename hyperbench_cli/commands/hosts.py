"""``hyperbench hosts``: the host workers, their GPUs and cache, what runs where; silent hosts marked."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from hyperbench_cli.client import clean
from hyperbench_cli.commands.common import fetch_list, show_list
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_OK
from hyperbench_cli.output import size, when

COLUMNS = ["host", "state", "last seen", "busy", "GPUs", "cache", "running"]


def _gpu_line(g: dict[str, Any]) -> str:
    mem = ""
    if isinstance(g.get("memory_total_mb"), int | float):
        used = g.get("memory_used_mb")
        mem = f" {(used or 0) / 1024:.1f}/{g['memory_total_mb'] / 1024:.1f} GiB"
    util = f" {g['utilization_pct']}%" if g.get("utilization_pct") is not None else ""
    return f"{g.get('index')}: {g.get('name') or 'GPU'}{mem}{util}"


def _running_line(c: dict[str, Any]) -> str:
    return (
        f"run {c.get('run')}"
        + (f" shard {c.get('shard')}" if c.get("shard") is not None else "")
        + f" {c.get('stage') or ''}"
        + (f" on GPU {','.join(map(str, c.get('gpus') or []))}" if c.get("gpus") else "")
    )


def _row(h: dict[str, Any]) -> list[Any]:
    gpus = [_gpu_line(g) for g in h.get("gpus") or [] if isinstance(g, dict)]
    cache = h.get("cache") or []
    running = [_running_line(c) for c in h.get("running") or [] if isinstance(c, dict)]
    return [
        h.get("name"),
        Text("SILENT", style="bold red") if h.get("silent") else Text("live", style="green"),
        when(h.get("last_seen")),
        f"{h.get('active', 0)}/{h.get('slots', 0)}",
        Text("\n".join(gpus) if gpus else ("no GPU" if not h.get("nvml") else "-")),
        f"{size(h.get('cache_bytes'))} / {size(h.get('cache_budget_bytes'))}, {len(cache)} version(s)",
        Text("\n".join(clean(r) for r in running) or "-"),
    ]


def cmd_hosts(ctx: Ctx) -> int:
    items = fetch_list(ctx, "/api/v1/hosts/")
    show_list(ctx, "hosts", COLUMNS, items, _row)
    if ctx.json:
        return EXIT_OK
    silent_names = [str(h.get("name")) for h in items if h.get("silent")]
    if silent_names:
        ctx.out.print(
            Text(f"silent (no heartbeat for three periods): {', '.join(silent_names)}", style="red")
        )
    return EXIT_OK
