"""Minimal in-memory surgery on a piper (VITS) ONNX graph, without the `onnx` package.

Two changes, both done on the protobuf wire format (the model is ~60 MB; only the graph's
top-level fields are re-encoded, the weights are copied through untouched):

1. Expose the duration tensor (the graph's only ``Ceil`` output, "w_ceil": frames per phoneme
   id) as an extra graph output — exactly what ``piper.patch_voice_with_alignment`` does with the
   `onnx` package, which is not installed here. It gives exact phoneme → sample alignments, so
   word timestamps come from the model itself rather than from an estimate.
2. Replace each ``RandomNormalLike(X)`` node by ``Slice(<new graph input>, 0, Shape(X))``: the
   generator's noise is fed from outside, so synthesis is DETERMINISTIC (onnxruntime's random
   ops keep a generator state across runs, and `onnxruntime.set_seed` does not reset it). The
   caller feeds a fixed, seeded noise tensor at least as large as X in every dimension — the same
   as seeding torch before every call of the original VITS code.

Only the field numbers of onnx.proto that are needed are used:
ModelProto.graph = 7; GraphProto.node = 1, initializer = 5, input = 11, output = 12;
NodeProto.input = 1, output = 2, name = 3, op_type = 4; ValueInfoProto.name = 1, type = 2;
TypeProto.tensor_type = 1; TypeProto.Tensor.elem_type = 1, shape = 2; TensorShapeProto.dim = 1;
Dimension.dim_param = 2; TensorProto.dims = 1, data_type = 2, int64_data = 7, name = 8.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

_FLOAT = 1
_INT64 = 7


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, int, bytes | memoryview | int]]:
    """(field number, wire type, start, end, value) of every top-level field of a message."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, start, pos, value


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return _len_field(number, text.encode())


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _node(op_type: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    body = b"".join(_str_field(1, i) for i in inputs)
    body += b"".join(_str_field(2, o) for o in outputs)
    return body + _str_field(3, name) + _str_field(4, op_type)


def _float_input(name: str, rank: int) -> bytes:
    dims = b"".join(_len_field(1, _str_field(2, f"{name}_d{i}")) for i in range(rank))
    tensor_type = _int_field(1, _FLOAT) + _len_field(2, dims)
    return _str_field(1, name) + _len_field(2, _len_field(1, tensor_type))


def _int64_initializer(name: str, values: list[int]) -> bytes:
    packed = b"".join(_varint(v) for v in values)
    return (_int_field(1, len(values)) + _int_field(2, _INT64) + _len_field(7, packed)
            + _str_field(8, name))


@dataclass
class PatchedModel:
    model: bytes
    alignment_output: str | None
    noise_inputs: list[str] = field(default_factory=list)  # in graph order; rank 3 each


def patch_piper_model(model_bytes: bytes, noise_rank: int = 3) -> PatchedModel:
    """Return the patched model bytes (see module doc); a graph without the expected nodes is
    returned with whatever of the two patches applied."""
    view = memoryview(model_bytes)
    graph_field = None
    for number, wire, start, end, value in _fields(view):
        if number == 7 and wire == 2:
            graph_field = (start, end, value)
    if graph_field is None:
        raise ValueError("not an ONNX model: no graph")
    g_start, g_end, graph = graph_field

    pieces: list[bytes] = []
    ceil_outputs: list[str] = []
    noise_inputs: list[str] = []
    existing_outputs: set[str] = set()
    starts_name = "duplexalign_noise_starts"
    for number, wire, start, end, value in _fields(graph):
        if number == 1 and wire == 2:  # node
            op_type, inputs, outputs = "", [], []
            for n, w, _, _, v in _fields(value):
                if n == 1:
                    inputs.append(bytes(v).decode())
                elif n == 2:
                    outputs.append(bytes(v).decode())
                elif n == 4:
                    op_type = bytes(v).decode()
            if op_type == "Ceil":
                ceil_outputs.extend(outputs)
            if op_type == "RandomNormalLike" and len(inputs) == 1 and len(outputs) == 1:
                k = len(noise_inputs)
                noise_name = f"duplexalign_noise_{k}"
                shape_name = f"duplexalign_noise_{k}_shape"
                noise_inputs.append(noise_name)
                pieces.append(_len_field(1, _node("Shape", inputs, [shape_name], f"{shape_name}_node")))
                pieces.append(_len_field(1, _node("Slice", [noise_name, starts_name, shape_name],
                                                  outputs, f"{noise_name}_slice")))
                continue
        elif number == 12 and wire == 2:
            for n, w, _, _, v in _fields(value):
                if n == 1:
                    existing_outputs.add(bytes(v).decode())
        pieces.append(bytes(graph[start:end]))

    if noise_inputs:
        pieces.append(_len_field(5, _int64_initializer(starts_name, [0] * noise_rank)))
        pieces.extend(_len_field(11, _float_input(name, noise_rank)) for name in noise_inputs)
    alignment_output = None
    if len(ceil_outputs) == 1 and ceil_outputs[0] not in existing_outputs:
        alignment_output = ceil_outputs[0]
        pieces.append(_len_field(12, _str_field(1, alignment_output)))

    new_graph = b"".join(pieces)
    model = bytes(view[:g_start]) + _len_field(7, new_graph) + bytes(view[g_end:])
    return PatchedModel(model=model, alignment_output=alignment_output, noise_inputs=noise_inputs)
