"""``make demo``: one benchmark run end to end, through the REST API.

Generates the sample dataset, prepares the database and an admin, (re)starts
the web app, the control worker, one host worker and Flower, registers the
dataset and the RapidOCR model, starts a run over HTTP, follows it with a
progress bar and prints the metrics. The stack stays up for a look around;
``make stop`` stops it. Stdlib + requests/tqdm/rich only: no Django import here.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import requests
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from hyperbench_web.devstack import REPO, Stack

VAR = Path(os.environ.get("HYPERBENCH_VAR_DIR", str(REPO / "var"))).resolve()
DATASET_DIR = VAR / "datasets" / "sample-docs" / "1"
BASE = "http://127.0.0.1:8000"
console = Console(stderr=True)


class DemoError(Exception):
    pass


def _secret(name: str, nbytes: int = 18) -> str:
    path = VAR / name
    if not path.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(nbytes))
        path.chmod(0o600)
    return path.read_text().strip()


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


def _demo_experiment(headers: dict[str, str], dataset_id: int) -> Any:
    """The demo's experiment: created once, so that re-runs are runs of one experiment
    (one leaderboard entry, its latest run), not a new entry each time."""
    want = {"name": "demo: rapidocr on sample-docs", "model": "rapidocr", "dataset": dataset_id}
    path: str | None = "/api/v1/experiments/"
    while path:
        page = _api("GET", path, headers)
        for row in page["results"]:
            if all(row[k] == v for k, v in want.items()) and not row["params"] and not row["prompt"]:
                return row
        path = page["next"].removeprefix(BASE) if page.get("next") else None
    return _api("POST", "/api/v1/experiments/", headers, json=want)


def _image_ids(version: str) -> dict[str, str]:
    """name -> local image id of the images the demo pins (the model and the system images)."""
    client = docker.from_env(timeout=30)
    ids: dict[str, str] = {}
    for name in ("ocr-rapidocr", "eval", "report"):
        ref = f"hyperbench/{name}:{version}"
        try:
            ids[name] = str(client.images.get(ref).id)
        except docker.errors.ImageNotFound as e:
            raise DemoError(f"image {ref} is missing; build it with `make images`.") from e
    return ids


def main() -> int:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    secret_key = _secret("secret_key", 32)
    password = _secret("admin_password")
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "hyperbench_web.settings",
            "SECRET_KEY": secret_key,
            "HYPERBENCH_VAR_DIR": str(VAR),
            "HYPERBENCH_ADMIN_PASSWORD": password,
        }
    )

    console.print("[bold]1/6[/] sample dataset")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_sample_dataset.py"), "--out", str(DATASET_DIR)],
        check=True,
        stdout=sys.stderr,
    )

    console.print("[bold]2/6[/] database, static files, admin user")
    _manage("migrate", "--noinput", env=env)
    _manage("collectstatic", "--noinput", env=env)
    token = _manage("ensure_admin", "--username", "admin", env=env).strip().splitlines()[-1]
    headers = {"Authorization": f"Token {token}"}

    console.print("[bold]3/6[/] web, control worker, host worker, Flower")
    version = (REPO / "images" / "VERSION").read_text().strip()
    image_ids = _image_ids(version)
    # Runs pin every image by id: the web side takes the system images' ids from its settings.
    pins = {
        "HYPERBENCH_EVAL_IMAGE": f"hyperbench/eval:{version}",
        "HYPERBENCH_EVAL_IMAGE_DIGEST": image_ids["eval"],
        "HYPERBENCH_REPORT_IMAGE": f"hyperbench/report:{version}",
        "HYPERBENCH_REPORT_IMAGE_DIGEST": image_ids["report"],
    }
    stack = Stack(var_dir=VAR, flower_auth=f"admin:{password}", secret_key=secret_key, env=pins)
    stack.stop()  # a re-run restarts the stack, so it runs the code that is checked out now
    for port, what in ((8000, "web app"), (5555, "Flower")):
        if _port_busy(port):
            raise DemoError(f"port {port} for the {what} is taken by another program; stop it and re-run.")
    stack.start()
    stack.wait_workers(("control", "host"))
    _wait_http(BASE + "/api/v1/", headers)

    console.print("[bold]4/6[/] register the dataset and the model (REST API)")
    dataset = _api("POST", "/api/v1/datasets/", headers, json={"uri": DATASET_DIR.as_uri() + "/"})
    image = f"hyperbench/ocr-rapidocr:{version}"
    _api(
        "POST",
        "/api/v1/models/",
        headers,
        json={
            "name": "rapidocr",
            "image": image,
            "digest": image_ids["ocr-rapidocr"],  # the registration pins the model to this image id
            "requires_gpu": False,
            "description": "RapidOCR (PP-OCR ONNX models bundled in the rapidocr wheel), CPU",
        },
    )
    experiment = _demo_experiment(headers, dataset["id"])

    console.print("[bold]5/6[/] run")
    run = _api("POST", "/api/v1/runs/", headers, json={"experiment": experiment["id"]})
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
        title=f"run {run_id}: rapidocr on {dataset['name']}@{dataset['version']}",
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
    report_path = run["report_uri"].removeprefix("file://") if run.get("report_uri") else ""
    print(f"\nWeb admin:  {BASE}/admin/   (user admin, password {password})")
    print(f"REST API:   {BASE}/api/v1/   (header 'Authorization: Token {token}'; docs at {BASE}/api/docs/)")
    print(f"Flower:     http://127.0.0.1:5555/   (user admin, password {password})")
    if report_path:
        print(f"Report:     {report_path}\n            {BASE}/api/v1/runs/{run_id}/report/")
    print(f"Logs:       {VAR / 'log'}/   stop everything with: make stop")
    print(f"demo took {time.monotonic() - started:.0f}s")
    cer = metrics.get("cer", {}).get("value")
    cer_s = f"{cer:.4f}" if cer is not None else "n/a"
    print(f"demo: run={run_id} state={run['state']} cer={cer_s} report={report_path or 'none'}")
    return 0 if run["state"] == "succeeded" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        # The last line keeps its shape, so a script reading it learns the outcome either way.
        print(f"demo: run=none state=error cer=n/a report=none ({str(e).splitlines()[0][:200]})")
        sys.exit(1)
