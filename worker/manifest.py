"""Read and validate a dataset version directory (``dataset.json`` + ``manifest.jsonl``).

A dataset version is a directory holding ``dataset.json`` (name, version, task,
description, license), ``manifest.jsonl`` (one sample a line) and the image
files the manifest names by relative POSIX path. See "Dataset layout" in the
design brief.

Everything here streams: the manifest is read one line at a time and hashed as
it is read, so a manifest of 100k lines costs a set of ids, not the file in
memory. Problems are collected (up to a bound) and raised together in one
:class:`ManifestError`, each naming the file and the line, so a person can fix
all of them in one go.

Standard library only: the host worker and the web side both use this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypedDict, cast

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.jsonl"
Task = Literal["ocr", "vqa", "table", "kie", "page"]
TASKS: tuple[str, ...] = ("ocr", "vqa", "table", "kie", "page")
#: The manifest field that holds each task's ground truth (vqa: question + answers).
GROUND_TRUTH: dict[str, str] = {
    "ocr": "text",
    "vqa": "answers",
    "table": "html",
    "kie": "fields",
    "page": "markdown",
}

#: How many problems a :class:`ManifestError` lists before it summarises the rest.
MAX_PROBLEMS = 20

# Names and versions end up in cache paths (<cache>/datasets/<name>/...): keep them path-safe.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024
_DIR_CACHE_SIZE = 4096


class DatasetInfo(TypedDict):
    """The content of ``dataset.json``."""

    name: str
    version: str
    task: Task
    description: str
    license: str


class ManifestSummary(TypedDict):
    """What :func:`validate_local` learned about a valid dataset version."""

    manifest_sha256: str
    sample_count: int
    total_bytes: int
    task: Task
    name: str
    version: str


class ManifestError(Exception):
    """A dataset version is not valid.

    Attributes:
        problems: One human-readable line per problem, each naming the file and,
            for the manifest, the line number (1-based). Bounded: after
            :data:`MAX_PROBLEMS` entries a last entry says how many more were found.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid dataset:\n  " + "\n  ".join(self.problems))


class _Problems:
    """A bounded collector of problems."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self.limit = limit
        self.kept: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.kept) < self.limit:
            self.kept.append(message)

    def raise_if_any(self) -> None:
        if not self.count:
            return
        problems = list(self.kept)
        if self.count > len(self.kept):
            problems.append(f"... and {self.count - len(self.kept)} more problems")
        raise ManifestError(problems)


def sha256_file(path: Path | str) -> str:
    """Return the hex SHA-256 of a file, read in chunks.

    Args:
        path: The file to hash.

    Returns:
        The lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_dataset_json(root: Path) -> DatasetInfo:
    """Read and check ``<root>/dataset.json``.

    ``name``, ``version`` and ``task`` are required; ``description`` and
    ``license`` are optional strings (empty when absent). ``name`` and
    ``version`` must be path-safe (letters, digits, ``.``, ``_``, ``-``; at most
    100 characters, not starting with a dot) because they name cache directories.

    Args:
        root: The dataset version directory.

    Returns:
        The dataset's description.

    Raises:
        ManifestError: The file is missing, not JSON, not an object, or a field
            is missing or invalid; every problem found is listed.
    """
    data = _load_dataset_json(Path(root) / DATASET_JSON)
    problems = _Problems()
    _check_dataset_names(data, problems)
    task = data.get("task")
    if task is None:
        problems.add(f"{DATASET_JSON}: missing field 'task' (one of {', '.join(TASKS)})")
    elif task not in TASKS:
        problems.add(f"{DATASET_JSON}: 'task' must be one of {', '.join(TASKS)}, not {task!r}")
    for key in ("description", "license"):
        value = data.get(key, "")
        if not isinstance(value, str):
            problems.add(f"{DATASET_JSON}: '{key}' must be a string, not {_json_type(value)}")
    problems.raise_if_any()
    return DatasetInfo(
        name=data["name"],
        version=data["version"],
        task=cast(Task, task),
        description=data.get("description", ""),
        license=data.get("license", ""),
    )


