"""Find tensors of an ONNX file that point to external data, without the ``onnx`` package.

A service opens packages with onnxruntime alone (the ``[serve]`` extra has no ``onnx``), yet
must still refuse an ONNX whose weights live in side files: onnxruntime would read them
relative to the model, and external-data paths have had path-traversal CVEs. The check only
needs a few fields of ONNX's protobuf schema (``onnx/onnx.proto``), so it walks the wire format:

* ``ModelProto.graph`` = 7;
* ``GraphProto``: ``node`` = 1, ``initializer`` = 5, ``sparse_initializer`` = 15;
* ``NodeProto.attribute`` = 5; ``AttributeProto``: ``t`` = 5, ``g`` = 6, ``tensors`` = 10,
  ``graphs`` = 11, ``sparse_tensor`` = 22, ``sparse_tensors`` = 23;
* ``SparseTensorProto``: ``values`` = 1, ``indices`` = 2;
* ``TensorProto``: ``name`` = 8, ``external_data`` = 13, ``data_location`` = 14 (``EXTERNAL`` = 1).
"""

from __future__ import annotations

from collections.abc import Iterator

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_EXTERNAL = 1


class MalformedProtobuf(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedProtobuf("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of each top-level field; length-delimited values as views."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == _LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise MalformedProtobuf("length-delimited field runs past the end")
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            if pos > len(data):
                raise MalformedProtobuf("fixed-width field runs past the end")
        else:
            raise MalformedProtobuf(f"unsupported wire type {wire}")


def _submessages(data: memoryview, numbers: set[int]) -> Iterator[tuple[int, memoryview]]:
    for number, wire, value in _fields(data):
        if number in numbers and wire == _LENGTH:
            yield number, value  # type: ignore[misc]


def _tensor_is_external(tensor: memoryview) -> tuple[bool, str]:
    name, external = "", False
    for number, wire, value in _fields(tensor):
        if number == 8 and wire == _LENGTH:
            name = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif (number == 14 and wire == _VARINT and value == _EXTERNAL) or (number == 13 and wire == _LENGTH):
            external = True
    return external, name


def _sparse_tensors(sparse: memoryview) -> Iterator[memoryview]:
    for _, tensor in _submessages(sparse, {1, 2}):
        yield tensor


def _graph_tensors(graph: memoryview) -> Iterator[memoryview]:
    for number, value in _submessages(graph, {1, 5, 15}):
        if number == 5:
            yield value
        elif number == 15:
            yield from _sparse_tensors(value)
        else:
            for _, attribute in _submessages(value, {5}):
                yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute: memoryview) -> Iterator[memoryview]:
    for number, value in _submessages(attribute, {5, 6, 10, 11, 22, 23}):
        if number in (5, 10):
            yield value
        elif number in (6, 11):
            yield from _graph_tensors(value)
        else:
            yield from _sparse_tensors(value)


def external_tensor_names(model_bytes: bytes) -> list[str]:
    """Names of every tensor (initializers, sparse initializers, attribute tensors of any
    sub-graph) whose data lives outside the file.

    Raises:
        MalformedProtobuf: the bytes are not a protobuf message.
    """
    view = memoryview(model_bytes)
    names = []
    for _, graph in _submessages(view, {7}):
        for tensor in _graph_tensors(graph):
            external, name = _tensor_is_external(tensor)
            if external:
                names.append(name)
    return names
