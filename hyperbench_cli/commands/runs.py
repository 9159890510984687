"""``hyperbench runs``: start, list, show (and follow), cancel, retry, rescore runs; read their logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.table import Table
from rich.text import Text
from tqdm import tqdm

from hyperbench_cli.client import clean
from hyperbench_cli.commands.artifacts import run_artifacts
from hyperbench_cli.commands.common import answer, fetch_list, int_id, show_list
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_API, EXIT_OK, EXIT_RUN_FAILED, CliError
from hyperbench_cli.output import cell, ci95, number4, when

RUN_DONE = ("succeeded", "failed", "cancelled")
RUN_COLUMNS = ["id", "experiment", "model", "dataset", "state", "progress", "created", "finished"]
SHARD_COLUMNS = ["shard", "state", "host", "attempt", "done", "errors"]


def _run_row(r: dict[str, Any]) -> list[Any]:
    style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(str(r.get("state")), "")
    return [
        r.get("id"),
        r.get("experiment"),
        r.get("model"),
        r.get("dataset"),
        Text(cell(r.get("state")), style=style),
        f"{r.get('progress_done', 0)}/{r.get('progress_total', 0)}",
        when(r.get("created_at")),
        when(r.get("finished_at")),
    ]


def _shard_row(s: dict[str, Any]) -> list[Any]:
    return [
        s.get("index"),
        s.get("state"),
        s.get("host"),
        s.get("attempt"),
        f"{s.get('done')}/{s.get('total')}",
        s.get("errors"),
    ]


def _metrics_table(run: dict[str, Any], metrics: dict[str, Any], values: dict[str, Any]) -> Table:
    t = Table(
        title=f"run {run.get('id')}: {clean(str(run.get('model')))} on {clean(str(run.get('dataset')))}",
        caption=f"{metrics.get('n', '?')} samples; 95% CI by bootstrap",
        min_width=60,
    )
    for col in ("metric", "value", "95% CI"):
        t.add_column(col)
    for name, m in values.items():
        m = m if isinstance(m, dict) else {"value": m}
        t.add_row(Text(clean(str(name))), number4(m.get("value")), ci95(m.get("ci95")))
    return t


def show_run(ctx: Ctx, run: dict[str, Any]) -> None:
    """A run as a person reads it: state and shards, the metrics with CIs (as make demo prints them)."""
    ctx.table(f"run {run.get('id')}", RUN_COLUMNS, [_run_row(run)])
    shards = run.get("shards") or []
    if len(shards) > 1 or any(s.get("attempt", 1) > 1 for s in shards):
        ctx.table("shards", SHARD_COLUMNS, [_shard_row(s) for s in shards])
    metrics = run.get("metrics") or {}
    values = metrics.get("metrics") if isinstance(metrics, dict) else None
    if isinstance(values, dict) and values:
        ctx.out.print(_metrics_table(run, metrics, values))
        ctx.out.print(f"samples with errors: {metrics.get('errors', 0)} of {metrics.get('n')}")
    if run.get("state") in ("failed", "cancelled") and run.get("error_reason"):
        ctx.out.print(Text(f"run {run.get('id')} {run.get('state')}: {clean(str(run['error_reason']))}"))
    if run.get("report_url"):
        ctx.out.print(
            Text(f"report: {run['report_url']}  (hyperbench artifacts download {run.get('id')} report)")
        )


def _advance(bar: tqdm[Any], run: dict[str, Any]) -> None:
    total = run.get("progress_total") or 1
    if bar.total != total:
        bar.total = total
        bar.refresh()
    bar.update(max(0, (run.get("progress_done") or 0) - bar.n))
    bar.set_postfix_str(str(run.get("state")))


def follow_run(ctx: Ctx, run: dict[str, Any], interval_s: float, timeout_s: float) -> dict[str, Any]:
    """Poll the run until it ends (a live bar on stderr unless --json); a 429 waits and polls again."""
    api = ctx.api()
    run_id = run["id"]
    deadline = time.monotonic() + timeout_s
    bar = None
    if not ctx.json:
        bar = tqdm(total=run.get("progress_total") or 1, desc=f"run {run_id}", unit="sample", file=sys.stderr)
    try:
        while run.get("state") not in RUN_DONE:
            if time.monotonic() > deadline:
                raise CliError(
                    f"run {run_id} is still {run.get('state')} after {timeout_s:.0f} s (it goes on: "
                    f"hyperbench runs show {run_id} --follow)",
                    EXIT_API,
                )
            time.sleep(interval_s)
            try:
                run = api.get(f"/api/v1/runs/{run_id}/")
            except CliError as e:
                if e.status != 429:
                    raise
                time.sleep(max(interval_s, 5.0))
                continue
            if bar is not None:
                _advance(bar, run)
    finally:
        if bar is not None:
            bar.close()
    return run


def _finish(ctx: Ctx, run: dict[str, Any]) -> int:
    """The ended run shown; exit 0 only if it succeeded."""
    if ctx.json:
        ctx.emit(run)
    else:
        show_run(ctx, run)
    return EXIT_OK if run.get("state") == "succeeded" else EXIT_RUN_FAILED


def cmd_start(ctx: Ctx) -> int:
    a = ctx.args
    run = ctx.api().post("/api/v1/runs/", {"experiment": a.experiment, "shards": a.shards})
    answer(
        ctx,
        run,
        lambda r: f"run {r.get('id')} started ({r.get('model')} on {r.get('dataset')}, {a.shards} shard(s))",
    )
    if not a.follow:
        if not ctx.json:
            ctx.out.print(f"follow it: hyperbench runs show {run.get('id')} --follow")
        return EXIT_OK
    return _finish(ctx, follow_run(ctx, run, a.interval, a.timeout))


def cmd_list(ctx: Ctx) -> int:
    items = fetch_list(ctx, "/api/v1/runs/")
    if ctx.args.state:
        items = [r for r in items if r.get("state") == ctx.args.state]
    show_list(ctx, "runs", RUN_COLUMNS, items, _run_row)
    return EXIT_OK


def cmd_show(ctx: Ctx) -> int:
    a = ctx.args
    api = ctx.api()
    run = api.get(f"/api/v1/runs/{int_id(a.id, 'the run id')}/")
    if a.follow:
        return _finish(ctx, follow_run(ctx, run, a.interval, a.timeout))
    if ctx.json:
        ctx.emit(run)
    else:
        show_run(ctx, run)
    return EXIT_OK


def _state_line(run: dict[str, Any]) -> str:
    return f"run {run.get('id')}: {run.get('state')}"


def cmd_cancel(ctx: Ctx) -> int:
    api = ctx.api()
    return answer(ctx, api.post(f"/api/v1/runs/{int_id(ctx.args.id, 'the run id')}/cancel/"), _state_line)


def run_action(action: str) -> Callable[[Ctx], int]:
    """retry / rescore: sent when the server has them; an older server says so in one line."""

    def cmd(ctx: Ctx) -> int:
        run_id = int_id(ctx.args.id, "the run id")
        api = ctx.api()
        api.get(f"/api/v1/runs/{run_id}/")  # an unknown run is a 404 of its own
        try:
            run = api.post(f"/api/v1/runs/{run_id}/{action}/")
        except CliError as e:
            if e.status in (404, 405):
                raise CliError(
                    f"`runs {action}` is not available on this server ({api.base})", EXIT_API
                ) from e
            raise
        return answer(ctx, run, _state_line)

    return cmd


def _list_logs(ctx: Ctx, run_id: int, logs: dict[str, str]) -> int:
    if ctx.json:
        ctx.emit({"run": run_id, "logs": logs})
    elif not logs:
        ctx.out.print(f"run {run_id} has no logs yet")
    else:
        ctx.table(f"run {run_id}: logs", ["name"], [[k] for k in logs])
        ctx.out.print(f"print one: hyperbench runs logs {run_id} NAME   (all: --all)")
    return EXIT_OK


def cmd_logs(ctx: Ctx) -> int:
    a = ctx.args
    run_id = int_id(a.id, "the run id")
    logs = {k: v for k, v in run_artifacts(ctx, run_id).items() if k.startswith("logs/")}
    if a.name:
        wanted = [k for k in logs if k == a.name or k == "logs/" + a.name]
        if not wanted:
            known = ", ".join(logs) or "none yet"
            raise CliError(f"run {run_id} has no log {a.name!r} (its logs: {known})", EXIT_API)
    elif a.all:
        wanted = list(logs)
    else:
        return _list_logs(ctx, run_id, logs)
    api = ctx.api()
    for name in wanted:
        text = api.request("GET", logs[name], accept="*/*").content.decode("utf-8", errors="replace")
        if ctx.json:
            ctx.emit({"run": run_id, "name": name, "text": text})
        else:
            if a.all:
                sys.stdout.write(f"==> {name} <==\n")
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()
    return EXIT_OK
