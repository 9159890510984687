"""What every importer shares: the limits, the errors, and the writer of the project's layout.

An importer reads a dataset in the format it comes in and writes, through :class:`DatasetWriter`,
a dataset version in the project's own layout (``dataset.json`` + ``manifest.jsonl`` +
``images/``): every image gets a name of the writer's choosing (``images/000001.png``), its
sha256 and its size, so no name from the input ever becomes a path on the server. Images are
checked with Pillow (header only, no decoding) against a pixel cap (the default is Pillow's own
``MAX_IMAGE_PIXELS``) and a byte cap; a row that breaks a rule is refused with its row number.
Problems are collected (bounded, like the manifest checks) and raised together.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image

from worker.manifest import DATASET_JSON, GROUND_TRUTH, MANIFEST, MAX_PROBLEMS, TASKS, check_image_path

_CHUNK = 1024 * 1024
#: Image formats a dataset may hold, as Pillow names them, and the suffix each is written with.
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif"}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})


@dataclass(frozen=True)
class Limits:
    """Caps an import enforces (settings ``HYPERBENCH_IMPORT_*``, docs/operations.md)."""

    max_image_bytes: int = 50 * 1024 * 1024
    #: Pillow's default MAX_IMAGE_PIXELS (a 3-channel image of about 256 MB decoded).
    max_image_pixels: int = 89_478_485
    #: A JSON document read whole (DocVQA, a KIE array): the format cannot be streamed by the stdlib.
    max_json_bytes: int = 512 * 1024 * 1024
    max_samples: int = 1_000_000
    pdf_dpi: int = 150
    max_pdf_pages: int = 5000


class ImportFailure(Exception):
    """The input cannot be imported; ``problems`` names each bad row (bounded)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class RowError(Exception):
    """One row is refused; the importer records it with the row's number and goes on."""


@dataclass(frozen=True)
class Options:
    """What the user says about an import: the dataset's name, version and task, a column mapping."""

    name: str
    version: str
    task: str
    columns: dict[str, str]
    description: str = ""
    license: str = ""

    def column(self, key: str, default: str | None = None) -> str:
        """The input column that holds ``key`` (the mapping's, else ``default``, else ``key``)."""
        return self.columns.get(key) or default or key


def check_options(options: Options) -> None:
    """Refuse a task this project does not score, or a mapping that is not names to names."""
    if options.task not in TASKS:
        raise ImportFailure(f"task must be one of {', '.join(TASKS)}, not {options.task!r}.")
    for key, value in options.columns.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ImportFailure("columns must map names to names (a JSON object of strings).")


def safe_relative(name: str, root: Path) -> Path:
    """``root / name`` for a relative POSIX path from the input that stays inside ``root``.

    Raises:
        RowError: an absolute path, a ``..`` segment, a backslash, NUL, a drive, or a path whose
            real location (symlinks resolved) leaves ``root``; or no such regular file.
    """
    problem = check_image_path(name)
    if problem:
        raise RowError(problem)
    real_root = root.resolve()
    path = (root / PurePosixPath(name)).resolve()
    if not path.is_relative_to(real_root):
        raise RowError(f"{name!r} leads outside the dataset (a symlink?)")
    if (root / PurePosixPath(name)).is_symlink():
        raise RowError(f"{name!r} is a symbolic link")
    if not path.is_file():
        raise RowError(f"{name!r} is not a file of the dataset")
    return path


