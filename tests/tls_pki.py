"""A CA and certificates of a test's own, made by ``openssl`` (TLS Redis, HTTPS SeaweedFS).

Fails (never skips) when openssl is missing or refuses.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    """``ca`` signed ``server_cert`` (for 127.0.0.1 and localhost); ``other_ca`` signed nothing here."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"openssl {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")


def make_pki(d: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost it signed, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.fail(
            "openssl is not installed; it makes the test's CA and certificates (apt-get install openssl)."
        )
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=hyperbench-test-ca", cwd=d)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.cnf", cwd=d)  # fmt: skip
    # A CA of its own that did not sign the server's certificate: the "wrong CA" of a host.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt",
            "-days", "2", "-subj", "/CN=some-other-ca", cwd=d)  # fmt: skip
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "other.crt")
