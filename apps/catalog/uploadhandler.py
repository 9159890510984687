"""The upload handler of dataset uploads, shared by the API and the admin (one code path).

Django's default handlers keep an upload under ``FILE_UPLOAD_MAX_MEMORY_SIZE`` in memory and
spill larger ones to the system's temporary folder; this one always streams to disk, in the
uploads root's staging folder (so the service can hard-link it), and refuses past the cap.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError


class StagedUploadHandler(FileUploadHandler):
    """Streams an uploaded file to a temporary file in ``directory`` (never whole in memory),
    refusing it past ``max_bytes`` (a 400 naming the cap) and refusing a second file."""

    def __init__(self, request: HttpRequest, directory: Path, max_bytes: int) -> None:
        super().__init__(request)
        self.directory, self.max_bytes = directory, max_bytes
        self.received = 0
        self.upload: UploadedFile | None = None
        self.handle: Any = None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        if self.upload is not None:
            raise MultiPartParserError("send one file, in the field 'file'.")
        self.handle = handle = tempfile.NamedTemporaryFile(dir=self.directory, suffix=".upload")  # noqa: SIM115 - the request closes it
        self.upload = UploadedFile(
            file=handle, name=self.file_name, content_type=self.content_type, size=0, charset=self.charset
        )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self.discard()
            raise MultiPartParserError(
                f"the file is over {self.max_bytes} bytes (HYPERBENCH_UPLOAD_MAX_BYTES); for a larger "
                "dataset an operator runs manage.py import_dataset on the server."
            )
        self.handle.write(raw_data)
        return None

    def discard(self) -> None:
        """Close (and so remove) the temporary file, whatever became of the request."""
        if self.handle is not None:
            self.handle.close()

    def upload_interrupted(self) -> None:
        self.discard()

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self.upload is None:
            return None
        self.handle.flush()
        self.handle.seek(0)
        self.upload.size = file_size
        return self.upload
