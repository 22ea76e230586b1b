"""The wire codec: msgpack envelopes, tensors as safetensors bytes, nothing else.

Content type ``application/x-msgpack``. Values msgpack cannot carry travel as
extension types with explicit codes (below); decoding refuses unknown codes, so a
message can only ever produce plain data, tensors and the protocol's records.
There is no pickle anywhere: a tensor is one safetensors buffer whose header
metadata carries ``requires_grad``, whether it is a ``Parameter`` and whether a
``grad`` travels with it. The same tensor encoding is what workers keep in Redis.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import safetensors.torch
import torch

from broker.errors import MalformedMessageError
from broker.protocol import PointerRecord, Ref, Slot

CONTENT_TYPE = "application/x-msgpack"
CONTENT_ENCODING = "binary"

EXT_TENSOR = 1
EXT_REF = 2
EXT_TUPLE = 3
EXT_SLICE = 4
EXT_ELLIPSIS = 5
EXT_DTYPE = 6
EXT_POINTER = 7
EXT_MEMORY_FORMAT = 8
EXT_DEVICE = 9
EXT_COMPLEX = 10
EXT_SLOT = 11  # Plans: a slot marker in a plan's op list (broker.protocol.Slot)

_REF_ATTR_CODES: dict[str | None, int] = {None: 0, "grad": 1, "data": 2}
_REF_ATTR_NAMES = {code: name for name, code in _REF_ATTR_CODES.items()}
_REF_STRUCT = struct.Struct("<qB")
_SLOT_STRUCT = struct.Struct("<I")

_DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}
_MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "preserve_format": torch.preserve_format,
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
}
_MEMORY_FORMAT_NAMES = {fmt: name for name, fmt in _MEMORY_FORMATS.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a dtype (``float32``)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """The dtype for a wire name, refusing anything not in the table."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise MalformedMessageError(f"unknown dtype {name!r}") from None


# --------------------------------------------------------------------- tensors


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """One safetensors buffer holding the tensor's data, and its grad if it has one.

    safetensors has no complex128: such tensors travel as their float64 real view.
    """
    data = tensor.detach()
    metadata = {
        "requires_grad": "1" if tensor.requires_grad else "0",
        "parameter": "1" if isinstance(tensor, torch.nn.Parameter) else "0",
    }
    if data.dtype is torch.complex128:
        data = torch.view_as_real(data.resolve_conj())
        metadata["complex"] = "1"
    if not data.is_contiguous():
        data = data.contiguous()
    tensors = {"data": data}
    grad = tensor.grad if tensor.requires_grad and tensor.is_leaf else None
    if grad is not None:
        tensors["grad"] = grad.detach().contiguous()
    try:
        return safetensors.torch.save(tensors, metadata=metadata)
    except Exception as error:  # an unsupported dtype or layout, in safetensors' own words
        raise TypeError(
            f"A {tensor.dtype} tensor cannot travel as safetensors ({error}); convert it, "
            "for example with .float(), before sending it."
        ) from None


def tensor_ext(tensor: torch.Tensor) -> msgpack.ExtType:
    """A tensor encoded *now*, ready to sit in a queued command (later changes don't leak in)."""
    return msgpack.ExtType(EXT_TENSOR, encode_tensor(tensor))


def ref_ext(obj_id: int, attr: str | None = None) -> msgpack.ExtType:
    """A :class:`Ref` already in wire form: clients build it once per pointer, not per op."""
    # tuple.__new__ skips ExtType's validating constructor: this runs once per pointer
    return tuple.__new__(
        msgpack.ExtType, (EXT_REF, _REF_STRUCT.pack(obj_id, _REF_ATTR_CODES[attr]))
    )


def _safetensors_metadata(buffer: bytes) -> dict[str, str]:
    if len(buffer) < 8:
        raise MalformedMessageError("a tensor buffer is shorter than its header")
    (header_len,) = struct.unpack_from("<Q", buffer)
    if header_len > len(buffer) - 8:
        raise MalformedMessageError("a tensor header runs past the end of its buffer")
    try:
        header = json.loads(bytes(buffer[8 : 8 + header_len]))
    except ValueError as error:
        raise MalformedMessageError(f"a tensor header is not JSON ({error})") from None
    metadata = header.get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def decode_tensor(buffer: bytes) -> torch.Tensor:
    """Rebuild a tensor (with requires_grad, Parameter-ness and grad) from :func:`encode_tensor`."""
    metadata = _safetensors_metadata(buffer)
    try:
        loaded = safetensors.torch.load(bytes(buffer))
    except Exception as error:  # safetensors raises its own SafetensorError and others
        raise MalformedMessageError(f"a tensor buffer is not safetensors ({error})") from None
    if "data" not in loaded:
        raise MalformedMessageError("a tensor buffer has no 'data' entry")
    tensor = loaded["data"]
    if metadata.get("complex") == "1":
        tensor = torch.view_as_complex(tensor)
    requires_grad = metadata.get("requires_grad") == "1"
    if metadata.get("parameter") == "1":
        tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    elif requires_grad:
        tensor.requires_grad_(True)
    if "grad" in loaded and requires_grad:
        tensor.grad = loaded["grad"]
    return tensor


# ---------------------------------------------------------------- msgpack glue


def _pack_nested(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)


