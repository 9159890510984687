"""Sample images: a path safely inside the dataset, shown as a JPEG thumbnail in a data: URI."""

from __future__ import annotations

import base64
import io
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from hb_report.text import esc

THUMB_MAX = (560, 420)
MAX_IMAGE_PIXELS = 80_000_000

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def safe_image_path(root: Path, relative: object) -> Path | None:
    """`relative` under `root` as an existing file; None for anything that could leave `root`."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        return None
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        return None
    candidate = root.joinpath(*pure.parts)
    try:
        real_root = root.resolve()
        real = candidate.resolve()
    except OSError:
        return None
    if real_root not in real.parents:
        return None
    return candidate if candidate.is_file() else None


def thumbnail_data_uri(path: Path) -> str | None:
    try:
        with Image.open(path) as src:
            src.draft("RGB", (THUMB_MAX[0] * 2, THUMB_MAX[1] * 2))
            im: Image.Image = ImageOps.exif_transpose(src)
            if im.mode not in ("RGB", "L"):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, "white")
                im.paste(rgba, mask=rgba.getchannel("A"))
            im.thumbnail(THUMB_MAX, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=82, optimize=True)
    except Exception:  # noqa: BLE001 - an unreadable image shows as "no preview"
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_html(root: Path, relative: object, alt: str) -> str:
    """An <img> of the sample's image, or "no preview" when it is missing, unsafe or unreadable."""
    path = safe_image_path(root, relative)
    uri = thumbnail_data_uri(path) if path else None
    return f'<img src="{uri}" alt="{esc(alt)}">' if uri else '<div class="noimg">no preview</div>'
