"""probe: report from inside the container what it is allowed to do.

Follows container contract v1: reads /job/input.jsonl and /job/params.json and
writes one prediction per sample whose ``prediction`` is the findings as JSON;
the same findings go to /job/output/probe.json.

params.json ``{"params": {...}}`` (all optional):
    tcp_port      a port the test listens on at the host's 127.0.0.1 (default 9)
    public_addr   "host:port" for an outbound connect attempt (default 1.1.1.1:53;
                  "" skips it). Only a TCP connect with a 1 s timeout, nothing is sent.
    forks         how many processes to try to fork (default 500)

Every check catches its own errors: a probe that crashes reports nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

JOB = Path("/job")


def _status() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno)) if e.errno else type(e).__name__


def can_write(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, f".probe-{os.getpid()}")
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return {"writable": True, "error": None}
    except OSError as e:
        return {"writable": False, "error": _err(e)}


def tcp_connect(host: str, port: int) -> dict[str, Any]:
    """A connect attempt only (1 s timeout); nothing is sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        return {"connected": True, "error": None}
    except TimeoutError:
        return {"connected": False, "error": "timeout"}
    except OSError as e:
        return {"connected": False, "error": _err(e)}
    finally:
        s.close()


def fork_many(n: int) -> dict[str, Any]:
    """Fork up to n sleeping children; count them, then kill and reap every one."""
    children: list[int] = []
    error = None
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # the child: wait to be killed, never return into the probe
                try:
                    while True:
                        signal.pause()
                finally:
                    os._exit(0)
            children.append(pid)
    except OSError as e:
        error = _err(e)
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    return {"tried": n, "forked": len(children), "error": error}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _limit(value: str | None) -> int | None:
    """A cgroup limit as bytes/count; None for absent or "max" (unlimited)."""
    if value is None or value == "max":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def cgroup_limits() -> dict[str, Any]:
    # cgroup v2 (unified) first, then the v1 controllers' files.
    mem = _read("/sys/fs/cgroup/memory.max")
    swap = _read("/sys/fs/cgroup/memory.swap.max")
    pids = _read("/sys/fs/cgroup/pids.max")
    version = 2 if mem is not None else 1
    if version == 1:
        mem = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        memsw = _limit(_read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"))
        mem_limit = _limit(mem)
        swap_limit = None if memsw is None or mem_limit is None else memsw - mem_limit
        pids = _read("/sys/fs/cgroup/pids/pids.max")
    else:
        mem_limit = _limit(mem)
        swap_limit = _limit(swap)
    return {"version": version, "memory_max": mem_limit, "swap_max": swap_limit, "pids_max": _limit(pids)}


def mounts() -> dict[str, dict[str, Any]]:
    """Mount point -> {fstype, ro, source} from /proc/self/mountinfo."""
    out: dict[str, dict[str, Any]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        opts = fields[5].split(",")
        out[fields[4]] = {
            "fstype": rfields[0] if rfields else "",
            "ro": "ro" in opts,
            "source": rfields[1] if len(rfields) > 1 else "",
        }
    return out


def findings(params: dict[str, Any]) -> dict[str, Any]:
    st = _status()
    try:
        tmp = os.statvfs("/tmp")
        tmp_size: int | None = tmp.f_blocks * tmp.f_frsize
    except OSError:
        tmp_size = None
    public = str(params.get("public_addr", "1.1.1.1:53"))
    pub_host, _, pub_port = public.rpartition(":")
    try:
        os.setuid(0)
        setuid_root = True
    except OSError:
        setuid_root = False
    interfaces = [
        line.split(":")[0].strip()
        for line in Path("/proc/net/dev").read_text().splitlines()[2:]
        if ":" in line
    ]
    return {
        "cap_eff": int(st.get("CapEff", "0"), 16),
        "cap_prm": int(st.get("CapPrm", "0"), 16),
        "cap_bnd": int(st.get("CapBnd", "0"), 16),
        "cap_amb": int(st.get("CapAmb", "0"), 16),
        "no_new_privs": int(st.get("NoNewPrivs", "-1")),
        "seccomp": int(st.get("Seccomp", "-1")),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "groups": sorted(os.getgroups()),
        "setuid_root": setuid_root,
        "write_root": can_write("/"),
        "write_data": can_write("/data"),
        "write_job": can_write("/job"),
        "write_output": can_write("/job/output"),
        "write_tmp": can_write("/tmp"),
        "tmp_size_bytes": tmp_size,
        "interfaces": interfaces,
        "tcp_loopback": tcp_connect("127.0.0.1", int(params.get("tcp_port", 9))),
        "tcp_public": tcp_connect(pub_host, int(pub_port)) if public else None,
        "fork": fork_many(int(params.get("forks", 500))),
        "docker_socket": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
        "cgroup": cgroup_limits(),
        "visible_pids": sum(1 for p in os.listdir("/proc") if p.isdigit()),
        "devices": sorted(os.listdir("/dev")),
        "mounts": mounts(),
    }


def main() -> int:
    started = time.monotonic()
    params = json.loads((JOB / "params.json").read_text()).get("params", {})
    samples = [json.loads(line) for line in (JOB / "input.jsonl").read_text().splitlines() if line.strip()]
    found = findings(params)
    text = json.dumps(found, sort_keys=True)
    (JOB / "output" / "probe.json").write_text(text)
    latency = (time.monotonic() - started) * 1000
    with open(JOB / "output" / "predictions.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(
                json.dumps({"id": s["id"], "prediction": text, "latency_ms": latency, "error": None}) + "\n"
            )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
