"""The images, run by hand with the docker CLI under the hardened flags.

Needs a running Docker engine and the built images (scripts/build-images.sh).
These tests FAIL, never skip, when Docker or an image is missing. The SDK
tests at the bottom run without Docker (HB_DATA_DIR / HB_JOB_DIR).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jiwer
import pytest
from PIL import Image, ImageDraw, ImageFont

from worker.containers import hardened_cli_flags

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "images" / "VERSION").read_text().strip()
OCR_IMAGE = os.environ.get("HB_TEST_OCR_IMAGE", f"hyperbench/ocr-rapidocr:{VERSION}")
EVAL_IMAGE = os.environ.get("HB_TEST_EVAL_IMAGE", f"hyperbench/eval:{VERSION}")
REPORT_IMAGE = os.environ.get("HB_TEST_REPORT_IMAGE", f"hyperbench/report:{VERSION}")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

HARDENED = hardened_cli_flags()  # the platform's own hardening (worker/containers.py), network none

CLEAN_TEXTS = {
    "s1": ["The quick brown fox jumps", "over the lazy dog 12345", "Invoice total: 42.50 EUR"],
    "s2": ["HyperBench reads documents", "Second line of text here", "Order number 7781 shipped"],
}


def docker_run(image: str, mounts: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    name = f"hb-test-{uuid.uuid4().hex[:10]}"
    cmd = ["docker", "run", "--rm", "--name", name, *HARDENED, "--label", "io.hyperbench.test=1"]
    for m in mounts:
        cmd += ["-v", m]
    cmd.append(image)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        raise
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
    return proc


@pytest.fixture(scope="session")
def docker_ok() -> None:
    """Fails (does not skip) when the engine or an image is missing."""
    assert shutil.which("docker"), "docker CLI not found: run scripts/ensure-docker.sh"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, f"docker engine unavailable (scripts/ensure-docker.sh): {info.stderr[-500:]}"
    for image in (OCR_IMAGE, EVAL_IMAGE, REPORT_IMAGE):
        r = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60)
        assert r.returncode == 0, f"image {image} missing: run scripts/build-images.sh"


def render_lines(path: Path, lines: list[str]) -> None:
    font = ImageFont.truetype(FONT, 30)
    img = Image.new("RGB", (900, 60 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((30, 30 + 60 * i), line, fill="black", font=font)
    img.save(path)


def make_dataset(root: Path) -> Path:
    data = root / "data"
    (data / "images").mkdir(parents=True)
    manifest = []
    for sid, lines in CLEAN_TEXTS.items():
        render_lines(data / "images" / f"{sid}.png", lines)
        manifest.append({"id": sid, "image": f"images/{sid}.png", "text": "\n".join(lines)})
    (data / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image \x00\xff" * 20)
    manifest.append({"id": "bad", "image": "images/bad.png", "text": "unreadable"})
    (data / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    (data / "dataset.json").write_text(
        json.dumps({"name": "tiny", "version": "1", "task": "ocr", "description": "test", "license": "CC0"})
    )
    for p in [data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return data


def writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def dataset(workdir: Path) -> Path:
    return make_dataset(workdir)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- OCR


@pytest.fixture(scope="module")
def ocr_output(docker_ok: None, workdir: Path, dataset: Path) -> Path:
    job = workdir / "ocr-job"
    job.mkdir()
    job.chmod(0o755)
    manifest = read_jsonl(dataset / "manifest.jsonl")
    (job / "input.jsonl").write_text(
        "".join(json.dumps({"id": m["id"], "image": m["image"]}) + "\n" for m in manifest)
    )
    (job / "params.json").write_text("{}")
    for f in ("input.jsonl", "params.json"):
        (job / f).chmod(0o644)
    out = writable_dir(job / "output")
    proc = docker_run(
        OCR_IMAGE,
        [
            f"{dataset}:/data:ro",
            f"{job / 'input.jsonl'}:/job/input.jsonl:ro",
            f"{job / 'params.json'}:/job/params.json:ro",
            f"{out}:/job/output",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.docker
def test_ocr_predicts_every_sample(ocr_output: Path) -> None:
    preds = read_jsonl(ocr_output / "predictions.jsonl")
    assert sorted(p["id"] for p in preds) == ["bad", "s1", "s2"]
    for p in preds:
        assert set(p) == {"id", "prediction", "latency_ms", "error"}
        assert isinstance(p["latency_ms"], float)
        assert p["latency_ms"] >= 0
    progress = json.loads((ocr_output / "progress.json").read_text())
    assert progress["done"] == progress["total"] == 3


@pytest.mark.docker
def test_ocr_recognises_text(ocr_output: Path) -> None:
    preds = {p["id"]: p for p in read_jsonl(ocr_output / "predictions.jsonl")}
    for sid, lines in CLEAN_TEXTS.items():
        p = preds[sid]
        assert p["error"] is None
        assert p["prediction"].count("\n") == len(lines) - 1, p["prediction"]  # rows in reading order
        cer = jiwer.cer("\n".join(lines), p["prediction"])
        print(f"RapidOCR CER {sid}: {cer:.4f}  {p['prediction']!r}")
        assert cer < 0.2, (sid, p["prediction"])


@pytest.mark.docker
def test_ocr_garbage_image_is_a_sample_error(ocr_output: Path) -> None:
    preds = {p["id"]: p for p in read_jsonl(ocr_output / "predictions.jsonl")}
    assert preds["bad"]["error"], preds["bad"]
    assert preds["bad"]["prediction"] is None
    assert all(preds[s]["error"] is None for s in CLEAN_TEXTS)


@pytest.mark.docker
def test_ocr_resumes_and_skips_done_ids(docker_ok: None, workdir: Path, dataset: Path) -> None:
    job = workdir / "ocr-resume"
    job.mkdir()
    job.chmod(0o755)
    (job / "input.jsonl").write_text(
        json.dumps({"id": "s1", "image": "images/s1.png"})
        + "\n"
        + json.dumps({"id": "evil", "image": "../../etc/passwd"})
        + "\n"
    )
    (job / "input.jsonl").chmod(0o644)
    out = writable_dir(job / "output")
    done = {"id": "s1", "prediction": "already", "latency_ms": 1.0, "error": None}
    (out / "predictions.jsonl").write_text(json.dumps(done) + "\n" + '{"id": "torn', encoding="utf-8")
    (out / "predictions.jsonl").chmod(0o666)
    proc = docker_run(
        OCR_IMAGE, [f"{dataset}:/data:ro", f"{job / 'input.jsonl'}:/job/input.jsonl:ro", f"{out}:/job/output"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = read_jsonl(out / "predictions.jsonl")
    assert [p["id"] for p in preds] == ["s1", "evil"]
    assert preds[0]["prediction"] == "already"
    assert preds[1]["error"]
    assert "dataset" in preds[1]["error"]


# ----------------------------------------------------------------------------- eval

EVAL_REFS = {"a": "abcd", "b": "hello world", "c": "xyz", "d": "ok"}
# a: 1 substitution of 4 chars; 1 of 1 words wrong
# b: exact
# c: error set -> scored as "" -> 3 deletions, 1 word deletion
# d: missing -> "" -> 2 deletions, 1 word deletion
EVAL_PREDS = [
    {"id": "a", "prediction": "abxd", "latency_ms": 10.0, "error": None},
    {"id": "b", "prediction": "hello  world\n", "latency_ms": 12.0, "error": None},
    {"id": "c", "prediction": "xyz", "latency_ms": 5.0, "error": "boom"},
]


def make_eval_dataset(root: Path) -> Path:
    data = root / "eval-data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"name": "hand", "version": "1", "task": "ocr"}))
    (data / "manifest.jsonl").write_text(
        "".join(json.dumps({"id": k, "image": f"{k}.png", "text": v}) + "\n" for k, v in EVAL_REFS.items())
    )
    for k in EVAL_REFS:
        Image.new("RGB", (40, 20), "white").save(data / f"{k}.png")
    for p in [data, *data.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return data


@pytest.fixture(scope="module")
def eval_output(docker_ok: None, workdir: Path) -> tuple[Path, Path, Path]:
    data = make_eval_dataset(workdir)
    preds = workdir / "eval-predictions.jsonl"
    preds.write_text("".join(json.dumps(p) + "\n" for p in EVAL_PREDS))
    preds.chmod(0o644)
    out = writable_dir(workdir / "eval-out")
    proc = docker_run(
        EVAL_IMAGE, [f"{data}:/data:ro", f"{preds}:/job/predictions.jsonl:ro", f"{out}:/job/output"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return data, preds, out


@pytest.mark.docker
def test_eval_metrics_shape_and_values(eval_output: tuple[Path, Path, Path]) -> None:
    _, _, out = eval_output
    m = json.loads((out / "metrics.json").read_text())
    assert m["metric_version"] == "2.1"  # images/eval/hb_metrics.METRIC_VERSION
    assert m["n"] == 4
    assert m["errors"] == 2  # c (error) + d (missing)
    assert m["bootstrap"]["resamples"] == 1000
    assert isinstance(m["bootstrap"]["seed"], int)
    assert isinstance(m["normalization"], dict)
    assert m["normalization"]
    assert set(m["metrics"]) == {"cer", "wer", "ned", "cer_mean", "wer_mean"}
    assert m["primary_metric"] == "cer"
    assert isinstance(m["policy"], dict)
    # per-sample mean: a .25, b 0, c 1 (error), d 1 (missing)
    assert m["metrics"]["cer_mean"]["value"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    # chars: a 1 edit / 4, b 0 / 11, c 3 / 3, d 2 / 2  -> 6 / 20
    assert m["metrics"]["cer"]["value"] == pytest.approx(6 / 20)
    # words: a 1/1, b 0/2, c 1/1, d 1/1 -> 3 / 5
    assert m["metrics"]["wer"]["value"] == pytest.approx(3 / 5)
    # ned per page: a 1/4, b 0, c 1, d 1 -> mean
    assert m["metrics"]["ned"]["value"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    for name, v in m["metrics"].items():
        lo, hi = v["ci95"]
        assert 0.0 <= lo <= v["value"] <= hi, (name, v)
    # the same numbers as jiwer computes for the whole corpus
    refs = list(EVAL_REFS.values())
    hyps = ["abxd", "hello world", "", ""]
    assert m["metrics"]["cer"]["value"] == pytest.approx(jiwer.cer(refs, hyps))
    assert m["metrics"]["wer"]["value"] == pytest.approx(jiwer.wer(refs, hyps))


@pytest.mark.docker
def test_eval_per_sample(eval_output: tuple[Path, Path, Path]) -> None:
    _, _, out = eval_output
    rows = {r["id"]: r for r in read_jsonl(out / "per_sample.jsonl")}
    assert set(rows) == set(EVAL_REFS)
    assert rows["a"]["cer"] == pytest.approx(0.25)
    assert rows["b"]["cer"] == 0
    assert rows["b"]["wer"] == 0
    assert rows["c"]["cer"] == 1.0  # an error is never a good score
    assert rows["c"]["error"] == "boom"
    assert rows["d"]["missing"] is True
    assert rows["d"]["cer"] == 1.0


@pytest.mark.docker
def test_eval_vqa_anls(docker_ok: None, workdir: Path) -> None:
    data = workdir / "vqa-data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"name": "vqa", "version": "1", "task": "vqa"}))
    manifest = [
        {"id": "q1", "image": "x.png", "question": "total?", "answers": ["42.50", "42.5"]},
        {"id": "q2", "image": "x.png", "question": "name?", "answers": ["ACME Corp"]},
        {"id": "q3", "image": "x.png", "question": "date?", "answers": ["2024"]},
    ]
    (data / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    for p in [data, *data.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    preds = workdir / "vqa-preds.jsonl"
    preds.write_text(
        json.dumps({"id": "q1", "prediction": "42.5", "latency_ms": 1, "error": None})
        + "\n"
        + json.dumps({"id": "q2", "prediction": "acme corp.", "latency_ms": 1, "error": None})
        + "\n"
        + json.dumps({"id": "q3", "prediction": "1999", "latency_ms": 1, "error": None})
        + "\n"
    )
    preds.chmod(0o644)
    out = writable_dir(workdir / "vqa-out")
    proc = docker_run(
        EVAL_IMAGE, [f"{data}:/data:ro", f"{preds}:/job/predictions.jsonl:ro", f"{out}:/job/output"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    # q1 exact (1.0), q2 NL = 1/10 -> 0.9, q3 NL = 3/4 >= 0.5 -> 0
    assert m["metrics"]["anls"]["value"] == pytest.approx((1 + 0.9 + 0) / 3)
    assert m["metrics"]["exact_match"]["value"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- report


@pytest.mark.docker
def test_report_is_self_contained(docker_ok: None, workdir: Path, dataset: Path, ocr_output: Path) -> None:
    # Evaluate the real OCR output, then render the report from it.
    eval_out = writable_dir(workdir / "report-eval")
    preds = ocr_output / "predictions.jsonl"
    proc = docker_run(
        EVAL_IMAGE, [f"{dataset}:/data:ro", f"{preds}:/job/predictions.jsonl:ro", f"{eval_out}:/job/output"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    inp = workdir / "report-in"
    inp.mkdir()
    shutil.copy(eval_out / "metrics.json", inp / "metrics.json")
    shutil.copy(eval_out / "per_sample.jsonl", inp / "per_sample.jsonl")
    # An untrusted prediction with markup must come out escaped.
    with open(preds) as fh, open(inp / "predictions.jsonl", "w") as dst:
        dst.write(fh.read())
    (inp / "run.json").write_text(
        json.dumps(
            {"model": "rapidocr <b>x</b>", "dataset": "tiny", "params": {"a": 1}, "timings": {"infer_s": 3.2}}
        )
    )
    for p in [inp, *inp.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    out = writable_dir(workdir / "report-out")
    proc = docker_run(REPORT_IMAGE, [f"{dataset}:/data:ro", f"{inp}:/job/input:ro", f"{out}:/job/output"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (out / "report.html").read_text()
    assert "<svg" in page
    assert "data:image/jpeg;base64," in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page
    assert "https://" not in page
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "rapidocr" in page
    assert "infer_s" in page


# ----------------------------------------------------------------------------- SDK (no docker)


def _sdk(monkeypatch: pytest.MonkeyPatch, data: Path, job: Path) -> Any:
    monkeypatch.setenv("HB_DATA_DIR", str(data))
    monkeypatch.setenv("HB_JOB_DIR", str(job))
    monkeypatch.syspath_prepend(str(ROOT / "images" / "sdk"))
    import hyperbench_sdk

    return hyperbench_sdk


def test_sdk_run_model_errors_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, job = tmp_path / "data", tmp_path / "job"
    data.mkdir()
    job.mkdir()
    (data / "a.txt").write_text("A")
    (data / "b.txt").write_text("B")
    samples = [
        {"id": "1", "image": "a.txt"},
        {"id": "2", "image": "missing.txt"},
        {"id": "3", "image": "/etc/passwd"},
        {"id": "4", "image": "b.txt"},
    ]
    (job / "input.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    sdk = _sdk(monkeypatch, data, job)

    calls: list[str] = []

    def predict(sample: dict[str, Any], path: Path, params: dict[str, Any]) -> str:
        calls.append(sample["id"])
        return path.read_text()

    assert sdk.run_model(predict) == 0
    preds = read_jsonl(job / "output" / "predictions.jsonl")
    assert [p["id"] for p in preds] == ["1", "2", "3", "4"]
    assert preds[0]["prediction"] == "A"
    assert preds[0]["error"] is None
    assert preds[1]["error"]
    assert preds[1]["prediction"] is None
    assert "UnsafePathError" in preds[2]["error"]
    assert json.loads((job / "output" / "progress.json").read_text())["done"] == 4

    # Resume: drop the last line, leave a torn tail, run again: only id 4 is redone.
    lines = (job / "output" / "predictions.jsonl").read_text().splitlines(keepends=True)
    (job / "output" / "predictions.jsonl").write_text("".join(lines[:3]) + '{"id": "4", "predi')
    calls.clear()
    assert sdk.run_model(predict) == 0
    assert calls == ["4"]
    preds = read_jsonl(job / "output" / "predictions.jsonl")
    assert [p["id"] for p in preds] == ["1", "2", "3", "4"]


def test_sdk_resolve_data_path_rejects_escapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = _sdk(monkeypatch, tmp_path, tmp_path / "job")
    (tmp_path / "sub").mkdir()
    assert sdk.resolve_data_path("sub/x.png") == tmp_path / "sub" / "x.png"
    for bad in ("/etc/passwd", "../x", "sub/../../x", "", "a\x00b"):
        with pytest.raises(sdk.UnsafePathError):
            sdk.resolve_data_path(bad)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(sdk.UnsafePathError):
        sdk.resolve_data_path("link/passwd")
