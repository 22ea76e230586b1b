"""broker/codec.py: what goes in comes out, and nothing else gets in.

Tensors travel as safetensors (with ``requires_grad``, ``Parameter``-ness and
``grad``); refs, pointer records, tuples, slices, dtypes and the other protocol
values have explicit extension codes; malformed bytes raise
``MalformedMessageError``; there is no pickle in either direction.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import pickle
import re
import struct

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import codec, protocol
from broker.errors import MalformedMessageError, TensorFleetError
from broker.protocol import PointerRecord, Ref

ALL_DTYPES = [
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
]


def roundtrip(value):
    return codec.decode(codec.encode(value))


def sample_tensor(dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.tensor([[True, False, True], [False, False, True]])
    if dtype.is_complex:
        return torch.tensor([[1 + 2j, -3j, 0.5], [2, 0, -1 - 1j]], dtype=dtype)
    return (torch.arange(6).reshape(2, 3) * 3 - 4).to(dtype)


# ------------------------------------------------------------------ tensors


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_tensor_roundtrip_every_dtype(dtype):
    tensor = sample_tensor(dtype)
    back = roundtrip(tensor)
    assert isinstance(back, torch.Tensor)
    assert back.dtype == dtype
    assert back.shape == tensor.shape
    assert torch.equal(back, tensor)
    assert not back.requires_grad
    assert not isinstance(back, torch.nn.Parameter)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_dtype_roundtrip(dtype):
    assert roundtrip(dtype) is dtype
    assert codec.dtype_from_name(codec.dtype_name(dtype)) is dtype


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor(3.5),
        torch.zeros(0),
        torch.zeros(2, 0, 3),
        torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1),  # not contiguous
        torch.arange(10)[::3],  # strided view
        torch.tensor([float("inf"), float("-inf"), -0.0]),
        torch.tensor([2**62, -(2**62)]),
    ],
    ids=["scalar", "empty", "empty-3d", "permuted", "strided", "inf", "big-int"],
)
def test_tensor_roundtrip_shapes_and_layouts(tensor):
    back = roundtrip(tensor)
    assert back.shape == tensor.shape
    assert back.dtype == tensor.dtype
    assert torch.equal(back, tensor)


def test_nan_survives():
    back = roundtrip(torch.tensor([float("nan"), 1.0]))
    assert math.isnan(back[0].item())
    assert back[1].item() == 1.0


def test_decoded_tensor_does_not_share_memory_with_the_original():
    tensor = torch.tensor([1.0, 2.0])
    back = roundtrip(tensor)
    tensor.add_(1)
    assert torch.equal(back, torch.tensor([1.0, 2.0]))


def test_tensor_with_requires_grad_and_grad():
    tensor = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (tensor * tensor).sum().backward()

    back = roundtrip(tensor)

    assert back.requires_grad
    assert back.is_leaf
    assert torch.equal(back.detach(), tensor.detach())
    assert torch.equal(back.grad, torch.tensor([2.0, 4.0, 6.0]))


def test_tensor_with_requires_grad_and_no_grad_yet():
    back = roundtrip(torch.ones(2, requires_grad=True))
    assert back.requires_grad
    assert back.grad is None


def test_non_leaf_tensor_travels_as_data():
    x = torch.ones(2, requires_grad=True)
    y = x * 3
    back = roundtrip(y)
    assert torch.equal(back.detach(), torch.tensor([3.0, 3.0]))
    assert back.is_leaf


@pytest.mark.parametrize("requires_grad", [True, False])
def test_parameter_roundtrip(requires_grad):
    parameter = torch.nn.Parameter(torch.tensor([[0.5, -1.0]]), requires_grad=requires_grad)
    if requires_grad:
        parameter.grad = torch.tensor([[0.1, 0.2]])

    back = roundtrip(parameter)

    assert isinstance(back, torch.nn.Parameter)
    assert back.requires_grad is requires_grad
    assert torch.equal(back.detach(), parameter.detach())
    if requires_grad:
        assert torch.equal(back.grad, torch.tensor([[0.1, 0.2]]))
    else:
        assert back.grad is None


def test_linear_layer_parameters_roundtrip():
    layer = torch.nn.Linear(3, 2)
    params = list(layer.parameters())
    back = roundtrip(params)
    assert isinstance(back, list)
    for original, decoded in zip(params, back, strict=True):
        assert isinstance(decoded, torch.nn.Parameter)
        assert torch.equal(decoded.detach(), original.detach())


def test_a_big_tensor_is_one_buffer_not_a_list_of_elements():
    tensor = torch.rand(1000, 1000)
    body = codec.encode(tensor)
    assert len(body) < tensor.numel() * tensor.element_size() + 1024
    assert torch.equal(codec.decode(body), tensor)


def test_encode_tensor_is_plain_safetensors():
    import safetensors.torch

    tensor = torch.tensor([[1.0, 2.0]], requires_grad=True)
    buffer = codec.encode_tensor(tensor)
    loaded = safetensors.torch.load(buffer)
    assert torch.equal(loaded["data"], tensor.detach())
    assert torch.equal(codec.decode_tensor(buffer).detach(), tensor.detach())


# ------------------------------------------------------------------ protocol values


@pytest.mark.parametrize(
    "ref",
    [Ref(73321530673), Ref(73321530673, "grad"), Ref(1, "data"), Ref(0), Ref(2**62)],
    ids=repr,
)
def test_ref_roundtrip(ref):
    back = roundtrip(ref)
    assert back == ref
    assert isinstance(back, Ref)


def test_pointer_record_roundtrip():
    record = PointerRecord("bob", 38279153685, True, (5,), "int64", False)
    back = roundtrip(record)
    assert isinstance(back, PointerRecord)
    assert back == record
    empty_shape = PointerRecord("alice", 1, False, (), "float32", True)
    assert roundtrip(empty_shape) == empty_shape


def test_tuples_stay_tuples_and_lists_stay_lists():
    value = [1, (2, 3), [4, (5,)], ()]
    back = roundtrip(value)
    assert back == value
    assert type(back) is list
    assert type(back[1]) is tuple
    assert type(back[2]) is list
    assert type(back[2][1]) is tuple
    assert type(back[3]) is tuple


def test_torch_size_travels_as_a_tuple():
    back = roundtrip(torch.Size([2, 3]))
    assert back == (2, 3)
    assert torch.Size(back) == torch.Size([2, 3])


@pytest.mark.parametrize(
    "value",
    [slice(1, 3), slice(None, None, 2), slice(None), slice(-1, None, None), Ellipsis],
    ids=repr,
)
def test_slices_and_ellipsis(value):
    assert roundtrip(value) == value


def test_an_indexing_key_roundtrips():
    key = (Ellipsis, slice(0, 2), None, 1)
    back = roundtrip(key)
    assert back == key
    x = torch.arange(24).reshape(2, 3, 4)
    assert torch.equal(x[back], x[key])


@pytest.mark.parametrize(
    "value",
    [
        torch.contiguous_format,
        torch.preserve_format,
        torch.channels_last,
        torch.device("cpu"),
        complex(1.5, -2.0),
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        1.25,
        "bob",
        "",
        b"\x00\x01raw",
        {"a": 1, 5: "int key", "nested": {"x": [1, 2]}},
    ],
    ids=repr,
)
def test_plain_and_torch_values(value):
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)


def test_a_whole_envelope_roundtrips():
    tensor = torch.tensor([1.0, 2.0], requires_grad=True)
    commands = [
        [protocol.STORE, 11, tensor, None],
        [protocol.OP, "__add__", (Ref(11), Ref(11, "grad")), {"alpha": 2}, [12], True, 7],
        [protocol.STORE, 13, PointerRecord("bob", 14, True, (2,), "float32", True), None],
        [protocol.OP, "__getitem__", (Ref(12), (slice(0, 1), Ellipsis)), {}, [15], False, None],
        [protocol.GET, Ref(12), 8],
        [protocol.DELETE, 11],
    ]
    body = codec.encode(protocol.envelope(3, "client-1", "reply.q", commands))

    back = codec.decode(body)

    assert back["v"] == protocol.PROTOCOL_VERSION
    assert (back["batch"], back["sender"], back["reply_to"]) == (3, "client-1", "reply.q")
    store, op, pointer, getitem, get, delete = back["commands"]
    assert store[:2] == [protocol.STORE, 11]
    assert torch.equal(store[2].detach(), tensor.detach())
    assert store[2].requires_grad
    assert op == [protocol.OP, "__add__", (Ref(11), Ref(11, "grad")), {"alpha": 2}, [12], True, 7]
    assert pointer[2] == PointerRecord("bob", 14, True, (2,), "float32", True)
    assert getitem[2] == (Ref(12), (slice(0, 1), Ellipsis))
    assert get == [protocol.GET, Ref(12), 8]
    assert delete == [protocol.DELETE, 11]


def test_a_reply_with_an_error_roundtrips():
    from broker.errors import ObjectNotFoundError, error_from_wire, error_to_wire

    error = ObjectNotFoundError(42, "bob")
    reply = protocol.reply_envelope([[7, False, error_to_wire(error, "get")], [8, True, None]])
    back = codec.decode(codec.encode(reply))
    assert back["replies"][1] == [8, True, None]
    request, ok, payload = back["replies"][0]
    assert (request, ok) == (7, False)
    rebuilt = error_from_wire(payload)
    assert type(rebuilt) is ObjectNotFoundError
    assert str(rebuilt) == str(error)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_like)
def test_nested_plain_values_roundtrip(value):
    assert roundtrip(value) == value


# ------------------------------------------------------------------ what is refused


class NotWireData:
    pass


@pytest.mark.parametrize(
    "value",
    [NotWireData(), object(), lambda: 1, {1, 2}, frozenset(), torch.nn.Linear(1, 1), print],
    ids=["instance", "object", "lambda", "set", "frozenset", "module", "builtin"],
)
def test_arbitrary_objects_are_refused_not_pickled(value):
    with pytest.raises(TypeError):
        codec.encode(value)


def test_pickle_bytes_are_malformed():
    payload = pickle.dumps({"x": NotWireData.__name__, "y": [1, 2]})
    with pytest.raises(MalformedMessageError):
        codec.decode(payload)


def test_pickle_inside_a_tensor_extension_is_malformed():
    body = msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, pickle.dumps(torch.ones(2))))
    with pytest.raises(MalformedMessageError):
        codec.decode(body)


def test_codec_does_not_import_pickle():
    import inspect

    source = inspect.getsource(codec)
    assert not re.search(r"^\s*(import|from) (c?pickle|dill|marshal)\b", source, re.MULTILINE)
    assert not re.search(r"(?<![\w.])torch\.(load|save)\(", source)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of 2 with only one item
        b"\x81\xa1a",  # a map whose value is missing
        b"\x01\x02",  # extra data after a complete value
        msgpack.packb(msgpack.ExtType(99, b"")),  # unknown extension code
        msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, b"")),
        msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, b"\x00" * 4)),
        msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, struct.pack("<Q", 10**9) + b"{}")),
        msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, struct.pack("<Q", 4) + b"nope")),
        msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, struct.pack("<Q", 2) + b"{}")),
        msgpack.packb(msgpack.ExtType(codec.EXT_REF, b"\x01\x02")),
        msgpack.packb(msgpack.ExtType(codec.EXT_REF, struct.pack("<qB", 5, 9))),
        msgpack.packb(msgpack.ExtType(codec.EXT_DTYPE, b"object")),
        msgpack.packb(msgpack.ExtType(codec.EXT_DTYPE, b"\xff\xfe")),
        msgpack.packb(msgpack.ExtType(codec.EXT_SLICE, b"\x01")),
        msgpack.packb(msgpack.ExtType(codec.EXT_POINTER, msgpack.packb([1, 2]))),
        msgpack.packb(msgpack.ExtType(codec.EXT_MEMORY_FORMAT, b"sideways")),
        msgpack.packb(msgpack.ExtType(codec.EXT_DEVICE, b"warp-drive:9")),
        msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, b"\xc1")),
        msgpack.packb(msgpack.ExtType(codec.EXT_COMPLEX, msgpack.packb([1.0]))),
    ],
    ids=lambda body: body[:12].hex() or "empty",
)
def test_malformed_bytes_raise_malformed_message_error(body):
    with pytest.raises(MalformedMessageError) as error:
        codec.decode(body)
    assert isinstance(error.value, TensorFleetError)
    assert str(error.value).startswith("Malformed TensorFleet message")


def test_a_truncated_tensor_message_is_malformed():
    body = bytes(codec.encode([1, torch.arange(100.0)]))
    for cut in (len(body) - 1, len(body) // 2, 10):
        with pytest.raises(MalformedMessageError):
            codec.decode(body[:cut])


def test_a_corrupted_safetensors_header_is_malformed():
    buffer = bytearray(codec.encode_tensor(torch.arange(4.0)))
    header_len = struct.unpack_from("<Q", buffer)[0]
    buffer[8 : 8 + header_len] = b"{" * header_len
    body = msgpack.packb(msgpack.ExtType(codec.EXT_TENSOR, bytes(buffer)))
    with pytest.raises(MalformedMessageError):
        codec.decode(body)


def test_a_safetensors_buffer_without_data_entry_is_malformed():
    import safetensors.torch

    buffer = safetensors.torch.save({"weights": torch.ones(2)})
    with pytest.raises(MalformedMessageError):
        codec.decode_tensor(buffer)


def test_an_unknown_dtype_name_is_malformed():
    with pytest.raises(MalformedMessageError) as error:
        codec.dtype_from_name("float128")
    assert "float128" in str(error.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_malformed(body):
    with contextlib.suppress(MalformedMessageError):
        codec.decode(body)


# ------------------------------------------------------------------ out-of-band tensors


def test_big_tensors_travel_out_of_band_and_decode_without_a_copy() -> None:
    big = torch.rand(512, 1024, requires_grad=True)
    big.grad = torch.ones(512, 1024)
    body = codec.encode({"t": big, "small": torch.ones(3)})
    assert isinstance(body, codec.Frames)
    assert len(body) < big.numel() * 8 + 4096
    received = bytearray(bytes(body))  # a reassembled (writable) message
    decoded = codec.decode(received)["t"]
    assert torch.equal(decoded.detach(), big.detach()) and torch.equal(decoded.grad, big.grad)
    assert decoded.requires_grad
    start = ctypes.addressof((ctypes.c_char * len(received)).from_buffer(received))
    assert start <= decoded.data_ptr() < start + len(received)  # no copy was made
    from_bytes = codec.decode(bytes(body))["t"]  # read-only: copied once
    assert torch.equal(from_bytes.detach(), big.detach())


def test_frames_decode_into_a_private_copy() -> None:
    big = torch.zeros(300_000)
    body = codec.encode([big])
    big.add_(1)  # the sender's tensor changes after the message was decoded...
    decoded = codec.decode(body)[0]
    big.add_(1)  # ...or after: the decoded one never shares the sender's memory
    assert torch.equal(decoded, torch.ones(300_000))


def test_a_queued_big_tensor_is_a_snapshot() -> None:
    tensor = torch.zeros(300_000)
    ext = codec.tensor_ext(tensor)
    assert isinstance(ext, codec.TensorAttachment)
    tensor.add_(1)
    assert torch.equal(codec.decode(codec.encode_marked([ext]))[0], torch.zeros(300_000))
    assert torch.equal(codec.decode(codec.encode_inline([ext]))[0], torch.zeros(300_000))


def test_truncated_or_lying_framed_messages_are_malformed() -> None:
    body = bytes(codec.encode([torch.arange(300_000.0)]))
    for cut in (len(body) - 100, len(body) // 2, 100, 5):
        with pytest.raises(MalformedMessageError):
            codec.decode(body[:cut])
    stray = msgpack.packb(msgpack.ExtType(codec.EXT_ATTACHMENT, bytes(16)))
    with pytest.raises(MalformedMessageError):
        codec.decode(stray)  # an attachment reference outside a framed message
