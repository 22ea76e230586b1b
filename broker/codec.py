"""The wire codec: msgpack envelopes, tensors as safetensors bytes, nothing else.

Content type ``application/x-msgpack``. Values msgpack cannot carry travel as
extension types with explicit codes (below); decoding refuses unknown codes, so a
message can only ever produce plain data, tensors and the protocol's records.
There is no pickle anywhere: a tensor is one safetensors buffer whose header
metadata carries ``requires_grad``, whether it is a ``Parameter``, whether a
``grad`` travels with it, and the tensor's ``tags`` and ``description`` if it has
any. The same tensor encoding is what workers keep in Redis.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy
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
EXT_ATTACHMENT = 12  # a tensor out of band: "<QQ" offset and length in the attachments

_REF_ATTR_CODES: dict[str | None, int] = {None: 0, "grad": 1, "data": 2}
_REF_ATTR_NAMES = {code: name for name, code in _REF_ATTR_CODES.items()}
_REF_STRUCT = struct.Struct("<qB")
_SLOT_STRUCT = struct.Struct("<I")
_ATTACHMENT_STRUCT = struct.Struct("<QQ")
#: How deep extension values (tuples, slices, pointers...) may nest inside each other.
#: Each level re-enters the msgpack decoder; the limit keeps that far from the C stack.
MAX_NESTING = 32
#: Most items one msgpack array or map may declare: a batch holds far fewer commands,
#: and a tensor travels as one binary, never as a list of numbers.
MAX_CONTAINER_ITEMS = 1 << 20
#: Most dimensions a tensor may declare (torch itself stops at 64).
MAX_TENSOR_DIMS = 64
#: Largest safetensors JSON header accepted: TensorFleet writes a few hundred bytes.
MAX_TENSOR_HEADER_BYTES = 64 * 1024
_FRAMED = 0xC1  # "never used" in msgpack: no plain message starts with it
_FRAME_HEAD = struct.Struct("<BQ")

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


#: safetensors dtype names (the subset TensorFleet sends)
_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
_SAFETENSORS_NAMES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}
#: tensors of at least this many bytes travel out of band (see :class:`Frames`)
OUT_OF_BAND_BYTES = 1024 * 1024
_ALIGN = 64


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    if tensor.numel() == 0:
        return memoryview(b"")
    return tensor.reshape(-1).view(torch.uint8).numpy().data.cast("B")


def encode_tensor_parts(tensor: torch.Tensor, copy: bool = True) -> list[memoryview]:
    """A safetensors buffer of the tensor (and its grad) as pieces: header, data, grad.

    With ``copy`` (the default) the data pieces are a private snapshot; without it they
    are views of the tensor's own memory, for a caller that sends them before anything
    can change the tensor. safetensors has no complex128: such tensors travel as their
    float64 real view.
    """
    data = tensor.detach()
    metadata = {
        "requires_grad": "1" if tensor.requires_grad else "0",
        "parameter": "1" if isinstance(tensor, torch.nn.Parameter) else "0",
    }
    if data.dtype is torch.complex128:
        data = torch.view_as_real(data.resolve_conj())
        metadata["complex"] = "1"
    extra = tensor.__dict__
    if extra:  # PySyft's tags and description (t.tag(...), t.describe(...)) travel along
        tags, description = extra.get("tags"), extra.get("description")
        if tags:
            metadata["tags"] = " ".join(sorted(str(tag) for tag in tags))
        if description:
            metadata["description"] = str(description)
    pieces = {"data": data}
    grad = tensor.grad if tensor.requires_grad and tensor.is_leaf else None
    if grad is not None:
        pieces["grad"] = grad.detach()
    header: dict[str, Any] = {"__metadata__": metadata}
    views: list[memoryview] = []
    offset = 0
    for name, piece in pieces.items():
        dtype = _SAFETENSORS_DTYPES.get(piece.dtype)
        if dtype is None:
            raise TypeError(
                f"A {tensor.dtype} tensor cannot travel as safetensors (dtype {piece.dtype} is "
                "not supported); convert it, for example with .float(), before sending it."
            )
        if piece.layout is not torch.strided:
            raise TypeError(
                f"A {piece.layout} tensor cannot travel as safetensors; convert it, for "
                "example with .to_dense(), before sending it."
            )
        piece = piece.cpu().resolve_conj().resolve_neg()
        contiguous = piece.contiguous()
        view = _raw_bytes(contiguous)
        if copy and contiguous.data_ptr() == piece.data_ptr() and len(view):
            view = _join([view])
        header[name] = {
            "dtype": dtype,
            "shape": list(piece.shape),
            "data_offsets": [offset, offset + len(view)],
        }
        offset += len(view)
        views.append(view)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return [memoryview(struct.pack("<Q", len(text)) + text), *views]


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """One safetensors buffer holding the tensor's data, and its grad if it has one."""
    return b"".join(encode_tensor_parts(tensor, copy=False))


