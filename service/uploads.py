"""The `file` parts of a multipart/form-data body, read into memory as they arrive.

Starlette's form parser spools files over 1 MB to temporary files on disk; here uploads never
touch the disk, user-chosen file names are never used, and the total size is already capped
(`service.middleware`). python-multipart bounds part headers (count and size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.faults import TooManyRows

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


async def read_files(request: Request, field: str, max_parts: int) -> list[bytearray]:
    """The contents of the parts named `field`, in order; 415 if the body is not multipart,
    400 if it is malformed, 413 over `max_parts` parts, 422 with no `field` part."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise HTTPException(415, f"expected multipart/form-data with the image in a part named {field!r}")
    if not options.get(b"boundary"):
        raise HTTPException(400, "multipart/form-data without a boundary")
    parts = _Parts(field.encode(), max_parts)
    try:
        parser = MultipartParser(options[b"boundary"], parts.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
    except MultipartParseError as error:
        raise HTTPException(400, f"malformed multipart body: {error}") from None
    if not parts.complete:
        raise HTTPException(400, "malformed multipart body: no closing boundary")
    if not parts.files:
        raise HTTPException(422, f"no part named {field!r} in the multipart body")
    return parts.files


class _Parts:
    """python-multipart callbacks keeping the data of the parts named `field`."""

    def __init__(self, field: bytes, max_parts: int):
        self.field = field
        self.max_parts = max_parts
        self.files: list[bytearray] = []
        self.complete = False
        self._count = 0
        self._header = [b"", b""]
        self._disposition = b""
        self._data: bytearray | None = None  # None: a part we do not keep

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add_header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header(1, data[start:end]),
            "on_header_end": self._end_header,
            "on_headers_finished": self._start_data,
            "on_part_data": self._add_data,
            "on_part_end": self._end_part,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._count += 1
        if self._count > self.max_parts:
            raise TooManyRows(self.max_parts)  # each part is an image, or would be read as one
        self._disposition, self._data = b"", None

    def _add_header(self, index: int, data: bytes) -> None:
        self._header[index] += data

    def _end_header(self) -> None:
        name, value = self._header
        if name.lower() == b"content-disposition":
            self._disposition = value
        self._header = [b"", b""]

    def _start_data(self) -> None:
        _, options = parse_options_header(self._disposition.decode("latin-1"))
        if options.get(b"name") == self.field:
            self._data = bytearray()

    def _add_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data += data[start:end]

    def _end_part(self) -> None:
        if self._data is not None:
            self.files.append(self._data)
            self._data = None

    def _end(self) -> None:
        self.complete = True
