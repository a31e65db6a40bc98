"""A streaming ``multipart/form-data`` reader that keeps every part in memory and checks names early.

Starlette's form parser spools large files to temporary files on disk (patient data on a
shared disk) and reads every field before the route sees it. This reader feeds the body to
python-multipart's push parser as it arrives and:

* refuses a part as soon as its headers are read when its field name is not accepted (the
  caller's ``accept(name)`` raises), before any of its data is kept;
* refuses more than ``max_parts`` parts and part headers over python-multipart's limits;
* never holds more than the body itself (the body size is capped by :mod:`serve.limits`
  before this runs).

Field names are kept; file names and part content types are ignored (never logged).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from serve.errors import ServeError

MAX_BOUNDARY_LENGTH = 200  # RFC 2046 allows 70


@dataclass
class Part:
    name: str
    chunks: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or 415/400."""
    if not content_type:
        raise ServeError(415, "unsupported_media_type", "no Content-Type; send multipart/form-data")
    media, options = parse_options_header(content_type)
    if media != b"multipart/form-data":
        shown = media.decode("latin-1")[:60]
        raise ServeError(415, "unsupported_media_type", f"Content-Type {shown!r}; send multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > MAX_BOUNDARY_LENGTH:
        raise ServeError(400, "bad_multipart", "the multipart Content-Type has no usable boundary")
    return boundary


class _Collector:
    """python-multipart callbacks -> a list of :class:`Part`."""

    def __init__(self, accept: Callable[[str], None], max_parts: int) -> None:
        self.accept = accept
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.current: Part | None = None
        self.finished = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Callable]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end}  # fmt: skip

    def on_part_begin(self) -> None:
        self._headers = {}
        self.current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise ServeError(400, "bad_multipart", "a part has no Content-Disposition: form-data with a name")
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ServeError(400, "bad_multipart", "a part's field name is not UTF-8") from None
        self.accept(text)  # raises for unknown or duplicate names, before any data is kept
        if len(self.parts) >= self.max_parts:
            raise ServeError(422, "too_many_parts", f"more than {self.max_parts} parts; send one file per modality")
        self.current = Part(text)
        self.parts.append(self.current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.chunks.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        self.current = None

    def on_end(self) -> None:
        self.finished = True


async def read_parts(stream: AsyncIterator[bytes], content_type: str | None, accept: Callable[[str], None],
                     max_parts: int) -> list[Part]:  # fmt: skip
    """Every part of the body; ``accept(name)`` is called once per part as soon as its headers end."""
    collector = _Collector(accept, max_parts)
    parser = MultipartParser(boundary_of(content_type), collector.callbacks())
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
            if collector.finished:
                break
        parser.finalize()
    except MultipartParseError as exc:
        raise ServeError(400, "bad_multipart", f"the multipart body cannot be parsed ({str(exc)[:120]})") from None
    if not collector.finished:
        raise ServeError(400, "bad_multipart", "the multipart body ends before its closing boundary")
    return collector.parts


__all__ = ["Part", "boundary_of", "read_parts"]
