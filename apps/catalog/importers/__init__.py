"""Importers: datasets in the formats they come in, written in the project's own layout.

Each format has a small module; :func:`run_import` runs one into a new directory and removes
it again when the input is refused. ``layout`` is the project's own layout (nothing to convert:
the upload is checked where it lies, see apps/catalog/uploads.py).

Used by the upload endpoint (apps/catalog/uploads.py) and ``manage.py import_dataset``.
Standard library, Pillow, and (imported when their format is used) pyarrow and pypdfium2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from apps.catalog.importers.common import DatasetWriter, ImportFailure, Limits, Options, RowError
from apps.catalog.importers.docvqa import import_docvqa
from apps.catalog.importers.images_txt import import_images_txt
from apps.catalog.importers.kie import import_kie
from apps.catalog.importers.parquet import import_parquet
from apps.catalog.importers.pdf import import_pdf
from apps.catalog.importers.pubtabnet import import_pubtabnet
from apps.catalog.importers.tsv import import_tsv

LAYOUT = "layout"
IMPORTERS: dict[str, Callable[[Path, DatasetWriter], None]] = {
    "vlmevalkit-tsv": import_tsv,
    "hf-parquet": import_parquet,
    "docvqa-json": import_docvqa,
    "pubtabnet-jsonl": import_pubtabnet,
    "kie-json": import_kie,
    "images-txt": import_images_txt,
    "pdf": import_pdf,
}
#: Every format name the upload takes: the project's layout, then the importers.
FORMATS: tuple[str, ...] = (LAYOUT, *IMPORTERS)

__all__ = [
    "FORMATS",
    "IMPORTERS",
    "LAYOUT",
    "ImportFailure",
    "Limits",
    "Options",
    "limits_from_settings",
    "run_import",
]


def limits_from_settings() -> Limits:
    return Limits(
        max_image_bytes=settings.HYPERBENCH_IMPORT_MAX_IMAGE_BYTES,
        max_image_pixels=settings.HYPERBENCH_IMPORT_MAX_IMAGE_PIXELS,
        max_json_bytes=settings.HYPERBENCH_IMPORT_MAX_JSON_BYTES,
        max_samples=settings.HYPERBENCH_IMPORT_MAX_SAMPLES,
        pdf_dpi=settings.HYPERBENCH_IMPORT_PDF_DPI,
        max_pdf_pages=settings.HYPERBENCH_IMPORT_MAX_PDF_PAGES,
    )


def run_import(fmt: str, source: Path, out: Path, options: Options, limits: Limits | None = None) -> int:
    """Convert ``source`` (a file, or a folder of an unpacked upload) into a new directory ``out``.

    Returns:
        The number of samples written.

    Raises:
        ImportFailure: the format is unknown or the input is refused (``problems`` names the rows);
            ``out`` is removed.
    """
    importer = IMPORTERS.get(fmt)
    if importer is None:
        raise ImportFailure(f"Unknown format {fmt!r}; one of: {', '.join(FORMATS)}.")
    writer = DatasetWriter(out, options, limits or limits_from_settings(), source=fmt)
    try:
        importer(source, writer)
        writer.finish()
    except RowError as e:  # an importer's own slip: still the input's fault, named
        writer.abort()
        raise ImportFailure(f"{fmt}: {e}") from e
    except BaseException:
        writer.abort()
        raise
    return writer.count
