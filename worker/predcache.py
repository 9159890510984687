"""The prediction cache: validated predictions, content-addressed, in the artifact store.

One entry per (everything that can change a prediction) x sample, at
``<cache uri><key[:2]>/<key>.json``, where ``key`` is the sha256 of a canonical
JSON (sorted keys, no spaces, UTF-8) of :func:`key_parts`: the model image id,
the endpoint's base URL and model name for an API model, the effective params,
the prompt, the task, the sample's id, the sha256 of its image bytes (declared
in the manifest, else hashed here), its question (VQA), and the container
contract version. Not the run, the shard count or the host: those cannot change
an answer. A model registered ``cacheable: false`` adds ``scope`` (the run a
chain of retries began with), so its entries serve only that run and its
retries: resume and retry still work, nothing crosses to another run.

The host writes an entry for every prediction line as it lands (a complete
line, JSON, a sample sent to this attempt, its first line, no ``error``), while
the container runs: the cache is also where a shard attempt that dies resumes
from. Errors are never written, so a sample that failed is inferred again.

An entry is ``{"key", "run_id", "shard", "attempt", "line"}``; it is served
only when its key and the line's id match what was asked. Writing is best
effort: a store that refuses one costs a recomputation later, never the shard.

An entry's modification time is when it was last used: written, or served to
a run (renewed on a hit when it is over :data:`TOUCH_AFTER_S` old, so a warm
run costs no extra request per sample). ``manage.py prune_predcache`` deletes
the entries not used for N days. An entry may go at any moment: one that is
gone between the look-up and the read is a miss, and the sample is inferred.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker import contract
from worker.errors import HostError
from worker.manifest import sha256_file
from worker.storage import Artifacts, uri_join

logger = logging.getLogger(__name__)

KEY_VERSION = 1  # the layout of key_parts itself
_LOOKUP_THREADS = 16
TOUCH_AFTER_S = 24 * 3600  # a hit renews an entry's time once it is older than this


def key_parts(spec: contract.RunSpec, sample_id: str, image_sha256: str, question: object) -> dict[str, Any]:
    """What a prediction of ``sample_id`` under ``spec`` depends on (see the module docstring)."""
    model = spec["model"]
    endpoint = model.get("endpoint")
    cache = spec.get("cache")
    return {
        "v": KEY_VERSION,
        "contract": contract.CONTRACT_VERSION,
        "image_digest": model["digest"],
        "endpoint": {"base_url": endpoint["base_url"], "model": endpoint["model"]} if endpoint else None,
        "params": spec["params"],
        "prompt": spec["prompt"],
        "task": spec["dataset"]["task"],
        "sample": {"id": sample_id, "image_sha256": image_sha256, "question": question},
        "scope": None if cache is None or cache["cacheable"] else int(cache["scope"]),
    }


def canonical(parts: dict[str, Any]) -> bytes:
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def cache_key(spec: contract.RunSpec, sample_id: str, image_sha256: str, question: object) -> str:
    return hashlib.sha256(canonical(key_parts(spec, sample_id, image_sha256, question))).hexdigest()


def image_sha256(dataset_dir: Path, sample: dict[str, Any]) -> str:
    """The sample's image bytes' sha256: the manifest's declared one (checked when the version was
    synced or registered), else hashed from the file in the dataset directory."""
    declared = sample.get("sha256")
    if isinstance(declared, str) and len(declared) == 64:
        return declared
    return sha256_file(dataset_dir / str(sample["image"]))


def entry_uri(base: str, key: str) -> str:
    return uri_join(base, key[:2], f"{key}.json")


@dataclass
class Lookup:
    """What the cache holds for a shard: sample id -> prediction line, and where each came from."""

    lines: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: int = 0  # computed by another run (this run's lineage included)
    resumed: int = 0  # computed by an earlier attempt of this run
    runs: set[int] = field(default_factory=set)  # the other runs that computed the hits


class PredictionCache:
    """A run's view of the cache: which entries it may take, and where it writes."""

    def __init__(self, store: Artifacts, spec: contract.RunSpec, work_dir: Path) -> None:
        self.store = store
        self.run_id = int(spec["run_id"])
        self.ref = spec.get("cache")
        self.work_dir = work_dir
        self.write_failures = 0

    @property
    def enabled(self) -> bool:
        return bool(self.ref and self.ref["uri"])

    def _acceptable(self, run_id: int) -> bool:
        ref = self.ref
        assert ref is not None
        return run_id == self.run_id or run_id in ref["lineage"] or (ref["reuse"] and ref["cacheable"])

    def _get(self, sample_id: str, key: str, tmp: Path) -> dict[str, Any] | None:
        assert self.ref is not None
        uri = entry_uri(self.ref["uri"], key)
        try:
            used = self.store.modified(uri)
            if used is None:
                return None
            local = self.store.get_file(uri, tmp / f"{key}.json")
            entry = json.loads(local.read_text(encoding="utf-8"))
            local.unlink()
        except (HostError, OSError, ValueError) as e:
            # Unreadable, or pruned between the look-up and the read: the sample is inferred.
            logger.warning("prediction cache: entry %s unreadable, treated as a miss: %s", uri, e)
            return None
        line = entry.get("line") if isinstance(entry, dict) else None
        if entry.get("key") != key or not isinstance(line, dict) or str(line.get("id")) != sample_id:
            return None
        if line.get("error") or not isinstance(entry.get("run_id"), int):
            return None
        if not self._acceptable(int(entry["run_id"])):
            return None
        if time.time() - used > TOUCH_AFTER_S:
            try:
                self.store.touch(uri)  # used now: pruning by age keeps it
            except (HostError, OSError) as e:
                logger.warning("prediction cache: could not renew the time of %s: %s", uri, e)
        return dict(entry)

    def lookup(self, keys: dict[str, str]) -> Lookup:
        """The entries this run may take for ``keys`` (sample id -> key), looked up in parallel."""
        found = Lookup()
        if not self.enabled or not keys:
            return found
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="cache-lookup-", dir=self.work_dir) as tmp,
            ThreadPoolExecutor(max_workers=_LOOKUP_THREADS) as pool,
        ):
            items = list(keys.items())
            entries = pool.map(lambda kv: self._get(kv[0], kv[1], Path(tmp)), items)
            for (sid, _), entry in zip(items, entries, strict=True):
                if entry is None:
                    continue
                line = dict(entry["line"])
                origin = int(entry["run_id"])
                if origin == self.run_id:
                    found.resumed += 1
                    line["resumed"] = True
                else:
                    found.hits += 1
                    found.runs.add(origin)
                    line["cached"] = True
                    line["cached_from_run"] = origin
                found.lines[sid] = line
        return found

    def put(self, key: str, line: dict[str, Any], *, shard: int, attempt: int) -> None:
        """Write one entry; a failure is logged and counted, never raised."""
        if not self.enabled or line.get("error"):
            return
        assert self.ref is not None
        entry = {"key": key, "run_id": self.run_id, "shard": shard, "attempt": attempt, "line": line}
        try:
            with tempfile.NamedTemporaryFile(
                "w", dir=self.work_dir, prefix="cache-entry-", suffix=".json", delete=False, encoding="utf-8"
            ) as f:
                f.write(json.dumps(entry, ensure_ascii=False))
            try:
                self.store.put_file(Path(f.name), entry_uri(self.ref["uri"], key))
            finally:
                Path(f.name).unlink(missing_ok=True)
        except (HostError, OSError) as e:
            self.write_failures += 1
            if self.write_failures == 1:
                logger.warning("prediction cache: could not write an entry (run %s): %s", self.run_id, e)