def _default(value: Any) -> msgpack.ExtType:
    if isinstance(value, Ref):
        return msgpack.ExtType(EXT_REF, _REF_STRUCT.pack(value.id, _REF_ATTR_CODES[value.attr]))
    if isinstance(value, torch.Tensor):
        return msgpack.ExtType(EXT_TENSOR, encode_tensor(value))
    if isinstance(value, Slot):  # Plans
        return msgpack.ExtType(EXT_SLOT, _SLOT_STRUCT.pack(value.index))
    if isinstance(value, tuple):  # also torch.Size and named tuples
        return msgpack.ExtType(EXT_TUPLE, _pack_nested(list(value)))
    if isinstance(value, list):  # list subclasses
        return msgpack.ExtType(EXT_TUPLE, _pack_nested(list(value)))  # pragma: no cover
    if isinstance(value, slice):
        return msgpack.ExtType(EXT_SLICE, _pack_nested([value.start, value.stop, value.step]))
    if value is Ellipsis:
        return msgpack.ExtType(EXT_ELLIPSIS, b"")
    if isinstance(value, torch.dtype):
        return msgpack.ExtType(EXT_DTYPE, dtype_name(value).encode())
    if isinstance(value, torch.memory_format):
        return msgpack.ExtType(EXT_MEMORY_FORMAT, _MEMORY_FORMAT_NAMES[value].encode())
    if isinstance(value, torch.device):
        return msgpack.ExtType(EXT_DEVICE, str(value).encode())
    if isinstance(value, PointerRecord):
        return msgpack.ExtType(
            EXT_POINTER,
            _pack_nested(
                [
                    value.location,
                    value.id_at_location,
                    value.owns,
                    list(value.shape),
                    value.dtype,
                    value.requires_grad,
                ]
            ),
        )
    if isinstance(value, complex):
        return msgpack.ExtType(EXT_COMPLEX, _pack_nested([value.real, value.imag]))
    if isinstance(value, bool | int | float | str | bytes):  # subclasses such as IntEnum
        return value  # type: ignore[return-value]
    if isinstance(value, dict):
        return dict(value)  # type: ignore[return-value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"TensorFleet cannot send a {type(value).__name__} over the wire")


def _unpack_nested(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _ext_ref(data: bytes) -> Ref:
    obj_id, attr = _REF_STRUCT.unpack(data)
    if attr not in _REF_ATTR_NAMES:
        raise MalformedMessageError(f"unknown reference attribute code {attr}")
    return Ref(obj_id, _REF_ATTR_NAMES[attr])


def _ext_pointer(data: bytes) -> PointerRecord:
    location, id_at_location, owns, shape, dtype, requires_grad = _unpack_nested(data)
    return PointerRecord(
        str(location),
        int(id_at_location),
        bool(owns),
        tuple(shape),
        str(dtype),
        bool(requires_grad),
    )


def _ext_slice(data: bytes) -> slice:
    start, stop, step = _unpack_nested(data)
    return slice(start, stop, step)


def _ext_memory_format(data: bytes) -> torch.memory_format:
    try:
        return _MEMORY_FORMATS[data.decode()]
    except KeyError:
        raise MalformedMessageError("unknown memory format") from None


def _ext_complex(data: bytes) -> complex:
    real, imag = _unpack_nested(data)
    return complex(real, imag)


def _ext_slot(data: bytes) -> Slot:  # Plans
    if len(data) != _SLOT_STRUCT.size:
        raise MalformedMessageError("a plan slot is not 4 bytes")
    return Slot(_SLOT_STRUCT.unpack(data)[0])


_EXT_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_TENSOR: decode_tensor,
    EXT_REF: _ext_ref,
    EXT_TUPLE: lambda data: tuple(_unpack_nested(data)),
    EXT_SLICE: _ext_slice,
    EXT_ELLIPSIS: lambda data: Ellipsis,
    EXT_DTYPE: lambda data: dtype_from_name(data.decode()),
    EXT_POINTER: _ext_pointer,
    EXT_MEMORY_FORMAT: _ext_memory_format,
    EXT_DEVICE: lambda data: torch.device(data.decode()),
    EXT_COMPLEX: _ext_complex,
    EXT_SLOT: _ext_slot,
}


_REF_CACHE: dict[bytes, Ref] = {}


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_REF:  # the hot path: every op names its arguments by Ref
        ref = _REF_CACHE.get(data)
        if ref is None:
            if len(data) != _REF_STRUCT.size:
                raise MalformedMessageError("a reference is not 9 bytes")
            if len(_REF_CACHE) > 100_000:
                _REF_CACHE.clear()
            ref = _REF_CACHE[data] = _ext_ref(data)
        return ref
    decoder = _EXT_DECODERS.get(code)
    if decoder is None:
        raise MalformedMessageError(f"unknown extension type {code}")
    try:
        return decoder(data)
    except MalformedMessageError:
        raise
    except Exception as error:
        raise MalformedMessageError(f"extension type {code} does not decode ({error})") from None


def encode(value: Any) -> bytes:
    """Serialize a message (envelope or reply) to msgpack bytes; tuples keep their tuple-ness."""
    return _pack_nested(value)


def encode_marked(value: Any) -> bytes:
    """Serialize a message whose *user* tuples are already marked with :func:`tuple_ext`.

    Every other tuple packs as a plain array, so the client can build its hot-path
    commands as tuples: CPython's collector stops tracking tuples of atoms, which keeps
    a queue of pipelined commands from making every garbage collection slower.
    """
    return msgpack.packb(value, default=_default, use_bin_type=True)


def tuple_ext(items: Any) -> msgpack.ExtType:
    """A user tuple (an index like ``x[0, 1]``, a shape) that must arrive as a tuple."""
    return msgpack.ExtType(EXT_TUPLE, _pack_nested(list(items)))


def decode(data: bytes) -> Any:
    """Deserialize msgpack bytes, refusing anything that is not TensorFleet data."""
    try:
        return _unpack_nested(data)
    except MalformedMessageError:
        raise
    except Exception as error:
        raise MalformedMessageError(f"not a msgpack message ({type(error).__name__})") from None
