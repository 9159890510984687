"""A small OpenAI-compatible chat-completions server for the tests (stdlib only).

Bound to 127.0.0.1 on a free port, served from a thread. ``POST
/v1/chat/completions`` answers deterministically from the request: the answer
to a ``Question: X`` (or ``{question}``-rendered) prompt is ``ANSWERS.get(X)``
or ``"echo: X"``; without a question it is ``"transcript"``. ``usage`` counts
words. Knobs:

- ``fail_first``: the first N requests get ``fail_statuses`` in turn (503, 429, ...)
- ``fail_always``: every request gets ``fail_always`` as its status
- ``delay_s``: each answer is held this long (so concurrency can be observed)
- ``reply``: when set, every answer is this text (a JSON object for KIE, Markdown for a page)
- ``reject_response_format``: a request carrying ``response_format`` gets HTTP 400
  ``response_format is not supported by this model`` (as servers without JSON mode answer)

The server records what it saw: requests, statuses sent, the maximum number
of requests in flight at once, the Authorization headers, the models asked for,
the sha256 of every image it received, the prompts, and the ``response_format``
of every request (None where absent), refused ones included.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWERS = {"What is the total?": "42.50", "Who is the vendor?": "ACME Corp"}
_QUESTION = re.compile(r"Question:\s*(.+?)\s*$", re.S)


@dataclass
class FakeState:
    fail_first: int = 0
    fail_statuses: tuple[int, ...] = (503, 429)
    fail_always: int = 0
    delay_s: float = 0.0
    reply: str | None = None
    reject_response_format: bool = False
    requests: int = 0
    answered: int = 0
    statuses: list[int] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    auth: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    image_sha256: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    response_formats: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def answer_for(prompt: str) -> str:
    m = _QUESTION.search(prompt)
    if not m:
        return "transcript"
    q = m.group(1).strip()
    return ANSWERS.get(q, f"echo: {q}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # BaseHTTPRequestHandler's name
        return

    def _send(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # http.server's name
        st = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with st.lock:
            st.requests += 1
            n = st.requests
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.auth.append(self.headers.get("Authorization", ""))
        try:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            if st.delay_s:
                time.sleep(st.delay_s)
            status = 0
            if st.fail_always:
                status = st.fail_always
            elif n <= st.fail_first:
                status = st.fail_statuses[(n - 1) % len(st.fail_statuses)]
            if status:
                with st.lock:
                    st.statuses.append(status)
                headers = {"Retry-After": "0"} if status == 429 else None
                self._send(status, {"error": {"message": f"injected {status}"}}, headers)
                return
            req = json.loads(body)
            with st.lock:
                st.response_formats.append(req.get("response_format"))
            if st.reject_response_format and "response_format" in req:
                with st.lock:
                    st.statuses.append(400)
                self._send(400, {"error": {"message": "response_format is not supported by this model"}})
                return
            parts = req["messages"][-1]["content"]
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            assert url.startswith("data:image/"), url[:40]
            image = base64.b64decode(url.split(",", 1)[1])
            answer = st.reply if st.reply is not None else answer_for(text)
            with st.lock:
                st.statuses.append(200)
                st.answered += 1
                st.models.append(str(req.get("model")))
                st.image_sha256.append(hashlib.sha256(image).hexdigest())
                st.prompts.append(text)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "model": req.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(text.split()) + 100,
                        "completion_tokens": len(answer.split()),
                        "total_tokens": len(text.split()) + 100 + len(answer.split()),
                    },
                },
            )
        finally:
            with st.lock:
                st.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeState


class FakeOpenAI:
    """``with FakeOpenAI(fail_first=2) as srv: srv.base_url ...``"""

    def __init__(self, **knobs: Any) -> None:
        self.state = FakeState(**knobs)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