def new_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes, for a big copy.

    numpy backs it: it asks for transparent huge pages, so filling 100 MiB takes
    a tenth of the time a ``bytearray`` spends in 4 KiB page faults.
    """
    return numpy.empty(size, dtype=numpy.uint8).data.cast("B")


def _join(parts: list[memoryview] | tuple[memoryview, ...]) -> memoryview:
    """The parts in one new writable buffer: a single copy, into memory allocated once."""
    buffer = new_buffer(sum(len(part) for part in parts))
    offset = 0
    for part in parts:
        buffer[offset : offset + len(part)] = part
        offset += len(part)
    return buffer


class TensorAttachment:
    """A big tensor encoded when its command was queued, sent out of band at flush time."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = parts


class Frames:
    """A message body in pieces, so big tensors are never copied into one buffer to send.

    Layout: ``0xc1`` (a byte no msgpack value starts with), the envelope's length as a
    little-endian u64, the msgpack envelope, padding to 64 bytes, then the attachments
    (each padded to 64 bytes), which the envelope names by ``EXT_ATTACHMENT`` (offset
    and length from the start of the attachments). ``len()`` is the total size; a
    receiver decodes the joined bytes with :func:`decode`.
    """

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = tuple(parts)
        self.nbytes = sum(len(part) for part in self.parts)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return bytes(self.join())

    def join(self) -> memoryview:
        """The whole body in one new (writable) buffer."""
        return _join(self.parts)


Body = bytes | bytearray | memoryview | Frames


def tensor_ext(tensor: torch.Tensor) -> msgpack.ExtType | TensorAttachment:
    """A tensor encoded *now*, ready to sit in a queued command (later changes don't leak in).

    A big tensor becomes a :class:`TensorAttachment`, which :func:`encode_marked` sends
    out of band.
    """
    if tensor.numel() * tensor.element_size() >= OUT_OF_BAND_BYTES:
        return TensorAttachment(encode_tensor_parts(tensor, copy=True))
    return msgpack.ExtType(EXT_TENSOR, encode_tensor(tensor))


def ref_ext(obj_id: int, attr: str | None = None) -> msgpack.ExtType:
    """A :class:`Ref` already in wire form: clients build it once per pointer, not per op."""
    # tuple.__new__ skips ExtType's validating constructor: this runs once per pointer
    return tuple.__new__(
        msgpack.ExtType, (EXT_REF, _REF_STRUCT.pack(obj_id, _REF_ATTR_CODES[attr]))
    )


