"""The model images of issue 5 and the bring-your-own-model validator, with the real engine.

- ocr-tesseract on rendered lines (CER) and a garbage image, under --network none
  and the rest of the hardened flags;
- vlm-openai against tests/fake_openai.py on loopback (--network host, as an API
  model runs: the engine has no bridge), hardened otherwise: answers, retries,
  usage and latency, bounded concurrency, a dead endpoint, config refusals;
- ``python -m worker.validate_image`` on the template image (PASS), on an API
  model with an endpoint file (PASS) and on a broken image built here (FAIL).

Needs a running Docker engine and the images (scripts/build-images.sh
ocr-tesseract vlm-openai template). FAILS, never skips, when one is missing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jiwer
import pytest
from fake_openai import ANSWERS, FakeOpenAI
from PIL import Image, ImageDraw, ImageFont

from worker import validate_image
from worker.containers import hardened_cli_flags

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "images" / "VERSION").read_text().strip()
TESSERACT_IMAGE = f"hyperbench/ocr-tesseract:{VERSION}"
VLM_IMAGE = f"hyperbench/vlm-openai:{VERSION}"
TEMPLATE_IMAGE = f"hyperbench/template:{VERSION}"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# The platform's own hardening (worker/containers.py); each test picks its network.
HARDENED = [f for f in hardened_cli_flags() if not f.startswith("--network=")]

CLEAN_TEXTS = {
    "t1": ["The quick brown fox jumps", "over the lazy dog 12345", "Invoice total: 42.50 EUR"],
    "t2": ["HyperBench reads documents", "Second line of text here", "Order number 7781 shipped"],
}
VQA = {
    "q1": "What is the total?",
    "q2": "Who is the vendor?",
    "q3": "Which page is this?",
    "q4": "What is the date?",
    "q5": "Is it paid?",
    "q6": "Who signed it?",
}


def docker_run(
    image: str, mounts: list[str], *, network: str = "none", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    name = f"hb-test-{uuid.uuid4().hex[:10]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", network, *HARDENED]
    cmd += ["--label", "io.hyperbench.test=1"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    for m in mounts:
        cmd += ["-v", m]
    cmd.append(image)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        raise
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
    return proc


@pytest.fixture(scope="module")
def model_images() -> None:
    assert shutil.which("docker"), "docker CLI not found: run scripts/ensure-docker.sh"
    for image in (TESSERACT_IMAGE, VLM_IMAGE, TEMPLATE_IMAGE):
        r = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60)
        assert r.returncode == 0, f"image {image} missing: run scripts/build-images.sh"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def render(path: Path, lines: list[str], size: int = 30) -> None:
    font = ImageFont.truetype(FONT, size)
    img = Image.new("RGB", (900, 60 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((30, 30 + 60 * i), line, fill="black", font=font)
    img.save(path)


def open_tree(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


class Job:
    """A job directory: input.jsonl, params.json, optional endpoint.json, a writable output/."""

    def __init__(self, root: Path, samples: list[dict[str, Any]], raw_params: dict[str, Any]) -> None:
        self.root = root
        root.mkdir()
        (root / "input.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        (root / "params.json").write_text(json.dumps(raw_params))
        open_tree(root)
        self.out = root / "output"
        self.out.mkdir()
        self.out.chmod(0o777)

    def endpoint(self, cfg: dict[str, Any]) -> str:
        path = self.root / "endpoint.json"
        path.write_text(json.dumps(cfg))
        path.chmod(0o644)
        return f"{path}:/job/endpoint.json:ro"

    def mounts(self, data: Path) -> list[str]:
        return [
            f"{data}:/data:ro",
            f"{self.root / 'input.jsonl'}:/job/input.jsonl:ro",
            f"{self.root / 'params.json'}:/job/params.json:ro",
            f"{self.out}:/job/output",
        ]

    def predictions(self) -> dict[str, dict[str, Any]]:
        rows = read_jsonl(self.out / "predictions.jsonl")
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), ids
        return {r["id"]: r for r in rows}

    def progress(self) -> dict[str, Any]:
        return dict(json.loads((self.out / "progress.json").read_text()))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model-images")
    root.chmod(0o755)
    return root


# ----------------------------------------------------------------------------- ocr-tesseract


@pytest.fixture(scope="module")
def ocr_data(workdir: Path) -> Path:
    data = workdir / "ocr-data"
    (data / "images").mkdir(parents=True)
    for sid, lines in CLEAN_TEXTS.items():
        render(data / "images" / f"{sid}.png", lines)
    (data / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image \x00\xff" * 20)
    open_tree(data)
    return data


def ocr_samples() -> list[dict[str, Any]]:
    return [{"id": s, "image": f"images/{s}.png"} for s in [*CLEAN_TEXTS, "bad"]]


@pytest.mark.docker
def test_tesseract_reads_clean_lines_and_isolates_a_garbage_image(
    model_images: None, workdir: Path, ocr_data: Path
) -> None:
    job = Job(workdir / "tess-job", ocr_samples(), {"params": {"psm": 3, "lang": "eng"}, "task": "ocr"})
    proc = docker_run(TESSERACT_IMAGE, job.mounts(ocr_data))
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = job.predictions()
    assert set(preds) == {"t1", "t2", "bad"}
    for sid, lines in CLEAN_TEXTS.items():
        p = preds[sid]
        assert p["error"] is None, p
        assert isinstance(p["latency_ms"], float)
        assert p["latency_ms"] > 0
        cer = jiwer.cer("\n".join(lines), p["prediction"])
        print(f"Tesseract CER {sid}: {cer:.4f}  {p['prediction']!r}")
        assert cer < 0.2, (sid, p["prediction"])
    assert preds["bad"]["prediction"] is None
    assert "tesseract exited" in preds["bad"]["error"], preds["bad"]
    assert job.progress()["done"] == job.progress()["total"] == 3


@pytest.mark.docker
def test_tesseract_refuses_params_outside_the_allow_list(
    model_images: None, workdir: Path, ocr_data: Path
) -> None:
    for i, params in enumerate(({"lang": "eng;rm -rf /"}, {"psm": 0}, {"lang": "deu"})):
        job = Job(workdir / f"tess-bad-{i}", ocr_samples()[:1], {"params": params})
        proc = docker_run(TESSERACT_IMAGE, job.mounts(ocr_data))
        assert proc.returncode == 2, (params, proc.stderr)
        assert "bad params" in proc.stderr
        assert not (job.out / "predictions.jsonl").exists()


# ----------------------------------------------------------------------------- vlm-openai


@pytest.fixture(scope="module")
def vqa_data(workdir: Path) -> Path:
    data = workdir / "vqa-data"
    (data / "images").mkdir(parents=True)
    for i, sid in enumerate(VQA):
        render(data / "images" / f"{sid}.png", [f"Document {i}", "Total 42.50"], size=20 + i)
    open_tree(data)
    return data


def vqa_samples() -> list[dict[str, Any]]:
    return [{"id": sid, "image": f"images/{sid}.png", "question": q} for sid, q in VQA.items()]


def expected_answer(question: str) -> str:
    return ANSWERS.get(question, f"echo: {question}")


@pytest.mark.docker
def test_vlm_openai_answers_with_retries_usage_and_bounded_concurrency(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    samples = [*vqa_samples(), {"id": "gone", "image": "images/missing.png", "question": "?"}]
    params = {"max_concurrency": 2, "backoff_s": 0.05, "max_retries": 4, "timeout_s": 10}
    job = Job(workdir / "vlm-job", samples, {"params": params, "prompt": "", "task": "vqa"})
    with FakeOpenAI(fail_first=3, delay_s=0.3) as srv:
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "fake-vlm", "api_key": "sk-test-123"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sk-test-123" not in proc.stderr  # the key never reaches the log
    st = srv.state
    preds = job.predictions()
    assert set(preds) == {*VQA, "gone"}
    for sid, question in VQA.items():
        p = preds[sid]
        assert p["error"] is None, p
        assert p["prediction"] == expected_answer(question)
        assert p["latency_ms"] >= 300  # the server holds every answer 0.3 s
        assert p["wall_ms"] >= p["latency_ms"]
        assert set(p["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert p["usage"]["prompt_tokens"] > 100
        assert p["usage"]["completion_tokens"] >= 1
        assert p["finish_reason"] == "stop"
    # the missing image is that sample's error, and costs no request
    assert preds["gone"]["prediction"] is None
    assert "image not found" in preds["gone"]["error"]
    # 3 injected failures (503, 429, 503), each retried: every sample answered once
    assert st.statuses.count(503) == 2
    assert st.statuses.count(429) == 1
    assert st.answered == len(VQA)
    assert st.requests == len(VQA) + 3
    assert sum(p["attempts"] for sid, p in preds.items() if sid != "gone") == len(VQA) + 3
    # bounded concurrency: never more than max_concurrency in flight, and the pool was used
    assert st.max_in_flight == 2, st.max_in_flight
    assert set(st.auth) == {"Bearer sk-test-123"}
    assert set(st.models) == {"fake-vlm"}
    sent = sorted(st.image_sha256)
    files = sorted(hashlib.sha256((vqa_data / "images" / f"{s}.png").read_bytes()).hexdigest() for s in VQA)
    assert sent == files
    assert sorted(p.rsplit("Question: ", 1)[1] for p in st.prompts) == sorted(VQA.values())
    assert job.progress()["done"] == job.progress()["total"] == len(samples)


@pytest.mark.docker
def test_vlm_openai_dead_endpoint_gives_per_sample_errors(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    samples = vqa_samples()[:3]
    params = {"max_concurrency": 3, "backoff_s": 0.01, "max_retries": 1}
    job = Job(workdir / "vlm-dead", samples, {"params": params, "task": "vqa"})
    with FakeOpenAI(fail_always=500) as srv:
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "fake-vlm"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = job.predictions()
    assert set(preds) == {s["id"] for s in samples}
    for p in preds.values():
        assert p["prediction"] is None
        assert "HTTP 500" in p["error"], p
        assert "gave up after 2 attempt(s)" in p["error"], p
        assert p["attempts"] == 2
        assert p["usage"] is None
    assert srv.state.requests == 2 * len(samples)
    assert set(srv.state.auth) == {""}  # no key configured: no Authorization header
    assert job.progress() | {"ts": 0} == {"done": 3, "total": 3, "errors": 3, "ts": 0}


@pytest.mark.docker
def test_vlm_openai_env_fallback_default_prompt_and_ocr_task(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    """No endpoint.json: HB_OPENAI_* from the environment; an OCR task gets the default OCR prompt."""
    job = Job(workdir / "vlm-env", [{"id": "q1", "image": "images/q1.png"}], {"params": {}, "task": "ocr"})
    with FakeOpenAI() as srv:
        env = {"HB_OPENAI_BASE_URL": srv.base_url, "HB_OPENAI_MODEL": "env-model", "HB_OPENAI_API_KEY": "k"}
        proc = docker_run(VLM_IMAGE, job.mounts(vqa_data), network="host", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job.predictions()["q1"]["prediction"] == "transcript"
    assert srv.state.models == ["env-model"]
    assert srv.state.auth == ["Bearer k"]
    assert srv.state.prompts[0].startswith("Transcribe all the text")


@pytest.mark.docker
def test_vlm_openai_refuses_endpoint_from_run_params_and_missing_endpoint(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    samples = vqa_samples()[:1]
    with FakeOpenAI() as srv:
        job = Job(workdir / "vlm-evil", samples, {"params": {"base_url": "http://example.com/v1"}})
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "m"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
        assert proc.returncode == 2, proc.stderr
        assert "may not set base_url" in proc.stderr, proc.stderr
        job = Job(workdir / "vlm-noendpoint", samples, {"params": {}})
        proc = docker_run(VLM_IMAGE, job.mounts(vqa_data), network="none")
        assert proc.returncode == 2, proc.stderr
        assert "no endpoint configured" in proc.stderr, proc.stderr
        assert srv.state.requests == 0


RECEIPT = {
    "store": "Corner Market",
    "items": [{"name": "Milk", "qty": "2", "price": "2.40"}],
    "total": "2.40",
}
JSON_OBJECT = {"type": "json_object"}


@pytest.mark.docker
def test_vlm_openai_kie_asks_for_one_json_object_in_json_mode(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    samples = [{"id": sid, "image": f"images/{sid}.png"} for sid in ("q1", "q2", "q3")]
    job = Job(workdir / "vlm-kie", samples, {"params": {"max_concurrency": 2}, "task": "kie"})
    with FakeOpenAI(reply=json.dumps(RECEIPT)) as srv:
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "fake-vlm"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task=kie json_mode=auto" in proc.stderr, proc.stderr[-2000:]
    st = srv.state
    assert st.response_formats == [JSON_OBJECT] * 3  # what the server received, each request
    assert len(st.prompts) == 3
    assert all(p.startswith("Extract the key information from this document") for p in st.prompts)
    assert all("as one JSON object" in p for p in st.prompts)
    for p in job.predictions().values():
        assert p["error"] is None, p
        assert json.loads(p["prediction"]) == RECEIPT
        assert p["json_mode"] is True


@pytest.mark.docker
def test_vlm_openai_kie_falls_back_once_when_the_endpoint_refuses_response_format(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    """json_mode auto: the first refusal (HTTP 400) turns JSON mode off for the shard; the prompt stays."""
    samples = [{"id": sid, "image": f"images/{sid}.png"} for sid in ("q1", "q2", "q3")]
    job = Job(workdir / "vlm-kie-fallback", samples, {"params": {"max_concurrency": 1}, "task": "kie"})
    with FakeOpenAI(reply=json.dumps(RECEIPT), reject_response_format=True) as srv:
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "fake-vlm"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = srv.state
    # one refused request with response_format, then the three answers without it
    assert st.response_formats == [JSON_OBJECT, None, None, None]
    assert st.statuses == [400, 200, 200, 200]
    assert proc.stderr.count("the endpoint refused response_format json_object") == 1, proc.stderr
    preds = job.predictions()
    for p in preds.values():
        assert p["error"] is None, p
        assert json.loads(p["prediction"]) == RECEIPT
        assert p["json_mode"] is False
    assert sorted(p["attempts"] for p in preds.values()) == [1, 1, 2]


@pytest.mark.docker
def test_vlm_openai_json_mode_on_makes_a_refusal_each_sample_s_clear_error(
    model_images: None, workdir: Path, vqa_data: Path
) -> None:
    samples = [{"id": sid, "image": f"images/{sid}.png"} for sid in ("q1", "q2")]
    job = Job(workdir / "vlm-kie-on", samples, {"params": {"json_mode": "on"}, "task": "kie"})
    with FakeOpenAI(reject_response_format=True) as srv:
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "fake-vlm"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert srv.state.response_formats == [JSON_OBJECT, JSON_OBJECT]
    for p in job.predictions().values():
        assert p["prediction"] is None
        assert "HTTP 400: " in p["error"], p
        assert "the endpoint refused response_format json_object" in p["error"], p
        assert "json_mode to 'auto'" in p["error"], p


@pytest.mark.docker
@pytest.mark.parametrize(
    ("task", "prompt_start", "reply"),
    [
        (
            "page",
            "Convert this document page to Markdown",
            "# Title\n\nText.\n\n| a | b |\n|---|---|\n| 1 | 2 |",
        ),
        ("table", "Convert the table in this image to HTML", "<table><tr><td>1</td></tr></table>"),
    ],
)
def test_vlm_openai_page_and_table_prompts_without_json_mode(
    model_images: None, workdir: Path, vqa_data: Path, task: str, prompt_start: str, reply: str
) -> None:
    job = Job(workdir / f"vlm-{task}", [{"id": "q1", "image": "images/q1.png"}], {"params": {}, "task": task})
    with FakeOpenAI(reply=reply) as srv:
        endpoint = job.endpoint({"base_url": srv.base_url, "model": "fake-vlm"})
        proc = docker_run(VLM_IMAGE, [*job.mounts(vqa_data), endpoint], network="host")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert srv.state.response_formats == [None]
    assert srv.state.prompts[0].startswith(prompt_start), srv.state.prompts
    pred = job.predictions()["q1"]
    assert pred["prediction"] == reply
    assert pred["json_mode"] is False


def test_vlm_openai_request_shape_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request body and prompt rendering, in-process (fast, no engine)."""
    monkeypatch.syspath_prepend(str(ROOT / "images" / "sdk"))
    monkeypatch.syspath_prepend(str(ROOT / "images" / "vlm-openai"))
    import vlm_openai_entry as v

    ep = v.Endpoint("http://127.0.0.1:1/v1/chat/completions", "m", None, 8, None)
    opts = v.load_options({"params": {"system": "be brief", "image_detail": "low"}, "task": "vqa"}, ep)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    body = v.build_request({"id": "a", "question": "Total?"}, png, opts, "m")
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    text, image = body["messages"][1]["content"]
    assert text["text"].endswith("Question: Total?")
    assert image["image_url"]["detail"] == "low"
    assert base64.b64decode(image["image_url"]["url"].split(",", 1)[1]) == png
    assert v.render_prompt("Read: {question}", {"question": "x"}) == "Read: x"
    assert v.render_prompt("Read it.", {"question": "x"}) == "Read it.\n\nQuestion: x"
    assert v.chat_url("https://api.example.com/v1/") == "https://api.example.com/v1/chat/completions"
    with pytest.raises(v.ConfigError):
        v.chat_url("file:///etc/passwd")
    with pytest.raises(v.ConfigError):
        v.load_options({"params": {"max_concurrency": 9}}, ep)  # above the operator's cap of 8
    with pytest.raises(ValueError, match="not a PNG, JPEG, GIF or WebP image"):
        v.image_mime(b"GIF00a not an image")
    # JSON mode: on by default ("auto") for kie only, in the body only when asked for
    assert v.load_options({"params": {}, "task": "kie"}, ep).json_mode == "auto"
    assert v.load_options({"params": {}, "task": "page"}, ep).json_mode == "off"
    assert v.load_options({"params": {"json_mode": "on"}, "task": "table"}, ep).json_mode == "on"
    with pytest.raises(v.ConfigError, match="json_mode must be one of"):
        v.load_options({"params": {"json_mode": True}, "task": "kie"}, ep)
    kie = v.load_options({"params": {}, "task": "kie"}, ep)
    assert v.build_request({"id": "a"}, png, kie, "m", json_object=True)["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in v.build_request({"id": "a"}, png, kie, "m")
    with pytest.raises(v.ConfigError, match="task must be one of"):
        v.load_options({"params": {}, "task": "speech"}, ep)


# ----------------------------------------------------------------------------- validate_image


def run_validator(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = validate_image.main(argv)
    print(buf.getvalue())
    return code, buf.getvalue()


@pytest.mark.docker
def test_validate_image_passes_the_template(model_images: None) -> None:
    code, out = run_validator([TEMPLATE_IMAGE])
    assert code == 0, out
    assert "RESULT: PASS" in out
    assert "FAIL " not in out
    assert "--network none" in out


@pytest.mark.docker
def test_validate_image_passes_an_api_model_with_an_endpoint_file(model_images: None, tmp_path: Path) -> None:
    with FakeOpenAI() as srv:
        ep = tmp_path / "endpoint.json"
        ep.write_text(json.dumps({"base_url": srv.base_url, "model": "fake-vlm"}))
        code, out = run_validator([VLM_IMAGE, "--task", "vqa", "--endpoint", str(ep)])
    assert code == 0, out
    assert srv.state.answered == 3
    assert "host network (API model)" in out


BROKEN_MODEL = """
import json
samples = [json.loads(l) for l in open("/job/input.jsonl") if l.strip()]
with open("/job/output/predictions.jsonl", "w") as f:
    f.write(json.dumps({"id": "not-in-shard", "prediction": "x", "latency_ms": 1.0, "error": None}) + "\\n")
    f.write(json.dumps({"id": samples[0]["id"], "prediction": 42, "latency_ms": -1, "error": None}) + "\\n")
    f.write(json.dumps({"id": samples[0]["id"], "prediction": "2", "latency_ms": 1, "error": None}) + "\\n")
with open("/job/output/progress.json", "w") as f:
    json.dump({"done": 1, "total": 3}, f)
"""


@pytest.fixture
def broken_image(model_images: None, tmp_path: Path) -> Iterator[str]:
    """A tiny image of the test's own, FROM the project's base, that breaks the contract but exits 0."""
    base = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "io.hyperbench.base"}}', TEMPLATE_IMAGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert base, "the template image carries no io.hyperbench.base label"
    (tmp_path / "broken.py").write_text(BROKEN_MODEL)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nCOPY broken.py /opt/broken.py\nUSER 10001:10001\n"
        'ENTRYPOINT ["python3", "/opt/broken.py"]\n'
    )
    tag = f"hyperbench-test/broken:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["docker", "build", "-q", "--network", "none", "-t", tag, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert build.returncode == 0, build.stderr
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