class Tail:
    """Follows a container's predictions.jsonl while it runs and caches each validated line once.

    Only complete lines (ending in a newline) are read; a line that is not JSON, names a
    sample not sent to this attempt, repeats one, or carries an error is skipped here (the
    final check of the whole file decides whether the shard fails).
    """

    def __init__(self, cache: PredictionCache, path: Path, keys: dict[str, str], shard: int, attempt: int):
        self.cache, self.path, self.keys = cache, path, keys
        self.shard, self.attempt = shard, attempt
        self.offset = 0
        self.seen: set[str] = set()
        self.written = 0

    def drain(self) -> int:
        """Cache the lines that landed since the last call; returns how many were written now."""
        if not self.cache.enabled:
            return 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return 0
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        before = self.written
        for raw in chunk[:end].splitlines():
            self._one(raw)
        return self.written - before

    def _one(self, raw: bytes) -> None:
        try:
            row = json.loads(raw)
        except ValueError:
            return
        if not isinstance(row, dict):
            return
        sid = str(row.get("id"))
        if sid not in self.keys or sid in self.seen:
            return
        self.seen.add(sid)
        if row.get("error") or "prediction" not in row:
            return
        self.cache.put(self.keys[sid], row, shard=self.shard, attempt=self.attempt)
        self.written += 1


def shard_keys(
    spec: contract.RunSpec, dataset_dir: Path, samples: Iterable[dict[str, Any]]
) -> dict[str, str]:
    """Sample id -> cache key, for the samples given (the shard's)."""
    return {
        str(s["id"]): cache_key(spec, str(s["id"]), image_sha256(dataset_dir, s), s.get("question"))
        for s in samples
    }
