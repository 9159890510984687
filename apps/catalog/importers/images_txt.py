"""A folder of images with ``.txt`` ground truth (``images-txt``): ``a.png`` + ``a.txt``, ...

Every image (png, jpg, jpeg, tif, tiff, bmp, webp, gif) under the folder, in path order, with a
UTF-8 ``.txt`` file of the same stem beside it: its transcription (ocr), or its Markdown (page).
The sample id is the image's path without its suffix. An image without its ``.txt``, a ``.txt``
without its image, and symbolic links are refused by name.
"""

from __future__ import annotations

from pathlib import Path

from apps.catalog.importers.common import IMAGE_SUFFIXES, DatasetWriter, ImportFailure, RowError

NAME = "images-txt"
MAX_TEXT_BYTES = 16 * 1024 * 1024


def import_images_txt(source: Path, w: DatasetWriter) -> None:
    if not source.is_dir():
        raise ImportFailure(f"{NAME}: upload a folder (an archive) of images and .txt files.")
    if w.task not in ("ocr", "page"):
        raise ImportFailure(f"{NAME}: .txt ground truth fits the ocr and page tasks, not {w.task}.")
    files = sorted(p for p in source.rglob("*") if not p.is_dir())
    images = {p.with_suffix("") for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    for p in files:
        rel = p.relative_to(source).as_posix()
        try:
            if p.is_symlink():
                raise RowError("a symbolic link")
            if p.suffix.lower() == ".txt" and p.with_suffix("") not in images:
                raise RowError("a .txt file without an image of the same name")
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            txt = p.with_suffix(".txt")
            if not txt.is_file() or txt.is_symlink():
                raise RowError(f"no ground truth: {txt.name} is missing")
            if txt.stat().st_size > MAX_TEXT_BYTES:
                raise RowError(f"{txt.name} is over {MAX_TEXT_BYTES} bytes")
            try:
                text = txt.read_text(encoding="utf-8").removesuffix("\n")
            except UnicodeDecodeError:
                raise RowError(f"{txt.name} is not UTF-8 text") from None
            w.add(p.relative_to(source).with_suffix("").as_posix(), w.image_file(p), w.ground_truth(text))
        except RowError as e:
            w.problem(rel, str(e))