@pytest.mark.docker
def test_validate_image_fails_a_broken_image_with_clear_messages(broken_image: str) -> None:
    code, out = run_validator([broken_image])
    assert code == 1, out
    lines = {line.split(":", 1)[0].strip(): line for line in out.splitlines()}
    assert lines["PASS  container exits 0 under the hardened options"]
    assert "prediction must be a string or null, got int" in out
    assert "latency_ms must be a number >= 0 or null, got -1" in out
    assert "FAIL  exactly one prediction per sample (3)" in out
    assert "more than one prediction for" in out
    assert "FAIL  no prediction for an id that is not in the shard: unknown ids ['not-in-shard']" in out
    assert "FAIL  progress.json is {done, total} with done == total: done=1 total=3" in out
    assert out.strip().endswith("RESULT: FAIL (4 of 7 checks failed)")


@pytest.mark.docker
def test_validate_image_reports_a_crashing_image(model_images: None) -> None:
    code, out = run_validator([f"hyperbench/testkit:{VERSION}", "--params", '{"mode": "exit"}'])
    assert code == 1, out
    assert "FAIL  container exits 0 under the hardened options: the container exited with code 3" in out
    assert "testkit: failing on purpose" in out


def test_validate_image_checks_without_docker(tmp_path: Path) -> None:
    """The prediction checks on hand-written files (no engine)."""
    preds = tmp_path / "predictions.jsonl"
    preds.write_text(
        json.dumps({"id": "a", "prediction": "x", "latency_ms": 1.5, "error": None})
        + "\n"
        + json.dumps({"id": "b", "prediction": None, "latency_ms": None, "error": "boom"})
        + "\n"
    )
    assert all(c.ok for c in validate_image.check_predictions(preds, ["a", "b"]))
    checks = {c.name: c for c in validate_image.check_predictions(preds, ["a", "b", "c"])}
    assert not checks["exactly one prediction per sample (3)"].ok
    preds.write_text('{"id": "a", "prediction": null, "latency_ms": 1, "error": null}\n{"id": "b"')
    bad = [c for c in validate_image.check_predictions(preds, ["a", "b"]) if not c.ok]
    assert any("torn" in c.detail and "error is not set" in c.detail for c in bad)
    progress = tmp_path / "progress.json"
    progress.write_text('{"done": 2, "total": 2}')
    assert validate_image.check_progress(progress, 2).ok
    assert not validate_image.check_progress(progress, 3).ok
    png = validate_image._png(8, 4, [(1, 1, 3, 3)])
    assert Image.open(io.BytesIO(png)).size == (8, 4)


