"""``POST /api/v1/datasets/upload/``: a dataset brought without a shell on the server.

Good uploads are registered (201): the project's layout as zip and tar.gz, and each import
format (built by tests/import_fixtures.py): a .tsv, .parquet or .pdf as one file, and as an
archive the formats whose annotations name image files beside them (DocVQA JSON, PubTabNet
JSONL, KIE JSON, images and .txt, a PDF with its sidecar). Each kind of hostile archive
(traversal, absolute path, links, a device, a ratio bomb, too many members, too many bytes,
over the storage quota) is refused with a message naming the member and the rule, and nothing
is left on disk. Real parts
throughout: the Django test client, the real database, real files; ``manage.py import_dataset``
through ``call_command``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from PIL import Image
from rest_framework.test import APIClient

from apps.catalog.importers.pubtabnet import format_html
from apps.catalog.models import Dataset
from apps.catalog.uploads import uploaded_bytes
from apps.quotas.models import UserQuota
from tests.import_fixtures import (
    KIE_NESTED,
    PUBTABNET_LINE,
    docvqa_folder,
    hf_parquet_shard,
    kie_folder,
    pdf_folder,
    pubtabnet_folder,
)

URL = "/api/v1/datasets/upload/"


def png(color: str = "white") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 20), color).save(out, format="PNG")
    return out.getvalue()


def zip_folder(folder: Path, path: Path) -> Path:
    """``path``, a zip of the files under ``folder`` (their paths relative to it)."""
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
    return make_zip(path, files)


@pytest.fixture
def uploads(settings: Any, tmp_path: Path) -> Path:
    """A dataset root with the uploads root inside it, as an operator configures them."""
    root = tmp_path / "datasets"
    root.mkdir()
    settings.HYPERBENCH_DATASET_ROOTS = [root.resolve()]
    settings.HYPERBENCH_UPLOADS_ROOT = (root / "uploads").resolve()
    return (root / "uploads").resolve()


def left_on_disk(uploads: Path) -> list[str]:
    """Everything under the uploads root but the (empty) staging folder."""
    return sorted(str(p.relative_to(uploads)) for p in uploads.rglob("*") if p != uploads / ".staging")


def layout_files(name: str = "up", version: str = "1") -> dict[str, bytes]:
    manifest = [
        {"id": "s1", "image": "images/a.png", "text": "alpha"},
        {"id": "s2", "image": "images/b.png", "text": "beta"},
    ]
    return {
        "dataset.json": json.dumps({"name": name, "version": version, "task": "ocr"}).encode(),
        "manifest.jsonl": "".join(json.dumps(m) + "\n" for m in manifest).encode(),
        "images/a.png": png("red"),
        "images/b.png": png("blue"),
    }


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return path


def post(client: APIClient, path: Path, **fields: str) -> Any:
    with open(path, "rb") as handle:
        return client.post(URL, {"file": handle, **fields}, format="multipart")


# --- good uploads -------------------------------------------------------------------------


def test_a_layout_zip_is_stored_under_the_uploads_root_and_registered(
    uploads: Path, as_alice: APIClient, alice: User, tmp_path: Path
) -> None:
    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files()))

    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["name"], body["version"], body["task"], body["sample_count"]) == ("up", "1", "ocr", 2)
    assert body["outcome"] == "created"
    assert str(uploads) not in json.dumps(body["message"]), "no absolute server path in the message"
    ds = Dataset.objects.get(pk=body["id"])
    assert ds.source_uri == (uploads / "up" / "1").as_uri() + "/"
    assert ds.created_by == alice
    assert (uploads / "up" / "1" / "images" / "a.png").read_bytes() == png("red")
    assert left_on_disk(uploads) == ["up", "up/1", "up/1/dataset.json", "up/1/images", "up/1/images/a.png",
                                     "up/1/images/b.png", "up/1/manifest.jsonl"]  # fmt: skip
    # The same version again: 409, and the first upload stays as it was.
    again = post(as_alice, make_zip(tmp_path / "again.zip", layout_files()))
    assert again.status_code == 409, again.content
    assert "up@1" in again.json()["detail"]
    assert len(left_on_disk(uploads)) == 7


def test_a_layout_tar_gz_with_one_top_folder_is_registered(
    uploads: Path, as_alice: APIClient, tmp_path: Path
) -> None:
    files = {f"mydata/{k}": v for k, v in layout_files("tarred", "2").items()}
    r = post(as_alice, make_tar(tmp_path / "up.tar.gz", files))
    assert r.status_code == 201, r.content
    assert r.json()["name"] == "tarred"
    assert (uploads / "tarred" / "2" / "manifest.jsonl").is_file()


def test_a_vlmevalkit_tsv_file_is_converted_and_registered(
    uploads: Path, as_alice: APIClient, tmp_path: Path
) -> None:
    path = tmp_path / "MMBench.tsv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "answer"])
        w.writerow(["0", base64.b64encode(png()).decode(), "Colour?", "['white', 'blank']"])
    r = post(as_alice, path, format="vlmevalkit-tsv", name="mmb", version="v1", task="vqa")

    assert r.status_code == 201, r.content
    assert r.json()["sample_count"] == 1
    line = json.loads((uploads / "mmb" / "v1" / "manifest.jsonl").read_text())
    assert line["answers"] == ["white", "blank"]
    assert len(line["sha256"]) == 64


def test_an_images_txt_zip_is_converted_and_registered(
    uploads: Path, as_alice: APIClient, tmp_path: Path
) -> None:
    files = {"lines/a.png": png(), "lines/a.txt": b"hello\n", "lines/b.png": png(), "lines/b.txt": b"world"}
    r = post(
        as_alice,
        make_zip(tmp_path / "lines.zip", files),
        format="images-txt",
        name="l",
        version="1",
        task="ocr",
    )
    assert r.status_code == 201, r.content
    ids = [json.loads(x)["id"] for x in (uploads / "l" / "1" / "manifest.jsonl").read_text().splitlines()]
    assert ids == ["lines/a", "lines/b"]


def _zipped(build: Any, name: str) -> Any:
    """A builder of tests/import_fixtures.py that fills a folder, its folder uploaded as ``name``.zip."""

    def upload_file(tmp_path: Path) -> Path:
        build(tmp_path / name)
        return zip_folder(tmp_path / name, tmp_path / f"{name}.zip")

    return upload_file


def _pdf_file(tmp_path: Path) -> Path:
    pdf_folder(tmp_path / "pdfs")
    return tmp_path / "pdfs" / "report.pdf"


# format -> (the file uploaded, the form's task and columns, samples, (a sample id, its field, value)).
# hf-parquet and pdf come as one file (the images are in it); docvqa-json, pubtabnet-jsonl and
# kie-json name image files beside the annotations, so they come as an archive of both (a PDF's
# sidecar ground truth too). One file is stored as input.<suffix>: a lone PDF's ids are input/p<n>,
# and without a sidecar its ground truth is its text layer (none in a PDF Pillow writes).
IMPORTS: dict[str, tuple[Any, dict[str, str], int, tuple[str, str, Any]]] = {
    "hf-parquet": (
        lambda p: hf_parquet_shard(p / "train-00000-of-00001.parquet", 0, ["red", "green"]),
        {"task": "ocr", "columns": json.dumps({"text": "ground_truth", "id": "uid"})},
        2,
        ("0-1", "text", "text green"),
    ),
    "docvqa-json": (
        _zipped(docvqa_folder, "docvqa"),
        {"task": "vqa"},
        2,
        ("7", "answers", ["1 May", "May 1"]),
    ),
    "pubtabnet-jsonl": (
        _zipped(pubtabnet_folder, "pubtabnet"),
        {"task": "table", "columns": json.dumps({"split": "val"})},
        1,
        ("3", "html", format_html(PUBTABNET_LINE["html"])),
    ),
    "kie-json": (_zipped(kie_folder, "cord"), {"task": "kie"}, 2, ("img/r2.png", "fields", KIE_NESTED)),
    "pdf": (_zipped(pdf_folder, "pdfs"), {"task": "page"}, 2, ("report/p3", "markdown", "Three")),
    "pdf-file": (_pdf_file, {"task": "ocr"}, 3, ("input/p2", "text", "")),
}


@pytest.mark.parametrize("kind", list(IMPORTS))
def test_each_import_format_is_uploaded_converted_and_registered(
    kind: str, uploads: Path, as_alice: APIClient, tmp_path: Path
) -> None:
    build, fields, count, (sample_id, key, value) = IMPORTS[kind]
    fmt = kind.removesuffix("-file")
    r = post(as_alice, build(tmp_path), format=fmt, name=f"up-{kind}", version="1", **fields)

    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["name"], body["task"], body["sample_count"]) == (f"up-{kind}", fields["task"], count)
    manifest = (uploads / f"up-{kind}" / "1" / "manifest.jsonl").read_text().splitlines()
    samples = {s["id"]: s for s in map(json.loads, manifest)}
    assert len(samples) == count
    assert samples[sample_id][key] == value


def test_annotations_without_their_images_are_refused_naming_the_image(
    uploads: Path, as_alice: APIClient, tmp_path: Path
) -> None:
    docvqa_folder(tmp_path / "docvqa")
    r = post(as_alice, tmp_path / "docvqa" / "val_v1.0.json", format="docvqa-json", name="d", version="1",
             task="vqa")  # fmt: skip
    assert r.status_code == 400, r.content
    assert r.json()["problems"][0] == "input.json entry 1: 'documents/d1.png' is not a file of the dataset"
    assert left_on_disk(uploads) == []


def test_bad_rows_and_missing_fields_are_400s_that_name_them(
    uploads: Path, as_alice: APIClient, tmp_path: Path
) -> None:
    files = {"a.png": png(), "b.png": b"not an image", "b.txt": b"x"}
    r = post(
        as_alice,
        make_zip(tmp_path / "bad.zip", files),
        format="images-txt",
        name="b",
        version="1",
        task="ocr",
    )
    assert r.status_code == 400
    assert r.json()["problems"] == [
        "a.png: no ground truth: a.txt is missing",
        "b.png: not an image Pillow can read (UnidentifiedImageError)",
    ]

    r = post(as_alice, tmp_path / "bad.zip", format="images-txt")
    assert r.status_code == 400
    assert "name is required for format images-txt" in r.json()["problems"]

    r = post(as_alice, tmp_path / "bad.zip", format="csv")
    assert r.status_code == 400
    assert "format" in r.json()
    assert left_on_disk(uploads) == []


# --- hostile archives ----------------------------------------------------------------------------


def _symlink(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _zip_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in layout_files().items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("images/c.png")
        info.external_attr = (0o120777 << 16) | 0x20
        zf.writestr(info, "/etc/passwd")
    return path


def _bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dataset.json", layout_files()["dataset.json"])
        zf.writestr("images/zeros.png", b"\0" * 5_000_000)  # about 5 kB deflated: 1000-fold
    return path


def _device() -> tarfile.TarInfo:
    info = tarfile.TarInfo("images/null")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


HOSTILE: dict[str, tuple[Any, str]] = {
    "traversal": (
        lambda p: make_zip(p / "t.zip", {**layout_files(), "../../evil.txt": b"x"}),
        "member '../../evil.txt' has a '..' segment",
    ),
    "absolute": (
        lambda p: make_tar(p / "a.tar", {**layout_files(), "/tmp/evil.txt": b"x"}),
        "member '/tmp/evil.txt' is an absolute path",
    ),
    "tar-symlink": (
        lambda p: make_tar(p / "s.tar", layout_files(), [_symlink("images/c.png", "/etc/passwd")]),
        "member 'images/c.png' is a symbolic link",
    ),
    "tar-hardlink": (
        lambda p: make_tar(
            p / "h.tar", layout_files(), [_symlink("images/c.png", "/etc/passwd", tarfile.LNKTYPE)]
        ),
        "member 'images/c.png' is a hard link",
    ),
    "zip-symlink": (lambda p: _zip_symlink(p / "l.zip"), "member 'images/c.png' is a symbolic link"),
    "device": (
        lambda p: make_tar(p / "d.tar", layout_files(), [_device()]),
        "member 'images/null' is a device, FIFO or other special file",
    ),
    "ratio-bomb": (lambda p: _bomb(p / "bomb.zip"), "member 'images/zeros.png' inflates 5000000 bytes from"),
    "too-many-files": (
        lambda p: make_zip(p / "m.zip", {**layout_files(), **{f"images/x{i}.png": b"" for i in range(20)}}),
        "the archive has 24 members, over 10 (HYPERBENCH_UPLOAD_MAX_FILES)",
    ),
    "too-many-bytes": (
        lambda p: make_tar(p / "b.tar", {**layout_files(), "images/big.png": b"\1" * 300_000}),
        "over 200000 bytes (HYPERBENCH_UPLOAD_MAX_UNPACKED_BYTES) at member 'images/big.png'",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_and_leaves_nothing(
    kind: str, uploads: Path, settings: Any, as_alice: APIClient, tmp_path: Path
) -> None:
    settings.HYPERBENCH_UPLOAD_MAX_FILES = 10
    settings.HYPERBENCH_UPLOAD_MAX_UNPACKED_BYTES = 200_000
    build, message = HOSTILE[kind]
    r = post(as_alice, build(tmp_path))

    assert r.status_code == 400, r.content
    assert message in r.json()["detail"]
    assert "refused" in r.json()["detail"]
    assert left_on_disk(uploads) == []
    assert not list((uploads / ".staging").iterdir()), "the staged upload is removed too"
    assert not (tmp_path / "evil.txt").exists()
    assert not Dataset.objects.exists()


def test_a_file_over_the_upload_cap_is_refused_while_it_streams(
    uploads: Path, settings: Any, as_alice: APIClient, tmp_path: Path
) -> None:
    settings.HYPERBENCH_UPLOAD_MAX_BYTES = 50_000
    path = tmp_path / "big.tar"
    path.write_bytes(b"\0" * 60_000)
    r = post(as_alice, path)
    assert r.status_code == 400
    assert "over 50000 bytes (HYPERBENCH_UPLOAD_MAX_BYTES)" in r.json()["detail"]
    assert left_on_disk(uploads) == []
    assert not list((uploads / ".staging").iterdir())


def test_an_upload_over_the_storage_quota_is_a_403(
    uploads: Path, as_alice: APIClient, alice: User, tmp_path: Path
) -> None:
    UserQuota.objects.create(user=alice, upload_bytes=5_000)
    files = {**layout_files(), "images/pad.bin": os.urandom(6_000)}  # incompressible
    r = post(as_alice, make_zip(tmp_path / "q.zip", files))

    assert r.status_code == 403, r.content
    assert r.json()["quota"] == "upload_bytes"
    assert r.json()["limit"] == 5_000
    assert "storage quota" in r.json()["detail"]
    assert left_on_disk(uploads) == []

    # What is stored counts: once the quota is used up, the next upload is a 403 before it is read.
    UserQuota.objects.filter(user=alice).update(upload_bytes=None)
    assert post(as_alice, make_zip(tmp_path / "ok.zip", layout_files("small"))).status_code == 201
    UserQuota.objects.filter(user=alice).update(upload_bytes=100)
    r = post(as_alice, make_zip(tmp_path / "ok2.zip", layout_files("small", "2")))
    assert r.status_code == 403
    assert "your uploaded datasets hold" in r.json()["detail"]


def test_uploads_are_off_when_the_uploads_root_is_not_under_a_dataset_root(
    uploads: Path, settings: Any, as_alice: APIClient, tmp_path: Path
) -> None:
    settings.HYPERBENCH_UPLOADS_ROOT = tmp_path / "elsewhere"
    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files()))
    assert r.status_code == 503
    assert "HYPERBENCH_UPLOADS_ROOT" in r.json()["detail"]
    assert APIClient().post(URL, {}, format="multipart").status_code == 401


def test_a_file_uploads_uri_stores_there_and_another_scheme_turns_uploads_off(
    uploads: Path, settings: Any, as_alice: APIClient, alice: User, tmp_path: Path
) -> None:
    other = uploads.parent / "team-uploads"
    settings.HYPERBENCH_UPLOADS_URI = other.as_uri() + "/"
    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files("elsewhere")))
    assert r.status_code == 201, r.content
    assert r.json()["source_uri"] == (other / "elsewhere" / "1").as_uri() + "/"
    assert (other / "elsewhere" / "1" / "manifest.jsonl").is_file()
    assert left_on_disk(uploads) == []
    assert uploaded_bytes(alice) == Dataset.objects.get().total_bytes > 0

    settings.HYPERBENCH_UPLOADS_URI = "https://example.com/uploads/"
    r = post(as_alice, make_zip(tmp_path / "up2.zip", layout_files("web")))
    assert r.status_code == 503
    assert "neither file:// nor s3://" in r.json()["detail"]


# --- manage.py import_dataset -----------------------------------------------------------------------


def test_manage_py_import_dataset_converts_and_registers(uploads: Path, db: None, tmp_path: Path) -> None:
    from PIL import Image as PILImage

    pdf = tmp_path / "scan.pdf"
    PILImage.new("RGB", (100, 50), "white").save(pdf)
    out = io.StringIO()
    call_command("import_dataset", "pdf", str(pdf), "--name", "scans", "--version", "1", "--task", "ocr",
                 "--register", stdout=out)  # fmt: skip
    assert "wrote 1 samples of scans@1" in out.getvalue()
    ds = Dataset.objects.get(name="scans")
    assert ds.source_uri == (uploads / "scans" / "1").as_uri() + "/"
    assert json.loads((uploads / "scans" / "1" / "manifest.jsonl").read_text())["id"] == "scan/p1"


# --- the CLI, against the live test server ------------------------------------------------------------


def test_the_cli_uploads_a_file_and_an_archive_and_shows_a_refusal(
    uploads: Path, live_server: Any, alice: User, tmp_path: Path
) -> None:
    from tests.test_cli import Cli, docs, token_of

    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(live_server.url, home)
    token = token_of(alice)
    archive = make_zip(tmp_path / "layout.zip", layout_files("cli-up"))
    p = cli("datasets", "upload", str(archive), "--json", token=token)
    assert p.returncode == 0, p.stderr
    [body] = docs(p.stdout)
    assert (body["name"], body["sample_count"], body["outcome"]) == ("cli-up", 2, "created")

    path = tmp_path / "ocr.tsv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "gt"])
        w.writerow(["7", base64.b64encode(png()).decode(), "", "seven"])
    p = cli("datasets", "upload", str(path), "--format", "vlmevalkit-tsv", "--name", "cli-tsv",
            "--version", "1", "--task", "ocr", "--columns", '{"answer": "gt"}', token=token)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "cli-tsv@1 (ocr, 1 samples" in p.stdout
    assert json.loads((uploads / "cli-tsv" / "1" / "manifest.jsonl").read_text())["text"] == "seven"

    bad = make_zip(tmp_path / "bad.zip", {**layout_files("cli-bad"), "../x": b"x"})
    p = cli("datasets", "upload", str(bad), token=token)
    assert p.returncode == 3, p.stderr
    assert "refused (HTTP 400 on POST /api/v1/datasets/upload/)" in p.stderr
    assert "member '../x' has a '..' segment" in p.stderr
    assert not (uploads / "cli-bad").exists()


def test_the_cli_imports_a_file_of_a_format_with_the_upload_request(
    uploads: Path, live_server: Any, alice: User, tmp_path: Path
) -> None:
    """``hyperbench datasets import FORMAT PATH`` (issue 12's spelling): the same POST as upload."""
    from tests.test_cli import Cli, docs, token_of

    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(live_server.url, home)
    token = token_of(alice)
    archive = _zipped(kie_folder, "cord")(tmp_path)
    p = cli("datasets", "import", "kie-json", str(archive), "--name", "cli-kie", "--version", "1",
            "--task", "kie", "--json", token=token)  # fmt: skip
    assert p.returncode == 0, p.stderr
    [body] = docs(p.stdout)
    assert (body["name"], body["task"], body["sample_count"], body["outcome"]) == (
        "cli-kie",
        "kie",
        2,
        "created",
    )
    lines = (uploads / "cli-kie" / "1" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["fields"] == KIE_NESTED

    shard = hf_parquet_shard(tmp_path / "train.parquet", 0, ["red"])
    p = cli("datasets", "import", "hf-parquet", str(shard), "--name", "cli-pq", "--version", "1",
            "--task", "ocr", "--columns", '{"text": "ground_truth", "id": "uid"}', token=token)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "cli-pq@1 (ocr, 1 samples" in p.stdout
    assert json.loads((uploads / "cli-pq" / "1" / "manifest.jsonl").read_text())["text"] == "text red"

    p = cli(
        "datasets", "import", "hf-parquet", str(shard), "--name", "no-task", "--version", "1", token=token
    )
    assert p.returncode == 3, p.stderr
    assert "task is required for format hf-parquet" in p.stderr
    assert not (uploads / "no-task").exists()