def _safetensors_header(buffer: memoryview) -> tuple[dict[str, Any], int]:
    if len(buffer) < 8:
        raise MalformedMessageError("a tensor buffer is shorter than its header")
    (header_len,) = struct.unpack_from("<Q", buffer)
    if header_len > MAX_TENSOR_HEADER_BYTES:
        raise MalformedMessageError(
            f"a tensor header declares {header_len} bytes; the limit is {MAX_TENSOR_HEADER_BYTES}"
        )
    if header_len > len(buffer) - 8:
        raise MalformedMessageError("a tensor header runs past the end of its buffer")
    try:
        header = json.loads(bytes(buffer[8 : 8 + header_len]))
    except ValueError as error:
        raise MalformedMessageError(f"a tensor header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise MalformedMessageError("a tensor header is not a JSON object")
    return header, 8 + header_len


def _entry(
    header: dict[str, Any], name: str, buffer: memoryview, start: int, copy: bool
) -> torch.Tensor:
    info = header[name]
    try:
        dtype = _SAFETENSORS_NAMES[info["dtype"]]
        shape = [int(size) for size in info["shape"]]
        begin, end = (int(offset) for offset in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise MalformedMessageError(f"tensor entry {name!r} is not a safetensors entry") from None
    if len(shape) > MAX_TENSOR_DIMS:
        raise MalformedMessageError(
            f"tensor entry {name!r} has {len(shape)} dimensions; the limit is {MAX_TENSOR_DIMS}"
        )
    numel = 1
    for size in shape:
        if size < 0:
            raise MalformedMessageError(f"tensor entry {name!r} has a negative size")
        numel *= size
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end <= len(buffer) - start or end - begin != numel * itemsize:
        raise MalformedMessageError(f"tensor entry {name!r} does not fit its buffer")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    if buffer.readonly or (start + begin) % itemsize:
        copy = True
    if copy:
        raw = _join([buffer[start + begin : start + end]])
        return torch.frombuffer(raw, dtype=dtype).reshape(shape)
    return torch.frombuffer(buffer, dtype=dtype, count=numel, offset=start + begin).reshape(shape)


def decode_tensor(buffer: Body, copy: bool = False) -> torch.Tensor:
    """Rebuild a tensor (with requires_grad, Parameter-ness and grad) from :func:`encode_tensor`.

    The tensor shares memory with a writable ``buffer`` (one nobody else uses, such as
    a reassembled message) unless ``copy``; a read-only buffer (``bytes``) is copied once.
    """
    view = memoryview(buffer.join() if isinstance(buffer, Frames) else buffer).cast("B")
    header, start = _safetensors_header(view)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    if "data" not in header:
        raise MalformedMessageError("a tensor buffer has no 'data' entry")
    tensor = _entry(header, "data", view, start, copy)
    if metadata.get("complex") == "1":
        tensor = torch.view_as_complex(tensor)
    requires_grad = metadata.get("requires_grad") == "1"
    if metadata.get("parameter") == "1":
        tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    elif requires_grad:
        tensor.requires_grad_(True)
    if "grad" in header and requires_grad:
        tensor.grad = _entry(header, "grad", view, start, copy)
    tags, description = metadata.get("tags"), metadata.get("description")
    if tags and isinstance(tags, str):
        tensor.tags = set(tags.split())  # type: ignore[attr-defined]
    if description and isinstance(description, str):
        tensor.description = description  # type: ignore[attr-defined]
    return tensor


# ---------------------------------------------------------------- msgpack glue


def _pack_nested(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)


_nesting = threading.local()


def _unpack(data: bytes | memoryview, ext_hook: Callable[[int, bytes], Any]) -> Any:
    """msgpack-decode one level, bounded: container sizes and extension nesting.

    An extension value (a tuple) holds msgpack bytes that its hook decodes by
    re-entering here, so the depth of those re-entries is counted per thread and
    refused past :data:`MAX_NESTING` before msgpack is called again. Sizes of strings
    and binaries are bounded by the buffer itself (msgpack's default).
    """
    depth = getattr(_nesting, "depth", 0)
    if depth >= MAX_NESTING:
        raise MalformedMessageError(f"values nest deeper than {MAX_NESTING} levels")
    _nesting.depth = depth + 1
    try:
        return msgpack.unpackb(
            data,
            ext_hook=ext_hook,
            raw=False,
            strict_map_key=False,
            max_array_len=MAX_CONTAINER_ITEMS,
            max_map_len=MAX_CONTAINER_ITEMS,
        )
    finally:
        _nesting.depth = depth


def _unpack_nested(data: bytes | memoryview) -> Any:
    return _unpack(data, _ext_hook)


def _ext_ref(data: bytes) -> Ref:
    obj_id, attr = _REF_STRUCT.unpack(data)
    if attr not in _REF_ATTR_NAMES:
        raise MalformedMessageError(f"unknown reference attribute code {attr}")
    return Ref(obj_id, _REF_ATTR_NAMES[attr])


def _pointer_bytes(value: PointerRecord) -> bytes:
    return _pack_nested(
        [
            value.location,
            value.id_at_location,
            value.owns,
            list(value.shape),
            value.dtype,
            value.requires_grad,
        ]
    )


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


@dataclass(frozen=True, slots=True)
class Extension:
    """One row of the codec table: a value type, its extension code, both directions.

    ``decode`` is None for a row that only encodes (a second type sharing a code).
    """

    code: int
    types: tuple[type, ...]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any] | None


#: Every value msgpack cannot carry natively, encoder and decoder side by side. Subclasses
#: (``Parameter``, ``torch.Size``, named tuples) match their row by ``isinstance``.
EXTENSIONS: tuple[Extension, ...] = (
    Extension(
        EXT_REF,
        (Ref,),
        lambda ref: _REF_STRUCT.pack(ref.id, _REF_ATTR_CODES[ref.attr]),
        _ext_ref,
    ),
    Extension(EXT_TENSOR, (torch.Tensor,), encode_tensor, decode_tensor),
    # a tensor queued for out-of-band sending, met inside a nested value: travels inline
    Extension(EXT_TENSOR, (TensorAttachment,), lambda item: b"".join(item.parts), None),
    Extension(EXT_SLOT, (Slot,), lambda slot: _SLOT_STRUCT.pack(slot.index), _ext_slot),
    Extension(
        EXT_TUPLE,
        (tuple, list),  # lists here are list subclasses: plain lists are msgpack arrays
        lambda items: _pack_nested(list(items)),
        lambda data: tuple(_unpack_nested(data)),
    ),
    Extension(
        EXT_SLICE,
        (slice,),
        lambda value: _pack_nested([value.start, value.stop, value.step]),
        _ext_slice,
    ),
    Extension(EXT_ELLIPSIS, (type(Ellipsis),), lambda value: b"", lambda data: Ellipsis),
    Extension(
        EXT_DTYPE,
        (torch.dtype,),
        lambda dtype: dtype_name(dtype).encode(),
        lambda data: dtype_from_name(data.decode()),
    ),
    Extension(
        EXT_MEMORY_FORMAT,
        (torch.memory_format,),
        lambda fmt: _MEMORY_FORMAT_NAMES[fmt].encode(),
        _ext_memory_format,
    ),
    Extension(
        EXT_DEVICE,
        (torch.device,),
        lambda device: str(device).encode(),
        lambda data: torch.device(data.decode()),
    ),
    Extension(EXT_POINTER, (PointerRecord,), _pointer_bytes, _ext_pointer),
    Extension(
        EXT_COMPLEX, (complex,), lambda value: _pack_nested([value.real, value.imag]), _ext_complex
    ),
)
_ENCODERS: dict[type, Extension] = {kind: row for row in EXTENSIONS for kind in row.types}
_EXT_DECODERS: dict[int, Callable[[bytes], Any]] = {
    row.code: row.decode for row in EXTENSIONS if row.decode is not None
}


def _default(value: Any) -> Any:
    """msgpack's hook for a value it cannot pack: the table's row, or a plain stand-in."""
    row = _ENCODERS.get(type(value))
    if row is None:
        row = next((row for row in EXTENSIONS if isinstance(value, row.types)), None)
    if row is not None:
        return msgpack.ExtType(row.code, row.encode(value))
    if isinstance(value, bool | int | float | str | bytes):  # subclasses such as IntEnum
        return value
    if isinstance(value, dict):
        return dict(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"TensorFleet cannot send a {type(value).__name__} over the wire")


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


def encode(value: Any) -> bytes | Frames:
    """Serialize a message (envelope or reply) to msgpack; tuples keep their tuple-ness.

    A message with tensors of :data:`OUT_OF_BAND_BYTES` or more comes back as
    :class:`Frames` whose attachments are views of those tensors' memory: send it
    before the tensors can change.
    """
    return _encode(value, strict=True)


def encode_marked(value: Any) -> bytes | Frames:
    """Serialize a message whose *user* tuples are already marked with :func:`tuple_ext`.

    Every other tuple packs as a plain array, so the client can build its hot-path
    commands as tuples: CPython's collector stops tracking tuples of atoms, which keeps
    a queue of pipelined commands from making every garbage collection slower.
    """
    return _encode(value, strict=False)


def encode_inline(value: Any) -> bytes:
    """Serialize to one plain msgpack buffer, every tensor inline (for storage)."""
    return _pack_nested(value)


def _encode(value: Any, strict: bool) -> bytes | Frames:
    attachments: list[memoryview] = []
    size = 0

    def default(item: Any) -> Any:
        nonlocal size
        if isinstance(item, TensorAttachment):
            parts = item.parts
        elif (
            isinstance(item, torch.Tensor)
            and item.numel() * item.element_size() >= OUT_OF_BAND_BYTES
        ):
            parts = encode_tensor_parts(item, copy=False)
        else:
            return _default(item)
        offset = size
        for part in parts:
            attachments.append(part)
            size += len(part)
        length = size - offset
        padding = -size % _ALIGN
        if padding:
            attachments.append(memoryview(bytes(padding)))
            size += padding
        return msgpack.ExtType(EXT_ATTACHMENT, _ATTACHMENT_STRUCT.pack(offset, length))

    envelope = msgpack.packb(value, default=default, strict_types=strict, use_bin_type=True)
    if not attachments:
        return envelope
    head = _FRAME_HEAD.pack(_FRAMED, len(envelope)) + envelope
    head += bytes(-len(head) % _ALIGN)
    return Frames([memoryview(head), *attachments])


def tuple_ext(items: Any) -> msgpack.ExtType:
    """A user tuple (an index like ``x[0, 1]``, a shape) that must arrive as a tuple."""
    return msgpack.ExtType(EXT_TUPLE, _pack_nested(list(items)))


def decode(data: Body) -> Any:
    """Deserialize a message, refusing anything that is not TensorFleet data.

    Big tensors of a framed message received into a writable buffer (a reassembled
    message) share its memory; :class:`Frames` are first joined into a private copy.
    """
    view = memoryview(data.join() if isinstance(data, Frames) else data).cast("B")
    try:
        if len(view) and view[0] == _FRAMED:
            return _decode_framed(view)
        return _unpack_nested(view)
    except MalformedMessageError:
        raise
    except Exception as error:
        raise MalformedMessageError(f"not a msgpack message ({type(error).__name__})") from None


def _decode_framed(view: memoryview) -> Any:
    if len(view) < _FRAME_HEAD.size:
        raise MalformedMessageError("a framed message is shorter than its head")
    _, length = _FRAME_HEAD.unpack_from(view)
    end = _FRAME_HEAD.size + length
    if end > len(view):
        raise MalformedMessageError("a framed message's envelope runs past its end")
    attachments = view[end + (-end % _ALIGN) :]

    def ext_hook(code: int, data: bytes) -> Any:
        if code != EXT_ATTACHMENT:
            return _ext_hook(code, data)
        if len(data) != _ATTACHMENT_STRUCT.size:
            raise MalformedMessageError("an attachment reference is not 16 bytes")
        offset, size = _ATTACHMENT_STRUCT.unpack(data)
        if offset + size > len(attachments):
            raise MalformedMessageError("an attachment runs past the end of its message")
        try:
            return decode_tensor(attachments[offset : offset + size])
        except MalformedMessageError:
            raise
        except Exception as error:
            raise MalformedMessageError(f"an attachment does not decode ({error})") from None

    return _unpack(view[_FRAME_HEAD.size : end], ext_hook)
