"""Multipart uploads (``POST /transcribe`` and ``POST /jobs`` with a ``file`` field), streamed to disk.

Starlette's own form parsing spools the whole file (to memory, then a temporary file) before a
route sees it; here the parser's callbacks write the ``file`` part straight to its place under
the data directory, so the size limit holds as bytes arrive: an oversized upload is refused
after at most one network chunk past the limit (or before a byte is read, from
``Content-Length``) and never sits anywhere in full. Unknown fields, a second file, over-long
fields and malformed bodies are refused as they arrive too. Whatever goes wrong, the partial
file and its folder are removed.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import ApiError
from app.jobs import remove_upload
from app.settings import Settings


def whole_number(text: str | None) -> TypeGuard[str]:
    """ASCII digits that fit an int64 (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return text is not None and 0 < len(text) <= 18 and text.isascii() and text.isdigit()


@dataclass
class Upload:
    """A file received whole: ``uploads/<random>/<its own name>`` and the form's other fields."""

    path: Path
    sha256: str
    #: The name the client gave the file (the job's title).
    filename: str
    #: The non-empty option fields, as text (validated by the caller).
    fields: dict[str, str]


async def receive_upload(
    request: Request, settings: Settings, option_fields: tuple[str, ...]
) -> Upload:
    """Stream the multipart body of ``request`` to disk; ``option_fields`` are the form fields
    allowed beside ``file``. Raises :class:`~app.errors.ApiError` (400, 413, 422)."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "The multipart body has no boundary.", code="bad_multipart")
    max_bytes = int(settings.max_upload_mb * 2**20)
    # The file, the option fields and the part headers: anything beyond is not an upload.
    max_body = max_bytes + 64 * 1024
    too_big = f"The file is larger than the {settings.max_upload_mb:g} MB limit."
    declared = request.headers.get("content-length")
    if whole_number(declared) and int(declared) > max_body:
        raise ApiError(413, too_big, code="upload_too_large")
    # uploads/<random>/<the file's own name>: the name becomes the job's title.
    folder = settings.upload_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    dest = folder / "upload"
    sink = _UploadSink(dest, max_bytes, option_fields)
    parser = MultipartParser(boundary, sink.callbacks())
    received = 0
    try:
        try:
            # Disk writes of one network chunk are short; the parser and file stay on this thread.
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_body:
                    raise ApiError(413, too_big, code="upload_too_large")
                parser.write(chunk)
            parser.finalize()
        finally:
            sink.close()
        if sink.filename is None:
            raise ApiError(422, "file: a multipart upload needs a 'file' field.", code="no_file")
        if sink.size == 0:
            raise ApiError(422, "file: the uploaded file is empty.", code="empty_upload")
    except MultipartParseError as err:
        remove_upload(str(dest))
        raise ApiError(400, f"The multipart body is malformed ({err}).", code="bad_multipart") from None
    except BaseException:
        remove_upload(str(dest))
        raise
    # Keep the file's own name (its extension helps ffmpeg guess odd containers).
    name = re.sub(r"[^\w.\- ]+", "_", Path(sink.filename).name).strip(" .")[:120] or "upload"
    return Upload(
        path=dest.rename(folder / name),
        sha256=sink.sha256.hexdigest(),
        filename=Path(sink.filename).name[:200],
        # Unknown fields were refused as they arrived; an empty one means "the default".
        fields={k: v for k, v in sink.fields.items() if v != ""},
    )


class _UploadSink:
    """Streams one multipart body to disk: the ``file`` part into ``dest``, small fields in memory.

    The size limit is enforced as bytes arrive, so an oversized upload is refused after at most
    one chunk past the limit and never sits in memory or in a temporary file.
    """

    #: Bytes of all form fields together (the options are a few short words).
    MAX_FIELD_BYTES = 4096

    def __init__(self, dest: Path, max_bytes: int, option_fields: tuple[str, ...]):
        self.dest = dest
        self.max_bytes = max_bytes
        self.option_fields = option_fields
        self.field_bytes = 0
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._header_name = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks (a TypedDict)
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header_name.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def _header_end(self) -> None:
        self._header_name = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name != "file" and self._name not in self.option_fields:
            raise ApiError(
                422,
                f"Unknown form field {self._name[:40]!r}: send the media as 'file', options as "
                f"{', '.join(self.option_fields)}.",
                code="unknown_field",
            )
        if self._name == "file":
            if self._file is not None:
                raise ApiError(400, "Send one file only.", code="bad_multipart")
            self.filename = params.get(b"filename", b"upload").decode("utf-8", "replace")
            self._file = open(self.dest, "wb")  # noqa: SIM115 - closed in close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._name == "file":
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise ApiError(
                    413,
                    f"The file is larger than the {self.max_bytes / 2**20:g} MB limit.",
                    code="upload_too_large",
                )
            self.sha256.update(chunk)
            assert self._file is not None  # opened when the part's headers named it
            self._file.write(chunk)
        else:
            self._value += chunk
            self.field_bytes += len(chunk)
            if self.field_bytes > self.MAX_FIELD_BYTES:
                raise ApiError(413, f"The form field {self._name!r} is too long.", code="field_too_long")

    def _end(self) -> None:
        if self._name and self._name != "file":
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