def _load_dataset_json(path: Path) -> dict[str, Any]:
    """Read ``dataset.json`` and parse it into a JSON object.

    The first problem stops the reading (nothing else can be checked without the
    object), so each raises a :class:`ManifestError` with that one problem.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([f"{DATASET_JSON}: missing (expected {path})"]) from None
    except OSError as exc:
        raise ManifestError([f"{DATASET_JSON}: cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError([f"{DATASET_JSON}: not UTF-8 text"]) from None
    except json.JSONDecodeError as exc:
        raise ManifestError([f"{DATASET_JSON}: invalid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise ManifestError([f"{DATASET_JSON}: must be a JSON object, not {_json_type(data)}"])
    return data


def _check_dataset_names(data: dict[str, Any], problems: _Problems) -> None:
    """Check ``name`` and ``version``: present, strings and path-safe (they name cache directories)."""
    for key in ("name", "version"):
        value = data.get(key)
        if value is None:
            problems.add(f"{DATASET_JSON}: missing field '{key}'")
        elif not isinstance(value, str):
            problems.add(f"{DATASET_JSON}: '{key}' must be a string, not {_json_type(value)}")
        elif not _SAFE_NAME.match(value):
            problems.add(
                f"{DATASET_JSON}: '{key}' {value!r} must be 1-100 letters, digits, '.', '_' or '-'"
                " and start with a letter or digit"
            )


def check_image_path(image: object) -> str | None:
    """Check the form of a manifest ``image`` value, without touching the disk.

    Args:
        image: The value of the ``image`` field.

    Returns:
        None when it is a clean relative POSIX path, else what is wrong with it.
    """
    if not isinstance(image, str):
        return f"'image' must be a string, not {_json_type(image)}"
    if not image:
        return "'image' is empty"
    if "\x00" in image:
        return f"image {image!r} contains a NUL character"
    if "\\" in image:
        return f"image {image!r} contains a backslash (use '/' as the separator)"
    if image.startswith("/"):
        return f"image {image!r} is an absolute path (must be relative to the dataset directory)"
    parts = PurePosixPath(image).parts
    if ".." in parts:
        return f"image {image!r} has a '..' segment (must stay inside the dataset directory)"
    if re.match(r"^[A-Za-z]:", image):
        return f"image {image!r} looks like a drive path (must be relative to the dataset directory)"
    return None


def validate_local(root: Path, *, verify_hashes: bool = False) -> ManifestSummary:
    """Validate a dataset version directory on local disk, streaming the manifest.

    Checks ``dataset.json`` (see :func:`read_dataset_json`), then each manifest
    line: a JSON object; ``id`` a non-empty string, unique; ``image`` a relative
    POSIX path whose real path (symlinks resolved) stays inside ``root`` and is
    a regular file; ``size`` (if given) equal to the file's size; ``sha256`` (if
    given) well formed, and equal to the file's hash when ``verify_hashes``;
    the task's ground truth: ``text`` (a string, may be empty) for ``ocr``,
    ``question`` (a string) and ``answers`` (a non-empty list of strings) for
    ``vqa``, ``html`` (a string holding a ``<table>``) for ``table``, ``fields``
    (a non-empty JSON object) for ``kie``, ``markdown`` (a string, may be empty)
    for ``page``. Blank lines and an empty manifest are errors.

    Args:
        root: The dataset version directory.
        verify_hashes: Hash every image that declares a ``sha256`` and compare.

    Returns:
        The manifest's hash (of its bytes), sample count, total image bytes, and
        the dataset's name, version and task.

    Raises:
        ManifestError: Listing the problems found (at most :data:`MAX_PROBLEMS`
            and a count of the rest).
    """
    root = Path(root)
    info = read_dataset_json(root)
    task = info["task"]
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        raise ManifestError([f"dataset directory {root}: {exc.strerror or exc}"]) from None
    manifest_path = root / MANIFEST
    try:
        manifest_stat = manifest_path.stat()
    except FileNotFoundError:
        raise ManifestError([f"{MANIFEST}: missing (expected {manifest_path})"]) from None
    if not stat.S_ISREG(manifest_stat.st_mode):
        raise ManifestError([f"{MANIFEST}: not a regular file"])

    problems = _Problems()
    digest = hashlib.sha256()
    seen_ids: set[str] = set()
    dir_cache: dict[str, Path | None] = {}
    sample_count = 0
    total_bytes = 0
    with open(manifest_path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            digest.update(raw)
            where = f"{MANIFEST} line {lineno}"
            sample = _parse_line(raw, where, problems)
            if sample is None:
                continue
            sample_count += 1
            _check_id(sample, where, seen_ids, problems)
            _check_task_fields(sample, task, where, problems)
            total_bytes += _check_image(sample, real_root, where, verify_hashes, problems, dir_cache)
    if sample_count == 0 and problems.count == 0:
        problems.add(f"{MANIFEST}: no samples (the manifest is empty)")
    problems.raise_if_any()
    return ManifestSummary(
        manifest_sha256=digest.hexdigest(),
        sample_count=sample_count,
        total_bytes=total_bytes,
        task=task,
        name=info["name"],
        version=info["version"],
    )


def iter_samples(root: Path) -> Iterator[dict[str, Any]]:
    """Yield the manifest's samples one at a time, in file order.

    Meant for a dataset already checked by :func:`validate_local`: it only
    re-checks that each line is a JSON object. The position of a sample in the
    iteration is its 0-based line number (blank lines are invalid), which is
    what :func:`worker.contract.shard_of` takes.

    Args:
        root: The dataset version directory.

    Yields:
        Each line's JSON object.

    Raises:
        ManifestError: A line is blank, not UTF-8, not JSON or not an object.
    """
    with open(Path(root) / MANIFEST, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            problems = _Problems(limit=1)
            sample = _parse_line(raw, f"{MANIFEST} line {lineno}", problems)
            problems.raise_if_any()
            if sample is not None:
                yield sample


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _parse_line(raw: bytes, where: str, problems: _Problems) -> dict[str, Any] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.add(f"{where}: not UTF-8 text")
        return None
    if not text.strip():
        problems.add(f"{where}: blank line (every line must be one JSON object)")
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
        return None
    if not isinstance(value, dict):
        problems.add(f"{where}: must be a JSON object, not {_json_type(value)}")
        return None
    return value


def _check_id(sample: dict[str, Any], where: str, seen: set[str], problems: _Problems) -> None:
    sample_id = sample.get("id")
    if sample_id is None:
        problems.add(f"{where}: missing field 'id'")
    elif not isinstance(sample_id, str):
        problems.add(f"{where}: 'id' must be a string, not {_json_type(sample_id)}")
    elif not sample_id.strip():
        problems.add(f"{where}: 'id' is empty")
    elif sample_id in seen:
        problems.add(f"{where}: duplicate id {sample_id!r}")
    else:
        seen.add(sample_id)


def _check_task_fields(sample: dict[str, Any], task: str, where: str, problems: _Problems) -> None:
    if task == "ocr":
        text = sample.get("text")
        if text is None:
            problems.add(f"{where}: missing field 'text' (the ground truth of an ocr dataset)")
        elif not isinstance(text, str):
            problems.add(f"{where}: 'text' must be a string, not {_json_type(text)}")
        return
    if task in ("table", "kie", "page"):
        _check_document_fields(sample, task, where, problems)
        return
    question = sample.get("question")
    if question is None:
        problems.add(f"{where}: missing field 'question' (a vqa dataset needs 'question' and 'answers')")
    elif not isinstance(question, str):
        problems.add(f"{where}: 'question' must be a string, not {_json_type(question)}")
    answers = sample.get("answers")
    if answers is None:
        problems.add(f"{where}: missing field 'answers' (a non-empty list of strings)")
    elif not isinstance(answers, list) or not answers:
        problems.add(f"{where}: 'answers' must be a non-empty list of strings")
    elif not all(isinstance(answer, str) for answer in answers):
        problems.add(f"{where}: every item of 'answers' must be a string")


def _check_document_fields(sample: dict[str, Any], task: str, where: str, problems: _Problems) -> None:
    key = GROUND_TRUTH[task]
    value = sample.get(key)
    if task == "table":
        if value is None:
            problems.add(
                f"{where}: missing field 'html' (the ground truth of a table dataset: the table's HTML)"
            )
        elif not isinstance(value, str):
            problems.add(f"{where}: 'html' must be a string, not {_json_type(value)}")
        elif "<table" not in value.lower():
            problems.add(f"{where}: 'html' holds no <table> element")
    elif task == "kie":
        if value is None:
            problems.add(
                f"{where}: missing field 'fields' (the ground truth of a kie dataset: a JSON object)"
            )
        elif not isinstance(value, dict):
            problems.add(f"{where}: 'fields' must be a JSON object, not {_json_type(value)}")
        elif not value:
            problems.add(f"{where}: 'fields' is an empty object")
    elif value is None:
        problems.add(
            f"{where}: missing field 'markdown' (the ground truth of a page dataset: the page's Markdown)"
        )
    elif not isinstance(value, str):
        problems.add(f"{where}: 'markdown' must be a string, not {_json_type(value)}")


def _resolve(
    real_root: Path, image: str, dir_cache: dict[str, Path | None]
) -> tuple[Path | None, os.stat_result]:
    """Resolve a checked relative image path; (None, stat) when it leaves ``real_root``.

    The real path of each directory is resolved once and cached (a manifest names
    many files in few directories); only a file that is itself a symlink is resolved
    again. Raises OSError (FileNotFoundError when something does not exist).
    """
    parent, _, name = image.rpartition("/")
    if parent in dir_cache:
        real_parent = dir_cache[parent]
    else:
        real_parent = (real_root / parent).resolve(strict=True) if parent else real_root
        if not real_parent.is_relative_to(real_root):
            real_parent = None
        if len(dir_cache) >= _DIR_CACHE_SIZE:
            dir_cache.clear()
        dir_cache[parent] = real_parent
    if real_parent is None:
        return None, os.lstat(real_root)
    real = real_parent / name
    info = os.lstat(real)
    if stat.S_ISLNK(info.st_mode):
        real = real.resolve(strict=True)
        if not real.is_relative_to(real_root):
            return None, info
        info = os.stat(real)
    return real, info


def _declared_size_and_sha(
    sample: dict[str, Any], where: str, problems: _Problems
) -> tuple[int | None, str | None]:
    """Return the sample's optional ``size`` and ``sha256``; one that is malformed is reported and None."""
    declared_size = sample.get("size")
    if declared_size is not None and (
        isinstance(declared_size, bool) or not isinstance(declared_size, int) or declared_size < 0
    ):
        problems.add(f"{where}: 'size' must be a non-negative integer, not {declared_size!r}")
        declared_size = None
    declared_sha = sample.get("sha256")
    if declared_sha is not None and (
        not isinstance(declared_sha, str) or not _SHA256_HEX.match(declared_sha)
    ):
        problems.add(f"{where}: 'sha256' must be 64 lowercase hex digits, not {declared_sha!r}")
        declared_sha = None
    return declared_size, declared_sha