def image_suffix(head: IO[bytes], limits: Limits) -> str:
    """Identify an image from its header (no decoding): its suffix, or RowError saying why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(head) as im:
                fmt, (width, height) = im.format or "", im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RowError(f"image refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise RowError(f"not an image Pillow can read ({e.__class__.__name__})") from None
    if width * height > limits.max_image_pixels:
        raise RowError(
            f"image of {width}x{height} pixels is over the cap of {limits.max_image_pixels} pixels "
            "(HYPERBENCH_IMPORT_MAX_IMAGE_PIXELS): refused as a possible decompression bomb"
        )
    if fmt not in IMAGE_FORMATS:
        raise RowError(f"image format {fmt or 'unknown'} is not one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[fmt]


class DatasetWriter:
    """Writes a dataset version in the project's layout under ``out`` (which must not exist yet)."""

    def __init__(self, out: Path, options: Options, limits: Limits, *, source: str) -> None:
        check_options(options)
        self.out, self.options, self.limits, self.source = out, options, limits, source
        self.task = options.task
        self.task_key = GROUND_TRUTH[options.task]
        out.mkdir(parents=True)
        (out / "images").mkdir()
        self._manifest = open(out / MANIFEST, "w", encoding="utf-8")  # noqa: SIM115 - closed by finish()
        self._ids: set[str] = set()
        self.count = 0
        self.kept: list[str] = []
        self.problem_count = 0

    # --- problems ------------------------------------------------------------------------

    def problem(self, where: str, message: str) -> None:
        self.problem_count += 1
        if len(self.kept) < MAX_PROBLEMS:
            self.kept.append(f"{where}: {message}")

    # --- images ----------------------------------------------------------------------------

    def _name(self, suffix: str) -> str:
        return f"images/{self.count + 1:06d}{suffix}"

    def image_bytes(self, data: bytes) -> dict[str, Any]:
        """Store an image given as bytes; its manifest fields (image, sha256, size)."""
        if len(data) > self.limits.max_image_bytes:
            raise RowError(
                f"image of {len(data)} bytes is over the cap of {self.limits.max_image_bytes} bytes "
                "(HYPERBENCH_IMPORT_MAX_IMAGE_BYTES)"
            )
        rel = self._name(image_suffix(io.BytesIO(data), self.limits))
        (self.out / rel).write_bytes(data)
        return {"image": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def image_file(self, src: Path) -> dict[str, Any]:
        """Copy an image file of the input (streamed, hashed as it is copied); its manifest fields."""
        size = src.stat().st_size
        if size > self.limits.max_image_bytes:
            raise RowError(
                f"image of {size} bytes is over the cap of {self.limits.max_image_bytes} bytes "
                "(HYPERBENCH_IMPORT_MAX_IMAGE_BYTES)"
            )
        with open(src, "rb") as handle:
            rel = self._name(image_suffix(handle, self.limits))
            handle.seek(0)
            digest, copied = hashlib.sha256(), 0
            with open(self.out / rel, "wb") as dst:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    copied += len(chunk)
                    if copied > self.limits.max_image_bytes:
                        raise RowError(f"image grew past the cap of {self.limits.max_image_bytes} bytes")
                    digest.update(chunk)
                    dst.write(chunk)
        return {"image": rel, "sha256": digest.hexdigest(), "size": copied}

    # --- samples ---------------------------------------------------------------------------

    def ground_truth(self, value: Any) -> dict[str, Any]:
        """The task's ground-truth field(s) from a value the input gives, checked as the manifest will."""
        key = GROUND_TRUTH[self.task]
        if self.task in ("ocr", "page", "table"):
            if value is None:
                raise RowError(f"no ground truth (the {key!r} of a {self.task} sample)")
            if not isinstance(value, str):
                raise RowError(f"the ground truth must be text, not {type(value).__name__}")
            if self.task == "table" and "<table" not in value.lower():
                raise RowError("the table's HTML holds no <table> element")
            return {key: value}
        if self.task == "kie":
            fields = parse_fields(value)
            return {"fields": fields}
        raise RowError("vqa samples need a question and answers")  # callers use vqa() instead

    def add(self, sample_id: str, image: dict[str, Any], fields: dict[str, Any]) -> None:
        """Write one manifest line; ``image`` from :meth:`image_bytes` or :meth:`image_file`."""
        if not sample_id.strip():
            raise RowError("empty sample id")
        if sample_id in self._ids:
            raise RowError(f"duplicate id {sample_id!r}")
        if self.count >= self.limits.max_samples:
            raise ImportFailure(
                f"more than {self.limits.max_samples} samples (HYPERBENCH_IMPORT_MAX_SAMPLES); refused."
            )
        self._ids.add(sample_id)
        self.count += 1
        line = {"id": sample_id, **image, **fields}
        self._manifest.write(json.dumps(line, ensure_ascii=False) + "\n")

    def finish(self) -> None:
        """Close the manifest and write ``dataset.json``; raise the problems found, if any."""
        self._manifest.close()
        if self.problem_count:
            problems = list(self.kept)
            if self.problem_count > len(self.kept):
                problems.append(f"... and {self.problem_count - len(self.kept)} more problems")
            raise ImportFailure(f"The {self.source} input has {self.problem_count} bad rows.", problems)
        if self.count == 0:
            raise ImportFailure(f"The {self.source} input holds no samples.")
        info = {
            "name": self.options.name,
            "version": self.options.version,
            "task": self.task,
            "description": self.options.description or f"imported from {self.source}",
            "license": self.options.license,
        }
        (self.out / DATASET_JSON).write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n")

    def abort(self) -> None:
        self._manifest.close()
        shutil.rmtree(self.out, ignore_errors=True)


def parse_fields(value: Any) -> dict[str, Any]:
    """A KIE ground truth: an object, or JSON text of one; Donut/CORD's ``{"gt_parse": {...}}`` unwrapped."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError("the fields are not a JSON object (invalid JSON text)") from None
    if isinstance(value, dict) and set(value) >= {"gt_parse"}:
        value = value["gt_parse"]
    if not isinstance(value, dict) or not value:
        raise RowError("the fields must be a non-empty JSON object")
    return value


def answers_of(value: Any) -> list[str]:
    """VQA answers: a list of strings, or one string; VLMEvalKit's ``"['a', 'b']"`` read as a list."""
    import ast

    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        # a string that merely looks like a list is one answer
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            value = ast.literal_eval(value)
    if isinstance(value, str):
        value = [value]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise RowError("the answers must be a string or a non-empty list of strings")
    return value


def vqa_fields(question: Any, answers: Any) -> dict[str, Any]:
    if not isinstance(question, str):
        raise RowError("the question must be text")
    return {"question": question, "answers": answers_of(answers)}


def find_inputs(source: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The input files: ``source`` itself, or the files under it with one of ``suffixes`` (sorted)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ImportFailure(f"{what}: {source.name} is neither a file nor a folder.")
    found = sorted(
        p for p in source.rglob("*") if p.suffix.lower() in suffixes and p.is_file() and not p.is_symlink()
    )
    if not found:
        raise ImportFailure(f"{what}: no {' or '.join(suffixes)} file in the upload.")
    return found


def one_input(source: Path, suffixes: tuple[str, ...], what: str) -> Path:
    found = find_inputs(source, suffixes, what)
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(source)) for p in found[:5])
        raise ImportFailure(f"{what}: expected one {' or '.join(suffixes)} file, found {len(found)}: {names}")
    return found[0]


def read_json_capped(path: Path, limits: Limits, what: str) -> Any:
    size = path.stat().st_size
    if size > limits.max_json_bytes:
        raise ImportFailure(
            f"{what}: {path.name} is {size} bytes, over the cap of {limits.max_json_bytes} "
            "(HYPERBENCH_IMPORT_MAX_JSON_BYTES); JSON files are read whole."
        )
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise ImportFailure(f"{what}: {path.name} is not valid JSON: {e}") from None
