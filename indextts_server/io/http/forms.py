"""multipart/form-data bodies, parsed in memory with python-multipart (nothing touches the disk)."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from ...core import texts


class FormError(Exception):
    """The body is not the multipart form it claims to be."""


class Part:
    """One form field: its name, the file name if it is a file, and its bytes."""

    def __init__(self) -> None:
        self.name = ""
        self.filename: str | None = None
        self.content_type: str | None = None
        self.chunks: list[bytes] = []
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """The fields of a ``multipart/form-data`` body by name (the first of each name wins)."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise FormError(texts.FORM_NOT_MULTIPART)
    parts: list[Part] = []

    def begin() -> None:
        parts.append(Part())

    def data(buffer: bytes, begin: int, end: int) -> None:
        parts[-1].chunks.append(buffer[begin:end])

    def header_field(buffer: bytes, begin: int, end: int) -> None:
        parts[-1]._field += buffer[begin:end]

    def header_value(buffer: bytes, begin: int, end: int) -> None:
        parts[-1]._value += buffer[begin:end]

    def header_end() -> None:
        part = parts[-1]
        part._headers[part._field.lower()] = part._value
        part._field = part._value = b""

    def headers_finished() -> None:
        part = parts[-1]
        disposition, params = parse_options_header(part._headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise FormError(texts.FORM_NO_DISPOSITION)
        part.name = params.get(b"name", b"").decode("utf-8", errors="replace")
        if b"filename" in params:
            part.filename = params[b"filename"].decode("utf-8", errors="replace")
        if b"content-type" in part._headers:
            part.content_type = part._headers[b"content-type"].decode("latin-1")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_part_data": data,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormError:
        raise
    except Exception as error:  # python-multipart raises its own and ValueError for broken bodies
        raise FormError(texts.form_malformed(str(error))) from None
    fields: dict[str, Part] = {}
    for part in parts:
        fields.setdefault(part.name, part)
    return fields
