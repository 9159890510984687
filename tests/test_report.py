"""The report image, rendered for real and opened in a real browser.

A run report and a comparison report are rendered by the real report image
(`docker run` by hand under the hardened flags), then opened in headless Debian
Chromium. A copy of each page gets a small probe script (and a CSP that lets
that one inline script run; everything else of the page's CSP stays, so any
network fetch would still be blocked and show up): after `load` it measures
every SVG chart and <img> with getBoundingClientRect, checks each image
decoded (naturalWidth), counts the chart marks, and lists every resource the
page fetched; `--dump-dom` returns the result in the DOM. A screenshot of
each page must not be blank.

These tests FAIL, never skip, when Docker, the report image or Chromium is
missing. The per-sample scores come from images/eval (the eval image's own
code, imported on the host to keep the test fast).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image, ImageDraw, ImageFont
from rest_framework.test import APIClient

from apps.runs.models import Run
from apps.runs.selectors import run_timings
from hyperbench_web.devstack import Stack
from tests.conftest import (
    create_experiment,
    echo_dataset,
    start_run,
    wait_for_run,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images" / "eval"))

sys.path.insert(0, str(ROOT / "images" / "report"))

import evaluate as ev  # noqa: E402
import hb_report as rp  # noqa: E402

VERSION = (ROOT / "images" / "VERSION").read_text().strip()
REPORT_IMAGE = os.environ.get("HB_TEST_REPORT_IMAGE", f"hyperbench/report:{VERSION}")
CHROMIUM = os.environ.get("HB_TEST_CHROMIUM", "/usr/bin/chromium")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
HARDENED = [
    "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges", "--user", "10001", "--memory", "1g", "--pids-limit", "256",
]  # fmt: skip

TEXTS = {
    "inv-1": ("invoice", "Invoice 2024-117\nTotal due: 1,284.50 EUR"),
    "inv-2": ("invoice", "ACME Corp\nOrder 7781 shipped"),
    "let-1": ("letter", "Dear Ms. Novak,\nthank you for your letter."),
    "let-2": ("letter", "Kind regards\nJ. Smith"),
    "rec-1": ("receipt", "Coffee 3.20\nCroissant 2.10\nTOTAL 5.30"),
    "rec-2": ("receipt", "Thank you <b>for</b> shopping"),
}
# run A: a weak model (one error, one missing); run B: a better one
PRED_A: dict[str, str | None] = {
    "inv-1": "Invoice 2O24-117\nTotal due: 1,284.5O EUR",
    "inv-2": "ACME Corp\nOrder 7781 shiped",
    "let-1": "Dear Ms Novak\nthank you for yuor letter",
    "let-2": None,  # error
    "rec-1": "Coffee 3.20\nCroissant 2.1O\nT0TAL 5.30",
}  # rec-2 missing
PRED_B: dict[str, str | None] = {
    "inv-1": "Invoice 2024-117\nTotal due: 1,284.50 EUR",
    "inv-2": "ACME Corp\nOrder 7781 shipped",
    "let-1": "Dear Ms. Novak,\nthank you for your letter.",
    "let-2": "Kind regards\nJ. Smith",
    "rec-1": "Coffee 3.20\nCroissant 2.10\nTOTAL 5.3",
    "rec-2": "Thank you <b>for</b> shopping <script>alert(1)</script>",
}


def _readable(*paths: Path) -> None:
    for p in paths:
        for q in [p, *p.rglob("*")] if p.is_dir() else [p]:
            q.chmod(0o755 if q.is_dir() else 0o644)


def _dataset(root: Path) -> Path:
    data = root / "data"
    (data / "img").mkdir(parents=True)
    font = ImageFont.truetype(FONT, 26)
    manifest = []
    for i, (sid, (cat, text)) in enumerate(TEXTS.items()):
        lines = text.split("\n")
        im = Image.new("RGB", (720, 80 + 46 * len(lines)), (250, 250, 246))
        d = ImageDraw.Draw(im)
        d.rectangle([8, 8, im.width - 8, im.height - 8], outline=(200, 200, 210), width=2)
        for j, line in enumerate(lines):
            d.text((30, 36 + 46 * j), line, fill=(20 + 10 * i, 20, 30), font=font)
        im.save(data / "img" / f"{sid}.png")
        manifest.append({"id": sid, "image": f"img/{sid}.png", "text": text, "category": cat})
    (data / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    (data / "dataset.json").write_text(json.dumps({"name": "docs", "version": "3", "task": "ocr"}))
    return data


def _run_inputs(
    root: Path, data: Path, name: str, preds: dict[str, str | None], run_id: int, model: str
) -> Path:
    inp = root / name
    inp.mkdir(parents=True)
    lines = []
    for k, (sid, text) in enumerate(preds.items()):
        err = "CUDA error: out of memory" if text is None else None
        lines.append({"id": sid, "prediction": text, "latency_ms": 80.0 + 37 * k, "error": err})
    (inp / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev.evaluate(data, inp / "predictions.jsonl", inp, resamples=300)
    (inp / "run.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "experiment": f"{model} on docs",
                "owner": "alice",
                "model": model,
                "image": f"hyperbench/{model}:0.1.0",
                "image_digest": f"sha256:{'ab' * 32}",
                "dataset": "docs@3",
                "task": "ocr",
                "manifest_sha256": "c0ffee" * 10 + "abcd",
                "samples": len(TEXTS),
                "params": {"temperature": 0, "max_tokens": 512},
                "prompt": "Transcribe the page <exactly>.",
                "shards": 1,
                # the keys apps.runs.selectors.run_timings produces (a real run's are checked in
                # test_a_real_runs_report_shows_its_timings_and_gpu_seconds)
                "sync_s": 1.4,
                "inference_s": 12.5,
                "container_s": 10.9,
                "evaluation_s": 2.1,
                "throughput_samples_per_s": 0.48,
                "gpu_seconds": 21.8,
            }
        )
    )
    return inp


def _docker_report(mounts: list[str]) -> subprocess.CompletedProcess[str]:
    name = f"hb-test-{uuid.uuid4().hex[:10]}"
    cmd = ["docker", "run", "--rm", "--name", name, *HARDENED, "--label", "io.hyperbench.test=1"]
    for m in mounts:
        cmd += ["-v", m]
    cmd.append(REPORT_IMAGE)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        raise


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    assert shutil.which("docker"), "docker CLI not found: run scripts/ensure-docker.sh"
    r = subprocess.run(["docker", "image", "inspect", REPORT_IMAGE], capture_output=True, timeout=60)
    assert r.returncode == 0, f"image {REPORT_IMAGE} missing: run scripts/build-images.sh report"
    root = tmp_path_factory.mktemp("report")
    root.chmod(0o755)
    data = _dataset(root)
    a = _run_inputs(root, data, "runs/0", PRED_A, 41, "ocr-weak")
    _run_inputs(root, data, "runs/1", PRED_B, 42, "ocr-strong")
    _run_inputs(
        root, data, "runs/10", PRED_B, 43, "ocr-strong-v2"
    )  # sorts after 1 (numerically, not "10" < "2")
    _run_inputs(root, data, "runs/2", PRED_A, 44, "ocr-weak-again")
    _readable(data, root / "runs")
    out: dict[str, Path] = {}
    for mode, mounts in {
        "run": [f"{a}:/job/input:ro"],
        "compare": [f"{root / 'runs'}:/job/input/runs:ro"],
    }.items():
        od = root / f"out-{mode}"
        od.mkdir()
        od.chmod(0o777)
        proc = _docker_report([f"{data}:/data:ro", *mounts, f"{od}:/job/output"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[mode] = od / "report.html"
    return out


# ----------------------------------------------------------------------------- static checks


def _no_network_refs(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.replace("&lt;script", "")  # no script of ours, predictions escaped


@pytest.mark.docker
def test_run_report_content(reports: dict[str, Path]) -> None:
    page = reports["run"].read_text()
    _no_network_refs(page)
    for needle in (
        "Summary", "ocr-weak", "sha256:" + "ab" * 32, "c0ffee", "docs@3", "temperature",
        "Transcribe the page &lt;exactly&gt;.", "Timing and throughput", "Inference", "Dataset sync",
        "0.48 samples/s", "95% CI", f"metric version <b>{ev.METRIC_VERSION}</b>", "error rate by category",
        "Worst 6 samples by CER", "Failed samples", "CUDA error: out of memory", "missing prediction",
        "<del", "<ins",
    ):  # fmt: skip
        assert needle in page, needle
    assert page.count("data:image/jpeg;base64,") == 6
    # one row per fact: the prompt once, the timings in their own section only
    assert page.count("<td>Prompt</td>") == 1
    assert "<td>prompt</td>" not in page
    assert "<td>sync_s</td>" not in page
    assert "<td>gpu_seconds</td>" not in page
    timing = page[page.index("<h2>Timing and throughput</h2>") :]
    for label, figure in (
        ("Dataset sync, sum over shards", "1.40 s"),
        ("Inference, wall clock (incl. sync)", "12.50 s"),
        ("Model containers, sum over shards", "10.90 s"),
        ("Evaluation, wall clock", "2.10 s"),
        ("GPU-seconds", "21.8"),
    ):
        assert re.search(rf"<td>{re.escape(label)}</td><td class=num>{re.escape(figure)}</td>", timing), label
    # one shard: sync 1.4 + the rest of inference 11.1 + evaluation 2.1, no second counted twice
    assert "<b>14.60 s</b>" in timing


@pytest.mark.docker
def test_comparison_report_content(reports: dict[str, Path]) -> None:
    page = reports["compare"].read_text()
    _no_network_refs(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # an untrusted prediction, escaped
    for needle in (
        "HyperBench comparison · docs@3", "A: ocr-weak · run 41", "B: ocr-strong · run 42",
        "C: ocr-weak-again · run 44", "D: ocr-strong-v2 · run 43",
    ):  # fmt: skip
        assert needle in page, needle
    # C repeats A's predictions: no difference, p = 1
    assert re.search(
        r"<td>C − A</td><td>cer</td><td class=num>\+0\.0000</td>.*?<td class=num>1\.0000</td>", page
    )
    assert "Paired bootstrap" in page
    assert "P(B better)" in page
    assert "p-value" in page
    assert "Where the runs disagree most" in page
    assert "spread" in page
    # B is better on CER (a negative difference, lower is better)
    row = re.search(r"<td>B − A</td><td>cer</td><td class=num>([+-][0-9.]+)</td>", page)
    assert row
    assert float(row.group(1)) < 0


@pytest.mark.docker
def test_comparison_refuses_mixed_metric_versions(reports: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(reports["compare"].parents[1] / "runs", runs)
    m = json.loads((runs / "1" / "metrics.json").read_text())
    m["metric_version"] = "1.0"
    (runs / "1" / "metrics.json").write_text(json.dumps(m))
    _readable(runs)
    tmp_path.chmod(0o755)
    od = tmp_path / "out"
    od.mkdir()
    od.chmod(0o777)
    proc = _docker_report([f"{runs}:/job/input/runs:ro", f"{od}:/job/output"])
    assert proc.returncode == 2, proc.stderr
    assert "metric_version differs" in proc.stderr, proc.stderr
    assert not (od / "report.html").exists()


# ----------------------------------------------------------------------------- pieces, no Docker


def _run_data(run: dict[str, Any], per_sample: list[dict[str, Any]] | None = None) -> Any:
    return rp.RunData(key="", metrics={"n": 4}, run=run, per_sample=per_sample or [], predictions=[])


def test_the_summary_shows_an_empty_prompt_once() -> None:
    html = rp.summary_table(_run_data({"model": "m", "prompt": "", "image_digest": "", "sync_s": 0.2}))
    assert html.count("Prompt") == 1
    assert "none (empty)" in html
    assert html.count("Image digest") == 1
    assert "not recorded" in html
    assert "prompt" not in html
    assert "sync_s" not in html


def test_timing_phases_never_count_the_sync_twice() -> None:
    one = {"sync_s": 2.0, "inference_s": 10.0, "evaluation_s": 1.0, "shards": 1}
    assert rp.timing_phases(one) == [("Dataset sync", 2.0), ("Inference", 8.0), ("Evaluation", 1.0)]
    # several shards sync side by side, inside the inference wall clock
    many = {**one, "shards": 3, "sync_s": 5.0}
    assert rp.timing_phases(many) == [("Inference incl. sync", 10.0), ("Evaluation", 1.0)]
    assert rp.timing_phases({"evaluation_s": 1.0}) == [("Evaluation", 1.0)]
    html = rp.timing_section(_run_data({"inference_s": 4.0, "gpu_seconds": 0.0}))
    assert "<td>Dataset sync, sum over shards</td><td class='num muted'>not recorded</td>" in html
    assert "0.0 (no GPU held)" in html
    assert "1.00 samples/s" in html


def test_length_buckets_never_split_one_length_over_two_bars() -> None:
    rows = [{"ref_chars": n} for n in (3, 5, 5, 5, 5, 9, 9, 12)]
    buckets = rp.length_buckets(rows, k=5)
    labels = [label for label, _ in buckets]
    assert len(labels) == len(set(labels)), labels
    assert sum(len(g) for _, g in buckets) == len(rows)
    # about 8 / 5 -> 2 a bucket: 3 starts one, the four 5s may not leave it, then 9 9, then 12
    assert labels == ["3–5 ch", "9 ch", "12 ch"]


# ----------------------------------------------------------------------------- in a real browser

PROBE = """<script>
window.addEventListener('load', () => {
  const box = (e) => {
    const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const charts = [...document.querySelectorAll('svg.chart')].map((s) => ({
    label: s.getAttribute('aria-label'), size: box(s),
    marks: s.querySelectorAll('rect,circle,line').length }));
  const images = [...document.querySelectorAll('img')].map((i) => ({
    alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], size: box(i) }));
  const resources = performance.getEntriesByType('resource').map((r) => r.name);
  const out = document.createElement('pre');
  out.id = 'hb-probe';
  out.textContent = JSON.stringify({charts, images, resources,
    height: document.documentElement.scrollHeight, sections: document.querySelectorAll('section').length});
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: apt-get install chromium"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _probe(page: Path, tmp: Path) -> dict[str, Any]:
    html = page.read_text()
    html = html.replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'", 1
    )
    html = html.replace("</body>", PROBE + "</body>", 1)
    probed = tmp / f"probe-{page.parent.name}.html"
    probed.write_text(html)
    proc = _chromium(["--virtual-time-budget=15000", "--dump-dom", probed.as_uri()], tmp / "profile-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="hb-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe did not run: {proc.stdout[-1500:]} {proc.stderr[-1500:]}"
    return dict(json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")))


def _screenshot(page: Path, tmp: Path, height: int = 3000) -> Path:
    png = tmp / f"{page.parent.name}.png"
    proc = _chromium(
        [f"--screenshot={png}", f"--window-size=1280,{height}", "--virtual-time-budget=15000", page.as_uri()],
        tmp / "profile-shot",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.is_file(), proc.stderr[-2000:]
    keep = os.environ.get("HB_TEST_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / png.name)
    return png


def _assert_not_blank(png: Path) -> None:
    with Image.open(png) as im:
        rgb = im.convert("RGB")
        assert rgb.width == 1280
        small = rgb.resize((320, rgb.height // 4))
        colors = small.getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 200, f"screenshot looks blank: {len(colors)} colors"
        # the header band is the dark blue gradient, the body the light page background
        r, _, b = rgb.getpixel((20, 20))  # type: ignore[misc]
        assert b > r + 40


@pytest.mark.docker
def test_run_report_renders_in_chromium(reports: dict[str, Path], tmp_path: Path) -> None:
    result = _probe(reports["run"], tmp_path)
    assert result["resources"] == [], result["resources"]  # nothing fetched: self-contained
    assert result["sections"] == 6
    labels = [c["label"] for c in result["charts"]]
    assert any("score distribution" in (x or "") for x in labels), labels
    assert any("error rate by category" in (x or "") for x in labels), labels
    assert any("latency" in (x or "") for x in labels), labels
    assert any("timing" in (x or "") for x in labels), labels
    for c in result["charts"]:
        w, h = c["size"]
        assert w >= 200, c
        assert h >= 40, c
        assert c["marks"] >= 3, c
    assert len(result["images"]) == 6
    for img in result["images"]:
        assert img["complete"], img
        assert img["natural"][0] > 100, img
        assert img["size"][0] > 100, img
        assert img["size"][1] > 20, img
    _assert_not_blank(_screenshot(reports["run"], tmp_path))


@pytest.mark.docker
def test_comparison_report_renders_in_chromium(reports: dict[str, Path], tmp_path: Path) -> None:
    result = _probe(reports["compare"], tmp_path)
    assert result["resources"] == [], result["resources"]
    labels = [c["label"] for c in result["charts"]]
    assert labels == ["differences", "per-sample scatter"], labels
    for c in result["charts"]:
        assert c["size"][0] >= 200, c
        assert c["size"][1] >= 80, c
        assert c["marks"] >= 5, c
    assert result["images"], "the disagreement gallery shows the page images"
    for img in result["images"]:
        assert img["complete"], img
        assert img["natural"][0] > 100, img
        assert img["size"][0] > 100, img
    _assert_not_blank(_screenshot(reports["compare"], tmp_path, height=2600))


# ----------------------------------------------------------------------------- a real run's facts


@pytest.mark.docker
def test_a_real_runs_report_shows_its_timings_and_gpu_seconds(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    """The facts the control side hands the report come from the run itself, not from a fixture."""
    dataset_id = echo_dataset(as_staff, as_alice, images, roots["datasets"] / "timed" / "1", count=5, seed=41)
    run_id = start_run(as_alice, create_experiment(as_alice, "echo", dataset_id, name="echo timed"), shards=2)

    data = wait_for_run(as_alice, run_id)

    assert data["state"] == "succeeded", data["error_reason"]
    run = Run.objects.get(pk=data["id"])
    facts = run_timings(run)
    # each of the 2 shards reported its own dataset sync (a local dir: the manifest check)
    syncs = [e.data["sync_s"] for e in run.events.filter(kind="shard_succeeded") if e.data is not None]
    assert len(syncs) == 2, syncs
    assert all(isinstance(x, float) and x >= 0 for x in syncs), syncs
    assert facts["sync_s"] == pytest.approx(sum(syncs), abs=1e-3)
    assert 0 <= facts["sync_s"] <= 2 * facts["inference_s"]
    assert facts["container_s"] == pytest.approx(run.inference_s, abs=0.01)
    assert facts["container_s"] > 0
    assert facts["evaluation_s"] > 0
    assert facts["gpu_seconds"] == 0.0  # a CPU model holds no GPU
    html = Path(unquote(urlparse(run.report_uri).path)).read_text(encoding="utf-8")
    timing = html[html.index("<h2>Timing and throughput</h2>") :]
    for label, key in (
        ("Dataset sync, sum over shards", "sync_s"),
        ("Inference, wall clock (incl. sync)", "inference_s"),
        ("Model containers, sum over shards", "container_s"),
        ("Evaluation, wall clock", "evaluation_s"),
    ):
        figure = f"{facts[key]:,.2f} s"
        assert f"<td>{label}</td><td class=num>{figure}</td>" in timing, (label, figure)
    assert "<td>GPU-seconds</td><td class=num>0.0 (no GPU held)</td>" in timing
    assert "Inference incl. sync" in timing  # 2 shards: their syncs overlap, shown within inference


# ----------------------------------------------------------------------------- golden pages, no Docker
#
# Fixed inputs (written by hand, not by the eval image, so only the report code shapes the page)
# rendered in-process and compared byte for byte with tests/golden/report/*.html. Two things are
# normalised first: the footer's generation time, and each thumbnail's JPEG bytes (they belong to
# Pillow's encoder; each must still decode). Regenerate after an intended change of the output with
#   HB_UPDATE_GOLDEN=1 pytest tests/test_report.py -k golden
# and review the diff.

GOLDEN = ROOT / "tests" / "golden" / "report"
_GOLDEN_TEXTS = {
    "g-1": ("invoice", "Total 12.50 EUR"),
    "g-2": ("invoice", "Order <7781> & co"),
    "g-3": ("letter", "Dear Ms. Novak"),
    "g-4": ("receipt", "Coffee 3.20"),
    "g-5": ("receipt", "Thank you"),
}
# per run: id -> (prediction, char_edits, word_edits, latency_ms, error)
_GoldenRow = tuple[str | None, int, int, float, str | None]
_GOLDEN_RUNS: dict[str, dict[str, _GoldenRow]] = {
    "0": {
        "g-1": ("Total 12.5O EUR", 1, 1, 120.0, None),
        "g-2": ("Order <7781> co", 2, 1, 98.5, None),
        "g-3": (None, 14, 3, 0.0, "CUDA error: out of memory"),
        "g-4": ("Cofee 3.2", 2, 2, 143.25, None),
        "g-5": ("", 9, 2, 77.0, None),
    },
    "1": {
        "g-1": ("Total 12.50 EUR", 0, 0, 110.0, None),
        "g-2": ("Order <7781> & co", 0, 0, 101.0, None),
        "g-3": ("Dear Ms Novak", 1, 1, 95.0, None),
        "g-4": ("Coffee 3.20 <script>x</script>", 18, 1, 130.0, None),
        "g-5": ("Thank you", 0, 0, 90.0, None),
    },
    "2": {  # g-5 missing: only the samples every run has are compared
        "g-1": ("Total 12.5O EUR", 1, 1, 120.0, None),
        "g-2": ("Order <7781> co", 2, 1, 98.5, None),
        "g-3": (None, 14, 3, 0.0, "CUDA error: out of memory"),
        "g-4": ("Cofee 3.2", 2, 2, 143.25, None),
    },
}


def _golden_png(path: Path, shade: int) -> None:
    im = Image.new("RGB", (160, 60), (250, 250, 246))
    ImageDraw.Draw(im).rectangle([10, 10, 150, 50], fill=(shade, 40, 90))
    im.save(path)


def _golden_run(root: Path, key: str, *, categories: bool) -> Path:
    inp = root / "runs" / key
    inp.mkdir(parents=True)
    per_sample, predictions = [], []
    for sid, (pred, ce, we, lat, err) in _GOLDEN_RUNS[key].items():
        cat, ref = _GOLDEN_TEXTS[sid]
        ref_len, words = len(ref), len(ref.split())
        row: dict[str, Any] = {
            "id": sid,
            "image": {"g-4": "missing.png", "g-5": "../outside.png"}.get(sid, f"img/{sid}.png"),
            "reference": ref,
            "prediction": pred,
            "error": err,
            "missing": False,
            "char_edits": ce,
            "char_ref_len": ref_len,
            "word_edits": we,
            "word_ref_len": words,
            "cer": round(ce / ref_len, 6),
            "wer": round(we / words, 6),
            "ned": round(min(ce / ref_len, 1.0), 6),
            "ref_chars": ref_len,
            "latency_ms": lat,
        }
        if categories:
            row["category"] = cat
        if sid == "g-2":
            row["question"] = "What is ordered?"
            row["answers"] = [ref, "Order 7781", "the order"]
        per_sample.append(row)
        predictions.append({"id": sid, "prediction": pred, "latency_ms": lat, "error": err})
    n, errors = len(per_sample), sum(1 for r in per_sample if r["error"])
    metrics = {
        "task": "ocr",
        "dataset": {"name": "golden", "version": "1"},
        "metric_version": "2.1",
        "primary_metric": "cer",
        "n": n,
        "errors": errors,
        "missing": 0,
        "metrics": {
            "cer": {"value": 0.25 - 0.1 * int(key == "1"), "ci95": [0.1, 0.4]},
            "wer": {"value": 0.5, "ci95": [0.25, 0.75]},
            "ned": {"value": 0.2, "ci95": [0.05, 0.35]},
        },
        "bootstrap": {"resamples": 1000, "seed": 20240601},
        "latency_ms": {"mean": 100.0, "p50": 98.5, "p95": 140.625, "max": 143.25},
        "elapsed_s": 0.75,
        "normalization": {"unicode": "NFC", "whitespace": "collapse"},
        "policy": {"empty_prediction": "scored", "failed_sample": "worst value"},
    }
    run = {
        "run_id": 70 + int(key),
        "experiment": "golden",
        "owner": "alice",
        "model": {"name": f"ocr-{key}"},
        "image": f"hyperbench/ocr-{key}:0.1.0",
        "image_digest": f"sha256:{'cd' * 32}" if key != "2" else "",
        "dataset": "golden@1",
        "task": "ocr",
        "manifest_sha256": "f00d" * 16,
        "samples": n,
        "shards": 1 if categories else 3,
        "params": {"temperature": 0, "stop": ["\n\n"]},
        "prompt": "Read <it> all." if key != "1" else "",
        "sync_s": 0.5,
        "inference_s": 6.25,
        "container_s": 5.5,
        "evaluation_s": 1.5,
        "report_s": 0.25,
        "gpu_seconds": 11.0,
        "region": "eu-1",
    }
    if not categories:
        for k in ("sync_s", "report_s", "gpu_seconds"):
            del run[k]
    (inp / "metrics.json").write_text(json.dumps(metrics))
    (inp / "run.json").write_text(json.dumps(run))
    (inp / "per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_sample))
    (inp / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return inp


def _golden_pages(root: Path) -> dict[str, str]:
    data = root / "data"
    (data / "img").mkdir(parents=True)
    for i, sid in enumerate(("g-1", "g-2", "g-3")):
        _golden_png(data / "img" / f"{sid}.png", 60 * i)
    a = _golden_run(root, "0", categories=True)
    _golden_run(root, "1", categories=True)
    _golden_run(root, "2", categories=True)
    lengths = _golden_run(root / "lengths", "0", categories=False)
    return {
        "run.html": rp.build_report(data, a),
        "run-lengths.html": rp.build_report(data, lengths),
        "comparison.html": rp.build_comparison(data, root / "runs"),
    }


def _normalised(page: str) -> str:
    page = re.sub(r"generated by hyperbench/report at [^<]*", "generated by hyperbench/report at TIME", page)
    jpegs = re.findall(r'data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    for b64 in jpegs:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "JPEG"
            assert im.width > 0
            assert im.height > 0
    return re.sub(r'data:image/jpeg;base64,[A-Za-z0-9+/=]+"', 'data:image/jpeg;base64,THUMBNAIL"', page)


@pytest.mark.parametrize("name", ["run.html", "run-lengths.html", "comparison.html"])
def test_golden_pages_are_unchanged(name: str, tmp_path: Path) -> None:
    page = _normalised(_golden_pages(tmp_path)[name])
    expected = GOLDEN / name
    if os.environ.get("HB_UPDATE_GOLDEN") == "1":
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(page, encoding="utf-8")
    assert page == expected.read_text(encoding="utf-8"), f"{name} differs from {expected}"
