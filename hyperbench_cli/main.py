"""``hyperbench``: the argument parser, and the dispatch of a parsed command to its function.

Every command prints a table (rich) or, with ``--json``, JSON documents, one per
line (``--follow``: the final run object is the last line). Exit codes: errors.py.
The commands are in commands/, one module per group; output.py shows the answers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from hyperbench_cli import __version__
from hyperbench_cli.commands import artifacts, datasets, experiments, hosts, models, runs
from hyperbench_cli.commands.compare import cmd_compare
from hyperbench_cli.commands.leaderboard import cmd_leaderboard
from hyperbench_cli.commands.login import cmd_login
from hyperbench_cli.config import config_path
from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_CODES_HELP, EXIT_OK, CliError


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and output")
    g.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="server URL (else $HYPERBENCH_URL, the config file, http://127.0.0.1:8000)",
    )
    g.add_argument(
        "--token", default=argparse.SUPPRESS, help="API token (else $HYPERBENCH_TOKEN, the config file)"
    )
    g.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON documents, one per line"
    )

    def leaf(sub: Any, name: str, func: Callable[[Ctx], int], help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    def group(sub: Any, name: str, help: str) -> Any:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        return p.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")

    def limit(p: argparse.ArgumentParser) -> None:
        p.add_argument("--limit", type=_positive, default=200, help="at most this many items (default 200)")

    def follow_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
        p.add_argument("--timeout", type=float, default=6 * 3600, help="stop following after this long (s)")

    parser = argparse.ArgumentParser(
        prog="hyperbench",
        parents=[common],
        description="HyperBench from the command line: a client of the server's REST API (/api/v1/).",
        epilog=EXIT_CODES_HELP + f"\n\nconfig file: {config_path()} (written by `hyperbench login`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hyperbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = leaf(sub, "login", cmd_login, "get an API token and save it (with the URL) in the config file")
    p.add_argument("--username", "-u")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")

    ds = group(sub, "datasets", "registered dataset versions")
    limit(leaf(ds, "list", datasets.cmd_list, "list dataset versions"))
    leaf(ds, "show", datasets.cmd_show, "one dataset version").add_argument("id")
    leaf(ds, "register", datasets.cmd_register, "validate and register a dataset directory").add_argument(
        "uri", help="file:///abs/dir/ under a dataset root, or s3://bucket/prefix/"
    )

    # `datasets upload` and `datasets import` are one request (datasets.cmd_upload), spelt twice.
    def upload_opts(p: argparse.ArgumentParser, *, importing: bool) -> None:
        req = " (required unless --format layout)" if not importing else ""
        p.add_argument("--name", required=importing, help=f"the dataset's name{req}")
        p.add_argument("--version", dest="version", required=importing, help=f"the dataset's version{req}")
        task = "the dataset's task (the server requires it)" if importing else "required unless layout"
        p.add_argument("--task", choices=["ocr", "vqa", "table", "kie", "page"], help=task)
        p.add_argument(
            "--columns",
            help='a JSON object (or @file.json) of the format\'s names to the file\'s: {"answer": "gt"}',
        )
        p.add_argument("--description")

    p = leaf(
        ds, "upload", datasets.cmd_upload, "upload a dataset (an archive, or a file of an import format)"
    )
    p.add_argument(
        "path", help="a .zip/.tar/.tar.gz archive, or a .tsv, .parquet, .json, .jsonl or .pdf file"
    )
    p.add_argument(
        "--format", default="layout", choices=datasets.UPLOAD_FORMATS, help="the importer (default: layout)"
    )
    upload_opts(p, importing=False)
    p = leaf(
        ds,
        "import",
        datasets.cmd_upload,
        "import a file of an import format (or an archive of it with its images): upload --format FORMAT",
    )
    p.add_argument(
        "format", metavar="FORMAT", choices=datasets.IMPORT_FORMATS, help=", ".join(datasets.IMPORT_FORMATS)
    )
    p.add_argument(
        "path", metavar="PATH", help="a .tsv, .parquet, .json, .jsonl or .pdf file, or a .zip/.tar/.tar.gz"
    )
    upload_opts(p, importing=True)

    ms = group(sub, "models", "registered models (registering one is for staff)")
    limit(leaf(ms, "list", models.cmd_list, "list models"))
    leaf(ms, "show", models.cmd_show, "one model").add_argument("name")
    p = leaf(ms, "register", models.cmd_register, "register or update a model image (staff)")
    p.add_argument("--name", required=True)
    p.add_argument("--image", required=True, help="repository:tag")
    p.add_argument("--digest", required=True, help="the image id, sha256:<64 hex>")
    p.add_argument("--requires-gpu", action="store_true")
    p.add_argument("--gpus", type=_positive)
    p.add_argument("--network", action="store_true", help="egress (API models only)")
    p.add_argument("--description")
    p.add_argument("--default-params", help="a JSON object, or @file.json")
    p.add_argument("--endpoint-base-url")
    p.add_argument("--endpoint-model")
    p.add_argument("--endpoint-api-key-env")
    p.add_argument("--endpoint-max-concurrency", type=_positive)
    p.add_argument("--endpoint-timeout-s", type=_positive)

    ex = group(sub, "experiments", "experiments: a model, a dataset version, params")
    limit(leaf(ex, "list", experiments.cmd_list, "list your experiments"))
    leaf(ex, "show", experiments.cmd_show, "one experiment").add_argument("id")
    p = leaf(ex, "create", experiments.cmd_create, "create an experiment")
    p.add_argument("--name", required=True)
    p.add_argument("--model", required=True, help="a registered model's name")
    p.add_argument("--dataset", required=True, type=_positive, help="a dataset version's id")
    p.add_argument("--params", help="a JSON object, or @file.json")
    p.add_argument("--prompt")

    rs = group(sub, "runs", "runs of experiments")
    p = leaf(rs, "start", runs.cmd_start, "start a run (--follow: wait for it, exit 0 only if it succeeds)")
    p.add_argument("--experiment", required=True, type=_positive)
    p.add_argument("--shards", type=_positive, default=1)
    p.add_argument(
        "--follow", "-f", action="store_true", help="a live progress bar, then the metrics with CIs"
    )
    follow_opts(p)
    p = leaf(rs, "list", runs.cmd_list, "list your runs")
    limit(p)
    p.add_argument("--state", choices=["queued", "running", "evaluating", "reporting", *runs.RUN_DONE])
    p = leaf(rs, "show", runs.cmd_show, "one run: state, shards, metrics with CIs")
    p.add_argument("id")
    p.add_argument(
        "--follow", "-f", action="store_true", help="wait for it to end (exit 1 unless it succeeds)"
    )
    follow_opts(p)
    leaf(rs, "cancel", runs.cmd_cancel, "cancel a run (its containers stop on every host)").add_argument("id")
    leaf(rs, "retry", runs.run_action("retry"), "run a failed run again (if the server has it)").add_argument(
        "id"
    )
    leaf(
        rs, "rescore", runs.run_action("rescore"), "score a run's predictions again (if the server has it)"
    ).add_argument("id")
    p = leaf(rs, "logs", runs.cmd_logs, "list a run's container logs, or print one (NAME) or all (--all)")
    p.add_argument("id")
    p.add_argument("name", nargs="?", help="e.g. logs/infer/shard-0/attempt-1.log")
    p.add_argument("--all", action="store_true", help="print every log")

    p = leaf(
        sub, "compare", cmd_compare, "compare 2-8 succeeded runs on one dataset version (paired bootstrap)"
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--open", action="store_true", help="download the report and open it in a browser")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the report")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the report (default 600)")

    p = leaf(sub, "leaderboard", cmd_leaderboard, "models ranked per dataset version, with 95%% CIs")
    p.add_argument("--dataset", help="a dataset version's id")
    p.add_argument("--task")
    p.add_argument("--metric", help="rank by this metric instead of the primary one")

    ar = group(sub, "artifacts", "a run's artifacts (outputs, report, logs)")
    leaf(ar, "list", artifacts.cmd_list, "list a run's artifacts").add_argument("run")
    p = leaf(ar, "download", artifacts.cmd_download, "download one or all of a run's artifacts")
    p.add_argument("run")
    p.add_argument(
        "name", nargs="?", help="e.g. report, metrics, logs/infer/shard-0/attempt-1.log (default: all)"
    )
    p.add_argument("-o", "--output", default=".", help="folder to write into (default: the current one)")

    limit(
        leaf(sub, "hosts", hosts.cmd_hosts, "host workers: GPUs, cache, what runs where; silent hosts marked")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits 2 (argparse)
    ctx = Ctx(args)
    try:
        return int(args.func(ctx))
    except CliError as e:
        print(f"hyperbench: {e.message}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("hyperbench: interrupted (a started run goes on; see `hyperbench runs list`)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