# ----------------------------------------------------------------------------- vlm-vllm (no GPU here)


class _FakeCompletion:
    def __init__(self, text: str) -> None:
        self.text = text
        self.token_ids = list(range(len(text.split())))
        self.finish_reason = "stop"


class _FakeRequestOutput:
    def __init__(self, text: str) -> None:
        self.prompt_token_ids = list(range(7))
        self.outputs = [_FakeCompletion(text)]


class _FakeLLM:
    """Stands in for vllm.LLM: answers the question; a conversation mentioning 'poison' breaks its batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def chat(self, convs: list[Any], sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        self.batches.append(len(convs))
        texts = [next(p["text"] for p in c[0]["content"] if p["type"] == "text") for c in convs]
        if any("poison" in t for t in texts):
            raise RuntimeError("engine rejected the request")
        return [_FakeRequestOutput(t.rsplit("Question: ", 1)[-1]) for t in texts]


def test_vllm_entry_batches_isolates_failures_and_records_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vLLM image's logic with a fake engine (vLLM and a GPU are absent here)."""
    data, job = tmp_path / "data", tmp_path / "job"
    data.mkdir()
    job.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 16), "white").save(data / f"{i}.png")
    samples = [{"id": f"s{i}", "image": f"{i}.png", "question": f"q{i}"} for i in range(5)]
    samples[3]["question"] = "poison"
    samples.append({"id": "gone", "image": "nope.png", "question": "x"})
    (job / "input.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    monkeypatch.setenv("HB_DATA_DIR", str(data))
    monkeypatch.setenv("HB_JOB_DIR", str(job))
    monkeypatch.syspath_prepend(str(ROOT / "images" / "sdk"))
    monkeypatch.syspath_prepend(str(ROOT / "images" / "vlm-vllm"))
    import vllm_entry as v

    opts = v.load_options({"params": {"batch_size": 4}, "task": "vqa"})
    with pytest.raises(v.ConfigError):
        v.load_options({"params": {"dtype": "int3"}})
    llm = _FakeLLM()
    assert v.run(llm, None, opts) == 0
    assert llm.batches == [4, 1, 1, 1, 1, 1]  # the batch with the poison is retried one by one
    rows = {r["id"]: r for r in read_jsonl(job / "output" / "predictions.jsonl")}
    assert set(rows) == {s["id"] for s in samples}
    assert rows["s0"]["prediction"] == "q0"
    assert rows["s0"]["error"] is None
    assert rows["s0"]["usage"] == {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
    assert rows["s4"]["batch_size"] == 1
    assert rows["s0"]["batch_size"] == 1
    assert "engine rejected" in rows["s3"]["error"]
    assert rows["s3"]["prediction"] is None
    assert "image not found" in rows["gone"]["error"]
    assert json.loads((job / "output" / "progress.json").read_text())["done"] == 6
    monkeypatch.setenv("HB_MODEL_DIR", str(tmp_path / "no-model"))
    with pytest.raises(v.ConfigError):
        v.make_engine(opts)  # vLLM missing here, or no weights mounted: a configuration error


# ------------------------------------------------------- ocr-rapidocr, table-rapidtable: CPU or CUDA


@pytest.fixture
def ocr_providers(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The SDK's hyperbench_sdk.providers (both ONNX images choose with it): stdlib only, so no
    onnxruntime or GPU is needed here."""
    monkeypatch.syspath_prepend(str(ROOT / "images" / "sdk"))
    from hyperbench_sdk import providers

    return providers


CPU_WHEEL = ["AzureExecutionProvider", "CPUExecutionProvider"]  # onnxruntime 1.32 here
GPU_WHEEL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("available", "device", "has_gpu", "chosen"),
    [
        (CPU_WHEEL, "auto", False, "CPUExecutionProvider"),
        (CPU_WHEEL, "auto", True, "CPUExecutionProvider"),  # a GPU, but the CPU wheel
        (GPU_WHEEL, "auto", True, "CUDAExecutionProvider"),
        (GPU_WHEEL, "auto", False, "CPUExecutionProvider"),  # the GPU wheel on a CPU model's container
        (GPU_WHEEL, "cpu", True, "CPUExecutionProvider"),
        (GPU_WHEEL, "CUDA", True, "CUDAExecutionProvider"),
        ([], "auto", False, "CPUExecutionProvider"),
    ],
)
def test_rapidocr_runs_on_cuda_only_where_onnxruntime_offers_it_and_a_gpu_is_granted(
    ocr_providers: Any, available: list[str], device: str, has_gpu: bool, chosen: str
) -> None:
    assert ocr_providers.select_provider(available, device=device, has_gpu=has_gpu) == chosen


def test_rapidocr_refuses_cuda_it_cannot_have_rather_than_benchmark_the_cpu(ocr_providers: Any) -> None:
    with pytest.raises(ocr_providers.DeviceError, match="onnxruntime offers only"):
        ocr_providers.select_provider(CPU_WHEEL, device="cuda", has_gpu=True)
    with pytest.raises(ocr_providers.DeviceError, match="no GPU is visible"):
        ocr_providers.select_provider(GPU_WHEEL, device="cuda", has_gpu=False)
    with pytest.raises(ocr_providers.DeviceError, match="device must be one of"):
        ocr_providers.select_provider(GPU_WHEEL, device="tpu")


def test_rapidocr_engine_params_switch_its_onnxruntime_sessions(ocr_providers: Any, tmp_path: Path) -> None:
    assert ocr_providers.engine_params("CUDAExecutionProvider") == {
        "EngineConfig.onnxruntime.use_cuda": True,
        "EngineConfig.onnxruntime.cuda_ep_cfg.device_id": 0,
    }
    assert ocr_providers.engine_params("CPUExecutionProvider") == {"EngineConfig.onnxruntime.use_cuda": False}
    (tmp_path / "nvidiactl").touch()
    assert not ocr_providers.gpu_visible(tmp_path)  # the control device alone is no GPU
    (tmp_path / "nvidia0").touch()
    assert ocr_providers.gpu_visible(tmp_path)


@pytest.mark.docker
def test_the_rapidocr_image_logs_the_provider_it_runs_on(workdir: Path, ocr_data: Path) -> None:
    """The real image, no GPU here: CPU is chosen, and the log says so and where the sessions run."""
    samples = [{"id": "t1", "image": "images/t1.png"}]
    job = Job(workdir / "rapidocr-job", samples, {"params": {}, "task": "ocr"})

    proc = docker_run(f"hyperbench/ocr-rapidocr:{VERSION}", job.mounts(ocr_data))

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selected CPUExecutionProvider" in proc.stderr, proc.stderr[-3000:]
    assert "sessions run on {'det': 'CPUExecutionProvider'" in proc.stderr, proc.stderr[-3000:]
    pred = job.predictions()["t1"]
    assert pred["error"] is None, pred
    assert "quick brown fox" in pred["prediction"], pred


@pytest.mark.docker
def test_the_rapidocr_image_fails_the_shard_when_cuda_is_demanded_without_a_gpu(
    workdir: Path, ocr_data: Path
) -> None:
    samples = [{"id": "t1", "image": "images/t1.png"}]
    job = Job(workdir / "rapidocr-cuda-job", samples, {"params": {"device": "cuda"}, "task": "ocr"})

    proc = docker_run(f"hyperbench/ocr-rapidocr:{VERSION}", job.mounts(ocr_data))

    assert proc.returncode != 0  # a configuration error, not a CPU run under a GPU label
    assert "device 'cuda' was asked for" in proc.stderr, proc.stderr[-3000:]


# --------------------------------------------------------------------------- table-rapidtable


@pytest.fixture(scope="module")
def table_data(workdir: Path) -> Path:
    """The first two tables of scripts/make_sample_tables.py (ruled on every edge: a plain one and
    one closed by a total row that spans two columns) and a file that is no image."""
    from tests.conftest import load_script

    data = workdir / "table-data"
    load_script("make_sample_tables").write_dataset(data, 2, 11)
    (data / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image \x00\xff" * 20)
    open_tree(data)
    return data


@pytest.mark.docker
def test_the_table_image_reads_ruled_tables_with_their_spans_and_logs_the_provider_it_runs_on(
    workdir: Path, table_data: Path
) -> None:
    manifest = read_jsonl(table_data / "manifest.jsonl")
    samples = [{"id": s["id"], "image": s["image"]} for s in manifest] + [
        {"id": "bad", "image": "images/bad.png"}
    ]
    job = Job(workdir / "table-job", samples, {"params": {}, "task": "table"})

    proc = docker_run(f"hyperbench/table-rapidtable:{VERSION}", job.mounts(table_data))

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selected CPUExecutionProvider" in proc.stderr, proc.stderr[-3000:]
    cpu = "'CPUExecutionProvider'"
    assert f"sessions run on {{'structure': {cpu}, 'det': {cpu}, 'rec': {cpu}}}" in proc.stderr, proc.stderr[
        -3000:
    ]
    preds = job.predictions()
    assert preds["bad"]["prediction"] is None
    assert preds["bad"]["error"], preds["bad"]
    # Two clean ruled tables are read exactly: every cell, its text and the colspan of the total row.
    # SLANet-plus predicts no <thead>/<tbody> (table_entry.py's docstring): the one difference allowed.
    for sample in manifest:
        pred = preds[sample["id"]]
        assert pred["error"] is None, pred
        assert pred["prediction"] == re.sub(r"</?t(?:head|body)>", "", sample["html"]), (pred, sample["html"])


@pytest.mark.docker
def test_the_table_image_fails_the_shard_when_cuda_is_demanded_without_a_gpu(
    workdir: Path, table_data: Path
) -> None:
    samples = [{"id": "table-0000", "image": "images/table-0000.png"}]
    job = Job(workdir / "table-cuda-job", samples, {"params": {"device": "cuda"}, "task": "table"})

    proc = docker_run(f"hyperbench/table-rapidtable:{VERSION}", job.mounts(table_data))

    assert proc.returncode != 0  # a configuration error, not a CPU run under a GPU label
    assert "device 'cuda' was asked for" in proc.stderr, proc.stderr[-3000:]