def _check_image(
    sample: dict[str, Any],
    real_root: Path,
    where: str,
    verify_hashes: bool,
    problems: _Problems,
    dir_cache: dict[str, Path | None],
) -> int:
    """Check the sample's image; return its size in bytes (0 when it is not usable)."""
    if "image" not in sample:
        problems.add(f"{where}: missing field 'image'")
        return 0
    image = sample["image"]
    wrong = check_image_path(image)
    if wrong is not None:
        problems.add(f"{where}: {wrong}")
        return 0
    declared_size, declared_sha = _declared_size_and_sha(sample, where, problems)

    try:
        real, info = _resolve(real_root, image, dir_cache)
    except FileNotFoundError:
        problems.add(f"{where}: image {image!r} does not exist")
        return 0
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        problems.add(f"{where}: image {image!r} cannot be resolved: {exc}")
        return 0
    if real is None:
        problems.add(f"{where}: image {image!r} resolves outside the dataset directory (a symlink?)")
        return 0
    if not stat.S_ISREG(info.st_mode):
        problems.add(f"{where}: image {image!r} is not a regular file")
        return 0
    if declared_size is not None and declared_size != info.st_size:
        problems.add(f"{where}: image {image!r} has {info.st_size} bytes, the manifest says {declared_size}")
    if verify_hashes and declared_sha is not None:
        try:
            actual = sha256_file(real)
        except OSError as exc:
            problems.add(f"{where}: image {image!r} cannot be read: {exc.strerror or exc}")
            return info.st_size
        if actual != declared_sha:
            problems.add(f"{where}: image {image!r} has sha256 {actual}, the manifest says {declared_sha}")
    return info.st_size
